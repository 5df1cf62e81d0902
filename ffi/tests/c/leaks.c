/* A program that leaks 1000 blocks of 48 bytes from one function (leak_thousand) and frees
 * everything else it allocates (in other functions, of other sizes, some through realloc and
 * calloc), for the leak report's test. No stdio: its buffer would stay allocated. */
#include <stdlib.h>
#include <string.h>

static void *keep[1000];
void *volatile sink;

__attribute__((noinline)) void leak_thousand(void) {
    for (int i = 0; i < 1000; i++) {
        keep[i] = malloc(48);
        memset(keep[i], 7, 48);
    }
}

__attribute__((noinline)) void churn(void) {
    void *blocks[500];
    for (int i = 0; i < 500; i++) {
        blocks[i] = (i % 3 == 0) ? calloc(1, 16 + i) : malloc(100 + 7 * i);
        sink = blocks[i];
    }
    for (int i = 0; i < 500; i += 2) {
        blocks[i] = realloc(blocks[i], 300000 + i); /* large: its own mapping */
        sink = blocks[i];
    }
    for (int i = 0; i < 500; i++) free(blocks[i]);
}

int main(void) {
    churn();
    leak_thousand();
    churn();
    for (int i = 0; i < 1000; i++) sink = keep[i]; /* still referenced at exit: a leak all the same */
    return 0;
}
