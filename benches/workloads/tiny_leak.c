/* tiny_leak: a small process where the allocator's fixed costs dominate. 2048 live
 * blocks of 16-160 B (about 180 KB) are replaced one at a time: each step reads 16
 * other live blocks, computes over them in a short-lived scratch block (32-256 B,
 * freed at once), verifies the block it replaces and frees it, or in 1 case in 50
 * leaks it (never freed, the pointer dropped), then allocates and fills the new one.
 * 1M steps at SCALE 1 leak about 20k blocks, 1.8 MB.
 * Usage: tiny_leak SCALE THREADS   (THREADS ignored) */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WORKLOAD_NAME "tiny_leak"
#include "workload.h"

static Rng rng;

enum { SLOTS = 2048, READS = 16, LEAK_ONE_IN = 50 };

static inline uint8_t pat(uint32_t tag, size_t k) { return (uint8_t)((tag >> (k & 24)) ^ k); }

/* block: u32 size, u32 tag, then bytes pat(tag, k) */
static uint8_t *make(uint32_t tag) {
    size_t size = 16 + (size_t)below(&rng, 160 - 16 + 1);
    uint8_t *p = malloc(size);
    if (!p) fail("malloc");
    uint32_t sz32 = (uint32_t)size;
    memcpy(p, &sz32, 4);
    memcpy(p + 4, &tag, 4);
    for (size_t k = 8; k < size; k++) p[k] = pat(tag, k);
    return p;
}
/* Verifies the block and returns its hash. */
static uint64_t check(const uint8_t *p) {
    uint32_t size, tag;
    memcpy(&size, p, 4);
    memcpy(&tag, p + 4, 4);
    if (size < 16 || size > 160) fail("size field");
    for (size_t k = 8; k < size; k++)
        if (p[k] != pat(tag, k)) fail("block contents");
    return mix(((uint64_t)tag << 32) | size);
}

int main(int argc, char **argv) {
    double scale = argc > 1 ? strtod(argv[1], NULL) : 1.0;
    if (!(scale > 0)) { fprintf(stderr, "usage: %s SCALE THREADS\n", argv[0]); return 2; }
    rng.s = 0x7191eaull * 0x9E3779B97F4A7C15ULL;
    long steps = (long)(1000000 * scale + 0.5);
    uint8_t **slot = malloc(SLOTS * sizeof *slot);
    if (!slot) fail("malloc");
    for (size_t i = 0; i < SLOTS; i++) slot[i] = make((uint32_t)rnd(&rng));
    uint64_t sum = 0, leaked = 0;
    for (long s = 0; s < steps; s++) {
        /* work over other live blocks, in a scratch block */
        size_t n = 4 + (size_t)below(&rng, 29); /* 4..32 words */
        uint64_t *scratch = malloc(n * sizeof *scratch);
        if (!scratch) fail("malloc");
        for (size_t k = 0; k < n; k++) scratch[k] = (uint64_t)s + k;
        for (int r = 0; r < READS; r++) {
            const uint8_t *q = slot[below(&rng, SLOTS)];
            uint32_t size;
            memcpy(&size, q, 4);
            uint64_t w;
            memcpy(&w, q, 8);
            uint64_t h = mix(w ^ q[size - 1]);
            for (size_t k = 0; k < n; k++) h = scratch[k] = mix(scratch[k] ^ h);
        }
        uint64_t h = 0;
        for (size_t k = 0; k < n; k++) h += scratch[k];
        free(scratch);
        /* replace one block */
        size_t i = (size_t)below(&rng, SLOTS);
        sum = sum * 31 + check(slot[i]) + h;
        if (below(&rng, LEAK_ONE_IN) == 0) {
            uint32_t size;
            memcpy(&size, slot[i], 4);
            leaked += size;
        } else {
            free(slot[i]);
        }
        slot[i] = make((uint32_t)h);
    }
    for (size_t i = 0; i < SLOTS; i++) {
        sum = sum * 31 + check(slot[i]);
        free(slot[i]);
    }
    free(slot);
    printf("checksum %llu\n", (unsigned long long)(sum ^ leaked));
    return 0;
}
