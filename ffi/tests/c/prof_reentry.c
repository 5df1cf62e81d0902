/* Allocations that re-enter the heap profiler while it takes a sample, at rate 1 (every
 * allocation sampled). Usage: prof_reentry MODE
 *   signal  a SIGALRM handler that mallocs and frees every 200 us while the main flow
 *           allocates (malloc in a handler is not async-signal-safe, but it must not hang
 *           on the profiler's own lock: the handler may interrupt a trim holding it)
 *   jit     unwind tables registered with __register_frame_info, as JITs do: libgcc
 *           (GCC 12) then mallocs inside the profiler's own unwind, under its mutex
 * Prints "prof_reentry: ok". An alarm ends a hang after 30 s. */
#define _GNU_SOURCE
#include <link.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

void *volatile sink;
static volatile long handled;

static void on_alarm(int s) {
    (void)s;
    void *p = malloc(40);
    if (p) memset(p, 1, 40);
    free(p);
    handled++;
}

static int signal_mode(void) {
    signal(SIGALRM, on_alarm);
    struct itimerval it = {{0, 200}, {0, 200}};
    setitimer(ITIMER_REAL, &it, NULL);
    void *keep[256] = {0};
    for (long i = 0; i < 1000000; i++) {
        int k = (i * 7919) & 255;
        free(keep[k]);
        keep[k] = malloc((i % 500) + 1);
    }
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    for (int k = 0; k < 256; k++) free(keep[k]);
    printf("handled %ld\n", handled);
    return 0;
}

void __register_frame_info(const void *begin, void *ob);
static uintptr_t object[16]; /* libgcc's struct object: 6 words, with room to spare */
static const void *eh_frame;

static int find_eh_frame(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    (void)data;
    for (int i = 0; i < info->dlpi_phnum && !eh_frame; i++) {
        if (info->dlpi_phdr[i].p_type != PT_GNU_EH_FRAME) continue;
        const unsigned char *hdr = (const void *)(info->dlpi_addr + info->dlpi_phdr[i].p_vaddr);
        if (hdr[0] != 1 || hdr[1] != 0x1b) return 1; /* version 1, pcrel|sdata4 pointer */
        int32_t rel;
        memcpy(&rel, hdr + 4, 4);
        eh_frame = hdr + 4 + rel;
    }
    return 1; /* the first object is the program */
}

static int jit_mode(void) {
    dl_iterate_phdr(find_eh_frame, NULL);
    if (!eh_frame) {
        puts("no eh_frame_hdr");
        return 2;
    }
    __register_frame_info(eh_frame, object);
    for (int i = 0; i < 1000; i++) {
        sink = malloc(100);
        free(sink);
    }
    return 0;
}

int main(int argc, char **argv) {
    alarm(30);
    int rc = argc > 1 && strcmp(argv[1], "jit") == 0 ? jit_mode() : signal_mode();
    if (rc == 0) puts("prof_reentry: ok");
    return rc;
}
