/* sysprobe: makes one system call chosen by argv[1] and prints the result
 * as "ret=<n> errno=<e>", so tests can check what a seccomp profile does
 * to it. Static, raw syscalls only. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: sysprobe CALL\n");
        return 2;
    }
    long ret;
    const char *c = argv[1];
    errno = 0;
    if (!strcmp(c, "personality-query")) {
        ret = syscall(SYS_personality, 0xffffffffUL);
    } else if (!strcmp(c, "personality-linux")) {
        ret = syscall(SYS_personality, 0UL);
    } else if (!strcmp(c, "getpriority-process")) {
        ret = syscall(SYS_getpriority, PRIO_PROCESS, 0);
    } else if (!strcmp(c, "getpriority-user")) {
        ret = syscall(SYS_getpriority, PRIO_USER, 0);
    } else if (!strcmp(c, "getppid")) {
        ret = syscall(SYS_getppid);
    } else if (!strcmp(c, "getpid")) {
        ret = syscall(SYS_getpid);
    } else if (!strcmp(c, "sleep")) {
        for (;;) pause();
    } else {
        fprintf(stderr, "unknown call %s\n", c);
        return 2;
    }
    printf("ret=%ld errno=%d\n", ret, ret < 0 ? errno : 0);
    fflush(stdout);
    return 0;
}
