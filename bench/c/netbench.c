/*
 * netbench: TCP stream and round-trip figures between two hosts, timed by the client.
 *
 * Usage:
 *   netbench -l [-p PORT] [-t SECONDS]        serve connections until told to quit
 *   netbench -c ADDR [-p PORT] [-n PREFIX] [-s SAMPLES] [-m MIB] [-r ROUNDS] [-w SECONDS] [-P STREAMS] [-q]
 *
 * The client opens one connection per sample and test, retrying the first
 * connect for up to SECONDS (default 120: the server may be a guest still
 * booting, or a link whose ARP has not resolved yet). Each connection starts
 * with a 9-byte request: one command byte and a little-endian u64 argument.
 *   'R' n   the server reads n bytes, then answers one byte   (client -> server)
 *   'S' n   the server writes n bytes                         (server -> client)
 *   'P' n   n one-byte round trips, TCP_NODELAY on both ends   (latency)
 *   'Q' 0   the server exits (the client sends it with -q when done)
 *
 * The server reads each connection's request itself and serves all but 'Q'
 * in a child process, so several connections are served at once.
 * With -t the server gives up (exit 3) after SECONDS without a connection,
 * so a benchmark whose client never came does not leave it waiting forever.
 *
 * With -P STREAMS the client also moves MIB MiB each way split over STREAMS
 * connections at once, driven by one thread through poll(2) (no thread
 * switch per stream), so the device carries several flows together.
 *
 * Prints one line per sample:
 *   BENCH <PREFIX>_send ns_per_op=<ns per MiB sent> iters=<MiB>
 *   BENCH <PREFIX>_recv ns_per_op=<ns per MiB received> iters=<MiB>
 *   BENCH <PREFIX>_rr ns_per_op=<ns per round trip> iters=<ROUNDS>
 *   BENCH <PREFIX>_send_p<STREAMS> ns_per_op=<ns per MiB, all streams> iters=<MiB>   (with -P)
 *   BENCH <PREFIX>_recv_p<STREAMS> ns_per_op=<ns per MiB, all streams> iters=<MiB>   (with -P)
 * A send sample ends when the server has acknowledged the last byte, so it
 * measures delivery, not the filling of a local socket buffer.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MIB (1L << 20)
#define CHUNK (128 * 1024)
#define MAX_STREAMS 16

static char buf[CHUNK];

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "netbench: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void write_all(int fd, const void *p, size_t len)
{
    const char *c = p;
    while (len) {
        ssize_t n = write(fd, c, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            die("write");
        c += n;
        len -= (size_t)n;
    }
}

/* Reads exactly len bytes (into buf, reused); 0 on success, -1 on a short stream. */
static int read_exact(int fd, void *dst, size_t len)
{
    char *c = dst;
    while (len) {
        ssize_t n = read(fd, c ? c : buf, (c || len < CHUNK) ? len : CHUNK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            die("read");
        if (n == 0)
            return -1;
        if (c)
            c += n;
        len -= (size_t)n;
    }
    return 0;
}

static void nodelay(int fd)
{
    int one = 1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0)
        die("TCP_NODELAY");
}

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[1 + i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[1 + i] << (8 * i);
    return v;
}

static void stream_out(int fd, uint64_t n)
{
    while (n) {
        size_t k = n < CHUNK ? (size_t)n : CHUNK;
        write_all(fd, buf, k);
        n -= k;
    }
}

/* One request on a fresh connection; returns 0 to keep serving, 1 on 'Q'. */
static int serve_one(int c)
{
    unsigned char req[9], ack = 'k';
    if (read_exact(c, req, sizeof req) < 0)
        return 0;
    if (req[0] == 'Q')
        return 1;
    pid_t child = fork();
    if (child < 0)
        die("fork");
    if (child > 0)
        return 0;   /* the parent accepts the next connection; SIGCHLD is ignored, no zombies */
    alarm(0);
    uint64_t n = get_u64(req);
    switch (req[0]) {
    case 'R':
        if (read_exact(c, NULL, n) == 0)
            write_all(c, &ack, 1);
        break;
    case 'S':
        stream_out(c, n);
        break;
    case 'P':
        nodelay(c);
        for (uint64_t i = 0; i < n; i++) {
            if (read_exact(c, &ack, 1) < 0)
                break;
            write_all(c, &ack, 1);
        }
        break;
    default:
        fprintf(stderr, "netbench: unknown request %#x\n", req[0]);
    }
    _exit(0);
}

static void idle_timeout(int sig)
{
    (void)sig;
    static const char msg[] = "netbench: no connection before the idle timeout\n";
    if (write(2, msg, sizeof msg - 1) < 0)
        _exit(4);
    _exit(3);
}

static int serve(int port, unsigned idle_s)
{
    signal(SIGALRM, idle_timeout);
    signal(SIGCHLD, SIG_IGN);
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    if (s < 0)
        die("socket");
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = INADDR_ANY};
    if (bind(s, (struct sockaddr *)&a, sizeof a) < 0)
        die("bind");
    if (listen(s, MAX_STREAMS) < 0)
        die("listen");
    printf("netbench: listening on port %d\n", port);
    fflush(stdout);
    for (;;) {
        alarm(idle_s);
        int c = accept(s, NULL, NULL);
        alarm(0);
        if (c < 0) {
            if (errno == EINTR)
                continue;
            die("accept");
        }
        int quit = serve_one(c);
        close(c);
        if (quit)
            break;
    }
    close(s);
    return 0;
}

static struct sockaddr_in server;

static int dial(double wait_s)
{
    double end = now_ns() + wait_s * 1e9;
    for (;;) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0)
            die("socket");
        if (connect(fd, (struct sockaddr *)&server, sizeof server) == 0)
            return fd;
        int e = errno;
        close(fd);
        if (now_ns() > end) {
            errno = e;
            die("connect");
        }
        usleep(200 * 1000);
    }
}

static int request(char cmd, uint64_t n, double wait_s)
{
    unsigned char req[9] = {(unsigned char)cmd};
    put_u64(req, n);
    int fd = dial(wait_s);
    write_all(fd, req, sizeof req);
    return fd;
}

/* Client -> server: n bytes, until the server acknowledges the last; returns ns. */
static double send_sample(uint64_t n, double wait_s)
{
    double t0 = now_ns();
    int fd = request('R', n, wait_s);
    stream_out(fd, n);
    unsigned char ack;
    if (read_exact(fd, &ack, 1) < 0) {
        fprintf(stderr, "netbench: the server closed before acknowledging\n");
        exit(1);
    }
    close(fd);
    return now_ns() - t0;
}

/* Server -> client: n bytes; returns ns. */
static double recv_sample(uint64_t n, double wait_s)
{
    double t0 = now_ns();
    int fd = request('S', n, wait_s);
    if (read_exact(fd, NULL, n) < 0) {
        fprintf(stderr, "netbench: the server's stream ended early\n");
        exit(1);
    }
    close(fd);
    return now_ns() - t0;
}

/* Client -> server ('R') or server -> client ('S'): n bytes in all over k connections at once; returns ns. */
static double parallel_sample(char cmd, uint64_t n, unsigned k, double wait_s)
{
    int fds[MAX_STREAMS];
    uint64_t left[MAX_STREAMS];
    struct pollfd pfd[MAX_STREAMS];
    double t0 = now_ns();
    if (k > MAX_STREAMS)
        k = MAX_STREAMS;
    for (unsigned i = 0; i < k; i++) {
        left[i] = n / k + (i == 0 ? n % k : 0);
        fds[i] = request(cmd, left[i], wait_s);
        fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK);
    }
    /* 'R' ends with the server's one-byte acknowledgement: one more byte to read */
    unsigned busy = k;
    uint64_t acks[MAX_STREAMS];
    for (unsigned i = 0; i < k; i++)
        acks[i] = cmd == 'R';
    while (busy) {
        for (unsigned i = 0; i < k; i++) {
            pfd[i].fd = left[i] || acks[i] ? fds[i] : -1;
            pfd[i].events = cmd == 'R' && left[i] ? POLLOUT : POLLIN;
        }
        if (poll(pfd, k, -1) < 0) {
            if (errno == EINTR)
                continue;
            die("poll");
        }
        for (unsigned i = 0; i < k; i++) {
            if (!pfd[i].revents)
                continue;
            ssize_t got;
            if (cmd == 'R' && left[i])
                got = write(fds[i], buf, left[i] < CHUNK ? left[i] : CHUNK);
            else
                got = read(fds[i], buf, cmd == 'S' && left[i] < CHUNK ? left[i] : CHUNK);
            if (got < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (got <= 0) {
                fprintf(stderr, "netbench: stream %u of %u ended early\n", i, k);
                exit(1);
            }
            if (left[i])
                left[i] -= (uint64_t)got;
            else
                acks[i] = 0;
            if (!left[i] && !acks[i])
                busy--;
        }
    }
    for (unsigned i = 0; i < k; i++)
        close(fds[i]);
    return now_ns() - t0;
}

static void report(const char *prefix, const char *test, double ns, long iters)
{
    printf("BENCH %s_%s ns_per_op=%.1f iters=%ld\n", prefix, test, ns / iters, iters);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    int listen_mode = 0, quit = 0, samples = 5, port = 5201, idle_s = 0, streams = 0, opt;
    long mib = 64, rounds = 500;
    double wait_s = 120;
    const char *addr = NULL, *prefix = "tcp";
    while ((opt = getopt(argc, argv, "lc:p:t:n:s:m:r:w:P:q")) != -1) {
        switch (opt) {
        case 'l': listen_mode = 1; break;
        case 'c': addr = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 't': idle_s = atoi(optarg); break;
        case 'n': prefix = optarg; break;
        case 's': samples = atoi(optarg); break;
        case 'm': mib = atol(optarg); break;
        case 'r': rounds = atol(optarg); break;
        case 'w': wait_s = atof(optarg); break;
        case 'q': quit = 1; break;
        case 'P': streams = atoi(optarg); break;
        default: goto usage;
        }
    }
    memset(buf, 0x5a, sizeof buf);
    if (listen_mode)
        return serve(port, idle_s > 0 ? (unsigned)idle_s : 0);
    if (!addr || samples < 1 || mib < 1 || rounds < 1 || streams < 0 || streams > MAX_STREAMS)
        goto usage;
    server.sin_family = AF_INET;
    server.sin_port = htons(port);
    if (inet_pton(AF_INET, addr, &server.sin_addr) != 1) {
        fprintf(stderr, "netbench: not an IPv4 address: %s\n", addr);
        return 2;
    }
    /* warm-up (1 MiB each way); its first connect also waits for the server to come up */
    send_sample(MIB, wait_s);
    recv_sample(MIB, wait_s);

    for (int s = 0; s < samples; s++)
        report(prefix, "send", send_sample((uint64_t)mib * MIB, wait_s), mib);
    for (int s = 0; s < samples; s++)
        report(prefix, "recv", recv_sample((uint64_t)mib * MIB, wait_s), mib);
    for (int s = 0; s < samples; s++) {
        int fd = request('P', (uint64_t)rounds, wait_s);
        nodelay(fd);
        unsigned char b = 'p';
        double t0 = now_ns();
        for (long i = 0; i < rounds; i++) {
            write_all(fd, &b, 1);
            if (read_exact(fd, &b, 1) < 0) {
                fprintf(stderr, "netbench: the server closed during round trips\n");
                return 1;
            }
        }
        report(prefix, "rr", now_ns() - t0, rounds);
        close(fd);
    }
    if (streams) {
        char send_name[32], recv_name[32];
        snprintf(send_name, sizeof send_name, "send_p%d", streams);
        snprintf(recv_name, sizeof recv_name, "recv_p%d", streams);
        for (int s = 0; s < samples; s++) {   /* alternate, so a slow spell of the host hits both */
            report(prefix, send_name, parallel_sample('R', (uint64_t)mib * MIB, (unsigned)streams, wait_s), mib);
            report(prefix, recv_name, parallel_sample('S', (uint64_t)mib * MIB, (unsigned)streams, wait_s), mib);
        }
    }
    if (quit)
        close(request('Q', 0, wait_s));
    return 0;
usage:
    fprintf(stderr, "usage: %s -l [-p PORT] [-t SECONDS]\n"
                    "       %s -c ADDR [-p PORT] [-n PREFIX] [-s SAMPLES] [-m MIB] [-r ROUNDS] [-w SECONDS] [-P STREAMS] [-q]\n",
            argv[0], argv[0]);
    return 2;
}
