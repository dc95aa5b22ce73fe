/* rseqspin: the main thread spends its life inside an rseq critical
 * section that never ends by itself (`1: jmp 1b`), using the rseq area
 * glibc registered for it. Only the kernel can take it out, by moving it
 * to the section's abort handler on preemption or signal delivery; the
 * handler counts the abort and enters the section again. A second thread
 * signals the main thread every 2 ms and prints "aborts=<n>" every 20 ms.
 *
 * A checkpoint catches the main thread inside the section. If the dump or
 * the restore lets the kernel clear the thread's rseq_cs while its saved
 * instruction pointer is still inside the section, the thread resumes in
 * the loop with no section registered and no signal ever aborts it again:
 * the count stops. */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/rseq.h>
#include <unistd.h>

static volatile unsigned long aborts;
static pthread_t main_thread;

static void on_usr1(int sig) { (void)sig; }

static void *kicker(void *arg) {
    (void)arg;
    for (unsigned long n = 1;; n++) {
        usleep(2000);
        pthread_kill(main_thread, SIGUSR1);
        if (n % 10 == 0) {
            printf("aborts=%lu\n", aborts);
            fflush(stdout);
        }
    }
    return NULL;
}

int main(void) {
    if (__rseq_size == 0) {
        fprintf(stderr, "rseqspin: glibc registered no rseq area\n");
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);
    main_thread = pthread_self();
    pthread_t t;
    pthread_create(&t, NULL, kicker, NULL);

    char *tp;
    __asm__("mov %%fs:0, %0" : "=r"(tp));
    struct rseq *rs = (struct rseq *)(tp + __rseq_offset);
    for (;;) {
        __asm__ goto(
            ".pushsection __rseq_cs, \"aw\"\n\t"
            ".balign 32\n\t"
            "3:\n\t"
            ".long 0, 0\n\t"               /* version, flags */
            ".quad 1f, 2f - 1f, 4f\n\t"    /* start, post-commit offset, abort */
            ".popsection\n\t"
            "leaq 3b(%%rip), %%rax\n\t"
            "movq %%rax, %0\n\t"
            "1: jmp 1b\n\t"
            "2:\n\t"
            ".pushsection __rseq_failure, \"ax\"\n\t"
            ".long %c1\n\t"                /* the signature before abort_ip */
            "4: jmp %l2\n\t"
            ".popsection\n\t"
            :
            : "m"(rs->rseq_cs), "i"(RSEQ_SIG)
            : "rax", "memory"
            : aborted);
    aborted:
        aborts++;
    }
}
