/* fragmentation: allocation patterns that leave holes. Each of 2 rounds:
 *  1. allocate N blocks (98% 16-256 B, 2% 1-8 KiB), fill them;
 *  2. free every other one;
 *  3. allocate 300-1000 B blocks into the freed slots (too big for the holes);
 *  4. free half of all slots again (slots i % 4 in {0, 1});
 *  5. allocate 16-64 B blocks into half of those (i % 4 == 0);
 *  6. free everything except a sparse 1/8 of the slots, kept until the end.
 * After the last round it prints the checksum and the resident set size
 * (final_rss_kb, from /proc/self/statm) with only the sparse survivors live,
 * then frees them. N = 1M * SCALE.
 * Usage: fragmentation SCALE THREADS   (THREADS ignored) */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WORKLOAD_NAME "fragmentation"
#include "workload.h"

static Rng rng;

/* block: u32 size, u32 tag, bytes (tag & 0xff), last byte (tag >> 8) */
static uint8_t *make(size_t size) {
    uint32_t tag = (uint32_t)rnd(&rng);
    uint8_t *p = malloc(size);
    if (!p) fail("malloc");
    uint32_t sz32 = (uint32_t)size;
    memcpy(p, &sz32, 4);
    memcpy(p + 4, &tag, 4);
    memset(p + 8, (int)(tag & 0xff), size - 8);
    p[size - 1] = (uint8_t)(tag >> 8);
    return p;
}
static uint64_t retire(uint8_t **slot) {
    uint8_t *p = *slot;
    if (!p) fail("empty slot");
    uint32_t size, tag;
    memcpy(&size, p, 4);
    memcpy(&tag, p + 4, 4);
    if (size < 16 || size > 8192) fail("size field");
    if (p[8] != (uint8_t)tag || p[size / 2] != (uint8_t)tag || p[size - 2] != (uint8_t)tag ||
        p[size - 1] != (uint8_t)(tag >> 8))
        fail("block contents");
    free(p);
    *slot = NULL;
    return mix(((uint64_t)tag << 32) | size);
}
static size_t small_or_page(void) {
    return below(&rng, 50) == 0 ? 1024 + below(&rng, 7 * 1024 + 1) : 16 + below(&rng, 256 - 16 + 1);
}

int main(int argc, char **argv) {
    double scale = argc > 1 ? strtod(argv[1], NULL) : 1.0;
    if (!(scale > 0)) { fprintf(stderr, "usage: %s SCALE THREADS\n", argv[0]); return 2; }
    rng.s = 0xf4a6u * 0x9E3779B97F4A7C15ULL;
    size_t n = (size_t)(1000000 * scale + 0.5);
    if (n < 1024) n = 1024;
    enum { ROUNDS = 2 };
    uint8_t **slot = calloc(n, sizeof *slot);
    uint8_t **kept = calloc(n / 8 * ROUNDS + ROUNDS, sizeof *kept);
    if (!slot || !kept) fail("calloc");
    size_t nkept = 0;
    uint64_t sum = 0;
    for (int round = 0; round < ROUNDS; round++) {
        for (size_t i = 0; i < n; i++) slot[i] = make(small_or_page());
        for (size_t i = 1; i < n; i += 2) sum += retire(&slot[i]);
        for (size_t i = 1; i < n; i += 2) slot[i] = make(300 + below(&rng, 701));
        for (size_t i = 0; i < n; i++)
            if (i % 4 < 2) sum += retire(&slot[i]);
        for (size_t i = 0; i < n; i += 4) slot[i] = make(16 + below(&rng, 49));
        for (size_t i = 0; i < n; i++) {
            if (!slot[i]) continue;
            if (i % 16 == 3 || i % 16 == 14) kept[nkept++] = slot[i], slot[i] = NULL;
            else sum += retire(&slot[i]);
        }
        sum = sum * 31 + nkept;
    }
    /* the sparse survivors are all that is live now */
    long rss_pages = -1, size_pages;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f || fscanf(f, "%ld %ld", &size_pages, &rss_pages) != 2) fail("reading /proc/self/statm");
    fclose(f);
    long rss_kb = rss_pages * (sysconf(_SC_PAGESIZE) / 1024);
    for (size_t i = 0; i < nkept; i++) sum += retire(&kept[i]);
    free(slot);
    free(kept);
    printf("checksum %llu\nfinal_rss_kb %ld\n", (unsigned long long)sum, rss_kb);
    return 0;
}
