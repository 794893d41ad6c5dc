/*
 * compute: fixed-work CPU-bound kernels that time themselves.
 *
 * Usage: compute [REPS]   (default 3)
 * For each kernel and repetition prints
 *   BENCH compute_<kernel> seconds=<s> check=<checksum>
 * timed with clock_gettime(CLOCK_MONOTONIC) around the kernel alone, so the
 * same binary measures the same work natively, in a Hospes guest and under
 * QEMU.  The work is fixed (no calibration): compare seconds directly.
 *
 *   int   xorshift64* chain with a data-dependent branch (integer ALU)
 *   fp    dependent double-precision divides and multiply-adds
 *   mem   dependent random reads over a 32 MiB table (TLB and cache misses,
 *         i.e. the guest's page-table walk cost)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t k_int(void)
{
    uint64_t x = 88172645463325252ULL, acc = 0;
    for (long i = 0; i < 100000000L; i++) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        uint64_t y = x * 2685821657736338717ULL;
        if (y & 1)
            acc += y >> 7;
        else
            acc ^= y;
    }
    return acc;
}

static uint64_t k_fp(void)
{
    double s = 0.0, t = 1.0;
    for (long i = 1; i <= 100000000L; i++) {
        s += 1.0 / ((double)i * (double)i);
        t = t * 0.999999 + 1e-7;
    }
    return (uint64_t)(s * 1e12) ^ (uint64_t)(t * 1e6);
}

#define MEM_WORDS (32UL << 20) / sizeof(uint32_t)

static uint32_t *table;

static uint64_t k_mem(void)
{
    uint32_t i = 0;
    uint64_t acc = 0;
    for (long n = 0; n < 2000000L; n++) {
        i = table[i];
        acc += i;
    }
    return acc;
}

int main(int argc, char **argv)
{
    int reps = argc > 1 ? atoi(argv[1]) : 3;

    /* A random single cycle through the table (Sattolo's shuffle). */
    table = malloc(MEM_WORDS * sizeof(uint32_t));
    if (!table) {
        perror("malloc");
        return 1;
    }
    for (uint32_t i = 0; i < MEM_WORDS; i++)
        table[i] = i;
    uint64_t r = 0x9e3779b97f4a7c15ULL;
    for (uint32_t i = MEM_WORDS - 1; i > 0; i--) {
        r ^= r << 13; r ^= r >> 7; r ^= r << 17;
        uint32_t j = (uint32_t)(r % i);
        uint32_t t = table[i]; table[i] = table[j]; table[j] = t;
    }

    struct { const char *name; uint64_t (*fn)(void); } kernels[] = {
        { "int", k_int }, { "fp", k_fp }, { "mem", k_mem },
    };
    for (int rep = 0; rep < reps; rep++) {
        for (unsigned k = 0; k < sizeof(kernels) / sizeof(kernels[0]); k++) {
            double t0 = now();
            uint64_t c = kernels[k].fn();
            double t1 = now();
            printf("BENCH compute_%s seconds=%.6f check=%llu\n", kernels[k].name, t1 - t0,
                   (unsigned long long)c);
            fflush(stdout);
        }
    }
    return 0;
}
