/*
 * blkbench: block I/O through one file or block device, timed by itself.
 *
 * Usage: blkbench [-d] [-w] [-s SAMPLES] [-m MIB] [-q DEPTHS] PATH
 *   -d       O_DIRECT (in a guest: every request goes to the disk backend,
 *            not the guest's page cache); without it, buffered I/O
 *   -w       also the write test (overwrites the first MIB MiB of PATH)
 *   SAMPLES  samples per test (default 5)
 *   MIB      span used, in MiB (default 64)
 *   DEPTHS   also random 4 KiB reads kept DEPTH requests deep, for each
 *            comma-separated DEPTH (e.g. 1,4,16; at most 64); needs -d
 *
 * Prints one line per sample:
 *   BENCH blk_seq_read ns_per_op=<ns per 1 MiB request> iters=<n> direct=<0|1>
 *   BENCH blk_rand_read ns_per_op=<ns per 4 KiB read> iters=<n> direct=<0|1>
 *   BENCH blk_seq_write ns_per_op=<ns per 1 MiB request, fsync included> iters=<n> direct=<0|1>
 *   BENCH blk_qd<D>_rand_read ns_per_op=<wall ns / 4 KiB reads completed> iters=<n> direct=1 qd=<D>
 *
 * The queue-depth test uses Linux native AIO (io_setup/io_submit/io_getevents
 * as raw system calls: the guest's busybox initramfs has no libaio). With
 * O_DIRECT on a block device io_submit queues each read to the block layer
 * and returns, so DEPTH reads really are outstanding at once, down to
 * blkfront's ring, from one thread: no guest context switch per request.
 * Every completion reaped is refilled by one io_submit of as many new reads.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define BIG   (1L << 20)
#define SMALL 4096L
#define RAND_OPS 1024
#define QD_OPS 2048
#define MAX_DEPTH 64

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

static uint64_t xorshift(uint64_t *x)
{
    *x ^= *x << 13; *x ^= *x >> 7; *x ^= *x << 17;
    return *x;
}

/* QD_OPS random 4 KiB O_DIRECT reads over span bytes, depth of them outstanding. */
static double queue_depth_run(int fd, char *bufs, int depth, long span, uint64_t *x)
{
    aio_context_t ctx = 0;
    if (syscall(SYS_io_setup, depth, &ctx) < 0)
        die("io_setup");
    struct iocb cbs[MAX_DEPTH], *batch[MAX_DEPTH];
    struct io_event events[MAX_DEPTH];
    long submitted = 0, completed = 0;
    int nbatch = 0;
    double t0 = now_ns();
    for (int i = 0; i < depth; i++)   /* the first depth reads, one per buffer */
        batch[nbatch++] = &cbs[i];
    while (completed < QD_OPS) {
        for (int i = 0; i < nbatch; i++) {
            struct iocb *cb = batch[i];
            long slot = cb - cbs;
            memset(cb, 0, sizeof(*cb));
            cb->aio_data = (uint64_t)slot;
            cb->aio_lio_opcode = IOCB_CMD_PREAD;
            cb->aio_fildes = fd;
            cb->aio_buf = (uint64_t)(uintptr_t)(bufs + slot * SMALL);
            cb->aio_nbytes = SMALL;
            cb->aio_offset = (int64_t)(xorshift(x) % (uint64_t)(span / SMALL)) * SMALL;
        }
        for (int done = 0; done < nbatch;) {
            long n = syscall(SYS_io_submit, ctx, (long)(nbatch - done), batch + done);
            if (n <= 0)
                die("io_submit");
            done += n;
        }
        submitted += nbatch;
        long n = syscall(SYS_io_getevents, ctx, 1L, (long)depth, events, NULL);
        if (n < 0 && errno != EINTR)
            die("io_getevents");
        nbatch = 0;
        for (long i = 0; i < n; i++) {
            if (events[i].res != SMALL) {
                errno = events[i].res < 0 ? (int)-events[i].res : EIO;
                die("aio read");
            }
            completed++;
            /* refill only up to QD_OPS in total; the rest drain */
            if (submitted + nbatch < QD_OPS)
                batch[nbatch++] = (struct iocb *)(uintptr_t)&cbs[events[i].data];
        }
    }
    double t = now_ns() - t0;
    syscall(SYS_io_destroy, ctx);
    return t;
}

static int parse_depths(const char *text, int *depths)
{
    int n = 0;
    for (const char *p = text; *p && n < 8;) {
        char *end;
        long d = strtol(p, &end, 10);
        if (end == p || d < 1 || d > MAX_DEPTH)
            return -1;
        depths[n++] = (int)d;
        p = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            return -1;
    }
    return n;
}

int main(int argc, char **argv)
{
    int direct = 0, write_test = 0, samples = 5, opt, depths[8], ndepths = 0;
    long mib = 64;
    const char *usage = "usage: %s [-d] [-w] [-s SAMPLES] [-m MIB] [-q DEPTH,...] PATH\n";
    while ((opt = getopt(argc, argv, "dws:m:q:")) != -1) {
        switch (opt) {
        case 'd': direct = 1; break;
        case 'w': write_test = 1; break;
        case 's': samples = atoi(optarg); break;
        case 'm': mib = atol(optarg); break;
        case 'q':
            ndepths = parse_depths(optarg, depths);
            if (ndepths > 0)
                break;
            fprintf(stderr, "blkbench: -q takes depths 1..%d separated by commas\n", MAX_DEPTH);
            return 2;
        default:
            fprintf(stderr, usage, argv[0]);
            return 2;
        }
    }
    if (optind != argc - 1 || (ndepths && !direct)) {
        fprintf(stderr, usage, argv[0]);
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
        for (long i = 0; i < RAND_OPS; i++)
            full_pread(fd, buf, SMALL, (off_t)(xorshift(&x) % (uint64_t)(span / SMALL)) * SMALL);
        double t = now_ns() - t0;
        printf("BENCH blk_rand_read ns_per_op=%.1f iters=%d direct=%d\n", t / RAND_OPS, RAND_OPS, direct);
        fflush(stdout);
    }
    /* alternate the depths within each sample, so a slow spell of the host hits them all */
    for (int s = 0; s < samples; s++) {
        for (int d = 0; d < ndepths; d++) {
            double t = queue_depth_run(fd, buf, depths[d], span, &x);
            printf("BENCH blk_qd%d_rand_read ns_per_op=%.1f iters=%d direct=1 qd=%d\n", depths[d], t / QD_OPS,
                   QD_OPS, depths[d]);
            fflush(stdout);
        }
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
