/* inotify: holds an inotify instance (a kind of fd sprout refuses to
 * checkpoint) and waits. */
#include <sys/inotify.h>
#include <unistd.h>

int main(void) {
    int fd = inotify_init1(IN_CLOEXEC);
    if (fd < 0 || inotify_add_watch(fd, "/tmp", IN_CREATE) < 0) return 1;
    for (;;) pause();
}
