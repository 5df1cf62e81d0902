/* bignum_small: the shape of a program computing with many small integers. 100000
 * numbers are alive at once, each one block: a 16-byte header and 2, 4, 6 or 8 32-bit
 * limbs (24, 32, 40 or 48 bytes). A sweep computes generation g+1 from generation g,
 * in index order: new[k] = (old[k] * old[k+1] + old[k-1]) mod 2^(32 L), through a
 * temporary product freed at once, the limb count L taken from the result's low bits;
 * then it frees generation g in index order. Reads follow allocation order, so the
 * adjacency of consecutive small allocations decides the time more than the calls do.
 * Every number carries a hash of its limbs, checked when it is read and freed; every
 * result's low limb is checked. 100 sweeps at SCALE 1.
 * Usage: bignum_small SCALE THREADS   (THREADS ignored) */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WORKLOAD_NAME "bignum_small"
#include "workload.h"

enum { COUNT = 100000, MAXL = 8 };

typedef struct {
    uint32_t n;     /* limbs: 2, 4, 6 or 8 (a temporary product: up to 8) */
    uint32_t hash;  /* of the limbs */
    uint64_t gen;   /* sweep that made it */
    uint32_t d[];   /* little-endian limbs */
} Num;

static uint32_t limb_hash(const uint32_t *d, uint32_t n) {
    uint64_t h = n;
    for (uint32_t i = 0; i < n; i++) h = (h ^ d[i]) * 0x100000001B3ULL;
    return (uint32_t)(h ^ (h >> 32));
}
static Num *num_new(const uint32_t *d, uint32_t n, uint64_t gen) {
    Num *x = malloc(sizeof *x + n * sizeof x->d[0]);
    if (!x) fail("malloc");
    x->n = n;
    x->gen = gen;
    memcpy(x->d, d, n * sizeof x->d[0]);
    x->hash = limb_hash(d, n);
    return x;
}
static void num_check(const Num *x) {
    if (x->n < 1 || x->n > MAXL || x->hash != limb_hash(x->d, x->n)) fail("number contents");
}
/* r = a * b mod 2^(32 MAXL); returns its limb count */
static uint32_t mul(uint32_t *r, const Num *a, const Num *b) {
    uint32_t n = a->n + b->n < MAXL ? a->n + b->n : MAXL;
    memset(r, 0, n * sizeof *r);
    for (uint32_t i = 0; i < a->n && i < n; i++) {
        uint64_t c = 0;
        for (uint32_t j = 0; i + j < n && j < b->n; j++) {
            c += (uint64_t)a->d[i] * b->d[j] + r[i + j];
            r[i + j] = (uint32_t)c;
            c >>= 32;
        }
        if (i + b->n < n) r[i + b->n] = (uint32_t)c;
    }
    return n;
}
/* r = t + c over MAXL limbs (t and c shorter are zero-extended) */
static void add(uint32_t *r, const Num *t, const Num *c) {
    uint64_t carry = 0;
    for (uint32_t i = 0; i < MAXL; i++) {
        carry += (uint64_t)(i < t->n ? t->d[i] : 0) + (i < c->n ? c->d[i] : 0);
        r[i] = (uint32_t)carry;
        carry >>= 32;
    }
}

int main(int argc, char **argv) {
    double scale = argc > 1 ? strtod(argv[1], NULL) : 1.0;
    if (!(scale > 0)) { fprintf(stderr, "usage: %s SCALE THREADS\n", argv[0]); return 2; }
    Rng rng = { 0xb16b1aULL * 0x9E3779B97F4A7C15ULL };
    long sweeps = (long)(100 * scale + 0.5);
    if (sweeps < 1) sweeps = 1;
    Num **a = malloc(COUNT * sizeof *a), **b = malloc(COUNT * sizeof *b);
    if (!a || !b) fail("malloc");
    uint32_t d[MAXL], t[MAXL];
    for (size_t k = 0; k < COUNT; k++) {
        uint32_t n = 2 + 2 * (uint32_t)below(&rng, 4);
        for (uint32_t i = 0; i < n; i++) d[i] = (uint32_t)rnd(&rng) | 1;
        a[k] = num_new(d, n, 0);
    }
    for (long g = 1; g <= sweeps; g++) {
        for (size_t k = 0; k < COUNT; k++) {
            const Num *x = a[k], *y = a[(k + 1) % COUNT], *z = a[(k + COUNT - 1) % COUNT];
            num_check(x);
            uint32_t tn = mul(t, x, y);
            Num *prod = num_new(t, tn, (uint64_t)g);
            add(d, prod, z);
            if (d[0] != x->d[0] * y->d[0] + z->d[0]) fail("low limb");
            num_check(prod);
            free(prod);
            d[0] |= 1; /* keep the numbers odd: products never collapse to 0 */
            b[k] = num_new(d, 2 + 2 * ((d[0] >> 1) & 3), (uint64_t)g);
        }
        for (size_t k = 0; k < COUNT; k++) {
            num_check(a[k]);
            if (a[k]->gen != (uint64_t)g - 1) fail("generation");
            free(a[k]);
        }
        Num **s = a;
        a = b;
        b = s;
    }
    uint64_t sum = 0;
    for (size_t k = 0; k < COUNT; k++) {
        num_check(a[k]);
        for (uint32_t i = 0; i < a[k]->n; i++) sum = mix(sum ^ a[k]->d[i]);
        free(a[k]);
    }
    free(a);
    free(b);
    printf("checksum %llu\n", (unsigned long long)sum);
    return 0;
}
