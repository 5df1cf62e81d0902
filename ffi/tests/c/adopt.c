/* A thread that exits leaves a page of 48-byte blocks, half of them freed by the main thread
 * afterwards; the next thread's first allocations of that size must reuse that page (it adopts
 * the exited thread's segment) rather than take a fresh page beside it. Nothing else allocates
 * in between (stdout is unbuffered until the end). Prints "adopt: ok". */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

enum { N = 200, M = 50, PAGE = 64 << 10 };
static void *first[N];
static void *second[M];

static void *fill_first(void *arg) {
    (void)arg;
    for (int i = 0; i < N; i++)
        if (!(first[i] = malloc(48))) abort();
    return NULL;
}

static void *fill_second(void *arg) {
    (void)arg;
    for (int i = 0; i < M; i++)
        if (!(second[i] = malloc(48))) abort();
    return NULL;
}

int main(void) {
    static char buf[4096];
    setvbuf(stdout, buf, _IOFBF, sizeof buf); /* no allocation by stdio */
    pthread_t t;
    if (pthread_create(&t, NULL, fill_first, NULL) || pthread_join(t, NULL)) return 1;
    for (int i = 0; i < N; i += 2) free(first[i]);
    if (pthread_create(&t, NULL, fill_second, NULL) || pthread_join(t, NULL)) return 1;
    uintptr_t page = (uintptr_t)first[1] / PAGE;
    int same = 0;
    for (int i = 0; i < M; i++) same += (uintptr_t)second[i] / PAGE == page;
    if (same != M) {
        printf("adopt: %d of %d blocks in the exited thread's page\n", same, M);
        return 1;
    }
    printf("adopt: ok\n");
    return 0;
}
