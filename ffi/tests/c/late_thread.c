/* Threads whose first allocation happens in the last (4th) round of pthread key destructors:
 * tidemalloc's own key was passed over in that round (its value was still null), and glibc
 * calls no further round, so its exit handler never runs for these threads. Their heaps must
 * still go back: 2000 such threads (8 at a time), then the main thread keeps allocating for
 * 1.5 s; RSS and the break must end near where they started. (On the code before the fix:
 * about 600 MB of RSS and 8 GB of break were left.)
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define THREADS 2000
#define BATCH 8

static pthread_key_t key;
static int last_round_allocations;
static pthread_mutex_t count_lock = PTHREAD_MUTEX_INITIALIZER;

static void die(const char *m, long a) {
    fprintf(stderr, "late_thread: FAIL: %s (%ld)\n", m, a);
    exit(1);
}

static long rss_kb(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long size, res;
    if (!f || fscanf(f, "%ld %ld", &size, &res) != 2) die("statm", 0);
    fclose(f);
    return res * (sysconf(_SC_PAGESIZE) / 1024);
}

/* Re-arms itself for rounds 2, 3 and 4 and allocates only in round 4. */
static void destructor(void *v) {
    intptr_t round = (intptr_t)v;
    if (round < 4) {
        if (pthread_setspecific(key, (void *)(round + 1)) != 0) die("setspecific", round);
        return;
    }
    char *p = malloc(100), *q = malloc(5000);
    if (!p || !q) die("malloc in the last round", 0);
    memset(p, 1, 100);
    memset(q, 2, 5000);
    free(p);
    free(q);
    pthread_mutex_lock(&count_lock);
    last_round_allocations++;
    pthread_mutex_unlock(&count_lock);
}

static void *thread_main(void *arg) {
    (void)arg;
    if (pthread_setspecific(key, (void *)1) != 0) die("setspecific", 0);
    return NULL; /* no allocation until the 4th destructor round */
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(void) {
    /* tidemalloc initialises (and makes its key) on the first allocation, before ours
     * (volatile: gcc would drop a malloc/free pair). */
    void *volatile first = malloc(1);
    free(first);
    if (pthread_key_create(&key, destructor) != 0) die("key_create", 0);
    long rss0 = rss_kb();
    uintptr_t brk0 = (uintptr_t)sbrk(0);
    for (int done = 0; done < THREADS; done += BATCH) {
        pthread_t t[BATCH];
        for (int i = 0; i < BATCH; i++)
            if (pthread_create(&t[i], NULL, thread_main, NULL) != 0) die("pthread_create", done + i);
        for (int i = 0; i < BATCH; i++) pthread_join(t[i], NULL);
    }
    if (last_round_allocations != THREADS) die("destructors that allocated", last_round_allocations);
    long rss1 = rss_kb();
    uintptr_t brk1 = (uintptr_t)sbrk(0);
    double t0 = now();
    while (now() - t0 < 1.5) {
        void *v[64];
        for (int i = 0; i < 64; i++)
            if (!(v[i] = malloc(16 + i * 24))) die("malloc", i);
        for (int i = 0; i < 64; i++) free(v[i]);
        usleep(1000);
    }
    long rss2 = rss_kb();
    uintptr_t brk2 = (uintptr_t)sbrk(0);
    printf("late_thread: RSS %ld kB at start, %ld kB after the threads, %ld kB 1.5 s later; "
           "break +%lu kB after the threads, +%lu kB later\n",
           rss0, rss1, rss2, (unsigned long)(brk1 - brk0) / 1024, (unsigned long)(brk2 - brk0) / 1024);
    if (rss2 - rss0 > 16 * 1024) die("RSS left (kB)", rss2 - rss0);
    if (brk2 > brk0 && brk2 - brk0 > 64u << 20) die("break left (kB)", (long)((brk2 - brk0) / 1024));
    if (rss1 - rss0 > 64 * 1024) die("RSS while the threads ran (kB)", rss1 - rss0);
    printf("late_thread: ok\n");
    return 0;
}
