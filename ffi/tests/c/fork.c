/* fork() while other threads allocate: 4 threads malloc/free in a loop and use stdio
 * (snprintf, fprintf to a /dev/null FILE, fflush(NULL)) while the main thread forks 300
 * times. Each child allocates and frees (small blocks, blocks above the 128 KiB mmap
 * threshold, a block the parent allocated before the fork), starts a thread that does the
 * same, and _exit(0)s. The parent waits for each child and checks its status.
 *
 * A deadlock anywhere ends the run by SIGALRM: alarm(60) in the parent, alarm(20) in each
 * child (a child killed by a signal fails the parent).
 *
 * Usage: fork [trim|reuse]
 *   trim:  the threads also call malloc_trim(0) in their loop, and the main thread empties
 *          pages of many size classes before each fork (so that trim has work on its heap);
 *   reuse: as trim, and the workers keep 1024 live blocks each in a published array; each
 *          child starts 4 threads, which glibc runs on the cached stacks of the parent's
 *          workers (same thread pointer, which tidemalloc takes for the thread's identity):
 *          the thread that has a worker's pointer frees all of that worker's blocks.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define NTHREADS 4
#define FORKS 300

static volatile int stop;
static int with_trim;
static int with_reuse;
/* "reuse" mode: live blocks each worker publishes; a slot is emptied (exchange) before its
 * block is freed, so at any moment (and so in a child) a non-null slot is a live block. */
#define PUB 1024
static void *published[NTHREADS][PUB];
static FILE *devnull;

static uint64_t next(uint64_t *s) {
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static void fail(const char *msg) {
    /* async-signal-safe: usable in a child */
    ssize_t r = write(2, msg, strlen(msg));
    (void)r;
}

static void *worker(void *arg) {
    uint64_t rng = (uintptr_t)arg * 7919 + 1;
    void *keep[64] = {0};
    long n = 0;
    while (!stop) {
        int i = (int)(next(&rng) % 64);
        free(keep[i]);
        size_t sz = next(&rng) % 100 == 0 ? 130 * 1024 + next(&rng) % (512 * 1024) : 1 + next(&rng) % 2000;
        keep[i] = malloc(sz);
        if (!keep[i]) {
            fail("fork: worker malloc failed\n");
            abort();
        }
        memset(keep[i], (int)n, sz < 256 ? sz : 256);
        char *s = malloc(128);
        snprintf(s, 128, "thread %lu iteration %ld size %zu %s", (unsigned long)(uintptr_t)arg, n, sz, "x");
        fprintf(devnull, "%s %f\n", s, (double)n / 3.0);
        free(s);
        if (with_reuse) {
            int w = (int)(uintptr_t)arg - 1;
            for (int j = 0; j < 4; j++) {
                int slot = (int)(next(&rng) % PUB);
                free(__atomic_exchange_n(&published[w][slot], NULL, __ATOMIC_ACQ_REL));
                void *p = malloc(1000);
                memset(p, 2, 1000);
                __atomic_store_n(&published[w][slot], p, __ATOMIC_RELEASE);
            }
        }
        if (n % 64 == 0) fflush(NULL);
        if (with_trim && n % 2 == 0) malloc_trim(0);
        n++;
    }
    for (int i = 0; i < 64; i++) free(keep[i]);
    return NULL;
}

/* What a child does, on each of its threads. Returns 0 on success. */
static int child_work(int salt) {
    void *ps[40];
    for (int i = 0; i < 40; i++) {
        size_t sz = i % 8 == 0 ? 200 * 1024 + (size_t)i * 4096 : (size_t)(i * 37 + salt) % 3000 + 1;
        ps[i] = i % 3 ? malloc(sz) : calloc(1, sz);
        if (!ps[i]) return 1;
        memset(ps[i], i, sz < 512 ? sz : 512);
    }
    for (int i = 0; i < 40; i += 2) {
        ps[i] = realloc(ps[i], 5000 + (size_t)i * 100);
        if (!ps[i]) return 2;
    }
    for (int i = 0; i < 40; i++) free(ps[i]);
    void *a = NULL;
    if (posix_memalign(&a, 4096, 10000) != 0) return 3;
    free(a);
    char buf[64];
    snprintf(buf, sizeof buf, "%d %s", salt, "child");
    return 0;
}

static void *child_thread(void *arg) { return (void *)(intptr_t)child_work((int)(intptr_t)arg); }

static pthread_t workers[NTHREADS];

/* "reuse" mode: glibc starts a child's threads on the cached stacks of the parent's other
 * threads, so a child thread can have the thread pointer (pthread_self) of a parent's worker:
 * such a thread frees all of that worker's published blocks. */
static void *child_freer(void *arg) {
    (void)arg;
    for (int w = 0; w < NTHREADS; w++)
        if (pthread_equal(pthread_self(), workers[w]))
            for (int i = 0; i < PUB; i++) free(__atomic_exchange_n(&published[w][i], NULL, __ATOMIC_ACQ_REL));
    return NULL;
}

static void child(int k, void *inherited) {
    alarm(20);
    free(inherited); /* a block the parent allocated before forking */
    if (child_work(k) != 0) {
        fail("fork: child allocation failed\n");
        _exit(2);
    }
    pthread_t t;
    if (pthread_create(&t, NULL, child_thread, (void *)(intptr_t)(k + 1)) != 0) {
        fail("fork: pthread_create in child failed\n");
        _exit(3);
    }
    void *r;
    pthread_join(t, &r);
    if (with_reuse) {
        pthread_t f[4];
        for (int i = 0; i < 4; i++)
            if (pthread_create(&f[i], NULL, child_freer, (void *)(intptr_t)i) != 0) {
                fail("fork: pthread_create in child failed\n");
                _exit(3);
            }
        for (int i = 0; i < 4; i++) pthread_join(f[i], NULL);
        for (int w = 0; w < NTHREADS; w++) /* what no child thread matched */
            for (int i = 0; i < PUB; i++) free(__atomic_exchange_n(&published[w][i], NULL, __ATOMIC_ACQ_REL));
    }
    if (r != NULL) {
        fail("fork: child thread allocation failed\n");
        _exit(4);
    }
    _exit(0);
}

int main(int argc, char **argv) {
    with_reuse = argc > 1 && strcmp(argv[1], "reuse") == 0;
    with_trim = with_reuse || (argc > 1 && strcmp(argv[1], "trim") == 0);
    alarm(60);
    devnull = fopen("/dev/null", "w");
    if (!devnull) {
        perror("/dev/null");
        return 1;
    }
    pthread_t *th = workers;
    for (int i = 0; i < NTHREADS; i++) pthread_create(&th[i], NULL, worker, (void *)(uintptr_t)(i + 1));

    int bad = 0;
    for (int k = 0; k < FORKS; k++) {
        if (with_trim) {
            /* Pages of many size classes used and emptied: trim has work on this heap (a
             * madvise per page), so the threads' trims hold its lock for a while. */
            static void *churn[512];
            for (int i = 0; i < 512; i++) {
                churn[i] = malloc(16 + (size_t)(i % 128) * 64);
                memset(churn[i], 1, 16);
            }
            for (int i = 0; i < 512; i++) free(churn[i]);
        }
        char *inherited = malloc(k % 2 ? 300 * 1024 : 100);
        memset(inherited, 1, 100);
        fflush(stdout);
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            return 1;
        }
        if (pid == 0) child(k, inherited);
        free(inherited);
        int st;
        if (waitpid(pid, &st, 0) != pid) {
            perror("waitpid");
            return 1;
        }
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            if (WIFSIGNALED(st))
                fprintf(stderr, "fork: child %d killed by signal %d%s\n", k, WTERMSIG(st),
                        WTERMSIG(st) == SIGALRM ? " (deadlock: it did not finish in 20 s)" : "");
            else
                fprintf(stderr, "fork: child %d exited with %d\n", k, WEXITSTATUS(st));
            bad++;
            break;
        }
    }
    stop = 1;
    for (int i = 0; i < NTHREADS; i++) pthread_join(th[i], NULL);
    fclose(devnull);
    if (bad) return 1;
    printf("fork: %d children%s, all exited 0\n", FORKS,
           with_reuse  ? " (threads calling malloc_trim, children freeing the threads' blocks)"
           : with_trim ? " (threads calling malloc_trim)"
                       : "");
    for (int w = 0; w < NTHREADS; w++)
        for (int i = 0; i < PUB; i++) free(published[w][i]);
    return 0;
}
