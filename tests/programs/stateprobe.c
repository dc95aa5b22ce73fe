/* stateprobe: process and thread state that a checkpoint must carry over,
 * set before the dump and reported after the restore.
 *
 * Before: umask 027, cwd /tmp/probe-cwd, personality UNAME26 (uname then
 * reports a 2.6 release), ITIMER_REAL (7 s interval, 1 h value),
 * ITIMER_VIRTUAL (3 s, 500 s), no ITIMER_PROF, an alternate signal stack
 * on the main thread and another on a second thread, which then blocks in
 * accept() on an abstract unix socket. Prints one "before ..." line with
 * the values, then "ready", and waits for SIGUSR1 in pause().
 *
 * On SIGUSR1 it prints "after ..." lines with the same values as they are
 * now, connects to its own socket so the accept() returns, and prints the
 * second thread's report ("after-thread accept=ok ..."). getpriority()'s
 * errno is reported from both threads (a seccomp filter for every thread
 * shows there). Exits with code 42. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/personality.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/utsname.h>
#include <unistd.h>

#define SOCK_NAME "sprout-stateprobe"

static char main_alt[65536];
static char thread_alt[32768];
static volatile sig_atomic_t go;
static int listener;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int thread_ready;

static void on_usr1(int s) { (void)s; go = 1; }
static void on_timer(int s) { (void)s; }

static void altstack(char *out, size_t n) {
    stack_t ss;
    if (sigaltstack(NULL, &ss) != 0) {
        snprintf(out, n, "error:%d", errno);
        return;
    }
    snprintf(out, n, "%lx:%zu:%d", (unsigned long)ss.ss_sp, ss.ss_size, ss.ss_flags);
}

static int prio_errno(void) {
    errno = 0;
    int r = getpriority(PRIO_PROCESS, 0);
    return r == -1 ? errno : 0;
}

static struct sockaddr_un sock_addr(socklen_t *len) {
    struct sockaddr_un a;
    memset(&a, 0, sizeof a);
    a.sun_family = AF_UNIX;
    memcpy(a.sun_path + 1, SOCK_NAME, strlen(SOCK_NAME));
    *len = offsetof(struct sockaddr_un, sun_path) + 1 + strlen(SOCK_NAME);
    return a;
}

static void *acceptor(void *arg) {
    (void)arg;
    /* Signals are the main thread's: SIGUSR1 must wake its pause(), and
     * accept() must only return for the connection. */
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    stack_t ss = {.ss_sp = thread_alt, .ss_size = sizeof thread_alt, .ss_flags = 0};
    if (sigaltstack(&ss, NULL) != 0) {
        perror("sigaltstack (thread)");
        exit(1);
    }
    pthread_mutex_lock(&lock);
    thread_ready = 1;
    pthread_cond_signal(&cond);
    pthread_mutex_unlock(&lock);
    int c = accept(listener, NULL, NULL);
    char line[256], alt[64];
    altstack(alt, sizeof alt);
    if (c < 0) {
        snprintf(line, sizeof line, "after-thread accept=errno%d\n", errno);
    } else {
        snprintf(line, sizeof line, "after-thread accept=ok altstack=%s prio_errno=%d\n", alt,
                 prio_errno());
    }
    if (c >= 0) {
        (void)!write(c, line, strlen(line));
        close(c);
    } else {
        fputs(line, stdout);
    }
    return NULL;
}

static long us(struct timeval tv) { return tv.tv_sec * 1000000L + tv.tv_usec; }

static void report(const char *when) {
    char cwd[256], alt[64];
    struct utsname u;
    mode_t m = umask(0);
    umask(m);
    if (!getcwd(cwd, sizeof cwd)) strcpy(cwd, "?");
    uname(&u);
    altstack(alt, sizeof alt);
    printf("%s pid=%d umask=%03o cwd=%s personality=0x%x release=%s main_altstack=%s "
           "prio_errno=%d\n",
           when, (int)getpid(), (unsigned)m, cwd, (unsigned)personality(0xffffffff), u.release,
           alt, prio_errno());
}

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_ONSTACK;
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = on_timer;
    sigaction(SIGALRM, &sa, NULL);
    sigaction(SIGVTALRM, &sa, NULL);

    mkdir("/tmp/probe-cwd", 0755);
    if (chdir("/tmp/probe-cwd") != 0) {
        perror("chdir");
        return 1;
    }
    umask(027);
    if (personality(PER_LINUX | UNAME26) == -1) {
        perror("personality");
        return 1;
    }
    stack_t ss = {.ss_sp = main_alt, .ss_size = sizeof main_alt, .ss_flags = 0};
    if (sigaltstack(&ss, NULL) != 0) {
        perror("sigaltstack");
        return 1;
    }
    struct itimerval real = {{7, 0}, {3600, 0}}, virt = {{3, 0}, {500, 0}};
    if (setitimer(ITIMER_REAL, &real, NULL) || setitimer(ITIMER_VIRTUAL, &virt, NULL)) {
        perror("setitimer");
        return 1;
    }

    socklen_t len;
    struct sockaddr_un a = sock_addr(&len);
    listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listener < 0 || bind(listener, (struct sockaddr *)&a, len) || listen(listener, 4)) {
        perror("listener");
        return 1;
    }
    pthread_t t;
    if (pthread_create(&t, NULL, acceptor, NULL)) return 1;
    pthread_mutex_lock(&lock);
    while (!thread_ready) pthread_cond_wait(&cond, &lock);
    pthread_mutex_unlock(&lock);

    report("before");
    printf("before-thread altstack=%lx:%zu:0\n", (unsigned long)thread_alt, sizeof thread_alt);
    printf("ready\n");
    while (!go) pause();

    report("after");
    struct itimerval r, v, p;
    getitimer(ITIMER_REAL, &r);
    getitimer(ITIMER_VIRTUAL, &v);
    getitimer(ITIMER_PROF, &p);
    printf("after-timers real=%ld/%ld virtual=%ld/%ld prof=%ld/%ld\n", us(r.it_interval), us(r.it_value),
           us(v.it_interval), us(v.it_value), us(p.it_interval), us(p.it_value));
    int c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c < 0 || connect(c, (struct sockaddr *)&a, len) != 0) {
        printf("after-connect failed errno=%d\n", errno);
        return 1;
    }
    char buf[512];
    ssize_t n, off = 0;
    while (off < (ssize_t)sizeof buf - 1 && (n = read(c, buf + off, sizeof buf - 1 - off)) > 0)
        off += n;
    buf[off] = 0;
    fputs(buf, stdout);
    pthread_join(t, NULL);
    return 42;
}
