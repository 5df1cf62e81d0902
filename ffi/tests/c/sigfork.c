/* fork() from a signal handler in a single-threaded program (glibc supports it: fork takes
 * no malloc lock while the process has one thread).
 *
 * A SIGALRM handler forks (child: malloc/calloc/realloc/free a little, small and large
 * blocks, then _exit(0); parent: waitpid and check the status). An interval timer
 * (setitimer, every 2 ms) keeps firing while the main flow loops over malloc, calloc,
 * realloc and free (sizes from 1 byte to 300 KiB: size classes, slow paths, large mappings,
 * each block's pattern checked before it is freed), malloc_trim(0) (which makes system calls
 * under the allocator's locks: a signal is delivered when a system call returns) and
 * fork()+waitpid (its children do the same little work). So the handler's fork lands inside
 * the main flow's fork (after the pre-fork handler took the allocator's locks) and inside its
 * malloc, free and trim, with locks held.
 *
 * Mode "threads": a second thread allocates all along, and the signal comes from inside the
 * main flow's fork(), while tidemalloc's pre-fork handler holds every lock: the program
 * registers its own pre-fork handler before its first malloc (so it runs after
 * tidemalloc's, which registers at the first malloc), and that handler raises SIGALRM. No
 * timer: glibc itself holds its fork lock across parts of fork() in a multi-threaded
 * process, and a signal landing there would deadlock glibc. (glibc does not support a fork
 * from a handler that interrupted malloc in a multi-threaded process either.)
 *
 * Mode "exited": single-threaded again after a thread ran and exited (glibc's
 * __libc_single_threaded stays false: only the thread count says the process has one
 * thread). The handler forks only while the main flow is outside fork(): glibc, which now
 * takes its own fork lock across fork(), would deadlock there by itself.
 *
 * What is checked: no deadlock, in the parent or in any child; every child of the main flow,
 * and of a handler fork that did not interrupt an allocator call, allocates, frees and exits
 * 0. A handler that interrupted malloc, free or trim leaves the heap as that call left it
 * (malloc is not async-signal-safe); its child must not deadlock (the locks are reset), but
 * may crash on a half-done update, as glibc's children do (about 1.5% of them in this test
 * with glibc's malloc): those crashes are counted and printed, not failed.
 *
 * Watchdogs: a POSIX timer sends SIGTERM (default action) to the main process after 30 s;
 * every child restores SIGALRM's default action and calls alarm(10) first, so a deadlocked
 * child dies by SIGALRM, which fails the parent.
 *
 * Usage: sigfork [seconds [threads|exited]]   (default 3)
 * Prints "sigfork: ... all exited 0" on success.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t handler_forks, handler_failures, handler_fork_errors;
/* The main flow is inside its malloc/calloc/realloc/free/malloc_trim calls (set around the
 * whole batch: an over-estimate); the handler forks that interrupted it, and how many of
 * their children crashed on the state the interrupted call left. */
static volatile sig_atomic_t in_alloc, handler_forks_in_alloc, torn_children;
static int threads_mode, exited_mode;
static volatile sig_atomic_t in_fork; /* the main flow is inside fork() */
static volatile sig_atomic_t in_handler; /* the SIGALRM handler runs */
static volatile int stop;

static void say(const char *msg) {
    /* async-signal-safe */
    ssize_t r = write(2, msg, strlen(msg));
    (void)r;
}

/* What every child does: a little of everything, then _exit. Only async-signal-safe calls
 * besides the allocator's. */
static void child_work(unsigned salt) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    sigaction(SIGALRM, &sa, NULL);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGALRM);
    sigprocmask(SIG_UNBLOCK, &set, NULL); /* a handler's child starts with SIGALRM blocked */
    alarm(10);                            /* watchdog: a deadlocked child dies by SIGALRM */
    void *p[24];
    for (unsigned i = 0; i < 24; i++) {
        size_t sz = i % 6 == 5 ? 150 * 1024 + i * 4096 : (i * 97 + salt) % 5000 + 1;
        p[i] = i % 3 == 0 ? calloc(1, sz) : malloc(sz);
        if (!p[i]) _exit(3);
        if (i % 3 == 0 && ((unsigned char *)p[i])[sz - 1] != 0) _exit(4);
        memset(p[i], (int)i, sz < 300 ? sz : 300);
    }
    for (unsigned i = 0; i < 24; i += 4) {
        p[i] = realloc(p[i], 7000 + i * 50);
        if (!p[i]) _exit(5);
    }
    for (unsigned i = 0; i < 24; i++) free(p[i]);
    _exit(0);
}

static int wait_ok(pid_t pid) {
    int st;
    pid_t r;
    do r = waitpid(pid, &st, 0);
    while (r < 0 && errno == EINTR);
    return r == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : (r == pid && WIFSIGNALED(st) ? WTERMSIG(st) : -1);
}

static void on_alarm(int sig) {
    (void)sig;
    if (threads_mode && !in_fork) return;
    in_handler = 1;
    if (exited_mode && in_fork) return;
    int saved = errno;
    int inside = in_alloc;
    pid_t pid = fork();
    if (pid == 0) child_work((unsigned)handler_forks);
    if (pid < 0) {
        handler_fork_errors++;
    } else {
        int r = wait_ok(pid);
        if (r == SIGALRM) {
            handler_failures++;
            say("sigfork: a handler's child deadlocked (killed by its watchdog)\n");
        } else if (r != 0 && inside) {
            torn_children++; /* tolerated: malloc is not async-signal-safe (glibc's crash too) */
        } else if (r != 0) {
            handler_failures++;
            say("sigfork: a handler's child failed\n");
        }
        handler_forks++;
        handler_forks_in_alloc += inside;
    }
    in_handler = 0;
    errno = saved;
}

static uint64_t rng = 88172645463325252ULL;
static uint64_t next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

#define SLOTS 64
static unsigned char *blk[SLOTS];
static size_t len[SLOTS];

static size_t rand_size(void) {
    uint64_t r = next() % 100;
    if (r < 60) return 1 + next() % 256;
    if (r < 90) return 257 + next() % 16000;
    return 100 * 1024 + next() % (200 * 1024); /* around the 128 KiB mmap threshold */
}

static void check(int i) {
    size_t n = len[i] < 64 ? len[i] : 64;
    for (size_t k = 0; k < n; k++)
        if (blk[i][k] != (unsigned char)(i + k)) {
            fprintf(stderr, "sigfork: block %d corrupted at offset %zu\n", i, k);
            exit(1);
        }
}

static void fill(int i) {
    size_t n = len[i] < 64 ? len[i] : 64;
    for (size_t k = 0; k < n; k++) blk[i][k] = (unsigned char)(i + k);
}

/* exited mode: a thread that allocates a little and exits. */
static void *short_lived(void *arg) {
    free(malloc(100));
    return arg;
}

/* threads mode: allocates all along. */
static void *allocator_thread(void *arg) {
    void *keep[16] = {0};
    for (unsigned n = 0; !stop; n++) {
        free(keep[n % 16]);
        keep[n % 16] = malloc(n % 7 == 0 ? 140 * 1024 : 1 + n % 3000);
        if (n % 64 == 0) usleep(100);
    }
    for (int i = 0; i < 16; i++) free(keep[i]);
    return arg;
}

/* threads mode: the main flow's forks in which SIGALRM was raised from inside the fork
 * handlers, and how many of those found it blocked (tidemalloc's pre-fork handler had run:
 * the signal waits for the end of its window). */
static volatile sig_atomic_t raised_in_fork, raised_blocked;

/* Registered before the first malloc, so it runs after tidemalloc's pre-fork handler. */
static void raise_in_fork(void) {
    if (!threads_mode || in_handler || !in_fork) return;
    sigset_t cur;
    pthread_sigmask(SIG_BLOCK, NULL, &cur);
    raised_blocked += sigismember(&cur, SIGALRM) == 1;
    raised_in_fork++;
    raise(SIGALRM);
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 3.0;
    threads_mode = argc > 2 && strcmp(argv[2], "threads") == 0;
    if (threads_mode) pthread_atfork(raise_in_fork, NULL, NULL); /* before any malloc */
    exited_mode = argc > 2 && strcmp(argv[2], "exited") == 0;
    if (exited_mode) {
        pthread_t t;
        if (pthread_create(&t, NULL, short_lived, NULL) != 0 || pthread_join(t, NULL) != 0) {
            perror("pthread_create");
            return 1;
        }
    }

    /* Watchdog of the main process: SIGTERM after 30 s. */
    timer_t wd;
    struct sigevent sev;
    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_SIGNAL;
    sev.sigev_signo = SIGTERM;
    if (timer_create(CLOCK_MONOTONIC, &sev, &wd) != 0) {
        perror("timer_create");
        return 1;
    }
    struct itimerspec its = {.it_value = {.tv_sec = 30}};
    timer_settime(wd, 0, &its, NULL);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval tv = {.it_interval = {.tv_usec = 2000}, .it_value = {.tv_usec = 2000}};
    pthread_t sig_thread;
    if (threads_mode) {
        if (pthread_create(&sig_thread, NULL, allocator_thread, NULL) != 0) {
            perror("pthread_create");
            return 1;
        }
    } else {
        setitimer(ITIMER_REAL, &tv, NULL);
    }

    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long ops = 0, forks = 0;
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &t);
        if ((t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9 >= seconds) break;
        in_alloc = 1;
        for (int k = 0; k < 200; k++, ops++) {
            int i = (int)(next() % SLOTS);
            if (blk[i]) {
                check(i);
                if (next() % 4 == 0) {
                    size_t n = rand_size();
                    unsigned char *q = realloc(blk[i], n);
                    if (!q) {
                        fprintf(stderr, "sigfork: realloc(%zu) failed\n", n);
                        return 1;
                    }
                    blk[i] = q;
                    len[i] = n < len[i] ? n : len[i];
                    check(i);
                    len[i] = n;
                    fill(i);
                    continue;
                }
                free(blk[i]);
                blk[i] = NULL;
                continue;
            }
            len[i] = rand_size();
            blk[i] = next() % 2 ? malloc(len[i]) : calloc(1, len[i]);
            if (!blk[i]) {
                fprintf(stderr, "sigfork: malloc(%zu) failed\n", len[i]);
                return 1;
            }
            fill(i);
        }
        malloc_trim(0);
        in_alloc = 0;
        in_fork = 1;
        pid_t pid = fork();
        in_fork = 0;
        if (pid < 0) {
            perror("fork");
            return 1;
        }
        if (pid == 0) child_work((unsigned)forks);
        int r = wait_ok(pid);
        if (r != 0) {
            fprintf(stderr, "sigfork: child %ld %s\n", forks,
                    r == SIGALRM ? "deadlocked (killed by its watchdog)" : "failed");
            return 1;
        }
        forks++;
    }
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    if (threads_mode) {
        stop = 1;
        pthread_join(sig_thread, NULL);
    }
    for (int i = 0; i < SLOTS; i++) {
        if (blk[i]) check(i);
        free(blk[i]);
    }
    if (threads_mode && (raised_in_fork == 0 || raised_blocked != raised_in_fork)) {
        fprintf(stderr, "sigfork: SIGALRM raised in %d forks, blocked (inside tidemalloc's fork window) in %d\n",
                (int)raised_in_fork, (int)raised_blocked);
        return 1;
    }
    if (handler_failures || handler_fork_errors) {
        fprintf(stderr, "sigfork: %d handler children failed, %d handler forks failed\n", (int)handler_failures,
                (int)handler_fork_errors);
        return 1;
    }
    printf("sigfork%s: %ld operations, %ld forks from the main flow, %d from the signal handler (%d while the "
           "main flow was in malloc/free/trim, %d of whose children crashed on the heap state it left), no "
           "deadlock, all other children exited 0\n",
           threads_mode ? " (threads)" : argc > 2 ? " (after a thread exited)" : "", ops, forks, (int)handler_forks,
           (int)handler_forks_in_alloc, (int)torn_children);
    return 0;
}
