/* threads: a dynamically linked, multi-threaded program for checkpoint
 * tests. While it is dumped its threads sit in different blocking calls:
 *  - main: sigwaitinfo (timer signal) loop, printing progress;
 *  - worker A: pthread_cond_wait (futex wait, no timeout), woken by main;
 *  - worker B: nanosleep loop with thread-local state;
 *  - worker C: read() on a pipe that main writes to.
 * A POSIX timer (SIGRTMIN) fires every 10 ms; SIGUSR2 is blocked and
 * raised once, so a pending signal exists at dump time; SIGUSR2 is also
 * sent to worker C alone (pthread_kill), pending on that thread. After
 * restore all threads must make progress and the timer must keep firing:
 * the program prints
 * "alive t=<timer> a=<A> b=<B> c=<C> pending=<0|1> cpending=<0|1>" lines. */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static unsigned long gen, a_count, b_count, c_count, c_pending;
static __thread unsigned long tls_counter;
static int pipefd[2];

static void *worker_a(void *arg) {
    (void)arg;
    unsigned long seen = 0;
    pthread_mutex_lock(&mu);
    for (;;) {
        while (gen == seen) pthread_cond_wait(&cv, &mu);
        seen = gen;
        a_count++;
    }
    return NULL;
}

static void *worker_b(void *arg) {
    (void)arg;
    for (;;) {
        struct timespec ts = {0, 5 * 1000000L};
        nanosleep(&ts, NULL);
        tls_counter++;
        __atomic_store_n(&b_count, tls_counter, __ATOMIC_RELAXED);
    }
    return NULL;
}

static void *worker_c(void *arg) {
    (void)arg;
    char buf[64];
    for (;;) {
        ssize_t n = read(pipefd[0], buf, sizeof buf);
        if (n > 0) __atomic_add_fetch(&c_count, (unsigned long)n, __ATOMIC_RELAXED);
        sigset_t pend;
        sigpending(&pend); /* this thread's and the process's */
        __atomic_store_n(&c_pending, (unsigned long)sigismember(&pend, SIGUSR2), __ATOMIC_RELAXED);
    }
    return NULL;
}

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (pipe(pipefd)) return 1;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGRTMIN);
    sigaddset(&set, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &set, NULL); /* inherited by the workers */
    pthread_t t, tc;
    pthread_create(&t, NULL, worker_a, NULL);
    pthread_create(&t, NULL, worker_b, NULL);
    pthread_create(&tc, NULL, worker_c, NULL);
    pthread_kill(tc, SIGUSR2); /* pending on worker C: blocked there too */

    timer_t timer;
    struct sigevent sev;
    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_SIGNAL;
    sev.sigev_signo = SIGRTMIN;
    if (timer_create(CLOCK_MONOTONIC, &sev, &timer)) return 1;
    struct itimerspec its = {{0, 10 * 1000000L}, {0, 10 * 1000000L}};
    timer_settime(timer, 0, &its, NULL);
    raise(SIGUSR2); /* stays pending: blocked everywhere */

    sigset_t rt;
    sigemptyset(&rt);
    sigaddset(&rt, SIGRTMIN);
    unsigned long ticks = 0;
    for (;;) {
        siginfo_t si;
        if (sigwaitinfo(&rt, &si) < 0) continue;
        ticks++;
        pthread_mutex_lock(&mu);
        gen++;
        pthread_cond_signal(&cv);
        pthread_mutex_unlock(&mu);
        if (write(pipefd[1], "x", 1) != 1) return 1;
        if (ticks % 10 == 0) {
            sigset_t pend;
            sigpending(&pend);
            printf("alive t=%lu a=%lu b=%lu c=%lu pending=%d cpending=%lu\n", ticks, a_count,
                   __atomic_load_n(&b_count, __ATOMIC_RELAXED),
                   __atomic_load_n(&c_count, __ATOMIC_RELAXED), sigismember(&pend, SIGUSR2),
                   __atomic_load_n(&c_pending, __ATOMIC_RELAXED));
        }
    }
}
