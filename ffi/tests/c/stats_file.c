/* The statistics at exit go to TIDEMALLOC_STATS_FILE, one file per process (%p), not to
 * stderr; tidemalloc_stats_json behaves as snprintf.
 *
 * Run preloaded with TIDEMALLOC_SHOW_STATS=json and TIDEMALLOC_STATS_FILE=<dir>/s.%p.
 * Usage: stats_file [spawn]
 *   (none): allocates, checks tidemalloc_stats_json, prints "pid N" and "json: <its text>";
 *   spawn:  also forks twice and waits: one child execs this program again (`child`: it
 *           allocates, prints "exec child pid N" and exits), the other allocates, prints
 *           "fork child pid N" and leaves by exit() (so its atexit handlers run).
 * Exits 0 after "stats_file: ok".
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tidemalloc.h"

#pragma weak tidemalloc_stats_json

#define FAIL(...)                                                                            \
    do {                                                                                     \
        printf("FAIL ");                                                                     \
        printf(__VA_ARGS__);                                                                 \
        printf("\n");                                                                        \
        exit(1);                                                                             \
    } while (0)

static void *volatile sink;

static void allocate(void) {
    for (int i = 0; i < 1000; i++) {
        sink = malloc(16 + i);
        free(sink);
    }
    sink = malloc(300000); /* a large block, live at exit */
}

/* tidemalloc_stats_json as snprintf: the length of the whole text, at most len bytes with
 * a NUL, nothing for len 0. */
static void check_json_call(void) {
    if (!tidemalloc_stats_json) FAIL("tidemalloc_stats_json does not resolve: tidemalloc is not loaded");
    size_t n = tidemalloc_stats_json(NULL, 0);
    if (n < 100 || n >= TIDEMALLOC_STATS_JSON_MAX) FAIL("tidemalloc_stats_json(NULL, 0) = %zu", n);
    char small[8];
    memset(small, 'x', sizeof small);
    size_t m = tidemalloc_stats_json(small, sizeof small);
    if (m < 100 || small[7] != 0 || strcmp(small, "{\"versi") != 0) FAIL("cut to 8 bytes: %zu, %.8s", m, small);
    static char buf[TIDEMALLOC_STATS_JSON_MAX];
    size_t k = tidemalloc_stats_json(buf, sizeof buf);
    char head[64];
    snprintf(head, sizeof head, "{\"version\":1,\"pid\":%d,", (int)getpid());
    if (k != strlen(buf) || strncmp(buf, head, strlen(head)) != 0 || strcmp(buf + k - 2, "}\n") != 0)
        FAIL("tidemalloc_stats_json: %zu bytes: %s", k, buf);
    printf("json: %s", buf);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    allocate();
    if (argc > 1 && strcmp(argv[1], "child") == 0) {
        printf("exec child pid %d\n", (int)getpid());
        return 0;
    }
    check_json_call();
    printf("pid %d\n", (int)getpid());
    if (argc > 1 && strcmp(argv[1], "spawn") == 0) {
        pid_t e = fork();
        if (e < 0) FAIL("fork");
        if (e == 0) {
            execl("/proc/self/exe", argv[0], "child", (char *)NULL);
            _exit(127);
        }
        pid_t f = fork();
        if (f < 0) FAIL("fork");
        if (f == 0) {
            allocate();
            printf("fork child pid %d\n", (int)getpid());
            exit(0);
        }
        int st;
        if (waitpid(e, &st, 0) != e || !WIFEXITED(st) || WEXITSTATUS(st) != 0) FAIL("exec child: status %d", st);
        if (waitpid(f, &st, 0) != f || !WIFEXITED(st) || WEXITSTATUS(st) != 0) FAIL("fork child: status %d", st);
    }
    printf("stats_file: ok\n");
    return 0;
}
