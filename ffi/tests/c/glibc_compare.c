/* Answers that must be glibc 2.36's, printed one per line: the test runs this program once on
 * glibc (no LD_PRELOAD) and once on tidemalloc and compares the outputs.
 *
 * - mallopt's return value for every parameter (known and unknown) and a range of values;
 * - NULL or not, and errno, of memalign, posix_memalign and aligned_alloc (power-of-two
 *   alignments only: for the others tidemalloc follows glibc 2.38, see api.c) at the edges of
 *   alignment and size;
 * - M_PERTURB and MALLOC_PERTURB_: malloc'ed memory filled with c ^ 0xff, calloc's zeroed.
 *
 * Usage: glibc_compare [perturb-env]   (perturb-env: run with MALLOC_PERTURB_=90 set)
 * Compile with -fno-builtin.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static size_t opaque(size_t x) {
    volatile size_t v = x;
    return v;
}

static size_t count_bytes(const unsigned char *p, size_t n, unsigned char c) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += p[i] == c;
    return k;
}

/* "all" when every byte of p[0..n) is c, else "not all": memory that is not filled holds old
 * data, whose bytes may equal c by chance (pointers, the allocators' own words). */
static const char *filled(const unsigned char *p, size_t n, unsigned char c) {
    return count_bytes(p, n, c) == n ? "all" : "not all";
}

/* Sizes differ from one report to the next: glibc does not perturb blocks it hands out again
 * from its per-thread cache (tcache), so each report asks for sizes not freed before. */
static void perturb_report(const char *when) {
    static size_t k;
    k++;
    size_t n1 = 100 + 160 * k, n2 = 3000 + 400 * k;
    unsigned char *p = malloc(n1), *q = malloc(n2), *z = calloc(1, n1), *a = memalign(64, n1);
    printf("%s: malloc(%zu) bytes == 0xa5: %s, malloc(%zu): %s, calloc(1, %zu) zero: %s, memalign(64, %zu): %s\n",
           when, n1, filled(p, n1, 0xa5), n2, filled(q, n2, 0xa5), n1, filled(z, n1, 0), n1, filled(a, n1, 0xa5));
    free(p);
    free(q);
    free(z);
    free(a);
    /* A block above the mmap threshold: glibc fills its mmapped chunks too. */
    size_t n3 = ((size_t)1 << 20) + 4096 * k;
    unsigned char *l = malloc(n3);
    printf("%s: malloc(%zu) bytes == 0xa5: %s\n", when, n3, filled(l, n3, 0xa5));
    free(l);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 1 && strcmp(argv[1], "perturb-env") == 0) {
        perturb_report("MALLOC_PERTURB_=90");
        return 0;
    }
    int params[] = {1, -1, -2, -3, -4, -5, -6, -7, -8, 0, 2, 3, 4, 5, 12345, -9, -100, INT_MAX, INT_MIN};
    int values[] = {0, 1, -1, -2, 80, 160, 161, 4096, 64 * 1024, 32 << 20, (32 << 20) + 1, 64 << 20, 1 << 30,
                    INT_MAX, INT_MIN};
    for (size_t i = 0; i < sizeof params / sizeof *params; i++) {
        printf("mallopt(%d, v):", params[i]);
        for (size_t j = 0; j < sizeof values / sizeof *values; j++) printf(" %d", mallopt(params[i], values[j]));
        printf("\n");
        /* Back to sane settings before the next parameter. */
        mallopt(M_MMAP_THRESHOLD, 128 * 1024);
        mallopt(M_TRIM_THRESHOLD, 128 * 1024);
        mallopt(M_TOP_PAD, 0);
        mallopt(M_MMAP_MAX, 65536);
        mallopt(M_PERTURB, 0);
    }

    size_t aligns[] = {0, 1, 3, 8, 16, 24, 64, 65, 4096, (size_t)1 << 62, ((size_t)1 << 62) + 1, (size_t)1 << 63,
                       ((size_t)1 << 63) + 1, SIZE_MAX};
    size_t sizes[] = {0, 100, (size_t)1 << 40, PTRDIFF_MAX, SIZE_MAX / 2 + 1, SIZE_MAX - 4096, SIZE_MAX};
    for (size_t i = 0; i < sizeof aligns / sizeof *aligns; i++)
        for (size_t j = 0; j < sizeof sizes / sizeof *sizes; j++) {
            size_t a = opaque(aligns[i]), n = opaque(sizes[j]);
            errno = 0;
            void *p = memalign(a, n);
            printf("memalign(%#zx, %#zx): %s errno %d\n", a, n, p ? "ok" : "NULL", p ? 0 : errno);
            free(p);
            errno = 0;
            p = (void *)0x1234;
            int r = posix_memalign(&p, a, n);
            printf("posix_memalign(%#zx, %#zx): %d errno %d memptr %s\n", a, n, r, errno,
                   r ? (p == (void *)0x1234 ? "kept" : "changed") : "set");
            if (r == 0) free(p);
            if (a != 0 && (a & (a - 1)) == 0) {
                errno = 0;
                p = aligned_alloc(a, n);
                printf("aligned_alloc(%#zx, %#zx): %s errno %d\n", a, n, p ? "ok" : "NULL", p ? 0 : errno);
                free(p);
            }
        }

    perturb_report("no perturb");
    printf("mallopt(M_PERTURB, 0x5a) = %d\n", mallopt(M_PERTURB, 0x5a));
    perturb_report("M_PERTURB 0x5a");
    printf("mallopt(M_PERTURB, 0x15a) = %d\n", mallopt(M_PERTURB, 0x15a));
    perturb_report("M_PERTURB 0x15a (the low byte counts)");
    mallopt(M_PERTURB, 0);
    printf("glibc_compare: done\n");
    return 0;
}
