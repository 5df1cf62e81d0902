/* Fixed allocation patterns for instruction counting under callgrind: the same program runs
 * with every allocator (LD_PRELOAD) and two operation counts; the difference of the totals
 * divided by the difference of the counts is the cost of one operation, start-up excluded.
 *
 * Usage: ops PATTERN N
 *   pair     free(malloc(32)), N times
 *   batch    N/1024 rounds: malloc 1024 blocks of 32..88 bytes, free them in another order
 *   mixed    the same with sizes 16..1024
 *   realloc  N/256 rounds: grow one block from 16 bytes by 16-byte steps 256 times, free
 *   aligned  free(aligned_alloc(64, 48)), N times
 *   calloc   free(calloc(1, 200)), N times
 * One "operation" is one allocation and its free (for realloc: one realloc call).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BATCH 1024

static void *volatile sink;

static uint32_t rng = 12345;
static uint32_t next(void) {
    rng = rng * 1103515245u + 12345u;
    return rng >> 8;
}

static void batch(long n, size_t lo, size_t hi) {
    static void *blocks[BATCH];
    static size_t sizes[BATCH];
    for (int i = 0; i < BATCH; i++) sizes[i] = lo + (next() % (hi - lo + 1));
    for (long r = 0; r < n / BATCH; r++) {
        for (int i = 0; i < BATCH; i++) {
            blocks[i] = malloc(sizes[i]);
            *(char *)blocks[i] = (char)i;
        }
        /* Free in another order: a stride coprime to the batch size. */
        for (int i = 0, j = 0; i < BATCH; i++, j = (j + 389) % BATCH) free(blocks[j]);
    }
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: ops pair|batch|mixed|realloc|aligned|calloc N\n");
        return 2;
    }
    const char *p = argv[1];
    long n = atol(argv[2]);
    if (strcmp(p, "pair") == 0) {
        for (long i = 0; i < n; i++) {
            void *b = malloc(32);
            sink = b;
            free(b);
        }
    } else if (strcmp(p, "batch") == 0) {
        batch(n, 32, 88);
    } else if (strcmp(p, "mixed") == 0) {
        batch(n, 16, 1024);
    } else if (strcmp(p, "realloc") == 0) {
        for (long r = 0; r < n / 256; r++) {
            char *b = malloc(16);
            for (int i = 1; i <= 256; i++) {
                b = realloc(b, 16 + 16 * (size_t)i);
                b[16 * i] = (char)i;
            }
            free(b);
        }
    } else if (strcmp(p, "aligned") == 0) {
        for (long i = 0; i < n; i++) {
            void *b = aligned_alloc(64, 48);
            sink = b;
            free(b);
        }
    } else if (strcmp(p, "calloc") == 0) {
        for (long i = 0; i < n; i++) {
            void *b = calloc(1, 200);
            sink = b;
            free(b);
        }
    } else {
        fprintf(stderr, "unknown pattern %s\n", p);
        return 2;
    }
    return 0;
}
