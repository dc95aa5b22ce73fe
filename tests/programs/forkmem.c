/*
 * Memory that fork treats specially, for sprout's template tests.
 *
 * At start: a private anonymous region filled with 0xAB, a region marked
 * MADV_WIPEONFORK filled with 0xCD, and a MAP_DROPPABLE region (Linux
 * 6.11+) filled with 0xEF; then "ready". It waits for signals (blocked,
 * with handlers installed, so that it works as a pid namespace's init):
 *
 *  - SIGUSR1: prints one "report ..." line: whether the normal region
 *    still holds 0xAB, whether the wipe-on-fork region is all zero, the
 *    smaps flags of the regions (wf, dp), whether a page dropped with
 *    MADV_DONTNEED reads back as zeros, and whether a child it forks sees
 *    the wipe-on-fork region zeroed after the parent wrote to it;
 *  - SIGUSR2: allocates and touches 64 MiB, then prints "allocated".
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef MAP_DROPPABLE
#define MAP_DROPPABLE 0x08
#endif

#define PAGES 4

static long page;
static unsigned char *normal, *wipe, *drop;

static int all(const unsigned char *p, size_t n, unsigned char v) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != v) return 0;
    return 1;
}

/* Whether smaps shows `flag` in VmFlags of the mapping starting at `addr`. */
static int has_flag(void *addr, const char *flag) {
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return -1;
    char line[512], want[32];
    snprintf(want, sizeof want, "%lx-", (unsigned long)addr);
    int in = 0, found = 0;
    while (fgets(line, sizeof line, f)) {
        if (strchr(line, '-') && strchr(line, ' ') && strchr(line, '-') < strchr(line, ' '))
            in = strncmp(line, want, strlen(want)) == 0;
        if (in && strncmp(line, "VmFlags:", 8) == 0) {
            char pat[8];
            snprintf(pat, sizeof pat, " %s", flag);
            found = strstr(line, pat) != NULL;
            break;
        }
    }
    fclose(f);
    return found;
}

static void report(void) {
    size_t n = PAGES * page;
    int normal_ok = all(normal, n, 0xAB);
    int wipe_zero = all(wipe, n, 0);
    int wf = has_flag(wipe, "wf");
    int dp = drop ? has_flag(drop, "dp") : -1;
    /* A private page dropped reads back as zeros (from the zero page, not
     * from the template's copy). */
    madvise(normal + page, page, MADV_DONTNEED);
    int dontneed_zero = all(normal + page, page, 0);
    memset(normal + page, 0xAB, page);
    /* The kernel wipes the region in a child of ours too. */
    memset(wipe, 0xCD, n);
    int child_wipe_zero = -1;
    pid_t c = fork();
    if (c == 0) _exit(all(wipe, n, 0) ? 0 : 1);
    int st;
    if (c > 0 && waitpid(c, &st, 0) == c && WIFEXITED(st)) child_wipe_zero = WEXITSTATUS(st) == 0;
    memset(wipe, 0, n);
    printf("report normal=%d wipe_zero=%d wf=%d dp=%d dontneed_zero=%d child_wipe_zero=%d\n",
           normal_ok, wipe_zero, wf, dp, dontneed_zero, child_wipe_zero);
}

static void nothing(int sig) { (void)sig; }

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    page = sysconf(_SC_PAGESIZE);
    size_t n = PAGES * page;
    int prot = PROT_READ | PROT_WRITE;
    normal = mmap(NULL, n, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    wipe = mmap(NULL, n, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (normal == MAP_FAILED || wipe == MAP_FAILED) return 1;
    if (madvise(wipe, n, MADV_WIPEONFORK)) return 2;
    /* A map type of its own (like MAP_PRIVATE), not a modifier. */
    drop = mmap(NULL, n, prot, MAP_DROPPABLE | MAP_ANONYMOUS, -1, 0);
    if (drop == MAP_FAILED) drop = NULL;
    memset(normal, 0xAB, n);
    memset(wipe, 0xCD, n);
    if (drop) memset(drop, 0xEF, n);

    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGUSR2);
    sigprocmask(SIG_BLOCK, &set, NULL);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = nothing;
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGUSR2, &sa, NULL);
    printf("ready wipe=%d\n", all(wipe, n, 0xCD));
    for (;;) {
        siginfo_t si;
        int sig = sigwaitinfo(&set, &si);
        if (sig == SIGUSR1) report();
        if (sig == SIGUSR2) {
            size_t big = 64u << 20;
            char *p = malloc(big);
            if (!p) return 3;
            memset(p, 1, big);
            printf("allocated\n");
        }
    }
}
