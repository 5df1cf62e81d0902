/* server: multi-threaded request processing with cross-thread frees.
 * THREADS workers each handle a fixed share of requests. A request allocates
 * 2-8 blocks (16 B - 16 KiB log-uniform, rarely 16 KiB - 256 KiB), fills them,
 * keeps a few (freed at the end of the request, or parked in a small per-worker
 * cache of longer-lived blocks) and hands most to another worker through that
 * worker's mutex-protected inbox (in batches of up to 16); each worker verifies
 * and frees what it receives, so cross-thread frees dominate.
 * Usage: server SCALE THREADS */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WORKLOAD_NAME "server"
#include "workload.h"

/* log-uniform in [2^lo, 2^hi) */
static size_t log_size(Rng *r, unsigned lo, unsigned hi) {
    unsigned e = lo + (unsigned)below(r, hi - lo);
    return ((size_t)1 << e) + (size_t)below(r, (uint64_t)1 << e);
}

/* block layout: u32 size, u32 tag, then bytes (tag & 0xff), last byte (tag >> 8) */
static uint8_t *make_block(Rng *r) {
    size_t size = below(r, 512) == 0 ? log_size(r, 14, 18) : log_size(r, 4, 14);
    if (size < 16) size = 16;
    uint32_t tag = (uint32_t)rnd(r);
    uint8_t *p = malloc(size);
    if (!p) fail("malloc");
    uint32_t sz32 = (uint32_t)size;
    memcpy(p, &sz32, 4);
    memcpy(p + 4, &tag, 4);
    memset(p + 8, (int)(tag & 0xff), size - 8);
    p[size - 1] = (uint8_t)(tag >> 8);
    return p;
}
static uint64_t consume_block(uint8_t *p) {
    uint32_t size, tag;
    memcpy(&size, p, 4);
    memcpy(&tag, p + 4, 4);
    if (size < 16 || size > (1u << 18)) fail("block size field");
    if (p[8] != (uint8_t)tag || p[size / 2] != (uint8_t)tag || p[size - 2] != (uint8_t)tag ||
        p[size - 1] != (uint8_t)(tag >> 8))
        fail("block contents");
    free(p);
    return mix(((uint64_t)tag << 32) | size);
}

enum { QCAP = 4096, CACHE = 64, OUTB = 16 };
typedef struct {
    pthread_mutex_t mu;
    size_t head, count;
    uint8_t *ring[QCAP];
    char pad[64];
} Queue;

static Queue *queues;
static int nthreads;
static long per_thread;
static atomic_int done;

typedef struct {
    int id;
    uint64_t sum;
    uint64_t received;
    uint8_t **out;   /* nthreads outboxes of OUTB blocks */
    size_t *nout;
    uint8_t *batch[QCAP];
} Worker;

static size_t drain(Worker *w) {
    Queue *q = &queues[w->id];
    pthread_mutex_lock(&q->mu);
    size_t n = q->count;
    for (size_t i = 0; i < n; i++) w->batch[i] = q->ring[(q->head + i) % QCAP];
    q->head = (q->head + n) % QCAP;
    q->count = 0;
    pthread_mutex_unlock(&q->mu);
    for (size_t i = 0; i < n; i++) w->sum += consume_block(w->batch[i]);
    w->received += n;
    return n;
}

/* move w's outbox for dst into dst's inbox (waiting while it is full) */
static void flush_to(Worker *w, int dst) {
    Queue *q = &queues[dst];
    uint8_t **out = w->out + (size_t)dst * OUTB;
    size_t n = w->nout[dst], i = 0;
    while (i < n) {
        pthread_mutex_lock(&q->mu);
        while (i < n && q->count < QCAP) {
            q->ring[(q->head + q->count) % QCAP] = out[i++];
            q->count++;
        }
        pthread_mutex_unlock(&q->mu);
        if (i < n && drain(w) == 0) sched_yield();
    }
    w->nout[dst] = 0;
}
static void send_to(Worker *w, int dst, uint8_t *p) {
    w->out[(size_t)dst * OUTB + w->nout[dst]++] = p;
    if (w->nout[dst] == OUTB) flush_to(w, dst);
}

static void *worker(void *arg) {
    Worker *w = arg;
    Rng r = { mix(0x5e4e4ULL + (uint64_t)w->id * 7919) | 1 };
    uint8_t *cache[CACHE] = { 0 };
    uint8_t *keep[8];
    for (long req = 0; req < per_thread; req++) {
        if ((req & 3) == 0) drain(w);
        int nb = 2 + (int)below(&r, 7), nk = 0;
        for (int i = 0; i < nb; i++) {
            uint8_t *p = make_block(&r);
            uint64_t k = below(&r, 16);
            if (nthreads > 1 && k < 13) {
                int dst = (int)below(&r, (uint64_t)nthreads - 1);
                if (dst >= w->id) dst++;
                send_to(w, dst, p);
            } else if (k == 15) {
                size_t slot = below(&r, CACHE);
                if (cache[slot]) w->sum += consume_block(cache[slot]);
                cache[slot] = p;
            } else {
                keep[nk++] = p;
            }
        }
        /* "process" the request: touch the kept blocks, then free them */
        for (int i = 0; i < nk; i++) w->sum += consume_block(keep[i]);
    }
    for (int d = 0; d < nthreads; d++) flush_to(w, d);
    for (int i = 0; i < CACHE; i++)
        if (cache[i]) w->sum += consume_block(cache[i]);
    atomic_fetch_add(&done, 1);
    while (atomic_load(&done) < nthreads)
        if (drain(w) == 0) sched_yield();
    drain(w); /* every sender has finished: this empties the inbox */
    return NULL;
}

int main(int argc, char **argv) {
    double scale = argc > 1 ? strtod(argv[1], NULL) : 1.0;
    nthreads = argc > 2 ? atoi(argv[2]) : 2;
    if (!(scale > 0) || nthreads < 1 || nthreads > 1024) {
        fprintf(stderr, "usage: %s SCALE THREADS\n", argv[0]);
        return 2;
    }
    long total = (long)(1500000 * scale + 0.5);
    per_thread = total / nthreads;
    if (per_thread < 1) per_thread = 1;
    queues = calloc((size_t)nthreads, sizeof *queues);
    Worker *ws = calloc((size_t)nthreads, sizeof *ws);
    pthread_t *th = calloc((size_t)nthreads, sizeof *th);
    if (!queues || !ws || !th) fail("calloc");
    for (int i = 0; i < nthreads; i++) pthread_mutex_init(&queues[i].mu, NULL);
    for (int i = 0; i < nthreads; i++) {
        ws[i].id = i;
        ws[i].out = malloc((size_t)nthreads * OUTB * sizeof *ws[i].out);
        ws[i].nout = calloc((size_t)nthreads, sizeof *ws[i].nout);
        if (!ws[i].out || !ws[i].nout) fail("malloc");
        if (pthread_create(&th[i], NULL, worker, &ws[i]) != 0) fail("pthread_create");
    }
    uint64_t sum = 0;
    for (int i = 0; i < nthreads; i++) {
        pthread_join(th[i], NULL);
        sum += ws[i].sum;
        if (queues[i].count != 0) fail("inbox not empty at exit");
    }
    for (int i = 0; i < nthreads; i++) {
        free(ws[i].out);
        free(ws[i].nout);
    }
    for (int i = 0; i < nthreads; i++) pthread_mutex_destroy(&queues[i].mu);
    free(queues);
    free(ws);
    free(th);
    printf("checksum %llu\n", (unsigned long long)sum);
    return 0;
}
