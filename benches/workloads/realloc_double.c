/* realloc_double: huge buffers growing by doubling. Four buffers, one after the
 * other (only one alive at a time), each starts at 1 MiB and is doubled by
 * realloc up to MAX (1 GiB at SCALE 1.0; 1 GiB * SCALE rounded to the nearest
 * power of two, at least 64 MiB, otherwise). After each realloc one byte is
 * written in every 4 KiB page of the new half, and the bytes written before are
 * verified (one per old page, so the old contents must have been kept).
 * Usage: realloc_double SCALE THREADS   (THREADS ignored) */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define WORKLOAD_NAME "realloc_double"
#include "workload.h"

#define PAGE 4096
static inline uint8_t pbyte(uint64_t seed, size_t page) {
    uint64_t z = (seed ^ (page * 0x9E3779B97F4A7C15ULL)) * 0xBF58476D1CE4E5B9ULL;
    return (uint8_t)(z >> 56);
}

int main(int argc, char **argv) {
    double scale = argc > 1 ? strtod(argv[1], NULL) : 1.0;
    if (!(scale > 0)) { fprintf(stderr, "usage: %s SCALE THREADS\n", argv[0]); return 2; }
    /* MAX = 2^round(log2(1 GiB * scale)), clamped to [64 MiB, 1 GiB] */
    double want = 1073741824.0 * scale;
    size_t max = (size_t)64 << 20;
    while (max < ((size_t)1 << 30) && (double)max * 1.41421356 < want) max <<= 1;
    uint64_t sum = 0;
    for (int b = 0; b < 4; b++) {
        uint64_t seed = 0xd0b1e000ULL + (uint64_t)b * 0x9E3779B97F4A7C15ULL;
        size_t size = (size_t)1 << 20;
        uint8_t *p = malloc(size);
        if (!p) fail("malloc");
        for (size_t pg = 0; pg < size / PAGE; pg++) p[pg * PAGE + (pg * 61) % PAGE] = pbyte(seed, pg);
        while (size < max) {
            size_t old = size;
            size *= 2;
            uint8_t *np = realloc(p, size);
            if (!np) fail("realloc");
            p = np;
            /* the old contents must have been kept */
            for (size_t pg = 0; pg < old / PAGE; pg++) {
                uint8_t v = p[pg * PAGE + (pg * 61) % PAGE];
                if (v != pbyte(seed, pg)) fail("realloc lost contents");
                sum += v;
            }
            /* fault in the new half */
            for (size_t pg = old / PAGE; pg < size / PAGE; pg++)
                p[pg * PAGE + (pg * 61) % PAGE] = pbyte(seed, pg);
        }
        for (size_t pg = 0; pg < size / PAGE; pg++) {
            uint8_t v = p[pg * PAGE + (pg * 61) % PAGE];
            if (v != pbyte(seed, pg)) fail("final contents");
            sum = sum * 31 + v;
        }
        free(p);
    }
    printf("checksum %llu\n", (unsigned long long)sum);
    return 0;
}
