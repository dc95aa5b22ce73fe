/* Test program for snapshot/tests/ptrace.rs (built static and dynamic with
 * gcc at test time). Modes:
 *   threads  main reads one-letter commands on stdin (read on a pipe); a
 *            "sleeper" thread loops in nanosleep, a "futexer" thread in a
 *            FUTEX_WAIT without timeout. SIGUSR1/SIGUSR2 are blocked.
 *            p: print counters   w: wake the futexer   q: exit 0
 *   rseq     prints glibc's rseq area of the main thread, then as threads
 *   idle     prints "ready", then pause() forever (single thread)
 *   churn    the main thread creates and joins short-lived threads in a
 *            loop; a "reader" thread exits 0 on q
 *   pidns    unshare(CLONE_NEWPID) + fork: the child (pid 1 of the new
 *            namespace) pauses; the parent prints its pid and waits for it
 * Any unexpected error exits non-zero, so "exit 0" proves the threads were
 * resumed correctly. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/rseq.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile int quit;
static int fword;
static volatile long sleeps, wakes, eintrs;

static void *sleeper(void *arg) {
    (void)arg;
    prctl(PR_SET_NAME, "sleeper");
    while (!quit) {
        struct timespec ts = {0, 200 * 1000 * 1000};
        long r = syscall(SYS_nanosleep, &ts, &ts);
        if (r < 0) {
            if (errno == EINTR) { eintrs++; continue; }
            _exit(2);
        }
        sleeps++;
    }
    return NULL;
}

static void *futexer(void *arg) {
    (void)arg;
    prctl(PR_SET_NAME, "futexer");
    for (;;) {
        long r = syscall(SYS_futex, &fword, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
        if (r < 0 && errno != EAGAIN && errno != EINTR) _exit(3);
        if (__atomic_exchange_n(&fword, 0, __ATOMIC_SEQ_CST)) {
            if (quit) return NULL;
            wakes++;
        }
    }
}

static int threads(void) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGUSR2);
    sigprocmask(SIG_BLOCK, &set, NULL);
    pthread_t a, b;
    if (pthread_create(&a, NULL, sleeper, NULL) || pthread_create(&b, NULL, futexer, NULL)) return 10;
    printf("ready %d\n", getpid());
    fflush(stdout);
    for (;;) {
        char c;
        ssize_t n = read(0, &c, 1);
        if (n == 0) return 4;
        if (n < 0) return 5; /* EINTR would mean a restart went wrong */
        if (c == 'p') {
            printf("sleeps=%ld wakes=%ld eintrs=%ld\n", sleeps, wakes, eintrs);
            fflush(stdout);
        } else if (c == 'w') {
            __atomic_store_n(&fword, 1, __ATOMIC_SEQ_CST);
            syscall(SYS_futex, &fword, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
        } else if (c == 'q') {
            quit = 1;
            __atomic_store_n(&fword, 1, __ATOMIC_SEQ_CST);
            syscall(SYS_futex, &fword, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
            pthread_join(a, NULL);
            pthread_join(b, NULL);
            printf("bye\n");
            fflush(stdout);
            return 0;
        }
    }
}

static void *churn_worker(void *arg) { return arg; }

static void *churn_reader(void *arg) {
    (void)arg;
    prctl(PR_SET_NAME, "reader");
    for (;;) {
        char c;
        ssize_t n = read(0, &c, 1);
        if (n <= 0) _exit(4);
        if (c == 'q') {
            printf("bye\n");
            fflush(stdout);
            _exit(0);
        }
    }
}

static int churn(void) {
    pthread_t r;
    if (pthread_create(&r, NULL, churn_reader, NULL)) return 10;
    printf("ready %d\n", getpid());
    fflush(stdout);
    for (;;) {
        pthread_t t;
        if (pthread_create(&t, NULL, churn_worker, NULL)) _exit(20);
        if (pthread_join(t, NULL)) _exit(21);
    }
}

int main(int argc, char **argv) {
    if (argc < 2) return 100;
    if (!strcmp(argv[1], "threads")) return threads();
    if (!strcmp(argv[1], "churn")) return churn();
    if (!strcmp(argv[1], "rseq")) {
        uintptr_t area = (uintptr_t)__builtin_thread_pointer() + __rseq_offset;
        printf("rseq=%#lx size=%u\n", (unsigned long)area, __rseq_size);
        fflush(stdout);
        return threads();
    }
    if (!strcmp(argv[1], "idle")) {
        printf("ready %d\n", getpid());
        fflush(stdout);
        for (;;) pause();
    }
    if (!strcmp(argv[1], "pidns")) {
        if (unshare(CLONE_NEWPID)) { perror("unshare"); return 11; }
        pid_t pid = fork();
        if (pid < 0) return 12;
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            for (;;) pause();
        }
        printf("%d\n", pid);
        fflush(stdout);
        int st;
        if (waitpid(pid, &st, 0) < 0) return 13;
        return 0;
    }
    return 101;
}
