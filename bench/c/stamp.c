/* stamp: the longest gap a guest program sees in its own clock.
 *
 * Reads CLOCK_MONOTONIC in a tight loop and keeps the longest gap between two
 * consecutive readings: a guest that is frozen (a migration's downtime, a
 * pause) sees it as one long gap, whatever the host measures. Every 50 ms it
 * rewrites FILE (atomically, via FILE.tmp) with "max_gap_us samples".
 *
 * usage: stamp FILE
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: stamp FILE\n");
        return 2;
    }
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", argv[1]);
    long long last = now_ns(), next_report = last, max_gap = 0, samples = 0;
    for (;;) {
        long long t = now_ns();
        if (t - last > max_gap)
            max_gap = t - last;
        last = t;
        samples++;
        if (t >= next_report) {
            FILE *f = fopen(tmp, "w");
            if (f) {
                fprintf(f, "%lld %lld\n", max_gap / 1000, samples);
                fclose(f);
                rename(tmp, argv[1]);
            }
            next_report = t + 50000000LL;
            last = now_ns();   /* the report itself is not a gap */
        }
    }
}
