/* A tiny process: a few hundred small allocations, then its own peak RSS (VmHWM, kB) on
 * stdout, and on a second line whether libgcc_s is mapped (1) or not (0). Run with and
 * without the preload, the difference is tidemalloc's fixed cost. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void) {
    void *volatile keep[300];
    for (int i = 0; i < 300; i++) {
        keep[i] = malloc(16 + i * 8);
        if (!keep[i]) return 1;
        memset(keep[i], i, 16);
    }
    char line[256];
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return 1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6)) printf("%ld\n", strtol(line + 6, NULL, 10));
    fclose(f);
    int gcc_s = 0;
    f = fopen("/proc/self/maps", "r");
    if (!f) return 1;
    char *l = NULL;
    size_t cap = 0;
    while (getline(&l, &cap, f) > 0)
        if (strstr(l, "libgcc_s")) gcc_s = 1;
    free(l);
    fclose(f);
    printf("%d\n", gcc_s);
    return 0;
}
