/* thread_exit: threads exit while another thread still holds their blocks. Batches of
 * 2 * THREADS short-lived threads are started and joined, 4000 * SCALE threads in all;
 * each allocates and fills 1000 blocks (16 B - 2 KiB log-uniform, 1 in 256 of
 * 16-128 KiB), hands 3 in 4 of them to a long-lived holder thread (in chunks of 64,
 * through a mutex-protected list), frees the others (half at once, half just before it
 * exits) and exits. The holder keeps the last 512 chunks it received (a sliding window,
 * about 15 MB), verifying and freeing the oldest as new ones arrive, and the rest at the
 * end. The checksum does not depend on THREADS.
 * Usage: thread_exit SCALE THREADS */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WORKLOAD_NAME "thread_exit"
#include "workload.h"

enum { PER_THREAD = 1000, CHUNK = 64, WINDOW = 512, LOCAL = PER_THREAD };

/* log-uniform in [2^lo, 2^hi) */
static size_t log_size(Rng *r, unsigned lo, unsigned hi) {
    unsigned e = lo + (unsigned)below(r, hi - lo);
    return ((size_t)1 << e) + (size_t)below(r, (uint64_t)1 << e);
}

/* block layout: u32 size, u32 tag, then bytes (tag & 0xff), last byte (tag >> 8) */
static uint8_t *make_block(Rng *r) {
    size_t size = below(r, 256) == 0 ? log_size(r, 14, 17) : log_size(r, 4, 11);
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
    if (size < 16 || size > (1u << 17)) fail("block size field");
    if (p[8] != (uint8_t)tag || p[size / 2] != (uint8_t)tag || p[size - 2] != (uint8_t)tag ||
        p[size - 1] != (uint8_t)(tag >> 8))
        fail("block contents");
    free(p);
    return mix(((uint64_t)tag << 32) | size);
}

typedef struct Chunk {
    struct Chunk *next;
    size_t n;
    uint8_t *p[CHUNK];
} Chunk;

/* The holder's inbox: a list of chunks, newest first. */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static Chunk *inbox;
static int finished;

static void send_chunk(Chunk *c) {
    pthread_mutex_lock(&mu);
    c->next = inbox;
    inbox = c;
    pthread_cond_signal(&cv);
    pthread_mutex_unlock(&mu);
}

static uint64_t retire_chunk(Chunk *c) {
    uint64_t sum = 0;
    for (size_t i = 0; i < c->n; i++) sum += consume_block(c->p[i]);
    free(c);
    return sum;
}

static uint64_t holder_sum;
static void *holder(void *arg) {
    (void)arg;
    static Chunk *window[WINDOW];
    size_t head = 0, count = 0;
    uint64_t sum = 0;
    for (;;) {
        pthread_mutex_lock(&mu);
        while (!inbox && !finished) pthread_cond_wait(&cv, &mu);
        Chunk *got = inbox;
        inbox = NULL;
        int last = finished;
        pthread_mutex_unlock(&mu);
        while (got) {
            Chunk *c = got;
            got = c->next;
            if (count == WINDOW) {
                sum += retire_chunk(window[head]);
                head = (head + 1) % WINDOW;
                count--;
            }
            window[(head + count++) % WINDOW] = c;
        }
        if (last) break;
    }
    for (; count; count--, head = (head + 1) % WINDOW) sum += retire_chunk(window[head]);
    holder_sum = sum;
    return NULL;
}

typedef struct {
    long index;
    uint64_t sum;
} Job;

static void *short_lived(void *arg) {
    Job *j = arg;
    Rng r = { mix(0x7e417ULL + (uint64_t)j->index) | 1 };
    uint8_t *local[LOCAL];
    size_t nlocal = 0;
    uint64_t sum = 0;
    Chunk *c = NULL;
    for (int i = 0; i < PER_THREAD; i++) {
        uint8_t *p = make_block(&r);
        uint64_t fate = below(&r, 8);
        if (fate < 6) {
            if (!c) {
                c = malloc(sizeof *c);
                if (!c) fail("malloc");
                c->n = 0;
            }
            c->p[c->n++] = p;
            if (c->n == CHUNK) {
                send_chunk(c);
                c = NULL;
            }
        } else if (fate == 6) {
            sum += consume_block(p);
        } else {
            local[nlocal++] = p;
        }
    }
    if (c) send_chunk(c);
    while (nlocal) sum += consume_block(local[--nlocal]);
    j->sum = sum;
    return NULL;
}

int main(int argc, char **argv) {
    double scale = argc > 1 ? strtod(argv[1], NULL) : 1.0;
    int threads = argc > 2 ? atoi(argv[2]) : 2;
    if (!(scale > 0) || threads < 1 || threads > 1024) {
        fprintf(stderr, "usage: %s SCALE THREADS\n", argv[0]);
        return 2;
    }
    long total = (long)(4000 * scale + 0.5);
    if (total < 1) total = 1;
    int batch = 2 * threads;
    pthread_t hold;
    if (pthread_create(&hold, NULL, holder, NULL) != 0) fail("pthread_create");
    pthread_t *th = malloc((size_t)batch * sizeof *th);
    Job *jobs = malloc((size_t)batch * sizeof *jobs);
    if (!th || !jobs) fail("malloc");
    uint64_t sum = 0;
    for (long start = 0; start < total; start += batch) {
        int n = total - start < batch ? (int)(total - start) : batch;
        for (int k = 0; k < n; k++) {
            jobs[k].index = start + k;
            if (pthread_create(&th[k], NULL, short_lived, &jobs[k]) != 0) fail("pthread_create");
        }
        for (int k = 0; k < n; k++) {
            pthread_join(th[k], NULL);
            sum += jobs[k].sum;
        }
    }
    pthread_mutex_lock(&mu);
    finished = 1;
    pthread_cond_signal(&cv);
    pthread_mutex_unlock(&mu);
    pthread_join(hold, NULL);
    sum += holder_sum;
    free(th);
    free(jobs);
    printf("checksum %llu\n", (unsigned long long)sum);
    return 0;
}
