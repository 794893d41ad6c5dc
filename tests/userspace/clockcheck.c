/*
 * clockcheck: reads the guest's clocks the way user space does, through libc
 * (and so through the vDSO when the kernel offers one), and reports whether
 * time ever went backwards -- on one CPU, and between two threads pinned to
 * different CPUs that pass their latest reading to each other.
 *
 * Usage: clockcheck [READS]
 * Prints: clockcheck reads=N backwards=B cross_cpu_backwards=C cpus=K
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static long reads = 200000;
static _Atomic uint64_t latest;          /* the newest CLOCK_MONOTONIC reading of any thread */
static _Atomic long cross_backwards;

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void *reader(void *arg)
{
    long cpu = (long)arg;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof(set), &set);
    for (long i = 0; i < reads; i++) {
        uint64_t seen = atomic_load(&latest);       /* read before our own clock read... */
        uint64_t now = mono_ns();                   /* ...so it can never be later */
        if (now < seen)
            atomic_fetch_add(&cross_backwards, 1);
        while (seen < now && !atomic_compare_exchange_weak(&latest, &seen, now))
            ;
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc > 1)
        reads = atol(argv[1]);
    long backwards = 0;
    uint64_t prev = 0;
    struct timeval tv_prev = {0, 0};
    for (long i = 0; i < reads; i++) {
        uint64_t now = mono_ns();
        struct timeval tv;
        gettimeofday(&tv, NULL);
        if (now < prev || tv.tv_sec < tv_prev.tv_sec ||
            (tv.tv_sec == tv_prev.tv_sec && tv.tv_usec < tv_prev.tv_usec))
            backwards++;
        prev = now;
        tv_prev = tv;
    }
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    if (cpus > 1) {
        pthread_t t[2];
        for (long c = 0; c < 2; c++)
            pthread_create(&t[c], NULL, reader, (void *)c);
        for (int c = 0; c < 2; c++)
            pthread_join(t[c], NULL);
    }
    printf("clockcheck reads=%ld backwards=%ld cross_cpu_backwards=%ld cpus=%ld\n",
           reads, backwards, atomic_load(&cross_backwards), cpus);
    return 0;
}
