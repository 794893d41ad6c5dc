/*
 * blkbench: block I/O through one file or block device, timed by itself.
 *
 * Usage: blkbench [-d] [-w] [-s SAMPLES] [-m MIB] PATH
 *   -d       O_DIRECT (in a guest: every request goes to the disk backend,
 *            not the guest's page cache); without it, buffered I/O
 *   -w       also the write test (overwrites the first MIB MiB of PATH)
 *   SAMPLES  samples per test (default 5)
 *   MIB      span used, in MiB (default 64)
 *
 * Prints one line per sample:
 *   BENCH blk_seq_read ns_per_op=<ns per 1 MiB request> iters=<n> direct=<0|1>
 *   BENCH blk_rand_read ns_per_op=<ns per 4 KiB read> iters=<n> direct=<0|1>
 *   BENCH blk_seq_write ns_per_op=<ns per 1 MiB request, fsync included> iters=<n> direct=<0|1>
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BIG   (1L << 20)
#define SMALL 4096L
#define RAND_OPS 1024

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "blkbench: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void full_pread(int fd, char *buf, long len, off_t off)
{
    for (long done = 0; done < len;) {
        ssize_t n = pread(fd, buf + done, len - done, off + done);
        if (n <= 0)
            die(n == 0 ? "pread: unexpected end of file" : "pread");
        done += n;
    }
}

static void full_pwrite(int fd, const char *buf, long len, off_t off)
{
    for (long done = 0; done < len;) {
        ssize_t n = pwrite(fd, buf + done, len - done, off + done);
        if (n <= 0)
            die("pwrite");
        done += n;
    }
}

int main(int argc, char **argv)
{
    int direct = 0, write_test = 0, samples = 5, opt;
    long mib = 64;
    while ((opt = getopt(argc, argv, "dws:m:")) != -1) {
        switch (opt) {
        case 'd': direct = 1; break;
        case 'w': write_test = 1; break;
        case 's': samples = atoi(optarg); break;
        case 'm': mib = atol(optarg); break;
        default:
            fprintf(stderr, "usage: %s [-d] [-w] [-s SAMPLES] [-m MIB] PATH\n", argv[0]);
            return 2;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "usage: %s [-d] [-w] [-s SAMPLES] [-m MIB] PATH\n", argv[0]);
        return 2;
    }
    const char *path = argv[optind];
    int fd = open(path, (write_test ? O_RDWR : O_RDONLY) | (direct ? O_DIRECT : 0));
    if (fd < 0)
        die(path);
    char *buf;
    if (posix_memalign((void **)&buf, 4096, BIG))
        die("posix_memalign");
    memset(buf, 0x5a, BIG);
    long span = mib * BIG, big_ops = span / BIG;

    /* warm-up: one pass (fills the host's page cache for buffered runs) */
    for (long i = 0; i < big_ops; i++)
        full_pread(fd, buf, BIG, i * BIG);

    for (int s = 0; s < samples; s++) {
        double t0 = now_ns();
        for (long i = 0; i < big_ops; i++)
            full_pread(fd, buf, BIG, i * BIG);
        double t = now_ns() - t0;
        printf("BENCH blk_seq_read ns_per_op=%.1f iters=%ld direct=%d\n", t / big_ops, big_ops, direct);
        fflush(stdout);
    }
    uint64_t x = 0x9e3779b97f4a7c15ULL;
    for (int s = 0; s < samples; s++) {
        double t0 = now_ns();
        for (long i = 0; i < RAND_OPS; i++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            full_pread(fd, buf, SMALL, (off_t)(x % (uint64_t)(span / SMALL)) * SMALL);
        }
        double t = now_ns() - t0;
        printf("BENCH blk_rand_read ns_per_op=%.1f iters=%d direct=%d\n", t / RAND_OPS, RAND_OPS, direct);
        fflush(stdout);
    }
    if (write_test) {
        for (int s = 0; s < samples; s++) {
            double t0 = now_ns();
            for (long i = 0; i < big_ops; i++)
                full_pwrite(fd, buf, BIG, i * BIG);
            if (fsync(fd) < 0)
                die("fsync");
            double t = now_ns() - t0;
            printf("BENCH blk_seq_write ns_per_op=%.1f iters=%ld direct=%d\n", t / big_ops, big_ops, direct);
            fflush(stdout);
        }
    }
    close(fd);
    return 0;
}
