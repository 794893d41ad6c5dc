/* dirty: rewrite MiB mebibytes of memory in a loop, for ever (a busy guest for
 * a live migration: every page of the buffer is dirty again within a round).
 *
 * usage: dirty MIB
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc != 2 || atoi(argv[1]) <= 0) {
        fprintf(stderr, "usage: dirty MIB\n");
        return 2;
    }
    size_t size = (size_t)atoi(argv[1]) << 20;
    unsigned char *buf = malloc(size);
    if (!buf)
        return 1;
    for (unsigned long pass = 0;; pass++)
        for (size_t off = 0; off < size; off += 4096)
            memset(buf + off, (int)(pass + off / 4096), 4096);
}
