/* phased: a long-running process whose live set rises and falls. 3 cycles of a high
 * phase then a low phase:
 *  - high: a worker thread allocates and fills 200 MB * SCALE of blocks (16 B - 4 KiB
 *    log-uniform; 1 in 1024 of 64-512 KiB, one byte written per 4 KiB page) and hands
 *    them to the main thread, which verifies them and frees all but 1 in 4096 of the
 *    small ones (kept to the end): cross-thread frees into a thread that then stays
 *    alive and idle;
 *  - low: for 1.5 s * SCALE of wall clock, the main thread churns a set of 16384 blocks
 *    of 16-240 B (about 2 MB live): verify and free one, allocate a replacement.
 * At the end of each low phase it reads its resident set size from /proc/self/statm;
 * after the last it prints `low_rss_kb`, the largest of the 3 readings. The checksum
 * covers the high-phase blocks only (how many churn steps run depends on the clock).
 * Usage: phased SCALE THREADS   (THREADS ignored) */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define WORKLOAD_NAME "phased"
#include "workload.h"

enum { CYCLES = 3, CHURN = 16384, KEEP_ONE_IN = 4096, PAGE = 4096 };
#define LARGE_MIN (64u << 10)

/* log-uniform in [2^lo, 2^hi) */
static size_t log_size(Rng *r, unsigned lo, unsigned hi) {
    unsigned e = lo + (unsigned)below(r, hi - lo);
    return ((size_t)1 << e) + (size_t)below(r, (uint64_t)1 << e);
}

/* Blocks: u32 size, u32 tag; small ones filled with (tag & 0xff), last byte (tag >> 8);
 * large ones (>= 64 KiB) get (tag + page) at the start of every 4 KiB page after the
 * first and (tag >> 8) as the last byte. */
static uint8_t *make(size_t size, uint32_t tag) {
    uint8_t *p = malloc(size);
    if (!p) fail("malloc");
    uint32_t sz32 = (uint32_t)size;
    memcpy(p, &sz32, 4);
    memcpy(p + 4, &tag, 4);
    if (size < LARGE_MIN) memset(p + 8, (int)(tag & 0xff), size - 8);
    else
        for (size_t o = PAGE; o < size; o += PAGE) p[o] = (uint8_t)(tag + o / PAGE);
    p[size - 1] = (uint8_t)(tag >> 8);
    return p;
}
static uint64_t retire(uint8_t *p) {
    uint32_t size, tag;
    memcpy(&size, p, 4);
    memcpy(&tag, p + 4, 4);
    if (size < 16 || size > (512u << 10) * 2) fail("size field");
    if (p[size - 1] != (uint8_t)(tag >> 8)) fail("last byte");
    if (size < LARGE_MIN) {
        if (p[8] != (uint8_t)tag || p[size / 2] != (uint8_t)tag || p[size - 2] != (uint8_t)tag)
            fail("block contents");
    } else {
        for (size_t o = PAGE; o < size; o += PAGE)
            if (p[o] != (uint8_t)(tag + o / PAGE)) fail("page contents");
    }
    free(p);
    return mix(((uint64_t)tag << 32) | size);
}

/* The worker: waits for a phase number, fills hi[] with that phase's blocks. */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int order = -1, done = -1; /* phase to build (CYCLES: exit), last phase built */
static uint8_t **hi;
static size_t nhi, hi_cap;
static size_t hi_bytes;

static void *worker(void *arg) {
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&mu);
        while (order == done) pthread_cond_wait(&cv, &mu);
        int phase = order;
        pthread_mutex_unlock(&mu);
        if (phase == CYCLES) return NULL;
        Rng r = { mix(0x9ba5edULL + (uint64_t)phase) | 1 };
        size_t bytes = 0;
        nhi = 0;
        while (bytes < hi_bytes) {
            size_t size = below(&r, 1024) == 0 ? log_size(&r, 16, 19) : log_size(&r, 4, 12);
            if (nhi == hi_cap) fail("high-phase block array full");
            hi[nhi++] = make(size, (uint32_t)rnd(&r));
            bytes += size;
        }
        pthread_mutex_lock(&mu);
        done = phase;
        pthread_cond_broadcast(&cv);
        pthread_mutex_unlock(&mu);
    }
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static long rss_kb(void) {
    long size_pages, rss_pages;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f || fscanf(f, "%ld %ld", &size_pages, &rss_pages) != 2) fail("reading /proc/self/statm");
    fclose(f);
    return rss_pages * (sysconf(_SC_PAGESIZE) / 1024);
}

int main(int argc, char **argv) {
    double scale = argc > 1 ? strtod(argv[1], NULL) : 1.0;
    if (!(scale > 0)) { fprintf(stderr, "usage: %s SCALE THREADS\n", argv[0]); return 2; }
    hi_bytes = (size_t)(200e6 * scale + 0.5);
    hi_cap = hi_bytes / 16 + 1;
    hi = malloc(hi_cap * sizeof *hi);
    uint8_t **kept = malloc((hi_cap / KEEP_ONE_IN + 1) * CYCLES * sizeof *kept);
    uint8_t **churn = malloc(CHURN * sizeof *churn);
    if (!hi || !kept || !churn) fail("malloc");
    Rng cr = { 0xc4a2f1ULL * 0x9E3779B97F4A7C15ULL }; /* churn: not in the checksum */
    for (size_t i = 0; i < CHURN; i++) churn[i] = make(16 + (size_t)below(&cr, 225), (uint32_t)rnd(&cr));
    pthread_t th;
    if (pthread_create(&th, NULL, worker, NULL) != 0) fail("pthread_create");
    uint64_t sum = 0;
    size_t nkept = 0;
    long low_max = 0;
    for (int phase = 0; phase < CYCLES; phase++) {
        pthread_mutex_lock(&mu);
        order = phase;
        pthread_cond_broadcast(&cv);
        while (done != phase) pthread_cond_wait(&cv, &mu);
        pthread_mutex_unlock(&mu);
        for (size_t i = 0; i < nhi; i++) {
            uint32_t size;
            memcpy(&size, hi[i], 4);
            if (i % KEEP_ONE_IN == KEEP_ONE_IN / 2 && size < LARGE_MIN) kept[nkept++] = hi[i];
            else sum += retire(hi[i]);
        }
        sum = sum * 31 + nhi;
        double end = now() + 1.5 * scale;
        do {
            for (int k = 0; k < 256; k++) {
                size_t i = (size_t)below(&cr, CHURN);
                (void)retire(churn[i]);
                churn[i] = make(16 + (size_t)below(&cr, 225), (uint32_t)rnd(&cr));
            }
        } while (now() < end);
        long rss = rss_kb();
        if (rss > low_max) low_max = rss;
    }
    pthread_mutex_lock(&mu);
    order = CYCLES;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    pthread_join(th, NULL);
    for (size_t i = 0; i < nkept; i++) sum += retire(kept[i]);
    for (size_t i = 0; i < CHURN; i++) (void)retire(churn[i]);
    free(hi);
    free(kept);
    free(churn);
    printf("checksum %llu\nlow_rss_kb %ld\n", (unsigned long long)(sum * 31 + nkept), low_max);
    return 0;
}
