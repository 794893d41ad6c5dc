/*
 * osbench: lmbench-style OS microbenchmarks in one static program.
 *
 * Usage: osbench [-t TARGET_MS] [-s SAMPLES] [-n OPS] [-x TINY] [TEST ...]
 *   TARGET_MS  wall time one sample should take (default 100): the number of
 *              operations per sample is calibrated by doubling until one
 *              batch takes at least a quarter of it, so the same binary works
 *              natively (ns per op) and in a guest where an op costs 1000x more.
 *   SAMPLES    samples per test (default 5)
 *   OPS        operations per sample, fixed (no calibration): for counting
 *              exits per operation with `hospes run --stats`
 *   TINY       the static binary fork+exec runs (default: "tiny" next to us)
 *   TEST       any of: null_syscall clock_gettime open_close fork_exit
 *              fork_exec page_fault pipe_pingpong (default: all)
 *
 * Prints one line per sample:
 *   BENCH os_<test> ns_per_op=<float> iters=<n>
 *
 *   null_syscall   syscall(SYS_getppid)
 *   clock_gettime  clock_gettime(CLOCK_MONOTONIC) through libc (the vDSO where
 *                  the kernel offers one for its clocksource)
 *   open_close     open(O_RDONLY) + close of this program's own file
 *   fork_exit      fork(); child _exit(0); parent waitpid()
 *   fork_exec      fork(); child execve(TINY) which exits; parent waitpid()
 *   page_fault     first write to a fresh anonymous page (mmap'd 1 MiB at a
 *                  time, THP off; only the touching is timed)
 *   pipe_pingpong  1-byte round trip between two processes over two pipes
 *                  (two context switches per op)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *self_path;
static const char *tiny_path;

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "osbench: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* Each test runs n operations and returns the nanoseconds they took. */
typedef double (*test_fn)(long n);

static double t_null_syscall(long n)
{
    double t0 = now_ns();
    for (long i = 0; i < n; i++)
        syscall(SYS_getppid);
    return now_ns() - t0;
}

static double t_clock_gettime(long n)
{
    struct timespec ts;
    double t0 = now_ns();
    for (long i = 0; i < n; i++)
        clock_gettime(CLOCK_MONOTONIC, &ts);
    return now_ns() - t0;
}

static double t_open_close(long n)
{
    double t0 = now_ns();
    for (long i = 0; i < n; i++) {
        int fd = open(self_path, O_RDONLY);
        if (fd < 0)
            die("open");
        close(fd);
    }
    return now_ns() - t0;
}

static void reap(pid_t pid)
{
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            die("waitpid");
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "osbench: child failed (status %#x)\n", status);
        exit(1);
    }
}

static double t_fork_exit(long n)
{
    double t0 = now_ns();
    for (long i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid < 0)
            die("fork");
        if (pid == 0)
            _exit(0);
        reap(pid);
    }
    return now_ns() - t0;
}

static double t_fork_exec(long n)
{
    char *argv[] = { (char *)tiny_path, NULL };
    char *envp[] = { NULL };
    double t0 = now_ns();
    for (long i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid < 0)
            die("fork");
        if (pid == 0) {
            execve(tiny_path, argv, envp);
            _exit(127);
        }
        reap(pid);
    }
    return now_ns() - t0;
}

#define CHUNK_PAGES 256

static double t_page_fault(long n)
{
    long page = sysconf(_SC_PAGESIZE);
    double total = 0;
    for (long done = 0; done < n;) {
        long pages = n - done < CHUNK_PAGES ? n - done : CHUNK_PAGES;
        char *p = mmap(NULL, pages * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            die("mmap");
        madvise(p, pages * page, MADV_NOHUGEPAGE);
        double t0 = now_ns();
        for (long i = 0; i < pages; i++)
            p[i * page] = 1;
        total += now_ns() - t0;
        munmap(p, pages * page);
        done += pages;
    }
    return total;
}

static double t_pipe_pingpong(long n)
{
    int ab[2], ba[2];
    char c = 'x';
    if (pipe(ab) < 0 || pipe(ba) < 0)
        die("pipe");
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        close(ab[1]);
        close(ba[0]);
        while (read(ab[0], &c, 1) == 1)
            if (write(ba[1], &c, 1) != 1)
                _exit(1);
        _exit(0);
    }
    close(ab[0]);
    close(ba[1]);
    /* one round trip so the child is up before timing */
    if (write(ab[1], &c, 1) != 1 || read(ba[0], &c, 1) != 1)
        die("pipe warm-up");
    double t0 = now_ns();
    for (long i = 0; i < n; i++) {
        if (write(ab[1], &c, 1) != 1)
            die("write");
        if (read(ba[0], &c, 1) != 1)
            die("read");
    }
    double t = now_ns() - t0;
    close(ab[1]);
    close(ba[0]);
    reap(pid);
    return t;
}

static const struct { const char *name; test_fn fn; } tests[] = {
    { "null_syscall", t_null_syscall },
    { "clock_gettime", t_clock_gettime },
    { "open_close", t_open_close },
    { "fork_exit", t_fork_exit },
    { "fork_exec", t_fork_exec },
    { "page_fault", t_page_fault },
    { "pipe_pingpong", t_pipe_pingpong },
};
#define NTESTS (sizeof(tests) / sizeof(tests[0]))

static void run_test(unsigned t, double target_ns, int samples, long fixed_ops)
{
    long n = 1, per_sample = fixed_ops;
    double took = 0;
    while (fixed_ops <= 0) {
        /* Calibrate: double n until a batch takes >= target/4, then scale. */
        took = tests[t].fn(n);
        if (took >= target_ns / 4 || n >= (1L << 30))
            break;
        n *= 2;
    }
    if (fixed_ops <= 0)
        per_sample = (long)(n * (target_ns / (took > 0 ? took : 1)));
    if (per_sample < 1)
        per_sample = 1;
    for (int s = 0; s < samples; s++) {
        double t_ns = tests[t].fn(per_sample);
        printf("BENCH os_%s ns_per_op=%.1f iters=%ld\n", tests[t].name, t_ns / per_sample, per_sample);
        fflush(stdout);
    }
}

int main(int argc, char **argv)
{
    double target_ms = 100;
    int samples = 5;
    long fixed_ops = 0;
    int opt;
    static char tiny_buf[4096];

    self_path = argv[0];
    while ((opt = getopt(argc, argv, "t:s:n:x:")) != -1) {
        switch (opt) {
        case 't': target_ms = atof(optarg); break;
        case 's': samples = atoi(optarg); break;
        case 'n': fixed_ops = atol(optarg); break;
        case 'x': tiny_path = optarg; break;
        default:
            fprintf(stderr, "usage: %s [-t TARGET_MS] [-s SAMPLES] [-n OPS] [-x TINY] [TEST ...]\n", argv[0]);
            return 2;
        }
    }
    if (!tiny_path) {
        const char *slash = strrchr(self_path, '/');
        int dir = slash ? (int)(slash - self_path) : 1;
        snprintf(tiny_buf, sizeof(tiny_buf), "%.*s/tiny", dir, slash ? self_path : ".");
        tiny_path = tiny_buf;
    }
    if (strchr(self_path, '/') == NULL) {
        fprintf(stderr, "osbench: run me by a path (e.g. ./osbench), open_close opens argv[0]\n");
        return 2;
    }

    for (unsigned t = 0; t < NTESTS; t++) {
        int wanted = optind >= argc;
        for (int a = optind; a < argc; a++)
            wanted |= strcmp(argv[a], tests[t].name) == 0;
        if (wanted)
            run_test(t, target_ms * 1e6, samples, fixed_ops);
    }
    return 0;
}
