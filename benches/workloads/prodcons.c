/* prodcons: producer/consumer hand-off. A producer thread allocates blocks of
 * 16 B - 4 KiB (log-uniform), writes them and pushes them (in batches of 256)
 * through a bounded mutex/condvar queue (8 batches) to a consumer thread, which
 * checks and frees them: every free is a cross-thread free.
 * THREADS / 2 independent producer/consumer pairs (at least one) share a fixed
 * total number of blocks.
 * Usage: prodcons SCALE THREADS */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WORKLOAD_NAME "prodcons"
#include "workload.h"

enum { BATCH = 256, QB = 8 };  /* at most QB * BATCH blocks in flight per pair */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t not_full, not_empty;
    size_t head, count;           /* ring of QB batches */
    size_t n[QB];
    uint8_t *slot[QB][BATCH];
    long total;      /* blocks to transfer */
    uint64_t seed;
    uint64_t sum;    /* consumer's checksum */
    char pad[64];
} Pair;

static void push_batch(Pair *pr, uint8_t **b, size_t n) {
    pthread_mutex_lock(&pr->mu);
    while (pr->count == QB) pthread_cond_wait(&pr->not_full, &pr->mu);
    size_t i = (pr->head + pr->count) % QB;
    memcpy(pr->slot[i], b, n * sizeof *b);
    pr->n[i] = n;
    pr->count++;
    pthread_cond_signal(&pr->not_empty);
    pthread_mutex_unlock(&pr->mu);
}
static size_t pop_batch(Pair *pr, uint8_t **b) {
    pthread_mutex_lock(&pr->mu);
    while (pr->count == 0) pthread_cond_wait(&pr->not_empty, &pr->mu);
    size_t n = pr->n[pr->head];
    memcpy(b, pr->slot[pr->head], n * sizeof *b);
    pr->head = (pr->head + 1) % QB;
    pr->count--;
    pthread_cond_signal(&pr->not_full);
    pthread_mutex_unlock(&pr->mu);
    return n;
}

static void *producer(void *arg) {
    Pair *pr = arg;
    Rng r = { pr->seed };
    uint8_t *b[BATCH];
    size_t nb = 0;
    for (long i = 0; i < pr->total; i++) {
        unsigned e = 4 + (unsigned)below(&r, 8); /* 2^4 .. 2^12 */
        size_t size = ((size_t)1 << e) + (size_t)below(&r, (uint64_t)1 << e);
        if (size > 4096) size = 4096;
        uint32_t tag = (uint32_t)rnd(&r);
        uint8_t *p = malloc(size);
        if (!p) fail("malloc");
        uint32_t sz32 = (uint32_t)size;
        memcpy(p, &sz32, 4);
        memcpy(p + 4, &tag, 4);
        memset(p + 8, (int)(tag & 0xff), size - 8);
        p[size - 1] = (uint8_t)(tag >> 8);
        b[nb++] = p;
        if (nb == BATCH) {
            push_batch(pr, b, nb);
            nb = 0;
        }
    }
    if (nb) push_batch(pr, b, nb);
    return NULL;
}

static void *consumer(void *arg) {
    Pair *pr = arg;
    uint64_t sum = 0;
    uint8_t *b[BATCH];
    long got = 0;
    while (got < pr->total) {
        size_t n = pop_batch(pr, b);
        for (size_t k = 0; k < n; k++) {
            uint8_t *p = b[k];
            uint32_t size, tag;
            memcpy(&size, p, 4);
            memcpy(&tag, p + 4, 4);
            if (size < 16 || size > 4096) fail("size field");
            if (p[8] != (uint8_t)tag || p[size / 2] != (uint8_t)tag ||
                p[size - 2] != (uint8_t)tag || p[size - 1] != (uint8_t)(tag >> 8))
                fail("block contents");
            free(p);
            sum += mix(((uint64_t)tag << 32) | size);
        }
        got += (long)n;
    }
    if (got != pr->total) fail("block count");
    pr->sum = sum;
    return NULL;
}

int main(int argc, char **argv) {
    double scale = argc > 1 ? strtod(argv[1], NULL) : 1.0;
    int threads = argc > 2 ? atoi(argv[2]) : 2;
    if (!(scale > 0) || threads < 1 || threads > 1024) {
        fprintf(stderr, "usage: %s SCALE THREADS\n", argv[0]);
        return 2;
    }
    int pairs = threads / 2 < 1 ? 1 : threads / 2;
    long total = (long)(20000000 * scale + 0.5);
    Pair *ps = malloc((size_t)pairs * sizeof *ps);
    pthread_t *th = malloc((size_t)pairs * 2 * sizeof *th);
    if (!ps || !th) fail("malloc");
    for (int i = 0; i < pairs; i++) {
        memset(&ps[i], 0, sizeof ps[i]);
        pthread_mutex_init(&ps[i].mu, NULL);
        pthread_cond_init(&ps[i].not_full, NULL);
        pthread_cond_init(&ps[i].not_empty, NULL);
        ps[i].total = total / pairs;
        ps[i].seed = mix(0x9c0d5ULL + (uint64_t)i) | 1;
        ps[i].sum = 0;
        if (pthread_create(&th[2 * i], NULL, consumer, &ps[i]) != 0 ||
            pthread_create(&th[2 * i + 1], NULL, producer, &ps[i]) != 0)
            fail("pthread_create");
    }
    uint64_t sum = 0;
    for (int i = 0; i < pairs; i++) {
        pthread_join(th[2 * i], NULL);
        pthread_join(th[2 * i + 1], NULL);
        sum += ps[i].sum;
        pthread_mutex_destroy(&ps[i].mu);
        pthread_cond_destroy(&ps[i].not_full);
        pthread_cond_destroy(&ps[i].not_empty);
    }
    free(ps);
    free(th);
    printf("checksum %llu\n", (unsigned long long)sum);
    return 0;
}
