/* sparsemap: maps one page of a sparse file of 1 TiB (free to make), which
 * a checkpoint would otherwise hash whole. Prints "ready" and waits. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    int fd = open("/tmp/sparse", O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || ftruncate(fd, 1L << 40) != 0) {
        printf("sparsemap FAIL file\n");
        return 1;
    }
    volatile char *p = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
        printf("sparsemap FAIL mmap\n");
        return 1;
    }
    close(fd);
    printf("ready %d\n", p[0]);
    for (;;) pause();
}
