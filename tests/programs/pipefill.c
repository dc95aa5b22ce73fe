/* pipefill: 40 pipes of 1 MiB each, filled (40 MiB queued, more than a
 * checkpoint copies in all). Prints "ready" and waits. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    static char chunk[65536];
    memset(chunk, 'p', sizeof chunk);
    for (int i = 0; i < 40; i++) {
        int fds[2];
        if (pipe2(fds, O_NONBLOCK) != 0 || fcntl(fds[1], F_SETPIPE_SZ, 1 << 20) < 0) {
            printf("pipefill FAIL pipe %d\n", i);
            return 1;
        }
        while (write(fds[1], chunk, sizeof chunk) > 0) {
        }
    }
    printf("ready\n");
    for (;;) pause();
}
