/* Known allocations from known call sites, for the heap profiler's tests.
 *
 * Usage: prof_sites PROFILE_PATH
 * Keeps live 100 MB allocated by alloc_hundred (in 1000-byte blocks) and 10 MB by alloc_ten
 * (in 200-byte blocks), allocates and frees 50 MB in churn_fifty, writes a profile with
 * tidemalloc_prof_dump, then frees everything. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int tidemalloc_prof_dump(const char *path);
#pragma weak tidemalloc_prof_dump

#define HUNDRED_N 100000 /* x 1000 B = 100 MB */
#define TEN_N 50000      /* x 200 B = 10 MB */

static void *hundred[HUNDRED_N];
/* Stops the compiler from removing malloc/free pairs whose memory is never read. */
void *volatile sink;
static void *ten[TEN_N];

__attribute__((noinline)) void alloc_hundred(void) {
    for (int i = 0; i < HUNDRED_N; i++) {
        hundred[i] = malloc(1000);
        memset(hundred[i], 1, 16);
    }
}

__attribute__((noinline)) void alloc_ten(void) {
    for (int i = 0; i < TEN_N; i++) {
        ten[i] = malloc(200);
        memset(ten[i], 2, 16);
    }
}

__attribute__((noinline)) void churn_fifty(void) {
    for (int i = 0; i < 50000; i++) {
        void *p = malloc(1000);
        memset(p, 3, 16);
        sink = p;
        free(sink);
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: prof_sites PROFILE_PATH\n");
        return 2;
    }
    alloc_hundred();
    alloc_ten();
    churn_fifty();
    if (!tidemalloc_prof_dump) {
        fprintf(stderr, "prof_sites: not running on tidemalloc\n");
        return 1;
    }
    if (tidemalloc_prof_dump(argv[1]) != 0) {
        perror("tidemalloc_prof_dump");
        return 1;
    }
    for (int i = 0; i < HUNDRED_N; i++) free(hundred[i]);
    for (int i = 0; i < TEN_N; i++) free(ten[i]);
    return 0;
}
