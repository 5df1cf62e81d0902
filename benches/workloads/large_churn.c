/* large_churn: allocate/free churn of large blocks. A working set of 8 live
 * blocks of 256 KiB - 32 MiB (log-uniform sizes); each step replaces a random
 * one: the old block's page bytes are verified and it is freed, the new block is
 * allocated and touched (one byte written per 4 KiB page).
 * Usage: large_churn SCALE THREADS   (THREADS ignored) */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define WORKLOAD_NAME "large_churn"
#include "workload.h"

static Rng rng;

#define PAGE 4096
enum { LIVE = 8 };
static inline uint8_t pbyte(uint64_t seed, size_t page) {
    uint64_t z = (seed ^ (page * 0x9E3779B97F4A7C15ULL)) * 0xBF58476D1CE4E5B9ULL;
    return (uint8_t)(z >> 56);
}

typedef struct {
    uint8_t *p;
    size_t size;
    uint64_t seed;
} Blk;

static void blk_new(Blk *b) {
    unsigned e = 18 + (unsigned)below(&rng, 7); /* 2^18 .. 2^25 */
    b->size = ((size_t)1 << e) + (size_t)below(&rng, (uint64_t)1 << e);
    b->seed = rnd(&rng);
    b->p = malloc(b->size);
    if (!b->p) fail("malloc");
    for (size_t off = 0, pg = 0; off < b->size; off += PAGE, pg++) b->p[off] = pbyte(b->seed, pg);
    if ((b->size - 1) % PAGE != 0) b->p[b->size - 1] = (uint8_t)b->seed;
}
static uint64_t blk_free(Blk *b) {
    uint64_t h = b->size;
    for (size_t off = 0, pg = 0; off < b->size; off += PAGE, pg++) {
        if (b->p[off] != pbyte(b->seed, pg)) fail("page contents");
        h += b->p[off];
    }
    if ((b->size - 1) % PAGE != 0 && b->p[b->size - 1] != (uint8_t)b->seed) fail("last byte");
    free(b->p);
    b->p = NULL;
    return h;
}

int main(int argc, char **argv) {
    double scale = argc > 1 ? strtod(argv[1], NULL) : 1.0;
    if (!(scale > 0)) { fprintf(stderr, "usage: %s SCALE THREADS\n", argv[0]); return 2; }
    rng.s = 0x1a26ec4u * 0x9E3779B97F4A7C15ULL;
    long steps = (long)(2000 * scale + 0.5);
    Blk live[LIVE];
    for (int i = 0; i < LIVE; i++) blk_new(&live[i]);
    uint64_t sum = 0;
    for (long st = 0; st < steps; st++) {
        Blk *b = &live[below(&rng, LIVE)];
        sum = sum * 31 + blk_free(b);
        blk_new(b);
    }
    for (int i = 0; i < LIVE; i++) sum = sum * 31 + blk_free(&live[i]);
    printf("checksum %llu\n", (unsigned long long)sum);
    return 0;
}
