/* Threads that exit with blocks still allocated.
 *
 * 1. 2000 threads (8 at a time) each allocate small, medium, large (own mapping), aligned
 *    and calloc'd blocks, free a few blocks left by threads that already exited, and exit;
 *    the main thread checks and frees the rest after pthread_join.
 * 2. Racing exits: a thread allocates 500 blocks, hands them over and exits at once while
 *    another thread frees them (frees land while the owner's heap is being abandoned).
 * 3. Pthread key destructors (keys made by the program, after tidemalloc's own) that
 *    malloc/free after tidemalloc's exit handler ran, re-arming themselves for every
 *    destructor round; one thread's first allocation ever happens in its destructor.
 * At the end everything is freed and tidemalloc's in-use figure is back where it started.
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tidemalloc.h"

#pragma weak tidemalloc_get_stats

#define NBLK 12
#define TOTAL_THREADS 2000
#define BATCH 8

static void die(const char *m, long a) {
    fprintf(stderr, "thread_exit: FAIL: %s (%ld)\n", m, a);
    exit(1);
}

struct result {
    void *p[NBLK];
    size_t n[NBLK];
    unsigned char tag;
};

static size_t block_size(int i, int t) {
    static const size_t base[NBLK] = {8, 40, 100, 512, 1000, 4000, 9000, 70000, 200 * 1024, 1 << 20, 300, 3 << 20};
    return base[i] + (size_t)(t % 7) * 16;
}

/* Blocks left by exited threads, freed by later threads. */
static void *orphans[BATCH * 4];
static pthread_mutex_t orphans_lock = PTHREAD_MUTEX_INITIALIZER;

static void *alloc_and_exit(void *arg) {
    struct result *r = arg;
    for (int i = 0; i < NBLK; i++) {
        size_t n = r->n[i];
        if (i == 3) {
            void *p = NULL;
            if (posix_memalign(&p, 256, n) != 0) die("posix_memalign", (long)n);
            r->p[i] = p;
        } else if (i == 10) {
            r->p[i] = calloc(1, n);
            if (r->p[i])
                for (size_t k = 0; k < n; k++)
                    if (((unsigned char *)r->p[i])[k]) die("calloc block not zero", (long)n);
        } else {
            r->p[i] = malloc(n);
        }
        if (!r->p[i]) die("allocation failed in thread", (long)n);
        memset(r->p[i], r->tag, n);
    }
    /* A short-lived block and a realloc'd one, so the heap has freed pages too. */
    char *s = malloc(77);
    s = realloc(s, 5000);
    free(s);
    /* Free a few blocks left behind by threads that already exited, keep one of ours there. */
    pthread_mutex_lock(&orphans_lock);
    int slot = r->tag % (BATCH * 4);
    free(orphans[slot]);
    orphans[slot] = malloc(64 + r->tag);
    pthread_mutex_unlock(&orphans_lock);
    return NULL;
}

static void phase_many_threads(void) {
    static struct result res[BATCH];
    long made = 0;
    for (int round = 0; made < TOTAL_THREADS; round++) {
        pthread_t th[BATCH];
        for (int b = 0; b < BATCH; b++) {
            res[b].tag = (unsigned char)(made + b);
            for (int i = 0; i < NBLK; i++) res[b].n[i] = block_size(i, (int)(made + b));
            if (pthread_create(&th[b], NULL, alloc_and_exit, &res[b]) != 0) die("pthread_create", made + b);
        }
        for (int b = 0; b < BATCH; b++) pthread_join(th[b], NULL);
        for (int b = 0; b < BATCH; b++) {
            for (int i = 0; i < NBLK; i++) {
                unsigned char *p = res[b].p[i];
                size_t n = res[b].n[i];
                if (malloc_usable_size(p) < n) die("usable size below request after thread exit", (long)n);
                for (size_t k = 0; k < n; k += (n > 4096 ? 511 : 1))
                    if (p[k] != res[b].tag) die("block of an exited thread corrupted", (long)n);
                if (p[n - 1] != res[b].tag) die("block of an exited thread corrupted at its end", (long)n);
                free(p);
            }
        }
        made += BATCH;
    }
    for (int i = 0; i < BATCH * 4; i++) free(orphans[i]);
    printf("thread_exit: %ld threads exited with %d blocks each, freed by main\n", made, NBLK);
}

/* ---- racing exits ---- */

#define RACE_BLOCKS 500
struct race {
    void *p[RACE_BLOCKS];
    pthread_mutex_t m;
    pthread_cond_t c;
    int ready;
};

static void *race_owner(void *arg) {
    struct race *r = arg;
    for (int i = 0; i < RACE_BLOCKS; i++) {
        r->p[i] = malloc((size_t)(i % 50) * 24 + 8);
        if (!r->p[i]) die("malloc in race owner", i);
        memset(r->p[i], 0x5A, 8);
    }
    pthread_mutex_lock(&r->m);
    r->ready = 1;
    pthread_cond_signal(&r->c);
    pthread_mutex_unlock(&r->m);
    return NULL; /* exits now, racing with the frees */
}

static void *race_freer(void *arg) {
    struct race *r = arg;
    pthread_mutex_lock(&r->m);
    while (!r->ready) pthread_cond_wait(&r->c, &r->m);
    pthread_mutex_unlock(&r->m);
    for (int i = 0; i < RACE_BLOCKS; i++) {
        if (((unsigned char *)r->p[i])[0] != 0x5A) die("raced block corrupted", i);
        free(r->p[i]);
    }
    return NULL;
}

static void phase_racing_exits(void) {
    static struct race r;
    for (int k = 0; k < 200; k++) {
        memset(&r, 0, sizeof r);
        pthread_mutex_init(&r.m, NULL);
        pthread_cond_init(&r.c, NULL);
        pthread_t a, b;
        pthread_create(&b, NULL, race_freer, &r);
        pthread_create(&a, NULL, race_owner, &r);
        pthread_join(a, NULL);
        pthread_join(b, NULL);
        pthread_mutex_destroy(&r.m);
        pthread_cond_destroy(&r.c);
    }
    printf("thread_exit: 200 owner threads exited while another thread freed their blocks\n");
}

/* ---- key destructors ---- */

static pthread_key_t key;
static int destructor_calls;
static int destructor_rounds_max;
static pthread_mutex_t kept_lock = PTHREAD_MUTEX_INITIALIZER;
static void *kept[64];
static int nkept;

static void destructor(void *v) {
    intptr_t round = (intptr_t)v;
    __atomic_add_fetch(&destructor_calls, 1, __ATOMIC_RELAXED);
    /* Allocate and free after tidemalloc's own handler (its key is older, so it ran first). */
    size_t sizes[] = {16, 100, 3000, 20000, 150 * 1024, 2 << 20};
    for (int i = 0; i < 6; i++) {
        char *p = malloc(sizes[i]);
        if (!p) die("malloc in a key destructor", (long)sizes[i]);
        memset(p, 3, sizes[i]);
        p = realloc(p, sizes[i] * 2);
        if (!p) die("realloc in a key destructor", (long)sizes[i]);
        free(p);
    }
    void *q = NULL;
    if (posix_memalign(&q, 64, 200) != 0) die("posix_memalign in a key destructor", 0);
    free(q);
    /* One block survives the thread; main frees it. */
    char *keep = calloc(1, 48 + (size_t)round);
    if (!keep) die("calloc in a key destructor", round);
    memset(keep, 0x6B, 48);
    pthread_mutex_lock(&kept_lock);
    if (nkept < 64) kept[nkept++] = keep;
    else free(keep);
    pthread_mutex_unlock(&kept_lock);
    if (round > destructor_rounds_max) destructor_rounds_max = (int)round;
    /* Re-arm: glibc calls destructors again (PTHREAD_DESTRUCTOR_ITERATIONS rounds). */
    if (round < 3) pthread_setspecific(key, (void *)(round + 1));
}

static void *with_key(void *arg) {
    if (arg) {
        /* Has a heap before exiting. */
        void *p = malloc(1000);
        memset(p, 1, 1000);
        free(p);
        void *stay = malloc(200);
        pthread_mutex_lock(&kept_lock);
        if (nkept < 64) kept[nkept++] = stay;
        else free(stay);
        pthread_mutex_unlock(&kept_lock);
    }
    /* else: the first allocation of this thread happens in its destructor. */
    pthread_setspecific(key, (void *)1);
    return NULL;
}

static void phase_key_destructors(void) {
    /* The first malloc of the process made tidemalloc's key; this one is newer. */
    if (pthread_key_create(&key, destructor) != 0) die("pthread_key_create", 0);
    for (int k = 0; k < 20; k++) {
        pthread_t t;
        pthread_create(&t, NULL, with_key, (void *)(intptr_t)(k % 4 != 0));
        pthread_join(t, NULL);
    }
    if (destructor_calls != 20 * 3) die("destructor calls", destructor_calls);
    for (int i = 0; i < nkept; i++) {
        free(kept[i]);
    }
    printf("thread_exit: %d key destructor calls (rounds up to %d) allocated after tidemalloc's exit handler\n",
           destructor_calls, destructor_rounds_max);
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    void *first = malloc(1);
    free(first);
    if (!tidemalloc_get_stats) die("tidemalloc is not loaded", 0);
    struct tidemalloc_stats before, after;
    tidemalloc_get_stats(&before);
    phase_many_threads();
    phase_racing_exits();
    phase_key_destructors();
    tidemalloc_get_stats(&after);
    printf("thread_exit: in use %zu -> %zu bytes, peak %zu\n", before.in_use, after.in_use, after.peak_in_use);
    if (after.in_use > before.in_use + (256 << 10)) die("bytes still in use after freeing everything", (long)after.in_use);
    printf("thread_exit: ok\n");
    return 0;
}
