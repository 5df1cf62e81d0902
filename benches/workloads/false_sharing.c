/* false_sharing: blocks of different threads in one cache line. THREADS threads (in a
 * ring) each run 2M * SCALE / THREADS steps: allocate a fresh 16-64 B block, increment
 * a counter in it 1000 times, interleaved with 1000 increments of a counter in one of
 * up to 4 blocks adopted from the previous thread in the ring, check it and free it.
 * Every 16th step it also allocates a block and hands it to the next thread (a
 * mutex-protected inbox), which adopts it, writes to it in its own steps and frees it
 * (checking its counter) once 4 newer ones have arrived. If an allocator puts a block
 * handed to another thread in the same cache line as the blocks its allocating thread
 * keeps writing, both threads' increments miss. The checksum depends on THREADS.
 * Usage: false_sharing SCALE THREADS */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WORKLOAD_NAME "false_sharing"
#include "workload.h"

enum { WRITES = 1000, HAND_EVERY = 16, ADOPT = 4, INBOX = 1024 };

/* block layout: u32 tag, u8 size, 3 bytes unused, u64 counter, then (above 16 B) a last
 * byte (tag >> 8) */
static uint8_t *make(Rng *r) {
    uint64_t x = rnd(r);
    size_t size = 16 + (size_t)(x % 49);
    uint32_t tag = (uint32_t)(x >> 32);
    uint8_t *p = malloc(size);
    if (!p) fail("malloc");
    memcpy(p, &tag, 4);
    p[4] = (uint8_t)size;
    uint64_t zero = 0;
    memcpy(p + 8, &zero, 8);
    if (size > 16) p[size - 1] = (uint8_t)(tag >> 8);
    return p;
}
/* Checks the block's counter, frees it and returns its hash. */
static uint64_t retire(uint8_t *p, uint64_t counter) {
    uint32_t tag;
    memcpy(&tag, p, 4);
    size_t size = p[4];
    if (size < 16 || size > 64 || (size > 16 && p[size - 1] != (uint8_t)(tag >> 8))) fail("block contents");
    if (*(volatile uint64_t *)(p + 8) != counter) fail("counter");
    free(p);
    return mix(((uint64_t)tag << 8) | size);
}

typedef struct {
    pthread_mutex_t mu;
    size_t head, count;
    uint8_t *ring[INBOX];
    int index;
    long steps;
    uint64_t sum;
    char pad[64];
} Worker;

static Worker *workers;
static int nthreads;
static atomic_int done_sending;

/* Blocks this thread writes to on behalf of their allocating thread. */
typedef struct {
    uint8_t *p[ADOPT];
    uint64_t writes[ADOPT];
    size_t head, count;
    uint64_t sum;
} Adopted;

static void adopt(Adopted *a, uint8_t *p) {
    if (a->count == ADOPT) {
        a->sum += retire(a->p[a->head], a->writes[a->head]);
        a->head = (a->head + 1) % ADOPT;
        a->count--;
    }
    size_t i = (a->head + a->count++) % ADOPT;
    a->p[i] = p;
    a->writes[i] = 0;
}
static void drain(Worker *w, Adopted *a) {
    pthread_mutex_lock(&w->mu);
    while (w->count) {
        adopt(a, w->ring[w->head]);
        w->head = (w->head + 1) % INBOX;
        w->count--;
    }
    pthread_mutex_unlock(&w->mu);
}
static void send(Worker *to, uint8_t *p, Worker *self, Adopted *a) {
    for (;;) {
        pthread_mutex_lock(&to->mu);
        if (to->count < INBOX) {
            to->ring[(to->head + to->count++) % INBOX] = p;
            pthread_mutex_unlock(&to->mu);
            return;
        }
        pthread_mutex_unlock(&to->mu);
        if (to != self) drain(self, a);
        sched_yield();
    }
}

static void *run(void *arg) {
    Worker *w = arg;
    Worker *next = &workers[(w->index + 1) % nthreads];
    Rng r = { mix(0xfa15e5ULL + (uint64_t)w->index) | 1 };
    Adopted a = { .head = 0, .count = 0, .sum = 0 };
    uint64_t sum = 0;
    for (long s = 0; s < w->steps; s++) {
        if (s % HAND_EVERY == 0) send(next, make(&r), w, &a);
        drain(w, &a);
        uint8_t *p = make(&r);
        volatile uint64_t *own = (volatile uint64_t *)(p + 8);
        if (a.count) {
            size_t i = (a.head + (size_t)s % a.count) % ADOPT;
            volatile uint64_t *other = (volatile uint64_t *)(a.p[i] + 8);
            for (int k = 0; k < WRITES; k++) {
                *own += 1;
                *other += 1;
            }
            a.writes[i] += WRITES;
        } else {
            for (int k = 0; k < WRITES; k++) *own += 1;
        }
        sum += retire(p, WRITES);
    }
    /* keep receiving until every thread has sent all it sends */
    atomic_fetch_add(&done_sending, 1);
    while (atomic_load(&done_sending) < nthreads) {
        drain(w, &a);
        sched_yield();
    }
    drain(w, &a);
    while (a.count) {
        a.sum += retire(a.p[a.head], a.writes[a.head]);
        a.head = (a.head + 1) % ADOPT;
        a.count--;
    }
    w->sum = sum + a.sum;
    return NULL;
}

int main(int argc, char **argv) {
    double scale = argc > 1 ? strtod(argv[1], NULL) : 1.0;
    int threads = argc > 2 ? atoi(argv[2]) : 2;
    if (!(scale > 0) || threads < 1 || threads > 1024) {
        fprintf(stderr, "usage: %s SCALE THREADS\n", argv[0]);
        return 2;
    }
    nthreads = threads;
    long total = (long)(2000000 * scale + 0.5);
    workers = malloc((size_t)threads * sizeof *workers);
    pthread_t *th = malloc((size_t)threads * sizeof *th);
    if (!workers || !th) fail("malloc");
    for (int i = 0; i < threads; i++) {
        memset(&workers[i], 0, sizeof workers[i]);
        pthread_mutex_init(&workers[i].mu, NULL);
        workers[i].index = i;
        workers[i].steps = total / threads;
    }
    for (int i = 0; i < threads; i++)
        if (pthread_create(&th[i], NULL, run, &workers[i]) != 0) fail("pthread_create");
    uint64_t sum = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(th[i], NULL);
        sum += workers[i].sum;
        pthread_mutex_destroy(&workers[i].mu);
    }
    free(workers);
    free(th);
    printf("checksum %llu\n", (unsigned long long)sum);
    return 0;
}
