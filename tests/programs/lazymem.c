/* lazymem: anonymous-memory semantics of a lazily loaded restore while its
 * pages are still missing. Restored with --record-working-set nothing is
 * loaded until touched, so every step below acts on pages the loader has
 * not filled yet. Before the dump it fills regions A, B, C, D (16 pages
 * each, a pattern per region) and waits for SIGUSR1. Then, without
 * touching a region before the step that tests it:
 *   1. MADV_DONTNEED of A's first half: zeros there, the pattern in the rest
 *      (the drop must win over the snapshot);
 *   2. mremap of B to another address: the pattern there;
 *   3. munmap of C's first half and a fresh mapping over it: zeros there,
 *      the pattern in the rest;
 *   4. fork: the child reads D (the pattern) and exits 0 if so; then the
 *      parent reads D too;
 *   5. a page written after the restore, then dropped: zeros.
 * Prints "lazymem ok" or "lazymem FAIL <what>". */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define PAGES 16
static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }

static int all(const unsigned char *p, size_t n, unsigned char v) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != v) return 0;
    return 1;
}

static unsigned char *region(size_t len, unsigned char fill) {
    unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    memset(p, fill, len);
    return p;
}

#define FAIL(what) do { printf("lazymem FAIL %s\n", what); return 1; } while (0)

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    size_t pg = (size_t)sysconf(_SC_PAGESIZE), len = PAGES * pg, half = len / 2;
    /* Guard gaps keep the regions separate mappings. */
    unsigned char *a = region(len, 0xa1), *g1 = mmap(NULL, pg, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    unsigned char *b = region(len, 0xb2), *g2 = mmap(NULL, pg, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    unsigned char *c = region(len, 0xc3), *g3 = mmap(NULL, pg, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    unsigned char *d = region(len, 0xd4);
    /* Where B moves: reserved now, so the address is free after the restore. */
    unsigned char *to = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (!a || !b || !c || !d || to == MAP_FAILED || g1 == MAP_FAILED || g2 == MAP_FAILED || g3 == MAP_FAILED)
        return 1;
    signal(SIGUSR1, on_usr1);
    printf("lazymem ready\n");
    while (!go) pause();

    if (madvise(a, half, MADV_DONTNEED)) FAIL("madvise");
    if (!all(a, half, 0)) FAIL("dropped pages read the snapshot");
    if (!all(a + half, half, 0xa1)) FAIL("kept pages lost");

    unsigned char *moved = mremap(b, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, to);
    if (moved != to) FAIL("mremap");
    if (!all(moved, len, 0xb2)) FAIL("moved pages lost");

    if (munmap(c, half)) FAIL("munmap");
    if (mmap(c, half, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != c)
        FAIL("mmap over");
    if (!all(c, half, 0)) FAIL("a fresh mapping read the snapshot");
    if (!all(c + half, half, 0xc3)) FAIL("pages next to an unmapped range lost");

    pid_t child = fork();
    if (child < 0) FAIL("fork");
    if (child == 0) _exit(all(d, len, 0xd4) ? 0 : 3);
    int st;
    if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        FAIL("a forked child read its missing pages wrong");
    if (!all(d, len, 0xd4)) FAIL("pages lost after a fork");

    memset(a + half, 0x11, pg);
    madvise(a + half, pg, MADV_DONTNEED);
    if (!all(a + half, pg, 0)) FAIL("a page dropped after the restore reads the snapshot");

    printf("lazymem ok\n");
    return 0;
}
