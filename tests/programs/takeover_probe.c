/* takeover_probe: exec'd by the runtime with an empty argv in place of the
 * container's process; prints what a restorer would find: capabilities,
 * no_new_privs, seccomp mode, RLIMIT_STACK, pid. */
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

int main(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    while (f && fgets(line, sizeof line, f)) {
        if (!strncmp(line, "CapEff:", 7) || !strncmp(line, "NoNewPrivs:", 11) ||
            !strncmp(line, "Seccomp:", 8) || !strncmp(line, "Uid:", 4))
            fputs(line, stdout);
    }
    struct rlimit r;
    getrlimit(RLIMIT_STACK, &r);
    printf("stack=%llu pid=%d\n", (unsigned long long)r.rlim_cur, (int)getpid());
    return 0;
}
