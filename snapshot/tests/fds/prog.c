/* Test program for snapshot/tests/fds.rs (built static with gcc at test
 * time). Modes:
 *   full FILE UPATH  in a new network namespace (lo up), opens one fd of
 *                    every kind sprout restores at fixed numbers (see
 *                    open_all), prints "ready PID", then serves commands
 *   stub             in a new network namespace (lo up), with only 0-2, prints
 *                    "ready PID", then serves commands: its fds are restored
 *                    into it from outside
 *   chroot DIR, pivot DIR
 *                    chroot(DIR), or a new mount namespace whose root is DIR
 *                    (pivot_root), then opens /data.txt at fd 3, offset 7
 *   pivot-covered DIR
 *                    as pivot, opens /sub/data.txt at fd 3 and then mounts a
 *                    tmpfs over /sub
 *   refuse-KIND      opens one fd sprout refuses at fd 5 (inotify, tcp,
 *                    iouring, memfd, deleted, pidfd, epoll-stale, udp,
 *                    netlink; "inherited": fd 5 was given by the parent), prints
 *                    "ready PID" (or "skip REASON"), then waits on stdin
 * Commands (one letter on stdin): v = check every fd and print what it
 * finds, then "accepting" and serve one connection per listener; q = exit 0.
 * SIGUSR2 is blocked in every mode (the signalfd's signal). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <unistd.h>

#define DIE(what) do { fprintf(stderr, "prog: %s: %s (line %d)\n", what, strerror(errno), __LINE__); exit(10); } while (0)
#define CHECK(x) do { if ((x) < 0) DIE(#x); } while (0)

static const char ABSTRACT[] = "sprout-fds-test";

static void at(int fd, int want) {
    CHECK(fd);
    if (fd == want) return;
    CHECK(dup2(fd, want));
    CHECK(close(fd));
}

static void at_cloexec(int fd, int want) {
    CHECK(fd);
    if (fd == want) {
        CHECK(fcntl(fd, F_SETFD, FD_CLOEXEC));
        return;
    }
    CHECK(dup3(fd, want, O_CLOEXEC));
    CHECK(close(fd));
}

static void new_netns(void) {
    CHECK(unshare(CLONE_NEWNET));
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    CHECK(s);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "lo");
    CHECK(ioctl(s, SIOCGIFFLAGS, &ifr));
    ifr.ifr_flags |= IFF_UP;
    CHECK(ioctl(s, SIOCSIFFLAGS, &ifr));
    close(s);
}

static int one = 1;

static int tcp4_listener(int port, int backlog) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(s);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one));
    CHECK(bind(s, (void *)&a, sizeof a));
    CHECK(listen(s, backlog));
    return s;
}

static void open_all(const char *file, const char *upath) {
    /* 3: a file, O_APPEND, at offset 123; 20: a dup of it with O_CLOEXEC. */
    int f = open(file, O_RDWR | O_CREAT | O_TRUNC, 0600);
    CHECK(f);
    char buf[200];
    memset(buf, 'a', sizeof buf);
    if (write(f, buf, sizeof buf) != sizeof buf) DIE("write file");
    close(f);
    f = open(file, O_RDWR | O_APPEND);
    CHECK(f);
    CHECK(lseek(f, 123, SEEK_SET));
    at(f, 3);
    CHECK(dup3(3, 20, O_CLOEXEC));
    /* 4: /dev/null, write-only, cloexec. */
    at_cloexec(open("/dev/null", O_WRONLY), 4);
    /* 7/8: a pipe with 10 bytes buffered; read end non-blocking. */
    int p[2];
    CHECK(pipe(p));
    if (write(p[1], "0123456789", 10) != 10) DIE("write pipe");
    at(p[0], 7);
    at_cloexec(p[1], 8);
    CHECK(fcntl(7, F_SETFL, O_NONBLOCK));
    /* 9/10: a stream socketpair with bytes queued both ways. */
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv));
    at(sv[0], 9);
    at(sv[1], 10);
    if (write(10, "from-b", 6) != 6 || write(9, "from-a!", 7) != 7) DIE("write pair");
    CHECK(fcntl(9, F_SETFL, O_NONBLOCK));
    /* 11: eventfd with count 5. */
    at_cloexec(eventfd(5, EFD_NONBLOCK), 11);
    /* 12: timerfd armed for an hour, every second after. */
    int t = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
    CHECK(t);
    struct itimerspec its = {.it_interval = {1, 0}, .it_value = {3600, 0}};
    CHECK(timerfd_settime(t, 0, &its, NULL));
    at_cloexec(t, 12);
    /* 14: a one-shot timer that expired, unread; 15: an hourly one whose
     * first expiry is unread (overdue); 16: an absolute CLOCK_REALTIME timer
     * an hour from now. */
    struct itimerspec soon = {.it_value = {0, 1000}};
    at(timerfd_create(CLOCK_MONOTONIC, 0), 14);
    CHECK(timerfd_settime(14, 0, &soon, NULL));
    soon.it_interval.tv_sec = 3600;
    at(timerfd_create(CLOCK_MONOTONIC, 0), 15);
    CHECK(timerfd_settime(15, 0, &soon, NULL));
    for (int fd = 14; fd <= 15; fd++) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        CHECK(poll(&pf, 1, -1));
    }
    struct timespec now;
    CHECK(clock_gettime(CLOCK_REALTIME, &now));
    struct itimerspec abs_ = {.it_value = {now.tv_sec + 3600, now.tv_nsec}};
    at(timerfd_create(CLOCK_REALTIME, 0), 16);
    CHECK(timerfd_settime(16, TFD_TIMER_ABSTIME, &abs_, NULL));
    /* 13: signalfd for SIGUSR2. */
    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, SIGUSR2);
    at(signalfd(-1, &m, SFD_NONBLOCK), 13);
    /* 30: TCP listener on 127.0.0.1:5555. */
    int s = tcp4_listener(5555, 16);
    CHECK(setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one));
    at(s, 30);
    /* 31: TCP6 listener on [::1]:5556 with options. */
    s = socket(AF_INET6, SOCK_STREAM, 0);
    CHECK(s);
    int five = 5, rcv = 65536, snd = 32768;
    CHECK(setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one));
    CHECK(setsockopt(s, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one));
    CHECK(setsockopt(s, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one));
    CHECK(setsockopt(s, IPPROTO_TCP, TCP_DEFER_ACCEPT, &five, sizeof five));
    CHECK(setsockopt(s, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv));
    CHECK(setsockopt(s, SOL_SOCKET, SO_SNDBUF, &snd, sizeof snd));
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_port = htons(5556)};
    a6.sin6_addr = in6addr_loopback;
    CHECK(bind(s, (void *)&a6, sizeof a6));
    CHECK(listen(s, 7));
    at(s, 31);
    /* 40: UDP bound to 127.0.0.1:5557. */
    s = socket(AF_INET, SOCK_DGRAM, 0);
    CHECK(s);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(5557)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(bind(s, (void *)&a, sizeof a));
    at(s, 40);
    /* 50: unix listener on a path; 51: on an abstract name. */
    s = socket(AF_UNIX, SOCK_STREAM, 0);
    CHECK(s);
    struct sockaddr_un u = {.sun_family = AF_UNIX};
    strncpy(u.sun_path, upath, sizeof u.sun_path - 1);
    unlink(upath);
    CHECK(bind(s, (void *)&u, sizeof u));
    CHECK(listen(s, 5));
    at(s, 50);
    s = socket(AF_UNIX, SOCK_STREAM, 0);
    CHECK(s);
    memset(&u, 0, sizeof u);
    u.sun_family = AF_UNIX;
    memcpy(u.sun_path + 1, ABSTRACT, strlen(ABSTRACT));
    CHECK(bind(s, (void *)&u, offsetof(struct sockaddr_un, sun_path) + 1 + strlen(ABSTRACT)));
    CHECK(listen(s, 3));
    at(s, 51);
    /* 60/61: a datagram socketpair with two messages queued at 60. */
    CHECK(socketpair(AF_UNIX, SOCK_DGRAM, 0, sv));
    at(sv[0], 60);
    at(sv[1], 61);
    if (send(61, "m1", 2, 0) != 2 || send(61, "msg-two", 7, 0) != 7) DIE("send dgram");
    CHECK(fcntl(60, F_SETFL, O_NONBLOCK));
    /* 100: epoll on the pipe, the socketpair, the TCP listener, the eventfd. */
    int ep = epoll_create1(EPOLL_CLOEXEC);
    CHECK(ep);
    at_cloexec(ep, 100);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0x7777};
    CHECK(epoll_ctl(100, EPOLL_CTL_ADD, 7, &ev));
    ev.events = EPOLLIN | EPOLLET;
    ev.data.u64 = 0x9999;
    CHECK(epoll_ctl(100, EPOLL_CTL_ADD, 9, &ev));
    ev.events = EPOLLIN;
    ev.data.u64 = 0x3030;
    CHECK(epoll_ctl(100, EPOLL_CTL_ADD, 30, &ev));
    ev.data.u64 = 0x1111;
    CHECK(epoll_ctl(100, EPOLL_CTL_ADD, 11, &ev));
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int iopt(int fd, int level, int opt) {
    int v = -1;
    socklen_t l = sizeof v;
    CHECK(getsockopt(fd, level, opt, &v, &l));
    return v;
}

static void accept_one(int lfd, const char *what, int read_byte) {
    int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    CHECK(c);
    char b = '-';
    if (read_byte && read(c, &b, 1) != 1) DIE("read from accepted");
    printf("accepted %s %c\n", what, b);
    close(c);
}

static void verify(void) {
    /* The file and its dup share the offset; O_APPEND writes at the end. */
    long pos3 = lseek(3, 0, SEEK_CUR), pos20 = lseek(20, 0, SEEK_CUR);
    int fl = fcntl(3, F_GETFL);
    if (write(3, "Z", 1) != 1) DIE("write file");
    printf("file pos=%ld pos20=%ld append=%d after=%ld\n", pos3, pos20, !!(fl & O_APPEND),
           (long)lseek(20, 0, SEEK_CUR));
    printf("cloexec 3=%d 20=%d 4=%d 7=%d 8=%d 12=%d 100=%d\n", fcntl(3, F_GETFD), fcntl(20, F_GETFD),
           fcntl(4, F_GETFD), fcntl(7, F_GETFD), fcntl(8, F_GETFD), fcntl(12, F_GETFD),
           fcntl(100, F_GETFD));
    printf("nonblock 7=%d 8=%d 9=%d 10=%d 60=%d\n", !!(fcntl(7, F_GETFL) & O_NONBLOCK),
           !!(fcntl(8, F_GETFL) & O_NONBLOCK), !!(fcntl(9, F_GETFL) & O_NONBLOCK),
           !!(fcntl(10, F_GETFL) & O_NONBLOCK), !!(fcntl(60, F_GETFL) & O_NONBLOCK));
    /* Readiness before anything is read. */
    struct epoll_event evs[8];
    int n = epoll_wait(100, evs, 8, 0);
    CHECK(n);
    uint64_t d[8];
    for (int i = 0; i < n; i++) d[i] = evs[i].data.u64;
    qsort(d, n, sizeof d[0], cmp_u64);
    printf("epoll");
    for (int i = 0; i < n; i++) printf(" %llx", (unsigned long long)d[i]);
    printf("\n");
    char buf[64];
    ssize_t r = read(7, buf, sizeof buf);
    CHECK(r);
    printf("pipe %.*s\n", (int)r, buf);
    r = read(7, buf, sizeof buf);
    printf("pipe then %s\n", r < 0 && errno == EAGAIN ? "EAGAIN" : "data?");
    char b1[32], b2[32];
    ssize_t r1 = recv(9, b1, sizeof b1, MSG_DONTWAIT), r2 = recv(10, b2, sizeof b2, MSG_DONTWAIT);
    CHECK(r1);
    CHECK(r2);
    printf("pair %.*s %.*s\n", (int)r1, b1, (int)r2, b2);
    /* The pair still works both ways. */
    if (write(10, "ping", 4) != 4) DIE("write pair");
    r1 = recv(9, b1, sizeof b1, MSG_DONTWAIT);
    CHECK(r1);
    printf("pair again %.*s\n", (int)r1, b1);
    r1 = recv(60, b1, sizeof b1, 0);
    CHECK(r1);
    r2 = recv(60, b2, sizeof b2, 0);
    CHECK(r2);
    printf("dgram %.*s %.*s\n", (int)r1, b1, (int)r2, b2);
    uint64_t cnt = 0;
    if (read(11, &cnt, 8) != 8) DIE("read eventfd");
    printf("eventfd %llu\n", (unsigned long long)cnt);
    struct itimerspec its;
    CHECK(timerfd_gettime(12, &its));
    printf("timerfd interval=%ld.%09ld armed=%d\n", (long)its.it_interval.tv_sec,
           its.it_interval.tv_nsec, its.it_value.tv_sec > 3000 && its.it_value.tv_sec <= 3600);
    uint64_t e14 = 0, e15 = 0;
    if (read(14, &e14, 8) != 8 || read(15, &e15, 8) != 8) DIE("read timers");
    struct itimerspec t15, t16;
    CHECK(timerfd_gettime(15, &t15));
    CHECK(timerfd_gettime(16, &t16));
    printf("timers 14=%llu 15=%llu interval15=%ld armed15=%d armed16=%d\n", (unsigned long long)e14,
           (unsigned long long)e15, (long)t15.it_interval.tv_sec,
           t15.it_value.tv_sec > 3000 && t15.it_value.tv_sec <= 3600,
           t16.it_value.tv_sec > 3000 && t16.it_value.tv_sec <= 3600);
    CHECK(raise(SIGUSR2));
    struct signalfd_siginfo si;
    if (read(13, &si, sizeof si) != sizeof si) DIE("read signalfd");
    printf("signalfd %u\n", si.ssi_signo);
    printf("tcp nodelay=%d reuseaddr=%d listening=%d\n", iopt(30, IPPROTO_TCP, TCP_NODELAY),
           iopt(30, SOL_SOCKET, SO_REUSEADDR), iopt(30, SOL_SOCKET, SO_ACCEPTCONN));
    printf("tcp6 v6only=%d reuseport=%d keepalive=%d defer=%d rcvbuf=%d sndbuf=%d\n",
           iopt(31, IPPROTO_IPV6, IPV6_V6ONLY), iopt(31, SOL_SOCKET, SO_REUSEPORT),
           iopt(31, SOL_SOCKET, SO_KEEPALIVE), iopt(31, IPPROTO_TCP, TCP_DEFER_ACCEPT),
           iopt(31, SOL_SOCKET, SO_RCVBUF), iopt(31, SOL_SOCKET, SO_SNDBUF));
    printf("accepting\n");
    fflush(stdout);
    accept_one(30, "tcp", 1);
    accept_one(31, "tcp6", 1);
    accept_one(50, "unix", 0);
    accept_one(51, "abstract", 0);
    r = recv(40, buf, sizeof buf, 0);
    CHECK(r);
    printf("udp %.*s\n", (int)r, buf);
    printf("done\n");
    fflush(stdout);
}

static void refuse(const char *kind) {
    if (!strcmp(kind, "inotify")) {
        at(inotify_init1(0), 5);
    } else if (!strcmp(kind, "tcp")) {
        new_netns();
        int l = tcp4_listener(5555, 4);
        int c = socket(AF_INET, SOCK_STREAM, 0);
        CHECK(c);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(5555)};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        CHECK(connect(c, (void *)&a, sizeof a));
        at(c, 5);
        at(accept(l, NULL, NULL), 7);
        at(l, 6);
    } else if (!strcmp(kind, "iouring")) {
        struct io_uring_params p;
        memset(&p, 0, sizeof p);
        long r = syscall(SYS_io_uring_setup, 4, &p);
        if (r < 0) {
            printf("skip io_uring_setup: %s\n", strerror(errno));
            fflush(stdout);
            exit(0);
        }
        at(r, 5);
    } else if (!strcmp(kind, "memfd")) {
        at(memfd_create("sprout-test", 0), 5);
    } else if (!strcmp(kind, "deleted")) {
        char path[] = "/tmp/sprout-fds-deleted-XXXXXX";
        int f = mkstemp(path);
        CHECK(f);
        CHECK(unlink(path));
        at(f, 5);
    } else if (!strcmp(kind, "pidfd")) {
        at(syscall(SYS_pidfd_open, getpid(), 0), 5);
    } else if (!strcmp(kind, "epoll-stale")) {
        /* The eventfd registered as fd 6 now lives at fd 7 only. */
        at(epoll_create1(0), 5);
        at(eventfd(0, 0), 6);
        struct epoll_event ev = {.events = EPOLLIN};
        CHECK(epoll_ctl(5, EPOLL_CTL_ADD, 6, &ev));
        CHECK(dup2(6, 7));
        CHECK(close(6));
    } else if (!strcmp(kind, "udp")) {
        new_netns();
        int s = socket(AF_INET, SOCK_DGRAM, 0);
        CHECK(s);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(9)};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        CHECK(connect(s, (void *)&a, sizeof a));
        at(s, 5);
    } else if (!strcmp(kind, "netlink")) {
        at(socket(AF_NETLINK, SOCK_RAW, 0), 5);
    } else if (!strcmp(kind, "inherited")) {
        /* fd 5 came from the parent. */
        if (fcntl(5, F_GETFD) < 0) DIE("no fd 5");
    } else {
        fprintf(stderr, "unknown kind %s\n", kind);
        exit(2);
    }
}

static void pivot(const char *dir) {
    CHECK(unshare(CLONE_NEWNS));
    CHECK(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL));
    CHECK(mount(dir, dir, NULL, MS_BIND, NULL));
    CHECK(chdir(dir));
    CHECK(syscall(SYS_pivot_root, ".", "old"));
    CHECK(chdir("/"));
    CHECK(umount2("/old", MNT_DETACH));
}

static void open_data(const char *path) {
    int f = open(path, O_RDWR);
    CHECK(f);
    CHECK(lseek(f, 7, SEEK_SET));
    at(f, 3);
}

int main(int argc, char **argv) {
    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, SIGUSR2);
    CHECK(sigprocmask(SIG_BLOCK, &m, NULL));
    if (argc < 2) return 2;
    /* Nothing inherited but stdio (and fd 5 where the test gives one). */
    if (!strcmp(argv[1], "refuse-inherited")) {
        CHECK(syscall(SYS_close_range, 3, 4, 0));
        CHECK(syscall(SYS_close_range, 6, ~0U, 0));
    } else {
        CHECK(syscall(SYS_close_range, 3, ~0U, 0));
    }
    if (!strcmp(argv[1], "full") && argc == 4) {
        new_netns();
        open_all(argv[2], argv[3]);
    } else if (!strcmp(argv[1], "chroot") && argc == 3) {
        CHECK(chroot(argv[2]));
        CHECK(chdir("/"));
        open_data("/data.txt");
    } else if (!strcmp(argv[1], "pivot") && argc == 3) {
        pivot(argv[2]);
        open_data("/data.txt");
    } else if (!strcmp(argv[1], "pivot-covered") && argc == 3) {
        pivot(argv[2]);
        open_data("/sub/data.txt");
        CHECK(mount("tmpfs", "/sub", "tmpfs", 0, NULL));
    } else if (!strcmp(argv[1], "stub")) {
        new_netns();
    } else if (!strncmp(argv[1], "refuse-", 7)) {
        refuse(argv[1] + 7);
    } else {
        return 2;
    }
    printf("ready %d\n", getpid());
    fflush(stdout);
    for (;;) {
        char c;
        ssize_t r = read(0, &c, 1);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return 3;
        if (c == 'v') verify();
        if (c == 'q') {
            printf("bye\n");
            fflush(stdout);
            return 0;
        }
    }
}
