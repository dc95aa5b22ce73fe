/* sysvshm: a process with a System V shared memory segment attached,
 * which a checkpoint must refuse naming it (the segment belongs to the
 * IPC namespace, which a restore does not bring along). Prints
 * "sysvshm ready" and sleeps. */
#include <stdio.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <unistd.h>

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    int id = shmget(0x5eed, 2 * 4096, IPC_CREAT | 0600);
    if (id < 0) {
        perror("shmget");
        return 1;
    }
    char *p = shmat(id, NULL, 0);
    if (p == (char *)-1) {
        perror("shmat");
        return 1;
    }
    memset(p, 0x5a, 2 * 4096);
    printf("sysvshm ready\n");
    for (;;) pause();
}
