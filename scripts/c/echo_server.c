/* A C-speed echo server: the ceiling the load generator is checked against.
 *
 * One thread, epoll, non-blocking sockets, level-triggered. Each connection has a
 * buffer for what the peer has not taken yet; while it is non-empty we stop reading
 * from that peer (backpressure) and wait for EPOLLOUT. Binds 127.0.0.1:PORT (0 picks a
 * free port) and prints "listening on tcp://127.0.0.1:PORT" to stderr when ready, the
 * line triosrv listen prints, so the benchmark scripts start it like any other server.
 * Exits on SIGTERM/SIGINT. Build: cc -O2 -o echo_server echo_server.c
 */
#define _GNU_SOURCE /* accept4 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF 65536
#define MAXFD 65536

struct conn { char *pending; size_t len, off; };
static struct conn conns[MAXFD];
static volatile sig_atomic_t stop;

static void on_signal(int sig) { (void)sig; stop = 1; }

static void drop(int ep, int fd) {
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
    free(conns[fd].pending);
    memset(&conns[fd], 0, sizeof conns[fd]);
    close(fd);
}

/* Send what we can; keep the rest and switch the fd to EPOLLOUT. 0 = ok, -1 = drop. */
static int send_some(int ep, int fd, const char *data, size_t len) {
    while (len > 0) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EAGAIN) break;
        if (n < 0) return -1;
        data += n; len -= (size_t)n;
    }
    struct conn *c = &conns[fd];
    struct epoll_event ev = {.data.fd = fd};
    if (len > 0) {
        char *copy = malloc(len);
        if (!copy) return -1;
        memcpy(copy, data, len);
        free(c->pending);
        c->pending = copy; c->len = len; c->off = 0;
        ev.events = EPOLLOUT;
    } else {
        free(c->pending);
        c->pending = NULL; c->len = c->off = 0;
        ev.events = EPOLLIN;
    }
    return epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev) == 0 ? 0 : -1;
}

static void on_ready(int ep, int fd, unsigned events, char *buf) {
    struct conn *c = &conns[fd];
    if (c->pending && (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
        if (send_some(ep, fd, c->pending + c->off, c->len - c->off) < 0) drop(ep, fd);
        return;
    }
    ssize_t n = recv(fd, buf, BUF, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN)) { drop(ep, fd); return; }
    if (n > 0 && send_some(ep, fd, buf, (size_t)n) < 0) drop(ep, fd);
}

static void accept_all(int ep, int lfd) {
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
        if (fd < 0) return;
        if (fd >= MAXFD) { close(fd); continue; }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }
}

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 0;
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof addr;
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lfd, 4096) < 0) {
        perror("bind/listen");
        return 1;
    }
    getsockname(lfd, (struct sockaddr *)&addr, &alen);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    fprintf(stderr, "listening on tcp://127.0.0.1:%d\n", ntohs(addr.sin_port));
    static char buf[BUF];
    struct epoll_event events[256];
    while (!stop) {
        int n = epoll_wait(ep, events, 256, 200);
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == lfd) accept_all(ep, lfd);
            else on_ready(ep, fd, events[i].events, buf);
        }
    }
    return 0; /* the kernel closes every fd and frees the buffers at exit */
}
