/* Every exported function of libtidemalloc and glibc's edge cases, in one process.
 *
 * Run with LD_PRELOAD=libtidemalloc.so or linked with -ltidemalloc. Each check prints a
 * line; the program exits 1 at the first failure and 0 after "api: all N checks passed".
 * `api beyond-memory` runs only the checks of requests larger than the machine.
 * Compile with -fno-builtin: GCC deletes malloc/free pairs whose memory is never used.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tidemalloc.h"

/* The extensions are weak so that the program also links when tidemalloc is only preloaded;
 * they resolve at load time to the preloaded (or linked) library. */
#pragma weak tidemalloc_get_stats
#pragma weak tidemalloc_set_mmap_threshold
#pragma weak tidemalloc_get_mmap_threshold
#pragma weak tidemalloc_print_stats
#pragma weak tidemalloc_trim

/* glibc's aliases of the allocation functions, not declared by its headers. */
extern void *__libc_malloc(size_t);
extern void __libc_free(void *);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void *__libc_valloc(size_t);
extern void *__libc_pvalloc(size_t);

/* C23, not declared by this glibc's headers. */
extern void free_sized(void *p, size_t size) __attribute__((weak));
extern void free_aligned_sized(void *p, size_t align, size_t size) __attribute__((weak));

#define PAGE 4096u
#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)

static int checks;

#define CHECK(cond, ...)                                                                     \
    do {                                                                                     \
        checks++;                                                                            \
        if (cond) {                                                                          \
            printf("ok   ");                                                                 \
            printf(__VA_ARGS__);                                                             \
            printf("\n");                                                                    \
        } else {                                                                             \
            printf("FAIL ");                                                                 \
            printf(__VA_ARGS__);                                                             \
            printf("  [%s:%d: %s] errno=%d\n", __FILE__, __LINE__, #cond, errno);            \
            fflush(stdout);                                                                  \
            exit(1);                                                                         \
        }                                                                                    \
    } while (0)

/* Hides constants from the compiler (no -Walloc-size-larger-than, no folding). */
static size_t opaque(size_t x) {
    volatile size_t v = x;
    return v;
}

static void *volatile sink;

static struct tidemalloc_stats stats(void) {
    struct tidemalloc_stats s;
    tidemalloc_get_stats(&s);
    return s;
}

static int aligned_to(const void *p, size_t a) { return ((uintptr_t)p & (a - 1)) == 0; }

static void fill(void *p, size_t n, unsigned seed) {
    unsigned char *c = p;
    for (size_t i = 0; i < n; i++) c[i] = (unsigned char)(seed + i * 31 + (i >> 8));
}

static int check_fill(const void *p, size_t n, unsigned seed) {
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++)
        if (c[i] != (unsigned char)(seed + i * 31 + (i >> 8))) return 0;
    return 1;
}

static int all_zero(const void *p, size_t n) {
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++)
        if (c[i]) return 0;
    return 1;
}

static void test_loaded(void) {
    CHECK(tidemalloc_get_stats != NULL, "tidemalloc is loaded (tidemalloc_get_stats resolves)");
    void *p = malloc(100);
    struct tidemalloc_stats s = stats();
    CHECK(p && s.in_use >= 100, "malloc(100) is counted by tidemalloc (in_use=%zu)", s.in_use);
    free(p);
    /* tidemalloc is the process's malloc here, so its arena is in the program break. */
    static void *fill_arena[2048];
    for (int i = 0; i < 2048; i++) fill_arena[i] = malloc(4000);
    s = stats();
    CHECK(s.reserved_brk > 0 && s.brk_calls > 0, "the arena is in the program break (reserved_brk %zu)", s.reserved_brk);
    for (int i = 0; i < 2048; i++) free(fill_arena[i]);
    /* Before any large block is freed (which may raise it, as glibc's dynamic threshold). */
    CHECK(tidemalloc_get_mmap_threshold() == 128 * KiB, "default mmap threshold is 128 KiB (%zu)",
          tidemalloc_get_mmap_threshold());
}

static void test_malloc_free(void) {
    free(NULL);
    CHECK(1, "free(NULL) is a no-op");
    void *z = malloc(0);
    CHECK(z != NULL, "malloc(0) returns a unique pointer");
    void *z2 = malloc(0);
    CHECK(z2 != NULL && z2 != z, "two malloc(0) give distinct pointers");
    free(z);
    free(z2);

    size_t sizes[] = {1, 8, 16, 17, 100, 1000, 4096, 10000, 70000, 128 * KiB, 200 * KiB, 600 * KiB, 3 * MiB};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        size_t n = sizes[i];
        char *p = malloc(n);
        CHECK(p != NULL && aligned_to(p, 16), "malloc(%zu) = %p, aligned to 16", n, (void *)p);
        fill(p, n, (unsigned)i);
        CHECK(check_fill(p, n, (unsigned)i), "malloc(%zu): block holds what was written", n);
        CHECK(malloc_usable_size(p) >= n, "malloc_usable_size(malloc(%zu)) = %zu", n, malloc_usable_size(p));
        errno = 1234;
        free(p);
        CHECK(errno == 1234, "errno preserved across free of a %zu-byte block", n);
    }
    errno = 1234;
    free(NULL);
    CHECK(errno == 1234, "errno preserved across free(NULL)");
    CHECK(malloc_usable_size(NULL) == 0, "malloc_usable_size(NULL) == 0");
}

static void test_calloc(void) {
    /* Dirty memory first, so that calloc must really clear reused blocks. */
    size_t sizes[] = {1, 16, 48, 100, 256, 1000, 4096, 5000, 40000, 100 * KiB, 300 * KiB, 1 * MiB, 5 * MiB};
    enum { N = sizeof sizes / sizeof *sizes, REP = 8 };
    void *ps[N][REP];
    for (int round = 0; round < 3; round++) {
        for (size_t i = 0; i < N; i++)
            for (int r = 0; r < REP; r++) {
                ps[i][r] = malloc(sizes[i]);
                CHECK(ps[i][r] != NULL, "malloc(%zu) for dirtying", sizes[i]);
                memset(ps[i][r], 0xA5, malloc_usable_size(ps[i][r]));
            }
        for (size_t i = 0; i < N; i++)
            for (int r = 0; r < REP; r++) free(ps[i][r]);
        for (size_t i = 0; i < N; i++)
            for (int r = 0; r < REP; r++) {
                ps[i][r] = calloc(1, sizes[i]);
                CHECK(ps[i][r] != NULL && all_zero(ps[i][r], sizes[i]),
                      "calloc(1, %zu) after dirty frees is zeroed (round %d, #%d)", sizes[i], round, r);
                memset(ps[i][r], 0x5A, sizes[i]);
            }
        for (size_t i = 0; i < N; i++)
            for (int r = 0; r < REP; r++) free(ps[i][r]);
    }
    /* Many segments' worth: freed segments go back to the arena (possibly still dirty) and
     * calloc must clear whatever it reuses, for every size class. */
    enum { MANY = 60000 };
    static void *many[MANY];
    for (int i = 0; i < MANY; i++) {
        size_t n = 16 + (size_t)(i % 97) * 40;
        many[i] = malloc(n);
        if (!many[i]) CHECK(0, "malloc(%zu) for dirtying", n);
        memset(many[i], 0xC3, n);
    }
    for (int i = 0; i < MANY; i++) free(many[i]);
    for (int i = 0; i < MANY; i++) {
        size_t n = 16 + (size_t)((i * 7) % 113) * 36;
        many[i] = calloc(n, 1);
        if (!many[i] || !all_zero(many[i], n)) CHECK(0, "calloc(%zu, 1) #%d after freeing ~120 MiB is zeroed", n, i);
    }
    for (int i = 0; i < MANY; i++) free(many[i]);
    CHECK(1, "%d callocs of 16..4048 bytes after freeing %d dirty blocks: all zeroed", MANY, MANY);

    int *a = calloc(1000, sizeof(int));
    CHECK(a && all_zero(a, 1000 * sizeof(int)), "calloc(1000, sizeof(int)) zeroed");
    free(a);
    void *c0 = calloc(0, 10);
    CHECK(c0 != NULL, "calloc(0, 10) returns a pointer");
    free(c0);

    errno = 0;
    void *p = calloc(opaque(SIZE_MAX / 2 + 2), 2);
    CHECK(p == NULL && errno == ENOMEM, "calloc(SIZE_MAX/2+2, 2) overflows: NULL, ENOMEM");
    errno = 0;
    p = calloc(opaque((size_t)1 << 33), (size_t)1 << 33);
    CHECK(p == NULL && errno == ENOMEM, "calloc(2^33, 2^33) overflows: NULL, ENOMEM");
}

static void test_realloc(void) {
    char *p = realloc(NULL, 100);
    CHECK(p != NULL, "realloc(NULL, 100) allocates");
    fill(p, 100, 7);
    CHECK(realloc(p, 0) == NULL, "realloc(p, 0) frees and returns NULL");

    /* Growth and shrinking across every kind of block keep the data. */
    size_t steps[] = {10,        100,      5000,       60 * KiB, 100 * KiB, 300 * KiB, 700 * KiB,
                      3 * MiB,   64 * MiB, 70 * MiB,   2 * MiB,  200 * KiB, 40 * KiB,  1000,
                      10,        1,        600 * KiB,  16,       130 * KiB, 129 * KiB, 65 * KiB};
    size_t n = 10;
    p = malloc(n);
    fill(p, n, 3);
    for (size_t i = 1; i < sizeof steps / sizeof *steps; i++) {
        size_t m = steps[i];
        char *q = realloc(p, m);
        CHECK(q != NULL, "realloc %zu -> %zu", n, m);
        size_t keep = n < m ? n : m;
        CHECK(check_fill(q, keep, 3), "realloc %zu -> %zu keeps the first %zu bytes", n, m, keep);
        CHECK(malloc_usable_size(q) >= m, "realloc %zu -> %zu: usable %zu", n, m, malloc_usable_size(q));
        fill(q, m, 3);
        p = q;
        n = m;
    }
    free(p);

    /* Failure leaves the old block intact and usable. */
    size_t bad[] = {SIZE_MAX, SIZE_MAX - 4096, (size_t)PTRDIFF_MAX + 1, (size_t)PTRDIFF_MAX};
    size_t olds[] = {1000, 300 * KiB, 2 * MiB};
    for (size_t o = 0; o < sizeof olds / sizeof *olds; o++) {
        for (size_t b = 0; b < sizeof bad / sizeof *bad; b++) {
            size_t on = olds[o];
            char *old = malloc(on);
            fill(old, on, 11);
            errno = 0;
            char *q = realloc(old, opaque(bad[b]));
            CHECK(q == NULL && errno == ENOMEM, "realloc(%zu-byte block, %#zx) fails with ENOMEM", on, bad[b]);
            CHECK(check_fill(old, on, 11), "failed realloc left the %zu-byte block intact", on);
            q = realloc(old, on * 2);
            CHECK(q != NULL && check_fill(q, on, 11), "block still usable after failed realloc");
            free(q);
        }
    }
}

/* realloc of blocks from the aligned entry points (any alignment, any kind of block). */
static void test_realloc_aligned(void) {
    size_t aligns[] = {32, 256, 4096, 65536, 1 << 20, 4 << 20};
    size_t sizes[] = {24, 600, 5000, 100 * KiB, 300 * KiB, 3 * MiB};
    size_t targets[] = {10, 1000, 50 * KiB, 200 * KiB, 1 * MiB, 9 * MiB};
    for (size_t a = 0; a < sizeof aligns / sizeof *aligns; a++)
        for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++)
            for (size_t t = 0; t < sizeof targets / sizeof *targets; t++) {
                size_t n = sizes[s], m = targets[t];
                char *p = memalign(aligns[a], n);
                CHECK(p && aligned_to(p, aligns[a]), "memalign(%zu, %zu)", aligns[a], n);
                fill(p, n, (unsigned)(a + s + t));
                char *q = realloc(p, m);
                size_t keep = n < m ? n : m;
                if (!q || !check_fill(q, keep, (unsigned)(a + s + t)) || malloc_usable_size(q) < m)
                    CHECK(0, "realloc(memalign(%zu, %zu), %zu) keeps %zu bytes", aligns[a], n, m, keep);
                fill(q, m, 1);
                free(q);
            }
    CHECK(1, "realloc of memalign'd blocks (alignment 32 .. 4 MiB, sizes 24 .. 3 MiB) to 10 .. 9 MiB keeps the data");
}

static void test_reallocarray(void) {
    int *a = reallocarray(NULL, 10, sizeof(int));
    CHECK(a != NULL, "reallocarray(NULL, 10, 4)");
    for (int i = 0; i < 10; i++) a[i] = i;
    int *b = reallocarray(a, 1000, sizeof(int));
    CHECK(b != NULL && b[9] == 9 && b[0] == 0, "reallocarray grows and keeps data");
    errno = 0;
    int *c = reallocarray(b, opaque(SIZE_MAX / 2), 3);
    CHECK(c == NULL && errno == ENOMEM, "reallocarray overflow: NULL, ENOMEM");
    CHECK(b[9] == 9, "reallocarray overflow left the block intact");
    errno = 0;
    c = reallocarray(NULL, opaque((size_t)1 << 40), (size_t)1 << 40);
    CHECK(c == NULL && errno == ENOMEM, "reallocarray(NULL, 2^40, 2^40): NULL, ENOMEM");
    free(b);
}

static void test_posix_memalign(void) {
    size_t badalign[] = {0, 3, 24, 4, 1, 2, 12, 48, 100};
    for (size_t i = 0; i < sizeof badalign / sizeof *badalign; i++) {
        void *p = (void *)0x1234;
        errno = 4321;
        int r = posix_memalign(&p, opaque(badalign[i]), 64);
        CHECK(r == EINVAL, "posix_memalign(align=%zu) returns EINVAL (got %d)", badalign[i], r);
        CHECK(errno == 4321, "posix_memalign(align=%zu) leaves errno alone", badalign[i]);
        CHECK(p == (void *)0x1234, "posix_memalign(align=%zu) leaves *memptr unchanged", badalign[i]);
    }
    for (size_t a = sizeof(void *); a <= MiB; a *= 2) {
        size_t sizes[] = {1, a, 3 * a + 1, 200 * KiB};
        for (size_t s = 0; s < 4; s++) {
            void *p = NULL;
            errno = 4321;
            int r = posix_memalign(&p, a, sizes[s]);
            CHECK(r == 0 && p != NULL && aligned_to(p, a) && errno == 4321,
                  "posix_memalign(align=%zu, size=%zu) = %p", a, sizes[s], p);
            CHECK(malloc_usable_size(p) >= sizes[s], "usable size of that block is %zu", malloc_usable_size(p));
            memset(p, 0x3C, sizes[s]);
            free(p);
        }
    }
    size_t huge[] = {SIZE_MAX, SIZE_MAX - 4096, (size_t)PTRDIFF_MAX + 1};
    for (size_t i = 0; i < 3; i++) {
        void *p = (void *)0x1234;
        errno = 4321;
        int r = posix_memalign(&p, 64, opaque(huge[i]));
        CHECK(r == ENOMEM && p == (void *)0x1234 && errno == ENOMEM,
              "posix_memalign(64, %#zx) returns ENOMEM, *memptr untouched, errno ENOMEM (as glibc)", huge[i]);
    }
}

static void test_aligned_alloc_memalign(void) {
    for (size_t a = 1; a <= MiB; a *= 2) {
        size_t sizes[] = {a, 2 * a, 1, 100, 150 * KiB};
        for (size_t s = 0; s < 5; s++) {
            void *p = aligned_alloc(a, sizes[s]);
            CHECK(p && aligned_to(p, a), "aligned_alloc(%zu, %zu) = %p", a, sizes[s], p);
            CHECK(malloc_usable_size(p) >= sizes[s], "usable %zu >= %zu", malloc_usable_size(p), sizes[s]);
            memset(p, 0x77, sizes[s]);
            free(p);
        }
    }
    /* C17 and glibc 2.38+: an alignment that is not a power of two, 0 included, is EINVAL. */
    size_t bad[] = {0, 3, 24, 48, 65, 100, 4095, 4097, 3 * MiB};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        errno = 0;
        void *p = aligned_alloc(opaque(bad[i]), 4096);
        CHECK(p == NULL && errno == EINVAL, "aligned_alloc(%zu, 4096): NULL, EINVAL", bad[i]);
    }
    for (size_t a = 1; a <= MiB; a *= 2) {
        void *p = memalign(a, 1000);
        CHECK(p && aligned_to(p, a), "memalign(%zu, 1000) = %p", a, p);
        memset(p, 1, 1000);
        free(p);
    }
    /* glibc rounds a non-power-of-two alignment up. */
    size_t odd[] = {3, 24, 48, 100, 3000, 5000};
    for (size_t i = 0; i < sizeof odd / sizeof *odd; i++) {
        size_t want = 1;
        while (want < odd[i]) want *= 2;
        void *p = memalign(opaque(odd[i]), 777);
        CHECK(p && aligned_to(p, want), "memalign(%zu, 777) = %p, aligned to %zu", odd[i], p, want);
        free(p);
    }
    void *p = memalign(0, 100);
    CHECK(p != NULL, "memalign(0, 100) allocates");
    free(p);
}

static void test_valloc_pvalloc(void) {
    size_t sizes[] = {1, 100, 4096, 4097, 5000, 70000, 200 * KiB, 2 * MiB};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        void *p = valloc(sizes[i]);
        CHECK(p && aligned_to(p, PAGE), "valloc(%zu) = %p, page aligned", sizes[i], p);
        CHECK(malloc_usable_size(p) >= sizes[i], "valloc(%zu): usable %zu", sizes[i], malloc_usable_size(p));
        memset(p, 9, sizes[i]);
        free(p);
    }
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        size_t rounded = (sizes[i] + PAGE - 1) / PAGE * PAGE;
        char *p = pvalloc(sizes[i]);
        CHECK(p && aligned_to(p, PAGE), "pvalloc(%zu) = %p, page aligned", sizes[i], (void *)p);
        CHECK(malloc_usable_size(p) >= rounded, "pvalloc(%zu): usable %zu >= %zu", sizes[i],
              malloc_usable_size(p), rounded);
        memset(p, 9, rounded);
        free(p);
    }
    char *p = pvalloc(0);
    CHECK(p && aligned_to(p, PAGE) && malloc_usable_size(p) >= PAGE, "pvalloc(0) gives a page (usable %zu)",
          malloc_usable_size(p));
    memset(p, 1, PAGE);
    free(p);
}

static void test_free_sized(void) {
    CHECK(free_sized != NULL && free_aligned_sized != NULL, "free_sized and free_aligned_sized are exported");
    for (size_t n = 1; n <= 4 * MiB; n = n * 3 + 1) {
        void *p = malloc(n);
        memset(p, 1, n);
        errno = 555;
        free_sized(p, n);
        CHECK(errno == 555, "free_sized(malloc(%zu), %zu) (errno kept)", n, n);
    }
    free_sized(NULL, 0);
    for (size_t a = 16; a <= MiB; a *= 4) {
        void *p = aligned_alloc(a, 3 * a);
        memset(p, 1, 3 * a);
        free_aligned_sized(p, a, 3 * a);
        CHECK(1, "free_aligned_sized(aligned_alloc(%zu, %zu))", a, 3 * a);
    }
    free_aligned_sized(NULL, 64, 0);
    CHECK(1, "free_sized(NULL, 0) and free_aligned_sized(NULL, 64, 0) are no-ops");
}

static void test_impossible_sizes(void) {
    size_t huge[] = {SIZE_MAX, SIZE_MAX - 4096, (size_t)PTRDIFF_MAX + 1};
    const char *names[] = {"SIZE_MAX", "SIZE_MAX-4096", "PTRDIFF_MAX+1"};
    for (int i = 0; i < 3; i++) {
        size_t n = opaque(huge[i]);
        const char *w = names[i];
        void *p;
        errno = 0, p = malloc(n);
        CHECK(!p && errno == ENOMEM, "malloc(%s): NULL, ENOMEM", w);
        errno = 0, p = calloc(1, n);
        CHECK(!p && errno == ENOMEM, "calloc(1, %s): NULL, ENOMEM", w);
        errno = 0, p = calloc(n, 1);
        CHECK(!p && errno == ENOMEM, "calloc(%s, 1): NULL, ENOMEM", w);
        errno = 0, p = realloc(NULL, n);
        CHECK(!p && errno == ENOMEM, "realloc(NULL, %s): NULL, ENOMEM", w);
        errno = 0, p = reallocarray(NULL, 1, n);
        CHECK(!p && errno == ENOMEM, "reallocarray(NULL, 1, %s): NULL, ENOMEM", w);
        errno = 0, p = aligned_alloc(64, n);
        CHECK(!p && errno == ENOMEM, "aligned_alloc(64, %s): NULL, ENOMEM", w);
        errno = 0, p = aligned_alloc(8192, n);
        CHECK(!p && errno == ENOMEM, "aligned_alloc(8192, %s): NULL, ENOMEM", w);
        errno = 0, p = aligned_alloc(4 * MiB, n);
        CHECK(!p && errno == ENOMEM, "aligned_alloc(4 MiB, %s): NULL, ENOMEM", w);
        errno = 0, p = memalign(64, n);
        CHECK(!p && errno == ENOMEM, "memalign(64, %s): NULL, ENOMEM", w);
        errno = 0, p = memalign(1, n);
        CHECK(!p && errno == ENOMEM, "memalign(1, %s): NULL, ENOMEM", w);
        errno = 0, p = valloc(n);
        CHECK(!p && errno == ENOMEM, "valloc(%s): NULL, ENOMEM", w);
        errno = 0, p = pvalloc(n);
        CHECK(!p && errno == ENOMEM, "pvalloc(%s): NULL, ENOMEM", w);
        p = (void *)0x1234;
        int r = posix_memalign(&p, 16, n);
        CHECK(r == ENOMEM && p == (void *)0x1234, "posix_memalign(16, %s) returns ENOMEM", w);
        r = posix_memalign(&p, 2 * MiB, n);
        CHECK(r == ENOMEM && p == (void *)0x1234, "posix_memalign(2 MiB, %s) returns ENOMEM", w);
    }
}

static void test_min_alignment(void) {
    static void *ps[1025];
    for (size_t n = 1; n <= 1024; n++) {
        ps[n] = malloc(n);
        if (!ps[n] || !aligned_to(ps[n], 16) || malloc_usable_size(ps[n]) < n)
            CHECK(0, "malloc(%zu) = %p is 16-aligned with usable >= size", n, ps[n]);
        memset(ps[n], (int)n, n);
    }
    CHECK(1, "malloc(1..1024): every block aligned to 16");
    for (size_t n = 1; n <= 1024; n++) {
        unsigned char *c = ps[n];
        for (size_t i = 0; i < n; i++)
            if (c[i] != (unsigned char)n) CHECK(0, "block of %zu bytes overwritten at %zu", n, i);
        free(ps[n]);
    }
    for (size_t n = 1; n <= 1024; n++) {
        ps[n] = calloc(1, n);
        if (!ps[n] || !aligned_to(ps[n], 16)) CHECK(0, "calloc(1, %zu) = %p is 16-aligned", n, ps[n]);
    }
    for (size_t n = 1; n <= 1024; n++) free(ps[n]);
    CHECK(1, "calloc(1, 1..1024): every block aligned to 16");
}

static void test_mallopt(void) {
    CHECK(mallopt(M_MMAP_THRESHOLD, 256 * 1024) == 1, "mallopt(M_MMAP_THRESHOLD, 256K) == 1");
    CHECK(tidemalloc_get_mmap_threshold() == 256 * KiB, "threshold is now 256 KiB");
    CHECK(mallopt(M_TRIM_THRESHOLD, 256 * 1024) == 1, "mallopt(M_TRIM_THRESHOLD) == 1");
    CHECK(mallopt(M_TOP_PAD, 64 * 1024) == 1, "mallopt(M_TOP_PAD) == 1");
    CHECK(mallopt(M_MMAP_MAX, 65536) == 1, "mallopt(M_MMAP_MAX) == 1");
    /* As glibc 2.36: 1 for these (no-ops here) and for unknown parameters. */
    CHECK(mallopt(M_CHECK_ACTION, 3) == 1, "mallopt(M_CHECK_ACTION) == 1");
    CHECK(mallopt(M_ARENA_MAX, 1) == 1 && mallopt(M_ARENA_TEST, 1) == 1, "mallopt(M_ARENA_MAX/M_ARENA_TEST) == 1");
    CHECK(mallopt(M_MXFAST, 64) == 1 && mallopt(M_MXFAST, 161) == 0, "mallopt(M_MXFAST): 1 up to 160, 0 above");
    CHECK(mallopt(12345, 1) == 1, "mallopt(12345) (unknown) == 1");
    CHECK(mallopt(M_TRIM_THRESHOLD, 128 * 1024) == 1 && mallopt(M_TOP_PAD, 0) == 1, "restore trim and pad");

    /* With a 64 KiB threshold a 100 KiB block gets its own mapping ... */
    CHECK(mallopt(M_MMAP_THRESHOLD, 64 * 1024) == 1, "mallopt(M_MMAP_THRESHOLD, 64K) == 1");
    struct tidemalloc_stats a = stats();
    void *p = malloc(100 * KiB);
    struct tidemalloc_stats b = stats();
    CHECK(p && b.large_blocks == a.large_blocks + 1, "threshold 64K: malloc(100K) is a large block (%zu -> %zu)",
          a.large_blocks, b.large_blocks);
    memset(p, 1, 100 * KiB);
    free(p);
    CHECK(stats().large_blocks == a.large_blocks, "and free gives it back");
    /* ... with a 1 MiB threshold it comes from the arena. */
    CHECK(mallopt(M_MMAP_THRESHOLD, 1024 * 1024) == 1, "mallopt(M_MMAP_THRESHOLD, 1M) == 1");
    void *warm = malloc(100 * KiB); /* the arena may need a segment first */
    a = stats();
    p = malloc(100 * KiB);
    b = stats();
    CHECK(p && b.large_blocks == a.large_blocks && b.mmap_calls == a.mmap_calls,
          "threshold 1M: malloc(100K) made no mapping (large %zu -> %zu, mmap calls %zu -> %zu)", a.large_blocks,
          b.large_blocks, a.mmap_calls, b.mmap_calls);
    memset(p, 1, 100 * KiB);
    free(p);
    free(warm);
    CHECK(mallopt(M_MMAP_THRESHOLD, 128 * 1024) == 1 && tidemalloc_get_mmap_threshold() == 128 * KiB,
          "restore the 128 KiB threshold");

    /* M_MMAP_MAX = 0: no request may be served by a mapping of its own. */
    CHECK(mallopt(M_MMAP_MAX, 0) == 1, "mallopt(M_MMAP_MAX, 0) == 1");
    a = stats();
    void *m1 = malloc(1 * MiB);
    void *m2 = calloc(1, 1 * MiB);
    b = stats();
    CHECK(m1 && m2 && b.large_blocks == a.large_blocks, "M_MMAP_MAX=0: malloc/calloc(1 MiB) not mapped (%zu -> %zu)",
          a.large_blocks, b.large_blocks);
    CHECK(all_zero(m2, MiB), "M_MMAP_MAX=0: calloc(1 MiB) from the arena is zeroed");
    memset(m1, 0xEE, MiB);
    free(m1);
    void *m3 = calloc(1, 1 * MiB);
    CHECK(m3 && all_zero(m3, MiB), "M_MMAP_MAX=0: calloc(1 MiB) after a dirty free is zeroed");
    free(m2);
    free(m3);
    a = stats();
    void *al1 = memalign(64, 1 * MiB);
    void *al2 = valloc(1 * MiB);
    void *al3 = NULL;
    int r = posix_memalign(&al3, 4096, 1 * MiB);
    b = stats();
    CHECK(al1 && al2 && r == 0 && b.large_blocks == a.large_blocks,
          "M_MMAP_MAX=0: memalign/valloc/posix_memalign(1 MiB) not mapped (large blocks %zu -> %zu)",
          a.large_blocks, b.large_blocks);
    free(al1);
    free(al2);
    free(al3);
    CHECK(mallopt(M_MMAP_MAX, 65536) == 1, "restore M_MMAP_MAX");
}

/* Blocks from glibc's __libc_ aliases are tidemalloc's: plain free and realloc take them. */
static void test_libc_aliases(void) {
    struct tidemalloc_stats a = stats();
    char *p = __libc_malloc(5000);
    struct tidemalloc_stats b = stats();
    CHECK(p && b.in_use >= a.in_use + 5000, "__libc_malloc(5000) is tidemalloc's (in_use %zu -> %zu)", a.in_use,
          b.in_use);
    CHECK(malloc_usable_size(p) >= 5000, "malloc_usable_size(__libc_malloc(5000)) = %zu", malloc_usable_size(p));
    fill(p, 5000, 4);
    p = realloc(p, 9000);
    CHECK(p && check_fill(p, 5000, 4), "realloc of a __libc_malloc block keeps its data");
    free(p);
    char *c = __libc_calloc(100, 10);
    CHECK(c && all_zero(c, 1000), "__libc_calloc(100, 10) zeroed");
    c = __libc_realloc(c, 3000);
    CHECK(c && all_zero(c, 1000), "__libc_realloc keeps the data");
    __libc_free(c);
    void *m = __libc_memalign(256, 100), *v = __libc_valloc(100), *pv = __libc_pvalloc(100);
    CHECK(m && aligned_to(m, 256) && v && aligned_to(v, PAGE) && pv && aligned_to(pv, PAGE) &&
              malloc_usable_size(pv) >= PAGE,
          "__libc_memalign, __libc_valloc, __libc_pvalloc align");
    free(m);
    free(v);
    __libc_free(pv);
    __libc_free(malloc(10));
    __libc_free(NULL);
    CHECK(1, "__libc_free frees malloc's blocks; free frees __libc_ blocks");
}

static void test_mallopt_minus_one(void) {
    /* glibc reads the value as unsigned: -1 is no limit, so trimming is off. */
    CHECK(mallopt(M_TRIM_THRESHOLD, -1) == 1, "mallopt(M_TRIM_THRESHOLD, -1) == 1");
    CHECK(mallopt(M_TRIM_THRESHOLD, 128 * 1024) == 1, "mallopt(M_TRIM_THRESHOLD, 128K) == 1");

    /* M_MMAP_MAX is an int in glibc: a negative maximum allows no mapping at all. */
    CHECK(mallopt(M_MMAP_MAX, -1) == 1, "mallopt(M_MMAP_MAX, -1) == 1");
    struct tidemalloc_stats a = stats();
    void *p = malloc(2 * MiB);
    struct tidemalloc_stats b = stats();
    CHECK(p && b.large_blocks == a.large_blocks, "M_MMAP_MAX -1: malloc(2 MiB) is not mapped");
    free(p);
    CHECK(mallopt(M_MMAP_MAX, 65536) == 1, "restore M_MMAP_MAX");

    /* -1 as the threshold: as high as tidemalloc goes (1 GiB). */
    CHECK(mallopt(M_MMAP_THRESHOLD, -1) == 1 && tidemalloc_get_mmap_threshold() == (size_t)1 << 30,
          "mallopt(M_MMAP_THRESHOLD, -1) == 1, threshold 1 GiB (%zu)", tidemalloc_get_mmap_threshold());
    CHECK(mallopt(M_MMAP_THRESHOLD, 128 * 1024) == 1, "restore the threshold");
    CHECK(mallopt(M_TOP_PAD, -1) == 1 && mallopt(M_TOP_PAD, 0) == 1, "mallopt(M_TOP_PAD, -1) == 1");
}

/* M_PERTURB: malloc fills with c ^ 0xff, calloc zeroes, free fills with c (after the 16
 * bytes the allocator keeps its own links in). */
static void test_perturb(void) {
    CHECK(mallopt(M_PERTURB, 0x5a) == 1, "mallopt(M_PERTURB, 0x5a) == 1");
    size_t sizes[] = {24, 100, 1000, 5000, 60000};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        size_t n = sizes[i];
        unsigned char *p = malloc(n);
        size_t k = 0;
        for (size_t j = 0; j < n; j++) k += p[j] == 0xa5;
        CHECK(k == n, "M_PERTURB 0x5a: malloc(%zu) filled with 0xa5 (%zu bytes)", n, k);
        memset(p, 0, n);
        volatile unsigned char *vp = p;
        free(p);
        k = 0;
        for (size_t j = 16; j < n; j++) k += vp[j] == 0x5a;
        CHECK(k == n - 16, "M_PERTURB 0x5a: free(%zu-byte block) filled it with 0x5a (%zu of %zu bytes)", n, k,
              n - 16);
        unsigned char *z = calloc(1, n);
        CHECK(all_zero(z, n), "M_PERTURB 0x5a: calloc(1, %zu) is zeroed", n);
        free(z);
    }
    CHECK(mallopt(M_PERTURB, 0) == 1, "mallopt(M_PERTURB, 0) == 1 (off)");
    unsigned char *p = malloc(700);
    memset(p, 7, 700);
    volatile unsigned char *vp = p;
    free(p);
    CHECK(vp[100] == 7, "M_PERTURB off: free leaves the block's bytes alone");
}

static void test_extensions(void) {
    size_t t0 = tidemalloc_get_mmap_threshold();
    CHECK(t0 >= 128 * KiB, "tidemalloc_get_mmap_threshold() = %zu", t0);
    CHECK(tidemalloc_set_mmap_threshold((size_t)2 << 30) == 0, "tidemalloc_set_mmap_threshold(2 GiB) == 0");
    CHECK(tidemalloc_get_mmap_threshold() == t0, "out-of-range value changed nothing");
    CHECK(tidemalloc_set_mmap_threshold((size_t)1 << 30) == 1, "tidemalloc_set_mmap_threshold(1 GiB) == 1");
    CHECK(tidemalloc_get_mmap_threshold() == (size_t)1 << 30, "threshold is 1 GiB");
    struct tidemalloc_stats a = stats();
    void *p = malloc(8 * MiB);
    struct tidemalloc_stats b = stats();
    CHECK(p && b.large_blocks == a.large_blocks, "threshold 1 GiB: malloc(8 MiB) from the arena");
    memset(p, 3, 8 * MiB);
    free(p);
    CHECK(tidemalloc_set_mmap_threshold(0) == 1, "tidemalloc_set_mmap_threshold(0) == 1");
    a = stats();
    p = malloc(16);
    b = stats();
    CHECK(p && b.large_blocks == a.large_blocks + 1, "threshold 0: malloc(16) is a large block");
    free(p);
    CHECK(tidemalloc_set_mmap_threshold(128 * KiB) == 1, "restore threshold");

    a = stats();
    void *blocks[100];
    for (int i = 0; i < 100; i++) blocks[i] = malloc(1000);
    b = stats();
    CHECK(b.in_use >= a.in_use + 100 * 1000, "in_use grew by at least 100*1000 (%zu -> %zu)", a.in_use, b.in_use);
    CHECK(b.peak_in_use >= b.in_use, "peak_in_use >= in_use");
    CHECK(b.reserved_brk + b.reserved_mmap >= b.in_use, "reserved >= in use");
    CHECK(b.brk_calls + b.mmap_calls > 0, "some system calls were counted");
    for (int i = 0; i < 100; i++) free(blocks[i]);

    FILE *f = tmpfile();
    CHECK(f != NULL, "tmpfile");
    tidemalloc_print_stats(fileno(f));
    char buf[4096];
    rewind(f);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    CHECK(strstr(buf, "tidemalloc stats:") && strstr(buf, "mmap calls"), "tidemalloc_print_stats writes the counters");
    fclose(f);
    int t = tidemalloc_trim(0);
    CHECK(t == 0 || t == 1, "tidemalloc_trim(0) returns %d", t);
}

static void test_trim(void) {
    int r = malloc_trim(0);
    CHECK(r == 0 || r == 1, "malloc_trim(0) returns %d", r);
    size_t n = 200 * MiB / 2000;
    void **ps = malloc(n * sizeof *ps);
    for (size_t i = 0; i < n; i++) {
        ps[i] = malloc(2000);
        if (!ps[i]) CHECK(0, "malloc(2000) #%zu", i);
        memset(ps[i], 0x11, 2000);
    }
    CHECK(1, "allocated 200 MiB in 2000-byte blocks");
    for (size_t i = 0; i < n; i++) free(ps[i]);
    free(ps);
    r = malloc_trim(0);
    CHECK(r == 1, "malloc_trim(0) after freeing 200 MiB of small blocks returns 1 (got %d)", r);
    r = malloc_trim(128 * KiB);
    CHECK(r == 0 || r == 1, "malloc_trim(128K) returns %d", r);
}

/* As glibc's: arena = bytes of the arena held, uordblks = in use in the arena (not mmapped
 * blocks), uordblks + fordblks == arena, hblks/hblkhd = mmapped blocks (live ones only). */
static void test_mallinfo(void) {
    struct mallinfo2 a = mallinfo2();
    CHECK(a.uordblks + a.fordblks == a.arena, "mallinfo2: uordblks %zu + fordblks %zu == arena %zu", a.uordblks,
          a.fordblks, a.arena);
    enum { N = 10000 };
    static void *ps[N];
    for (int i = 0; i < N; i++) ps[i] = malloc(1000);
    struct mallinfo2 b = mallinfo2();
    size_t grew = b.uordblks - a.uordblks;
    CHECK(b.uordblks > a.uordblks && grew >= N * 1000 && grew <= N * 1000 * 3 / 2,
          "mallinfo2: uordblks grew by %zu for %d x 1000 bytes", grew, N);
    CHECK(b.uordblks + b.fordblks == b.arena && b.arena >= N * 1000, "mallinfo2: uordblks + fordblks == arena %zu",
          b.arena);
    void *big = malloc(50 * MiB);
    CHECK(big != NULL, "malloc(50 MiB)");
    memset(big, 1, 50 * MiB);
    struct mallinfo2 c = mallinfo2();
    CHECK(c.hblks == b.hblks + 1 && c.hblkhd >= b.hblkhd + 50 * MiB && c.hblkhd <= b.hblkhd + 51 * MiB,
          "mallinfo2: the 50 MiB block is in hblks (%zu -> %zu) and hblkhd (%zu -> %zu)", b.hblks, c.hblks, b.hblkhd,
          c.hblkhd);
    CHECK(c.uordblks < b.uordblks + MiB && c.arena < b.arena + MiB,
          "mallinfo2: ... and not in uordblks (%zu -> %zu) or arena (%zu -> %zu)", b.uordblks, c.uordblks, b.arena,
          c.arena);
    CHECK(c.uordblks + c.fordblks == c.arena, "mallinfo2: uordblks + fordblks == arena with a large block");
    CHECK(c.usmblks == 0, "mallinfo2: usmblks is 0, as glibc's");
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    struct mallinfo m = mallinfo(); /* deprecated, still exported */
#pragma GCC diagnostic pop
    struct mallinfo2 c2 = mallinfo2();
    CHECK(m.uordblks == (int)c2.uordblks && m.arena == (int)c2.arena && m.hblkhd == (int)c2.hblkhd,
          "mallinfo: uordblks %d, arena %d, hblkhd %d", m.uordblks, m.arena, m.hblkhd);
    free(big);
    struct mallinfo2 d = mallinfo2();
    CHECK(d.hblks == b.hblks && d.hblkhd == b.hblkhd,
          "mallinfo2: freed, the block leaves hblks/hblkhd (kept mappings are not counted): %zu, %zu", d.hblks,
          d.hblkhd);
    for (int i = 0; i < N; i++) free(ps[i]);
    struct mallinfo2 e = mallinfo2();
    CHECK(e.uordblks < b.uordblks - N * 900, "mallinfo2: uordblks fell after freeing (%zu -> %zu)", b.uordblks,
          e.uordblks);
    CHECK(e.uordblks + e.fordblks == e.arena, "mallinfo2: uordblks + fordblks == arena after freeing");
}

static void test_stats_output(void) {
    /* malloc_stats writes to stderr: catch it in a file. */
    fflush(stderr);
    FILE *f = tmpfile();
    int saved = dup(2);
    dup2(fileno(f), 2);
    malloc_stats();
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    char buf[4096];
    rewind(f);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    CHECK(n > 0 && strstr(buf, "tidemalloc"), "malloc_stats() wrote %zu bytes on stderr", n);

    f = tmpfile();
    int r = malloc_info(0, f);
    fflush(f);
    rewind(f);
    static char xml[65536];
    n = fread(xml, 1, sizeof xml - 1, f);
    xml[n] = 0;
    fclose(f);
    CHECK(r == 0 && strstr(xml, "<malloc") && strstr(xml, "</malloc>"), "malloc_info(0, fp) wrote XML (%zu bytes)", n);
    /* glibc's shape, then every figure of struct tidemalloc_stats in a tidemalloc element. */
    const char *names[] = {"in_use=", "page_bytes=", "free_in_pages=", "free_pages_dirty=", "free_spans_dirty=",
                           "large_cache_bytes=", "meta_segment_headers=", "meta_heaps=", "meta_large_table=",
                           "reserved_arena_peak="};
    const char *tide = strstr(xml, "<tidemalloc ");
    CHECK(tide && strstr(xml, "<total type=\"rest\"") && strstr(xml, "<total type=\"mmap\""),
          "malloc_info: glibc's totals and a tidemalloc element");
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        CHECK(strstr(tide, names[i]) != NULL, "malloc_info: the tidemalloc element has %s", names[i]);
    struct tidemalloc_stats st = stats();
    char mmap[128];
    snprintf(mmap, sizeof mmap, "<total type=\"mmap\" count=\"%zu\" size=\"%zu\"/>", st.large_blocks, st.large_bytes);
    CHECK(strstr(xml, mmap) != NULL, "malloc_info: the mmap total is the large blocks: %s", mmap);
    f = tmpfile();
    errno = 0;
    r = malloc_info(1, f);
    CHECK(r == -1 && errno == EINVAL, "malloc_info(1, fp) == -1, EINVAL");
    fclose(f);
}

/* Requests far beyond what the machine has (RAM + swap) fail, as with glibc: the kernel's
 * default (heuristic) overcommit refuses them, unless the mapping is made with
 * MAP_NORESERVE. Run by `api beyond-memory` (a test of its own). */
static void test_beyond_memory(void) {
    size_t sizes[] = {(size_t)1 << 44, (size_t)64 << 40};
    for (int i = 0; i < 2; i++) {
        size_t n = opaque(sizes[i]);
        void *p;
        errno = 0, p = malloc(n);
        CHECK(!p && errno == ENOMEM, "malloc(%zu GiB) (more than RAM + swap): NULL, ENOMEM", n >> 30);
        free(p);
        errno = 0, p = calloc(n >> 16, 65536);
        CHECK(!p && errno == ENOMEM, "calloc(%zu, 65536) (%zu GiB): NULL, ENOMEM", n >> 16, n >> 30);
        free(p);
        char *q = malloc(300 * KiB);
        fill(q, 300 * KiB, 5);
        errno = 0;
        char *r = realloc(q, n);
        CHECK(!r && errno == ENOMEM && check_fill(q, 300 * KiB, 5), "realloc(300 KiB block, %zu GiB): NULL, ENOMEM",
              n >> 30);
        free(r ? r : q);
    }
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 1 && strcmp(argv[1], "beyond-memory") == 0) {
        test_loaded();
        test_beyond_memory();
        printf("api beyond-memory: all %d checks passed\n", checks);
        return 0;
    }
    test_loaded();
    test_malloc_free();
    test_calloc();
    test_realloc();
    test_realloc_aligned();
    test_reallocarray();
    test_posix_memalign();
    test_aligned_alloc_memalign();
    test_valloc_pvalloc();
    test_free_sized();
    test_impossible_sizes();
    test_min_alignment();
    test_extensions();
    test_mallopt();
    test_mallopt_minus_one();
    test_perturb();
    test_libc_aliases();
    test_trim();
    test_mallinfo();
    test_stats_output();
    sink = NULL;
    printf("api: all %d checks passed\n", checks);
    return 0;
}
