/* sharedmap: shared memory mapped twice must stay one object across a
 * restore (pitfalls §10.4).
 *
 * A memfd of 8 pages (closed before the dump: only the mappings hold it)
 * is mapped twice, overlapping: A = object pages 0-3, B = object pages
 * 2-5. Page 7 is written through the fd and mapped nowhere. A
 * MAP_SHARED|MAP_ANONYMOUS region S gets a second mapping S2 of itself
 * (mremap with old size 0). Every page holds its own pattern. Prints
 * "sharedmap ready" and waits for SIGUSR1; then checks that the contents
 * came back, that a write through one mapping shows through the other
 * (both ways, for the memfd and for S/S2), and that growing B with mremap
 * reaches page 7's data. Prints "sharedmap ok" or "sharedmap FAIL <what>". */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }
static long pg;

static int page_is(const unsigned char *p, unsigned char v) {
    for (long i = 0; i < pg; i++)
        if (p[i] != v) return 0;
    return 1;
}

#define FAIL(what)                             \
    do {                                       \
        printf("sharedmap FAIL %s\n", what);   \
        return 1;                              \
    } while (0)

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    pg = sysconf(_SC_PAGESIZE);
    int fd = memfd_create("ring", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, 8 * pg)) FAIL("memfd");
    unsigned char *a = mmap(NULL, 4 * pg, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    unsigned char *b = mmap(NULL, 4 * pg, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 2 * pg);
    if (a == MAP_FAILED || b == MAP_FAILED) FAIL("mmap memfd");
    for (int i = 0; i < 4; i++) memset(a + i * pg, 0x10 + i, pg);  /* object pages 0-3 */
    for (int i = 2; i < 4; i++) memset(b + i * pg, 0x10 + i + 2, pg); /* object pages 4-5 */
    unsigned char page7[4096];
    memset(page7, 0x17, sizeof page7);
    if (pwrite(fd, page7, sizeof page7, 7 * pg) != (ssize_t)sizeof page7) FAIL("pwrite");
    close(fd);

    unsigned char *s = mmap(NULL, 2 * pg, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (s == MAP_FAILED) FAIL("mmap shared anonymous");
    unsigned char *s2 = mremap(s, 0, 2 * pg, MREMAP_MAYMOVE);
    if (s2 == MAP_FAILED) FAIL("mremap alias");
    memset(s, 0x21, pg);
    memset(s2 + pg, 0x22, pg);

    signal(SIGUSR1, on_usr1);
    printf("sharedmap ready\n");
    while (!go) pause();

    for (int i = 0; i < 4; i++)
        if (!page_is(a + i * pg, 0x10 + i)) FAIL("memfd contents through A");
    for (int i = 0; i < 4; i++)
        if (!page_is(b + i * pg, 0x12 + i)) FAIL("memfd contents through B");
    if (!page_is(s, 0x21) || !page_is(s + pg, 0x22) || !page_is(s2, 0x21) || !page_is(s2 + pg, 0x22))
        FAIL("shared anonymous contents");
    memset(a + 2 * pg, 0x31, pg); /* object page 2 = B's first */
    if (!page_is(b, 0x31)) FAIL("memfd write through A not seen through B");
    memset(b + pg, 0x32, pg); /* object page 3 = A's last */
    if (!page_is(a + 3 * pg, 0x32)) FAIL("memfd write through B not seen through A");
    memset(s2, 0x41, pg);
    if (!page_is(s, 0x41)) FAIL("shared anonymous write through the alias not seen");
    memset(s + pg, 0x42, pg);
    if (!page_is(s2 + pg, 0x42)) FAIL("shared anonymous write not seen through the alias");
    unsigned char *wide = mremap(b, 4 * pg, 6 * pg, MREMAP_MAYMOVE);
    if (wide == MAP_FAILED) FAIL("mremap grow");
    if (!page_is(wide + 5 * pg, 0x17)) FAIL("unmapped page of the memfd lost");
    if (!page_is(wide + 4 * pg, 0)) FAIL("hole of the memfd not zero");
    printf("sharedmap ok\n");
    return 0;
}
