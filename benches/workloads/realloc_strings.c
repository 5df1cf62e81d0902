/* realloc_strings: growth by realloc. Thousands of strings grow by appending a
 * few bytes at a time (realloc to the exact new length every append) and vectors
 * of ints grow by pushes with 1.5x or 2x capacity growth (realloc when full),
 * interleaved at random. Strings and vectors are periodically verified, freed
 * and restarted; everything is verified and freed at the end.
 * Usage: realloc_strings SCALE THREADS   (THREADS ignored) */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WORKLOAD_NAME "realloc_strings"
#include "workload.h"

static Rng rng;

/* byte j of a string with seed s */
static inline char sbyte(uint64_t s, size_t j) {
    uint64_t z = (s ^ (j * 0x9E3779B97F4A7C15ULL)) * 0xBF58476D1CE4E5B9ULL;
    return (char)('a' + (z >> 58) % 26);
}
/* element j of a vector with seed s */
static inline int velem(uint64_t s, size_t j) { return (int)(uint32_t)(s + j * 2654435761u); }

typedef struct {
    char *p;       /* NUL-terminated, allocated len + 1 */
    size_t len, limit;
    uint64_t seed;
} Str;
typedef struct {
    int *p;
    size_t len, cap, limit;
    int growth;    /* 2: double, 3: x1.5 */
    uint64_t seed;
} Vec;

enum { NS = 16384, NV = 1024 };

static void fold(uint64_t *sum, uint64_t h) { *sum = (*sum ^ h) * 0x100000001b3ULL; }

static uint64_t str_retire(Str *s) {
    uint64_t h = 0;
    if (s->p) {
        if (strlen(s->p) != s->len) fail("string length");
        for (size_t j = 0; j < s->len; j++) {
            if (s->p[j] != sbyte(s->seed, j)) fail("string contents");
        }
        h = s->len * 131 + (unsigned char)s->p[s->len / 2];
        free(s->p);
    }
    s->p = NULL;
    s->len = 0;
    s->seed = rnd(&rng);
    /* most strings stay short, a few grow long */
    s->limit = below(&rng, 16) ? 16 + below(&rng, 256) : 256 + below(&rng, 16384);
    return h;
}
static uint64_t vec_retire(Vec *v) {
    uint64_t h = 0;
    if (v->p) {
        for (size_t j = 0; j < v->len; j++)
            if (v->p[j] != velem(v->seed, j)) fail("vector contents");
        h = v->len * 131 + (uint32_t)v->p[v->len / 2];
        free(v->p);
    }
    v->p = NULL;
    v->len = v->cap = 0;
    v->seed = rnd(&rng);
    v->growth = below(&rng, 2) ? 2 : 3;
    unsigned e = 4 + (unsigned)below(&rng, 16); /* up to ~1M ints (4 MiB) */
    v->limit = ((size_t)1 << e) + below(&rng, (uint64_t)1 << e);
    return h;
}

int main(int argc, char **argv) {
    double scale = argc > 1 ? strtod(argv[1], NULL) : 1.0;
    if (!(scale > 0)) { fprintf(stderr, "usage: %s SCALE THREADS\n", argv[0]); return 2; }
    rng.s = 0x5771265ULL * 0x9E3779B97F4A7C15ULL;
    Str *strs = calloc(NS, sizeof *strs);
    Vec *vecs = calloc(NV, sizeof *vecs);
    if (!strs || !vecs) fail("calloc");
    uint64_t sum = 0;
    for (size_t i = 0; i < NS; i++) fold(&sum, str_retire(&strs[i]));
    for (size_t i = 0; i < NV; i++) fold(&sum, vec_retire(&vecs[i]));

    long steps = (long)(15000000 * scale + 0.5);
    for (long st = 0; st < steps; st++) {
        if (below(&rng, 8) != 0) {
            /* append 1..8 bytes to a string */
            Str *s = &strs[below(&rng, NS)];
            size_t add = 1 + below(&rng, 8);
            char *np = realloc(s->p, s->len + add + 1);
            if (!np) fail("realloc");
            if (s->p && np[0] != sbyte(s->seed, 0)) fail("realloc lost string prefix");
            s->p = np;
            for (size_t j = 0; j < add; j++) np[s->len + j] = sbyte(s->seed, s->len + j);
            s->len += add;
            np[s->len] = 0;
            if (s->len >= s->limit) fold(&sum, str_retire(s));
        } else {
            /* push 1..16 ints to a vector */
            Vec *v = &vecs[below(&rng, NV)];
            size_t add = 1 + below(&rng, 16);
            for (size_t j = 0; j < add; j++) {
                if (v->len == v->cap) {
                    size_t nc = v->cap < 4 ? 4 : (v->growth == 2 ? v->cap * 2 : v->cap + v->cap / 2);
                    int *np = realloc(v->p, nc * sizeof *np);
                    if (!np) fail("realloc");
                    if (v->len && (np[0] != velem(v->seed, 0) ||
                                   np[v->len - 1] != velem(v->seed, v->len - 1)))
                        fail("realloc lost vector contents");
                    v->p = np;
                    v->cap = nc;
                }
                v->p[v->len] = velem(v->seed, v->len);
                v->len++;
            }
            if (v->len >= v->limit) fold(&sum, vec_retire(v));
        }
    }
    for (size_t i = 0; i < NS; i++) { fold(&sum, str_retire(&strs[i])); free(strs[i].p); }
    for (size_t i = 0; i < NV; i++) { fold(&sum, vec_retire(&vecs[i])); free(vecs[i].p); }
    free(strs);
    free(vecs);
    printf("checksum %llu\n", (unsigned long long)sum);
    return 0;
}
