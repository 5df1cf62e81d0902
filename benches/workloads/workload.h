/* Shared by the workload programs: a seeded xorshift64* generator (the same sequence under
 * every allocator), the splitmix64 finaliser, and the exit on a consistency failure.
 * Define WORKLOAD_NAME before including it. */
#ifndef WORKLOAD_H
#define WORKLOAD_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct { uint64_t s; } Rng;

static inline uint64_t rnd(Rng *r) {
    uint64_t x = r->s;
    x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
    r->s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static inline uint64_t below(Rng *r, uint64_t n) { return rnd(r) % n; }

/* The splitmix64 finaliser: a bijective scramble of z. */
static inline uint64_t mix_finish(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* One splitmix64 step from z. */
static inline uint64_t mix(uint64_t z) { return mix_finish(z + 0x9E3779B97F4A7C15ULL); }

static inline void fail(const char *what) {
    fprintf(stderr, WORKLOAD_NAME ": consistency failure: %s\n", what);
    exit(1);
}

#endif
