/* Allocations that arrive while tidemalloc's one-time initialisation is under way on another
 * stack frame of the same thread, or in a fork child whose initialiser stayed in the parent.
 *
 * The program defines sysconf (exported from the executable, so it interposes libc's for the
 * library, which calls sysconf(_SC_PAGESIZE) while it initialises). The first call, from
 * inside the first malloc's initialisation, does what a signal handler or a second thread
 * could do at that instant:
 *   1. "handler": raise(SIGUSR1), whose handler mallocs, writes and frees small and large
 *      blocks on the interrupted thread (waiting for its own initialisation would hang);
 *   2. "handler fork": raise(SIGUSR2), whose handler forks; the child allocates and exits 0
 *      (the CI failure: the child waited forever for an initialisation that was never going
 *      to finish there);
 *   3. "thread fork": a thread created there (its creation allocates, on this thread, inside
 *      the initialisation) forks; the child, where the initialising thread does not exist,
 *      takes the initialisation over, allocates and exits 0.
 * Then initialisation finishes and the program allocates on both threads as usual.
 *
 * With INITSIG_EXIT set, every child ends by exit() instead of _exit(), so that with
 * TIDEMALLOC_SHOW_STATS=1 each child that took the initialisation over (and registered the
 * exit handler) prints its statistics: that shows the take-over happened.
 *
 * Watchdogs: alarm(20) in the main process, alarm(10) in every child (SIGALRM's default
 * action kills: a hang fails the test).
 *
 * Usage: initsig [handler|handler-fork|thread-fork]   (one case; default all three)
 * Prints "initsig: the sysconf hook ran inside initialisation; ... all passed".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern long __sysconf(int name); /* glibc's, exported */

static int run_handler = 1, run_handler_fork = 1, run_thread_fork = 1;
/* Set around main's first malloc: the hook acts (and counts) only inside it. */
static volatile sig_atomic_t in_first_malloc;
static volatile sig_atomic_t hook_calls, handler_ok, handler_fork_status = -1, thread_fork_status = -1;

static void say(const char *msg) {
    ssize_t r = write(2, msg, strlen(msg));
    (void)r;
}

/* Small and large blocks, each written and checked; 0 if all went well. */
static int work(unsigned salt) {
    void *p[12];
    for (unsigned i = 0; i < 12; i++) {
        size_t sz = i % 4 == 3 ? 200 * 1024 + i * 4096 : (i * 131 + salt) % 3000 + 1;
        p[i] = i % 2 ? calloc(1, sz) : malloc(sz);
        if (!p[i]) return 1;
        if (i % 2 && ((unsigned char *)p[i])[sz - 1] != 0) return 2;
        memset(p[i], (int)(i + salt), sz);
    }
    p[0] = realloc(p[0], 5000);
    if (!p[0]) return 3;
    for (unsigned i = 0; i < 12; i++) free(p[i]);
    return 0;
}

static int wait_status(pid_t pid) {
    int st;
    pid_t r;
    do r = waitpid(pid, &st, 0);
    while (r < 0 && errno == EINTR);
    if (r != pid) return -1;
    if (WIFEXITED(st)) return WEXITSTATUS(st);
    return 128 + WTERMSIG(st);
}

static void child(unsigned salt) {
    signal(SIGALRM, SIG_DFL);
    alarm(10);
    int status = work(salt);
    /* With INITSIG_EXIT set, children end by exit(): tidemalloc's exit handlers (statistics
     * with TIDEMALLOC_SHOW_STATS=1) run in those that initialised it, or took it over. */
    if (getenv("INITSIG_EXIT")) exit(status);
    _exit(status);
}

static void on_usr1(int sig) {
    (void)sig;
    handler_ok = work(1) == 0;
}

static void on_usr2(int sig) {
    (void)sig;
    pid_t pid = fork();
    if (pid == 0) child(2);
    handler_fork_status = pid < 0 ? -2 : wait_status(pid);
}

static void *forker(void *arg) {
    (void)arg;
    pid_t pid = fork();
    if (pid == 0) child(3);
    thread_fork_status = pid < 0 ? -2 : wait_status(pid);
    return NULL;
}

long sysconf(int name) {
    if (name == _SC_PAGESIZE && in_first_malloc && hook_calls++ == 0) {
        if (run_handler) raise(SIGUSR1);
        if (run_handler_fork) raise(SIGUSR2);
        pthread_t t;
        if (!run_thread_fork) {
        } else if (pthread_create(&t, NULL, forker, NULL) == 0) {
            pthread_join(t, NULL);
        } else {
            thread_fork_status = -3;
        }
    }
    return __sysconf(name);
}

static void *late_worker(void *arg) {
    return (void *)(intptr_t)work((unsigned)(intptr_t)arg);
}

int main(int argc, char **argv) {
    if (argc > 1) { /* one case only: handler, handler-fork or thread-fork */
        run_handler = strcmp(argv[1], "handler") == 0;
        run_handler_fork = strcmp(argv[1], "handler-fork") == 0;
        run_thread_fork = strcmp(argv[1], "thread-fork") == 0;
        handler_ok = !run_handler;
        handler_fork_status = run_handler_fork ? -1 : 0;
        thread_fork_status = run_thread_fork ? -1 : 0;
    }
    alarm(20);
    signal(SIGUSR1, on_usr1);
    signal(SIGUSR2, on_usr2);
    in_first_malloc = 1;
    void *first = malloc(40); /* initialises tidemalloc, which calls the hook */
    in_first_malloc = 0;
    if (!first) return 1;
    free(first);
    if (hook_calls == 0) {
        say("initsig: the sysconf hook never ran inside the first malloc (tidemalloc initialised before main?)\n");
        return 1;
    }
    int failed = 0;
    if (!handler_ok) {
        say("initsig: the handler's allocations during initialisation failed\n");
        failed = 1;
    }
    if (handler_fork_status != 0) {
        fprintf(stderr, "initsig: the handler's fork child ended with %d\n", (int)handler_fork_status);
        failed = 1;
    }
    if (thread_fork_status != 0) {
        fprintf(stderr, "initsig: the thread's fork child ended with %d\n", (int)thread_fork_status);
        failed = 1;
    }
    /* After initialisation: both threads allocate as usual, and a fork works. */
    pthread_t t;
    void *r = (void *)1;
    if (pthread_create(&t, NULL, late_worker, (void *)4) != 0 || pthread_join(t, &r) != 0 || r != NULL) {
        say("initsig: a thread's allocations after initialisation failed\n");
        failed = 1;
    }
    pid_t pid = fork();
    if (pid == 0) child(5);
    int st = wait_status(pid);
    if (st != 0 || work(6) != 0) {
        fprintf(stderr, "initsig: allocations after initialisation failed (fork child: %d)\n", st);
        failed = 1;
    }
    if (failed) return 1;
    printf("initsig: the sysconf hook ran inside initialisation;%s%s%s then both threads allocated; "
           "all passed\n",
           run_handler ? " a handler allocated;" : "", run_handler_fork ? " a handler's fork child allocated;" : "",
           run_thread_fork ? " a thread's fork child allocated;" : "");
    return 0;
}
