/* The heap profiler under fire: run with TIDEMALLOC_PROF=1, TIDEMALLOC_PROF_SIGNAL=USR1,
 * TIDEMALLOC_PROF_PREFIX=<dir>/sig and a small TIDEMALLOC_PROF_RATE.
 *
 * Two threads allocate, free and realloc (every fourth block freed by the other thread);
 * a third calls tidemalloc_prof_dump in a loop; the main thread sends SIGUSR1 (a dump
 * from a signal handler, which may land inside a running dump: it must fail with EBUSY or
 * succeed, never deadlock) to every thread, 300 times; meanwhile it forks 20 children that
 * allocate, dump a profile to <dir>/child.<pid>.pb.gz and exit. Prints "prof_signal: ok"
 * and "busy N" (how many explicit dumps found another running).
 * With a second argument "once": raises SIGUSR1 once and exits (prints "pid N"). */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int tidemalloc_prof_dump(const char *path);
#pragma weak tidemalloc_prof_dump

static atomic_int stop;
static atomic_long busy, dumped;
static char dir[3000];
static _Atomic(void *) handoff[64];

static void *worker(void *arg) {
    unsigned r = (unsigned)(long)arg * 2654435761u + 1;
    void *mine[256] = {0};
    while (!atomic_load(&stop)) {
        r = r * 1103515245u + 12345u;
        int i = (r >> 8) & 255;
        size_t size = 16 + ((r >> 16) % 3000);
        if ((r >> 4) % 97 == 0) size = 200000 + (r % 100000); /* a large block now and then */
        if (mine[i]) {
            if ((r >> 3) % 3 == 0) {
                mine[i] = realloc(mine[i], size);
                memset(mine[i], 0x5a, 16);
                continue;
            }
            void *old = atomic_exchange(&handoff[i & 63], mine[i]); /* freed by whoever comes next */
            free(old);
        }
        mine[i] = malloc(size);
        memset(mine[i], (int)i, size < 64 ? size : 64);
    }
    for (int i = 0; i < 256; i++) free(mine[i]);
    return NULL;
}

static void *dumper(void *arg) {
    (void)arg;
    char path[3100];
    int n = 0;
    while (!atomic_load(&stop)) {
        snprintf(path, sizeof path, "%s/loop.%d.pb.gz", dir, n++ % 4);
        if (tidemalloc_prof_dump(path) == 0) {
            atomic_fetch_add(&dumped, 1);
        } else if (errno == EBUSY) {
            atomic_fetch_add(&busy, 1);
        } else {
            perror("tidemalloc_prof_dump");
            exit(1);
        }
    }
    return NULL;
}

static void child(void) {
    void *p[100];
    for (int i = 0; i < 100; i++) p[i] = malloc(1000 + i);
    char path[3100];
    snprintf(path, sizeof path, "%s/child.%d.pb.gz", dir, (int)getpid());
    if (tidemalloc_prof_dump(path) != 0) _exit(3);
    for (int i = 0; i < 100; i++) free(p[i]);
    _exit(0);
}

int main(int argc, char **argv) {
    if (argc < 2 || !tidemalloc_prof_dump) {
        fprintf(stderr, "usage: prof_signal DIR (on tidemalloc)\n");
        return 2;
    }
    snprintf(dir, sizeof dir, "%s", argv[1]);
    if (argc > 2 && strcmp(argv[2], "once") == 0) { /* one signal, nothing else running */
        void *p = malloc(100000);
        raise(SIGUSR1);
        free(p);
        printf("pid %d\nprof_signal: ok\n", (int)getpid());
        return 0;
    }
    pthread_t t[3];
    pthread_create(&t[0], NULL, worker, (void *)1);
    pthread_create(&t[1], NULL, worker, (void *)2);
    pthread_create(&t[2], NULL, dumper, NULL);
    for (int round = 0; round < 300; round++) {
        for (int k = 0; k < 3; k++) pthread_kill(t[k], SIGUSR1);
        raise(SIGUSR1);
        if (round % 15 == 0) {
            pid_t pid = fork();
            if (pid == 0) child();
            int status;
            if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                fprintf(stderr, "prof_signal: child %d failed (status %#x)\n", (int)pid, status);
                return 1;
            }
        }
        usleep(2000);
    }
    atomic_store(&stop, 1);
    for (int k = 0; k < 3; k++) pthread_join(t[k], NULL);
    for (int i = 0; i < 64; i++) free(atomic_load(&handoff[i]));
    printf("busy %ld dumped %ld\nprof_signal: ok\n", (long)atomic_load(&busy), (long)atomic_load(&dumped));
    return 0;
}
