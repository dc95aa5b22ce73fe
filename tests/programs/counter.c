/* counter: a static program with a counter in memory. Every tick it
 * increments and prints it; between ticks it sleeps in nanosleep, so a
 * checkpoint usually finds it inside a blocking syscall. After a restore
 * it must continue from the dumped value, writing to the new stdout. */
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <unistd.h>

static volatile unsigned long counter;

int main(int argc, char **argv) {
    long tick_ms = argc > 1 ? atol(argv[1]) : 20;
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) {
        counter++;
        printf("count %lu\n", counter);
        struct timespec ts = {tick_ms / 1000, (tick_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
}
