/* libtidemalloc.so loaded with dlopen rather than preloaded: its thread-local heap word uses
 * the initial-exec model, which glibc serves from its static TLS surplus. Threads allocate
 * and free through the dlsym'd functions (glibc's malloc stays the process's malloc), check
 * their patterns, free each other's blocks, and each thread must get its own heap.
 *
 * Usage: dlopen_threads PATH_TO_LIBTIDEMALLOC_SO
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *(*t_malloc)(size_t);
static void (*t_free)(void *);
static size_t (*t_usable)(void *);

#define THREADS 4
#define ROUNDS 200
#define BLOCKS 500

static void *handoff[THREADS][BLOCKS];
static pthread_barrier_t barrier;

static void *worker(void *arg) {
    int t = (int)(intptr_t)arg;
    for (int r = 0; r < ROUNDS; r++) {
        for (int i = 0; i < BLOCKS; i++) {
            size_t n = 16 + (size_t)((i * 37 + r) % 700);
            unsigned char *p = t_malloc(n);
            if (!p || t_usable(p) < n) {
                printf("dlopen: thread %d: malloc(%zu) failed\n", t, n);
                exit(1);
            }
            memset(p, t * 16 + (i & 15), n);
            p[0] = (unsigned char)n;
            handoff[t][i] = p;
        }
        pthread_barrier_wait(&barrier);
        /* Free the next thread's blocks, checking them first. */
        int o = (t + 1) % THREADS;
        for (int i = 0; i < BLOCKS; i++) {
            unsigned char *p = handoff[o][i];
            size_t n = 16 + (size_t)((i * 37 + r) % 700);
            if (p[0] != (unsigned char)n || p[n - 1] != (unsigned char)(o * 16 + (i & 15))) {
                printf("dlopen: thread %d: block %p of thread %d lost its contents\n", t, (void *)p, o);
                exit(1);
            }
            t_free(p);
        }
        pthread_barrier_wait(&barrier);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: dlopen PATH\n");
        return 2;
    }
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        printf("dlopen: %s\n", dlerror());
        return 1;
    }
    t_malloc = (void *(*)(size_t))dlsym(h, "malloc");
    t_free = (void (*)(void *))dlsym(h, "free");
    t_usable = (size_t (*)(void *))dlsym(h, "malloc_usable_size");
    if (!t_malloc || !t_free || !t_usable) {
        printf("dlopen: missing symbols\n");
        return 1;
    }
    pthread_barrier_init(&barrier, NULL, THREADS);
    pthread_t th[THREADS];
    for (int t = 0; t < THREADS; t++) pthread_create(&th[t], NULL, worker, (void *)(intptr_t)t);
    for (int t = 0; t < THREADS; t++) pthread_join(th[t], NULL);
    /* glibc's malloc still serves the program. */
    void *g = malloc(100);
    free(g);
    printf("dlopen: ok (%d threads x %d rounds x %d blocks)\n", THREADS, ROUNDS, BLOCKS);
    return 0;
}
