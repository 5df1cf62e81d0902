/* bignum: arbitrary-precision integer arithmetic where every operation allocates a
 * fresh result (a malloc'd header plus a malloc'd limb array) and temporaries are
 * freed right away: many short-lived small blocks, some growing large.
 * Tasks: Fibonacci by repeated addition (checked with the doubling identity),
 * factorial by repeated small multiplication (checked against a product tree),
 * a pool of random small numbers combined by (a+b)(c+d) = ac+ad+bc+bd (checked),
 * and e as a fixed-point power series (checked against known digits).
 * Usage: bignum SCALE THREADS   (THREADS ignored) */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WORKLOAD_NAME "bignum"
#include "workload.h"

static Rng rng;

typedef struct {
    size_t n;     /* used limbs, no leading zeros (0 has n == 0) */
    uint32_t *d;  /* little-endian limbs, at least one allocated */
} Big;

static Big *big_alloc(size_t cap) {
    Big *b = malloc(sizeof *b);
    if (!b) fail("malloc");
    b->d = malloc((cap ? cap : 1) * sizeof(uint32_t));
    if (!b->d) fail("malloc");
    b->n = cap;
    return b;
}
static void big_free(Big *b) {
    if (!b) return;
    free(b->d);
    free(b);
}
static void big_norm(Big *b) {
    while (b->n && b->d[b->n - 1] == 0) b->n--;
}
static Big *big_from(uint64_t v) {
    Big *b = big_alloc(2);
    b->d[0] = (uint32_t)v;
    b->d[1] = (uint32_t)(v >> 32);
    big_norm(b);
    return b;
}
static Big *big_copy(const Big *a) {
    Big *b = big_alloc(a->n);
    if (a->n) memcpy(b->d, a->d, a->n * sizeof(uint32_t));
    return b;
}
static Big *big_rand(size_t limbs) {
    Big *b = big_alloc(limbs);
    for (size_t i = 0; i < limbs; i++) b->d[i] = (uint32_t)rnd(&rng);
    big_norm(b);
    return b;
}
static int big_cmp(const Big *a, const Big *b) {
    if (a->n != b->n) return a->n < b->n ? -1 : 1;
    for (size_t i = a->n; i-- > 0;)
        if (a->d[i] != b->d[i]) return a->d[i] < b->d[i] ? -1 : 1;
    return 0;
}
static Big *big_add(const Big *a, const Big *b) {
    if (a->n < b->n) { const Big *t = a; a = b; b = t; }
    Big *r = big_alloc(a->n + 1);
    uint64_t c = 0;
    for (size_t i = 0; i < a->n; i++) {
        c += (uint64_t)a->d[i] + (i < b->n ? b->d[i] : 0);
        r->d[i] = (uint32_t)c;
        c >>= 32;
    }
    r->d[a->n] = (uint32_t)c;
    big_norm(r);
    return r;
}
/* a - b, requires a >= b */
static Big *big_sub(const Big *a, const Big *b) {
    if (big_cmp(a, b) < 0) fail("negative subtraction");
    Big *r = big_alloc(a->n);
    int64_t br = 0;
    for (size_t i = 0; i < a->n; i++) {
        int64_t v = (int64_t)a->d[i] - (i < b->n ? b->d[i] : 0) - br;
        br = v < 0;
        r->d[i] = (uint32_t)(v + (br ? ((int64_t)1 << 32) : 0));
    }
    if (br) fail("borrow out");
    big_norm(r);
    return r;
}
static Big *big_mul(const Big *a, const Big *b) {
    if (a->n == 0 || b->n == 0) return big_from(0);
    Big *r = big_alloc(a->n + b->n);
    memset(r->d, 0, r->n * sizeof(uint32_t));
    for (size_t i = 0; i < a->n; i++) {
        uint64_t c = 0, ai = a->d[i];
        for (size_t j = 0; j < b->n; j++) {
            c += ai * b->d[j] + r->d[i + j];
            r->d[i + j] = (uint32_t)c;
            c >>= 32;
        }
        r->d[i + b->n] = (uint32_t)c;
    }
    big_norm(r);
    return r;
}
static Big *big_mul_small(const Big *a, uint32_t m) {
    Big *r = big_alloc(a->n + 1);
    uint64_t c = 0;
    for (size_t i = 0; i < a->n; i++) {
        c += (uint64_t)a->d[i] * m;
        r->d[i] = (uint32_t)c;
        c >>= 32;
    }
    r->d[a->n] = (uint32_t)c;
    big_norm(r);
    return r;
}
static Big *big_div_small(const Big *a, uint32_t m) {
    Big *r = big_alloc(a->n);
    uint64_t rem = 0;
    for (size_t i = a->n; i-- > 0;) {
        uint64_t cur = (rem << 32) | a->d[i];
        r->d[i] = (uint32_t)(cur / m);
        rem = cur % m;
    }
    big_norm(r);
    return r;
}
static uint64_t big_hash(const Big *a) {
    uint64_t h = 0xcbf29ce484222325ULL ^ a->n;
    for (size_t i = 0; i < a->n; i++) h = (h ^ a->d[i]) * 0x100000001b3ULL;
    return h;
}

/* product lo*(lo+1)*...*hi */
static Big *prod_tree(uint32_t lo, uint32_t hi) {
    if (hi - lo < 4) {
        Big *r = big_from(lo);
        for (uint32_t k = lo + 1; k <= hi; k++) {
            Big *t = big_mul_small(r, k);
            big_free(r);
            r = t;
        }
        return r;
    }
    uint32_t mid = lo + (hi - lo) / 2;
    Big *a = prod_tree(lo, mid), *b = prod_tree(mid + 1, hi);
    Big *r = big_mul(a, b);
    big_free(a);
    big_free(b);
    return r;
}

int main(int argc, char **argv) {
    double scale = argc > 1 ? strtod(argv[1], NULL) : 1.0;
    if (!(scale > 0)) { fprintf(stderr, "usage: %s SCALE THREADS\n", argv[0]); return 2; }
    rng.s = 0xb16b00b5cafef00dULL;
    uint64_t sum = 0;

    /* 1. Fibonacci by repeated addition, checked with F(2k) = F(k) (2 F(k+1) - F(k)) */
    long fib_rounds = (long)(16 * scale + 0.5);
    if (fib_rounds < 1) fib_rounds = 1;
    for (long fr = 0; fr < fib_rounds; fr++) {
        uint32_t nf = 20000 + (uint32_t)below(&rng, 10000);
        nf &= ~1u;
        Big *a = big_from(0), *b = big_from(1); /* F(i), F(i+1) */
        Big *fk = NULL, *fk1 = NULL;
        for (uint32_t i = 0; i < nf; i++) {
            if (i == nf / 2) { fk = big_copy(a); fk1 = big_copy(b); }
            Big *c = big_add(a, b);
            big_free(a);
            a = b;
            b = c;
        }
        Big *two_fk1 = big_mul_small(fk1, 2);
        Big *t = big_sub(two_fk1, fk);
        Big *f2k = big_mul(fk, t);
        if (big_cmp(f2k, a) != 0) fail("fibonacci doubling identity");
        sum += big_hash(a);
        big_free(two_fk1); big_free(t); big_free(f2k);
        big_free(fk); big_free(fk1); big_free(a); big_free(b);
    }

    /* 2. factorial: sequential vs product tree */
    long fact_rounds = (long)(16 * scale + 0.5);
    if (fact_rounds < 1) fact_rounds = 1;
    for (long fr = 0; fr < fact_rounds; fr++) {
        uint32_t nfact = 3000 + (uint32_t)below(&rng, 2000);
        Big *f = big_from(1);
        for (uint32_t k = 2; k <= nfact; k++) {
            Big *t = big_mul_small(f, k);
            big_free(f);
            f = t;
        }
        Big *g = prod_tree(1, nfact);
        if (big_cmp(f, g) != 0) fail("factorial product tree");
        sum = sum * 31 + big_hash(f);
        big_free(f); big_free(g);
    }

    /* 3. pool of small numbers, (a+b)(c+d) == ac + ad + bc + bd */
    enum { POOL = 512 };
    Big *pool[POOL];
    for (int i = 0; i < POOL; i++) pool[i] = big_rand(1 + below(&rng, 8));
    long iters = (long)(3000000 * scale + 0.5);
    for (long it = 0; it < iters; it++) {
        Big *a = pool[below(&rng, POOL)], *b = pool[below(&rng, POOL)];
        Big *c = pool[below(&rng, POOL)], *d = pool[below(&rng, POOL)];
        Big *ab = big_add(a, b), *cd = big_add(c, d);
        Big *lhs = big_mul(ab, cd);
        Big *ac = big_mul(a, c), *ad = big_mul(a, d), *bc = big_mul(b, c), *bd = big_mul(b, d);
        Big *s1 = big_add(ac, ad), *s2 = big_add(bc, bd);
        Big *rhs = big_add(s1, s2);
        if (big_cmp(lhs, rhs) != 0) fail("distributive law");
        sum += big_hash(lhs);
        /* replace a random pool entry: with a fresh small number, or a trimmed result */
        size_t slot = below(&rng, POOL);
        big_free(pool[slot]);
        if (lhs->n > 12 || below(&rng, 2)) {
            pool[slot] = big_rand(1 + below(&rng, 8));
        } else {
            pool[slot] = big_copy(lhs);
        }
        big_free(ab); big_free(cd); big_free(lhs);
        big_free(ac); big_free(ad); big_free(bc); big_free(bd);
        big_free(s1); big_free(s2); big_free(rhs);
    }
    for (int i = 0; i < POOL; i++) { sum += big_hash(pool[i]); big_free(pool[i]); }

    /* 4. e = sum 1/k! in fixed point with `prec` fractional limbs */
    long e_rounds = (long)(16 * scale + 0.5);
    if (e_rounds < 1) e_rounds = 1;
    for (long er = 0; er < e_rounds; er++) {
        size_t prec = 600 + below(&rng, 200);
        Big *term = big_alloc(prec + 1); /* 1.0 */
        memset(term->d, 0, (prec + 1) * sizeof(uint32_t));
        term->d[prec] = 1;
        Big *acc = big_copy(term);
        for (uint32_t k = 1; term->n; k++) {
            Big *t = big_div_small(term, k);
            big_free(term);
            term = t;
            Big *s = big_add(acc, term);
            big_free(acc);
            acc = s;
        }
        /* e = 2.B7E151628AED2A6A... */
        if (acc->n != prec + 1 || acc->d[prec] != 2 || acc->d[prec - 1] != 0xB7E15162u ||
            acc->d[prec - 2] != 0x8AED2A6Au)
            fail("digits of e");
        sum = sum * 31 + big_hash(acc);
        big_free(acc); big_free(term);
    }

    printf("checksum %llu\n", (unsigned long long)sum);
    return 0;
}
