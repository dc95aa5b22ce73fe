/* memsem: anonymous-memory semantics across a restore. It fills 64 pages
 * with a pattern and waits for SIGUSR1. Before the dump, pages 0-31 were dropped with MADV_DONTNEED
 * (must read as zeros after restore, not as the snapshot) and a malloc'd
 * block was filled and freed. On SIGUSR1 it checks: dropped pages are
 * zero, kept pages hold the pattern, a fresh calloc is zeroed, and after
 * MADV_DONTNEED *now* (post restore) pages read back as zeros too. Prints
 * "memsem ok" or "memsem FAIL <what>". */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGES 64
static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }

static int all(const unsigned char *p, size_t n, unsigned char v) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != v) return 0;
    return 1;
}

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    long pg = sysconf(_SC_PAGESIZE);
    unsigned char *m = mmap(NULL, PAGES * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return 1;
    /* Shared anonymous memory must come back shared, with its contents. */
    unsigned char *sh = mmap(NULL, 4 * pg, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) return 1;
    memset(sh, 0x5a, 4 * pg);
    memset(m, 0xab, PAGES * pg);
    madvise(m, 32 * pg, MADV_DONTNEED);
    /* a large block from malloc (mmap'd), filled and freed, then calloc */
    size_t big = 1 << 20;
    unsigned char *b = malloc(big);
    memset(b, 0xcd, big);
    free(b);
    signal(SIGUSR1, on_usr1);
    printf("memsem ready\n");
    while (!go) pause();
    if (!all(m, 32 * pg, 0)) { printf("memsem FAIL dropped pages not zero\n"); return 1; }
    if (!all(m + 32 * pg, 32 * pg, 0xab)) { printf("memsem FAIL kept pages lost\n"); return 1; }
    if (!all(sh, 4 * pg, 0x5a)) { printf("memsem FAIL shared memory contents\n"); return 1; }
    {
        char line[512], want[64];
        snprintf(want, sizeof want, "%lx-", (unsigned long)sh);
        FILE *f = fopen("/proc/self/maps", "r");
        int shared = 0;
        while (f && fgets(line, sizeof line, f))
            if (!strncmp(line, want, strlen(want))) shared = strstr(line, " rw-s ") != NULL;
        if (!shared) { printf("memsem FAIL shared memory is not MAP_SHARED\n"); return 1; }
    }
    unsigned char *c = calloc(1, big);
    if (!c || !all(c, big, 0)) { printf("memsem FAIL calloc not zeroed\n"); return 1; }
    memset(m + 32 * pg, 0x11, 32 * pg);
    madvise(m + 32 * pg, 32 * pg, MADV_DONTNEED);
    if (!all(m + 32 * pg, 32 * pg, 0)) { printf("memsem FAIL MADV_DONTNEED after restore reads the snapshot\n"); return 1; }
    printf("memsem ok\n");
    return 0;
}
