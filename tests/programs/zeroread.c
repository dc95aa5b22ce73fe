/* zeroread: memory a checkpoint must describe without copying. A 256 GiB
 * PROT_NONE reservation (free for the process, terabytes of page table
 * entries for a dumper that reads them at once) and 256 MiB of anonymous
 * memory read one byte per page, never written (each page maps the shared
 * zero page), beside one written page. Prints "ready", waits for SIGUSR1,
 * then checks the reservation is still there, the read memory reads zeros
 * and the written page its pattern: "zeroread ok" or "zeroread FAIL <what>". */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }

#define RESERVED (1UL << 38)
#define READ (256UL << 20)

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    signal(SIGUSR1, on_usr1);
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    char *reserved = mmap(NULL, RESERVED, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    volatile char *read = mmap(NULL, READ, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *written = mmap(NULL, pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (reserved == MAP_FAILED || read == MAP_FAILED || written == MAP_FAILED) {
        printf("zeroread FAIL mmap\n");
        return 1;
    }
    unsigned sum = 0;
    for (size_t i = 0; i < READ; i += pg) sum += read[i];
    memset(written, 0x5a, pg);
    printf("ready %u\n", sum);
    while (!go) pause();
    if (mprotect(reserved + RESERVED - pg, pg, PROT_NONE) != 0) {
        printf("zeroread FAIL reservation\n");
        return 1;
    }
    for (size_t i = 0; i < READ; i++)
        if (read[i]) {
            printf("zeroread FAIL read memory\n");
            return 1;
        }
    for (size_t i = 0; i < pg; i++)
        if (written[i] != 0x5a) {
            printf("zeroread FAIL written page\n");
            return 1;
        }
    printf("zeroread ok\n");
    return 0;
}
