/* prodcons_tiny: cross-thread frees of tiny blocks at a very high rate. THREADS / 2
 * producer/consumer pairs (at least one); each producer allocates blocks of 16-64 B,
 * writes a tag at the start and a byte at the end, and passes them to its consumer
 * through a lock-free single-producer/single-consumer ring of 4096 pointers (C11
 * atomics, published in batches of 64; both sides spin with sched_yield when it is full
 * or empty); the consumer checks and frees them. The pairs share 20M blocks at SCALE 1.
 * Usage: prodcons_tiny SCALE THREADS */
#include <pthread.h>
#include <sched.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WORKLOAD_NAME "prodcons_tiny"
#include "workload.h"

enum { RING = 4096, BATCH = 64 }; /* RING a power of two, a multiple of BATCH */
typedef struct {
    alignas(64) atomic_size_t head; /* next slot the consumer reads */
    alignas(64) atomic_size_t tail; /* next slot the producer writes */
    alignas(64) uint8_t *slot[RING];
    long total;   /* blocks to transfer */
    uint64_t seed;
    uint64_t sum; /* consumer's checksum */
} Pair;

static void *producer(void *arg) {
    Pair *pr = arg;
    Rng r = { pr->seed };
    size_t tail = 0, head = 0; /* head: the consumer's, as last seen */
    for (long i = 0; i < pr->total;) {
        size_t n = pr->total - i < BATCH ? (size_t)(pr->total - i) : BATCH;
        while (tail + n - head > RING) {
            head = atomic_load_explicit(&pr->head, memory_order_acquire);
            if (tail + n - head > RING) sched_yield();
        }
        for (size_t k = 0; k < n; k++) {
            uint64_t x = rnd(&r);
            size_t size = 16 + (size_t)(x % 49);
            uint32_t tag = (uint32_t)(x >> 32);
            uint8_t *p = malloc(size);
            if (!p) fail("malloc");
            memcpy(p, &tag, 4);
            p[4] = (uint8_t)size;
            p[size - 1] = (uint8_t)(tag >> 8);
            pr->slot[(tail + k) & (RING - 1)] = p;
        }
        tail += n;
        atomic_store_explicit(&pr->tail, tail, memory_order_release);
        i += (long)n;
    }
    return NULL;
}

static void *consumer(void *arg) {
    Pair *pr = arg;
    uint64_t sum = 0;
    size_t head = 0, tail = 0; /* tail: the producer's, as last seen */
    while (head < (size_t)pr->total) {
        while (head == tail) {
            tail = atomic_load_explicit(&pr->tail, memory_order_acquire);
            if (head == tail) sched_yield();
        }
        size_t end = tail - head > BATCH ? head + BATCH : tail;
        for (; head < end; head++) {
            uint8_t *p = pr->slot[head & (RING - 1)];
            uint32_t tag;
            memcpy(&tag, p, 4);
            size_t size = p[4];
            if (size < 16 || size > 64 || p[size - 1] != (uint8_t)(tag >> 8)) fail("block contents");
            free(p);
            sum += mix(((uint64_t)tag << 8) | size);
        }
        atomic_store_explicit(&pr->head, head, memory_order_release);
    }
    if (head != (size_t)pr->total) fail("block count");
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
    Pair *ps = aligned_alloc(64, (size_t)pairs * sizeof *ps);
    pthread_t *th = malloc((size_t)pairs * 2 * sizeof *th);
    if (!ps || !th) fail("malloc");
    for (int i = 0; i < pairs; i++) {
        atomic_init(&ps[i].head, 0);
        atomic_init(&ps[i].tail, 0);
        ps[i].total = total / pairs;
        ps[i].seed = mix(0x7191c0ULL + (uint64_t)i) | 1;
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
    }
    free(ps);
    free(th);
    printf("checksum %llu\n", (unsigned long long)sum);
    return 0;
}
