/* Misuse that tidemalloc must catch: the process dies by SIGABRT with a message on stderr
 * naming tidemalloc, the function (free) and the pointer in hex.
 *
 * Usage: abort MODE
 *   double        free the same 64-byte block twice in a row
 *   invalid       free a pointer to a stack variable
 *   static        free a pointer into a static array
 *   interior      free p+16 of a 256-byte block
 *   large-double  free a 1 MiB block twice
 *   interior-aligned  free p+16 of an 850-byte block whose page also holds blocks that
 *                 memalign handed out at an offset (896-byte class, 256-byte alignment)
 *   realloc-interior  realloc p+16 of a 256-byte block (the message names realloc)
 * Exits 0 (test failure) if the process survives the misuse.
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char static_array[256];

/* Keeps the compiler from seeing (and warning about, or folding) the bad frees. */
static void *launder(void *p) {
    void *volatile v = p;
    return v;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: abort double|invalid|static|interior|large-double|interior-aligned|realloc-interior\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IONBF, 0);
    const char *mode = argv[1];
    /* Some live blocks around, so the misuse is not the only thing in its page. */
    void *around[8];
    for (int i = 0; i < 8; i++) {
        around[i] = malloc(64);
        memset(around[i], i, 64);
    }
    if (strcmp(mode, "double") == 0) {
        char *p = malloc(64);
        memset(p, 1, 64);
        printf("freeing %p twice\n", (void *)p);
        free(p);
        free(launder(p));
    } else if (strcmp(mode, "invalid") == 0) {
        char local[32];
        memset(local, 0, sizeof local);
        printf("freeing stack address %p\n", (void *)local);
        free(launder(local));
    } else if (strcmp(mode, "static") == 0) {
        printf("freeing static address %p\n", (void *)(static_array + 32));
        free(launder(static_array + 32));
    } else if (strcmp(mode, "interior") == 0) {
        char *p = malloc(256);
        memset(p, 1, 256);
        printf("freeing %p, 16 bytes into %p\n", (void *)(p + 16), (void *)p);
        free(launder(p + 16));
    } else if (strcmp(mode, "large-double") == 0) {
        char *p = malloc(1 << 20);
        memset(p, 1, 1 << 20);
        printf("freeing %p (1 MiB) twice\n", (void *)p);
        free(p);
        free(launder(p));
    } else if (strcmp(mode, "interior-aligned") == 0) {
        /* 600 bytes at 256-byte alignment come from 896-byte blocks (600 + 240 rounded up),
         * which are not all 256-aligned: the page learns it holds offset pointers. */
        void *al[4];
        for (int i = 0; i < 4; i++) al[i] = memalign(256, 600);
        char *p = malloc(850); /* same size class, same page */
        memset(p, 1, 850);
        printf("memalign gave %p %p %p %p; freeing %p, 16 bytes into %p\n", al[0], al[1], al[2], al[3],
               (void *)(p + 16), (void *)p);
        free(launder(p + 16));
    } else if (strcmp(mode, "realloc-interior") == 0) {
        char *p = malloc(256);
        memset(p, 1, 256);
        printf("reallocing %p, 16 bytes into %p\n", (void *)(p + 16), (void *)p);
        p = realloc(launder(p + 16), 1000);
        printf("realloc returned %p\n", (void *)p);
    } else {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    printf("abort: the process survived mode %s\n", mode);
    for (int i = 0; i < 8; i++) free(around[i]);
    return 0;
}
