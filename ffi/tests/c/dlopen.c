/* libtidemalloc.so loaded with dlopen: the process's malloc stays glibc's, which owns the
 * program break, so tidemalloc must never move it (its arena comes from anonymous mappings).
 * Blocks of both allocators are interleaved and checked, glibc's break grows and shrinks
 * (malloc_trim) in between.
 *
 * Usage: dlopen /path/to/libtidemalloc.so    Prints "dlopen: ok" and exits 0.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tidemalloc.h"

#define FAIL(...)                          \
    do {                                   \
        printf("FAIL ");                   \
        printf(__VA_ARGS__);               \
        printf("\n");                      \
        exit(1);                           \
    } while (0)

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) FAIL("usage: dlopen LIB");
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) FAIL("dlopen %s: %s", argv[1], dlerror());
    void *(*t_malloc)(size_t) = (void *(*)(size_t))dlsym(h, "malloc");
    void (*t_free)(void *) = (void (*)(void *))dlsym(h, "free");
    void (*t_stats)(struct tidemalloc_stats *) = (void (*)(struct tidemalloc_stats *))dlsym(h, "tidemalloc_get_stats");
    int (*t_trim)(size_t) = (int (*)(size_t))dlsym(h, "tidemalloc_trim");
    if (!t_malloc || !t_free || !t_stats || !t_trim) FAIL("dlsym");
    if (t_malloc == malloc) FAIL("dlsym(h, malloc) is the process's malloc");
    mallopt(M_MMAP_THRESHOLD, 4 << 20);

    enum { N = 20000, G = 64 };
    static unsigned char *tb[N];
    static unsigned char *gb[G];
    for (int round = 0; round < 6; round++) {
        for (int i = 0; i < N; i++) {
            size_t n = 200 + (size_t)(i % 50) * 40;
            tb[i] = t_malloc(n);
            if (!tb[i]) FAIL("tidemalloc malloc(%zu)", n);
            memset(tb[i], (unsigned char)(i + round), n);
            if (i % (N / G) == 0 && i / (N / G) < G) {
                int g = i / (N / G);
                gb[g] = malloc(64 * 1024 + (size_t)g * 8192);
                if (!gb[g]) FAIL("glibc malloc(%zu) round %d block %d: %m", 64 * 1024 + (size_t)g * 8192, round, g);
                memset(gb[g], (unsigned char)(g ^ round), 64 * 1024 + (size_t)g * 8192);
            }
        }
        for (int g = 0; g < G; g++) {
            for (size_t o = 0; o < 64 * 1024 + (size_t)g * 8192; o += 512)
                if (gb[g][o] != (unsigned char)(g ^ round)) FAIL("glibc block %d lost its contents", g);
            free(gb[g]);
        }
        malloc_trim(0);
        for (int i = 0; i < N; i++) {
            size_t n = 200 + (size_t)(i % 50) * 40;
            for (size_t o = 0; o < n; o += 64)
                if (tb[i][o] != (unsigned char)(i + round)) FAIL("tidemalloc block %d lost its contents", i);
            t_free(tb[i]);
        }
        t_trim(0);
    }
    struct tidemalloc_stats s;
    t_stats(&s);
    printf("tidemalloc: brk_calls %zu reserved_brk %zu reserved_arena_mmap %zu mmap_calls %zu\n", s.brk_calls,
           s.reserved_brk, s.reserved_arena_mmap, s.mmap_calls);
    if (s.brk_calls != 0 || s.reserved_brk != 0) FAIL("tidemalloc moved the break of a process whose malloc is glibc's");
    if (s.mmap_calls == 0) FAIL("tidemalloc made no mapping: its arena came from nowhere?");
    printf("dlopen: ok\n");
    return 0;
}
