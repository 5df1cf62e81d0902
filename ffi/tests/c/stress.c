/* Multi-threaded stress: 8 threads, a seeded PRNG each, random sizes from 1 byte to 1 MiB
 * (mostly small), malloc / calloc / realloc / posix_memalign / free. Blocks travel between
 * threads through a mutex-protected array of shared slots and are freed by whichever thread
 * takes them. Every block carries a pattern derived from its id, checked before each realloc
 * and free. At least 1 million operations in all; prints a summary; exits non-zero on any
 * corruption or failed allocation.
 *
 * Usage: stress [seed] [ops_per_thread]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tidemalloc.h"

#pragma weak tidemalloc_get_stats

#define NTHREADS 8
#define LOCAL 512
#define SHARED 4096

struct blk {
    unsigned char *p;
    size_t size;
    size_t align; /* 0: no alignment beyond malloc's */
    uint64_t id;
};

static struct blk shared[SHARED];
static pthread_mutex_t shared_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t seed = 12345;
static long ops_per_thread = 160000;

struct counts {
    long mallocs, callocs, reallocs, memaligns, frees, handoffs, foreign_frees, checked_bytes;
};

static void die(const char *what, const struct blk *b, size_t at) {
    fprintf(stderr, "stress: FAIL: %s: block %p id %llu size %zu align %zu, byte %zu\n", what, (void *)b->p,
            (unsigned long long)b->id, b->size, b->align, at);
    abort();
}

static uint64_t next(uint64_t *s) {
    /* xorshift64* */
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static size_t random_size(uint64_t *rng) {
    uint64_t r = next(rng);
    unsigned w = (unsigned)(r % 1000);
    r >>= 10;
    if (w < 800) return 1 + r % 256;
    if (w < 950) return 257 + r % (8192 - 256);
    if (w < 990) return 8193 + r % (128 * 1024 - 8192);
    return 128 * 1024 + r % (1024 * 1024 - 128 * 1024 + 1);
}

static inline unsigned char pat(uint64_t id, size_t i) { return (unsigned char)((id * 0x9E3779B1u) + i * 7 + (i >> 9)); }

/* Positions that carry the pattern: all of a small block; the head, the tail and one byte
 * per 512 for a big one (keeps 1 MiB blocks affordable). */
#define FULL 4096
static void each_marked(const struct blk *b, void (*f)(const struct blk *, size_t, void *), void *arg) {
    size_t n = b->size;
    if (n <= FULL) {
        for (size_t i = 0; i < n; i++) f(b, i, arg);
        return;
    }
    for (size_t i = 0; i < 256; i++) f(b, i, arg);
    for (size_t i = 256; i < n - 256; i += 512) f(b, i, arg);
    for (size_t i = n - 256; i < n; i++) f(b, i, arg);
}

static void set_one(const struct blk *b, size_t i, void *arg) {
    (void)arg;
    b->p[i] = pat(b->id, i);
}

static void fill(const struct blk *b) {
    if (b->size <= FULL) {
        for (size_t i = 0; i < b->size; i++) b->p[i] = pat(b->id, i);
        return;
    }
    each_marked(b, set_one, NULL);
}

struct chk {
    size_t upto;
    long *count;
};

static void check_one(const struct blk *b, size_t i, void *arg) {
    struct chk *c = arg;
    if (i >= c->upto) return;
    if (b->p[i] != pat(b->id, i)) die("pattern corrupted", b, i);
    (*c->count)++;
}

/* Checks the pattern of the first `upto` bytes. */
static void check(const struct blk *b, size_t upto, long *count) {
    if (b->size <= FULL) {
        size_t n = upto < b->size ? upto : b->size;
        for (size_t i = 0; i < n; i++)
            if (b->p[i] != pat(b->id, i)) die("pattern corrupted", b, i);
        *count += (long)n;
        return;
    }
    struct chk c = {upto, count};
    each_marked(b, check_one, &c);
}

static void check_zero(const struct blk *b) {
    for (size_t i = 0; i < b->size; i++)
        if (b->p[i]) die("calloc block not zeroed", b, i);
}

static void check_usable(const struct blk *b) {
    if (malloc_usable_size(b->p) < b->size) die("malloc_usable_size below the request", b, 0);
    if (((uintptr_t)b->p & 15) != 0) die("block not aligned to 16", b, 0);
    if (b->align && ((uintptr_t)b->p & (b->align - 1)) != 0) die("block not aligned as asked", b, 0);
}

static void release(struct blk *b, struct counts *c, int foreign) {
    if (!b->p) return;
    check(b, b->size, &c->checked_bytes);
    free(b->p);
    b->p = NULL;
    c->frees++;
    c->foreign_frees += foreign;
}

static void make(struct blk *b, uint64_t *rng, uint64_t id, struct counts *c) {
    size_t n = random_size(rng);
    unsigned how = (unsigned)(next(rng) % 100);
    b->size = n;
    b->align = 0;
    b->id = id;
    if (how < 60) {
        b->p = malloc(n);
        c->mallocs++;
    } else if (how < 80) {
        b->p = calloc(1, n);
        c->callocs++;
        if (b->p && n <= 64 * 1024) check_zero(b);
    } else {
        unsigned pick = (unsigned)(next(rng) % 100);
        size_t a = (size_t)16 << (pick < 90 ? pick % 9 : 9 + pick % 4); /* 16 .. 4096, sometimes .. 64 KiB */
        void *p = NULL;
        int r = posix_memalign(&p, a, n);
        if (r != 0) {
            fprintf(stderr, "stress: posix_memalign(%zu, %zu) = %d\n", a, n, r);
            abort();
        }
        b->p = p;
        b->align = a;
        c->memaligns++;
    }
    if (!b->p) {
        fprintf(stderr, "stress: allocation of %zu bytes failed (errno %d)\n", n, errno);
        abort();
    }
    check_usable(b);
    fill(b);
}

struct targ {
    int tid;
    struct counts c;
};

static void *worker(void *arg) {
    struct targ *t = arg;
    struct counts *c = &t->c;
    uint64_t rng = seed * 0x100000001B3ULL + (uint64_t)t->tid * 0x9E3779B97F4A7C15ULL + 1;
    uint64_t ids = (uint64_t)t->tid << 40;
    struct blk local[LOCAL];
    memset(local, 0, sizeof local);
    for (long op = 0; op < ops_per_thread; op++) {
        uint64_t r = next(&rng);
        struct blk *b = &local[(r >> 8) % LOCAL];
        unsigned what = (unsigned)(r % 100);
        if (what < 40) {
            release(b, c, 0);
            make(b, &rng, ++ids, c);
        } else if (what < 55) {
            if (!b->p) {
                make(b, &rng, ++ids, c);
                continue;
            }
            /* realloc keeps the pattern up to the smaller size; the alignment is not kept. */
            check(b, b->size, &c->checked_bytes);
            size_t n = random_size(&rng);
            unsigned char *q = realloc(b->p, n);
            if (!q) {
                fprintf(stderr, "stress: realloc(%zu -> %zu) failed\n", b->size, n);
                abort();
            }
            b->p = q;
            size_t keep = n < b->size ? n : b->size;
            check(b, keep, &c->checked_bytes); /* old layout, new address */
            b->size = n;
            b->align = 0;
            check_usable(b);
            fill(b);
            c->reallocs++;
        } else if (what < 75) {
            release(b, c, 0);
        } else {
            /* Swap with a shared slot: our block goes out, another thread's comes in. */
            struct blk mine = *b;
            struct blk theirs;
            size_t s = (size_t)(next(&rng) % SHARED);
            pthread_mutex_lock(&shared_lock);
            theirs = shared[s];
            shared[s] = mine;
            pthread_mutex_unlock(&shared_lock);
            b->p = NULL;
            c->handoffs++;
            if (theirs.p) {
                if (next(&rng) % 2) {
                    release(&theirs, c, 1);
                } else {
                    check(&theirs, theirs.size, &c->checked_bytes);
                    *b = theirs;
                }
            }
        }
    }
    /* Half of what is left goes to the shared slots for others (or main) to free. */
    for (int i = 0; i < LOCAL; i++) {
        if (!local[i].p) continue;
        if (i % 2) {
            release(&local[i], c, 0);
            continue;
        }
        size_t s = (size_t)(next(&rng) % SHARED);
        pthread_mutex_lock(&shared_lock);
        struct blk theirs = shared[s];
        shared[s] = local[i];
        pthread_mutex_unlock(&shared_lock);
        release(&theirs, c, 1);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1) seed = strtoull(argv[1], NULL, 0);
    if (argc > 2) ops_per_thread = strtol(argv[2], NULL, 0);
    if (!tidemalloc_get_stats) {
        fprintf(stderr, "stress: tidemalloc is not loaded\n");
        return 2;
    }
    struct tidemalloc_stats before, after;
    tidemalloc_get_stats(&before);

    pthread_t th[NTHREADS];
    static struct targ args[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) {
        args[i].tid = i + 1;
        if (pthread_create(&th[i], NULL, worker, &args[i]) != 0) {
            perror("pthread_create");
            return 1;
        }
    }
    struct counts total = {0};
    for (int i = 0; i < NTHREADS; i++) {
        pthread_join(th[i], NULL);
        struct counts *c = &args[i].c;
        total.mallocs += c->mallocs;
        total.callocs += c->callocs;
        total.reallocs += c->reallocs;
        total.memaligns += c->memaligns;
        total.frees += c->frees;
        total.handoffs += c->handoffs;
        total.foreign_frees += c->foreign_frees;
        total.checked_bytes += c->checked_bytes;
    }
    /* The main thread frees what is left in the shared slots. */
    for (int s = 0; s < SHARED; s++) release(&shared[s], &total, 1);

    long allocs = total.mallocs + total.callocs + total.memaligns;
    long ops = allocs + total.reallocs + total.frees + total.handoffs;
    tidemalloc_get_stats(&after);
    printf("stress: seed %llu, %d threads, %ld operations: %ld malloc, %ld calloc, %ld posix_memalign, "
           "%ld realloc, %ld free (%ld by another thread), %ld hand-offs, %ld bytes checked\n",
           (unsigned long long)seed, NTHREADS, ops, total.mallocs, total.callocs, total.memaligns, total.reallocs,
           total.frees, total.foreign_frees, total.handoffs, total.checked_bytes);
    printf("stress: in use %zu -> %zu bytes, peak %zu, brk calls %zu, mmap calls %zu, mremap calls %zu\n",
           before.in_use, after.in_use, after.peak_in_use, after.brk_calls, after.mmap_calls, after.mremap_calls);
    if (allocs != total.frees) {
        fprintf(stderr, "stress: FAIL: %ld allocations but %ld frees\n", allocs, total.frees);
        return 1;
    }
    if (ops < 1000000 && ops_per_thread >= 160000) {
        fprintf(stderr, "stress: FAIL: only %ld operations\n", ops);
        return 1;
    }
    /* Everything was freed: what is still in use is the program's own (stdio), not blocks. */
    if (after.in_use > before.in_use + (1 << 20)) {
        fprintf(stderr, "stress: FAIL: %zu bytes still in use after freeing everything (was %zu)\n", after.in_use,
                before.in_use);
        return 1;
    }
    printf("stress: ok\n");
    return 0;
}
