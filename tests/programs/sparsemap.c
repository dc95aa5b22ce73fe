/* sparsemap [COUNT GIB]: maps one page of each of COUNT sparse files of
 * GIB GiB (default: one of 1 TiB), free to make, which a checkpoint
 * would otherwise hash whole. Prints "ready" and waits. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    int count = argc > 2 ? atoi(argv[1]) : 1;
    long gib = argc > 2 ? atol(argv[2]) : 1024;
    int sum = 0;
    for (int i = 0; i < count; i++) {
        char path[64];
        snprintf(path, sizeof path, "/tmp/sparse%d", i);
        int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
        if (fd < 0 || ftruncate(fd, gib << 30) != 0) {
            printf("sparsemap FAIL file\n");
            return 1;
        }
        volatile char *p = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            printf("sparsemap FAIL mmap\n");
            return 1;
        }
        close(fd);
        sum += p[0];
    }
    printf("ready %d\n", sum);
    for (;;) pause();
}
