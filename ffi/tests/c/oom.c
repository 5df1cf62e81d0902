/* Out of memory for real: RLIMIT_AS and RLIMIT_DATA set to the current usage + 256 MiB.
 * Every entry point asked for more than the limit (1 GiB) returns NULL with ENOMEM
 * (posix_memalign returns ENOMEM); then small blocks are allocated until malloc fails,
 * errno must be ENOMEM, everything is freed, and allocation works again. Exits 0 on success.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define MiB ((size_t)1 << 20)
#define GiB ((size_t)1 << 30)
#define HEADROOM (256 * MiB)
#define SMALL 4000
#define MAX_BLOCKS (2 * HEADROOM / SMALL) /* cap: twice what can fit */

static void *blocks[MAX_BLOCKS]; /* .bss: mapped before the limit is set */

static int failures;

#define CHECK(cond, ...)                                                                     \
    do {                                                                                     \
        if (cond) {                                                                          \
            printf("ok   ");                                                                 \
        } else {                                                                             \
            printf("FAIL ");                                                                 \
            failures++;                                                                      \
        }                                                                                    \
        printf(__VA_ARGS__);                                                                 \
        printf("\n");                                                                        \
        if (!(cond)) exit(1);                                                                \
    } while (0)

static size_t vm_size(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long pages = 0;
    if (!f || fscanf(f, "%lu", &pages) != 1) {
        perror("/proc/self/statm");
        exit(2);
    }
    fclose(f);
    return pages * (size_t)sysconf(_SC_PAGESIZE);
}

static size_t opaque(size_t x) {
    volatile size_t v = x;
    return v;
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("oom: starting\n"); /* stdout's buffer exists before the limit */
    /* Touch the block table so it is really part of the current usage. */
    memset(blocks, 0, sizeof blocks);

    size_t now = vm_size();
    struct rlimit rl = {now + HEADROOM, now + HEADROOM};
    CHECK(setrlimit(RLIMIT_AS, &rl) == 0, "RLIMIT_AS = %zu MiB (usage %zu MiB + 256 MiB)", rl.rlim_cur >> 20, now >> 20);
    CHECK(setrlimit(RLIMIT_DATA, &rl) == 0, "RLIMIT_DATA = %zu MiB", rl.rlim_cur >> 20);

    size_t big = opaque(GiB);
    void *p;
    errno = 0, p = malloc(big);
    CHECK(!p && errno == ENOMEM, "malloc(1 GiB): NULL, ENOMEM");
    errno = 0, p = calloc(1, big);
    CHECK(!p && errno == ENOMEM, "calloc(1, 1 GiB): NULL, ENOMEM");
    errno = 0, p = calloc(big / 4096, 4096);
    CHECK(!p && errno == ENOMEM, "calloc(262144, 4096): NULL, ENOMEM");
    char *small = malloc(1000);
    memset(small, 0x42, 1000);
    errno = 0, p = realloc(small, big);
    CHECK(!p && errno == ENOMEM, "realloc(1000-byte block, 1 GiB): NULL, ENOMEM");
    CHECK(small[0] == 0x42 && small[999] == 0x42, "the block is intact");
    char *large = malloc(200 * 1024);
    memset(large, 0x43, 200 * 1024);
    errno = 0, p = realloc(large, big);
    CHECK(!p && errno == ENOMEM, "realloc(200 KiB block, 1 GiB): NULL, ENOMEM");
    CHECK(large[0] == 0x43 && large[200 * 1024 - 1] == 0x43, "the block is intact");
    errno = 0, p = reallocarray(NULL, big / 8, 8);
    CHECK(!p && errno == ENOMEM, "reallocarray(NULL, 2^27, 8): NULL, ENOMEM");
    errno = 0, p = reallocarray(small, big / 8, 8);
    CHECK(!p && errno == ENOMEM && small[500] == 0x42, "reallocarray(block, 2^27, 8): NULL, ENOMEM, block intact");
    free(small);
    free(large);
    void *out = (void *)0x1234;
    int r = posix_memalign(&out, 64, big);
    CHECK(r == ENOMEM && out == (void *)0x1234, "posix_memalign(64, 1 GiB) returns ENOMEM (%d)", r);
    r = posix_memalign(&out, 8 * MiB, big);
    CHECK(r == ENOMEM && out == (void *)0x1234, "posix_memalign(8 MiB, 1 GiB) returns ENOMEM (%d)", r);
    errno = 0, p = aligned_alloc(4096, big);
    CHECK(!p && errno == ENOMEM, "aligned_alloc(4096, 1 GiB): NULL, ENOMEM");
    errno = 0, p = aligned_alloc(64, big);
    CHECK(!p && errno == ENOMEM, "aligned_alloc(64, 1 GiB): NULL, ENOMEM");
    errno = 0, p = memalign(128, big);
    CHECK(!p && errno == ENOMEM, "memalign(128, 1 GiB): NULL, ENOMEM");
    errno = 0, p = valloc(big);
    CHECK(!p && errno == ENOMEM, "valloc(1 GiB): NULL, ENOMEM");
    errno = 0, p = pvalloc(big);
    CHECK(!p && errno == ENOMEM, "pvalloc(1 GiB): NULL, ENOMEM");

    /* With the mmap threshold above the request, the arena must fail cleanly too. */
    CHECK(mallopt(M_MMAP_THRESHOLD, 512 * 1024 * 1024) == 1, "mallopt(M_MMAP_THRESHOLD, 512 MiB)");
    errno = 0, p = malloc(opaque(300 * MiB));
    CHECK(!p && errno == ENOMEM, "malloc(300 MiB) from the arena: NULL, ENOMEM");
    CHECK(mallopt(M_MMAP_THRESHOLD, 128 * 1024) == 1, "mallopt(M_MMAP_THRESHOLD, 128 KiB)");

    /* Small blocks until the limit. */
    size_t n = 0;
    errno = 0;
    while (n < MAX_BLOCKS) {
        void *b = malloc(SMALL);
        if (!b) break;
        memset(b, (int)n, 64);
        blocks[n++] = b;
    }
    int e = errno;
    CHECK(n < MAX_BLOCKS, "malloc(%d) failed after %zu blocks (%zu MiB)", SMALL, n, n * SMALL >> 20);
    CHECK(e == ENOMEM, "errno is ENOMEM (%d)", e);
    CHECK(n * SMALL > HEADROOM / 4, "at least a quarter of the headroom was usable");
    errno = 0, p = calloc(1, 100);
    int e2 = errno;
    /* the heap may still have a few blocks of other classes; only the errno matters if it fails */
    CHECK(p != NULL || e2 == ENOMEM, "calloc(1, 100) at the limit: %p, errno %d", p, e2);
    free(p);
    for (size_t i = 0; i < n; i++) {
        if (((unsigned char *)blocks[i])[63] != (unsigned char)i) CHECK(0, "block %zu intact", i);
        free(blocks[i]);
    }
    CHECK(1, "freed %zu blocks", n);

    /* Allocation works again, small and large, up to most of the headroom. */
    void *again = malloc(SMALL);
    CHECK(again != NULL, "malloc(%d) works again", SMALL);
    void *again_large = malloc(64 * MiB);
    CHECK(again_large != NULL, "malloc(64 MiB) works again");
    memset(again_large, 1, 64 * MiB);
    free(again_large);
    free(again);
    size_t m = 0;
    while (m < n / 2) {
        blocks[m] = malloc(SMALL);
        if (!blocks[m]) break;
        m++;
    }
    CHECK(m == n / 2, "%zu small blocks (half the earlier count) fit again", m);
    for (size_t i = 0; i < m; i++) free(blocks[i]);
    printf("oom: ok\n");
    return failures != 0;
}
