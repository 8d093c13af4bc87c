/*
 * epoll_echo: the floor of per-message server cost for bench/run.py.
 *
 * One thread, one level-triggered epoll set, nonblocking sockets with
 * TCP_NODELAY, one 64 KiB buffer shared by all connections: read what is
 * there, write it straight back. Nothing a real server needs (framing,
 * limits, shutdown) is here, so whatever a server costs above this figure
 * is its own overhead rather than the kernel's.
 *
 * Partial writes are handled simply: the unwritten tail is kept in a
 * per-connection heap buffer, the connection waits for EPOLLOUT instead of
 * EPOLLIN until the tail is flushed, and only then reads again. That is
 * enough for an echo (a client that stops reading stops getting replies).
 *
 * Usage: epoll_echo HOST PORT   (PORT 0 picks a free port)
 * Prints "listening HOST:PORT" on stdout once bound.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_SIZE (64 * 1024)
#define MAX_EVENTS 256

struct pending {
    char *data;
    size_t len, off;
};

/* Per-fd pending output, indexed by fd (fds are small integers). */
static struct pending *pend;
static size_t pend_cap;

static void die(const char *what) {
    perror(what);
    exit(1);
}

static struct pending *pending_for(int fd) {
    if ((size_t)fd >= pend_cap) {
        size_t cap = pend_cap ? pend_cap : 1024;
        while (cap <= (size_t)fd) cap *= 2;
        pend = realloc(pend, cap * sizeof *pend);
        if (!pend) die("realloc");
        memset(pend + pend_cap, 0, (cap - pend_cap) * sizeof *pend);
        pend_cap = cap;
    }
    return &pend[fd];
}

static void close_conn(int ep, int fd) {
    struct pending *p = pending_for(fd);
    free(p->data);
    memset(p, 0, sizeof *p);
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
}

static void watch(int ep, int fd, int op, unsigned events) {
    struct epoll_event ev = {.events = events, .data.fd = fd};
    if (epoll_ctl(ep, op, fd, &ev) < 0) die("epoll_ctl");
}

/* Writes buf[0..len); keeps the unwritten tail. Returns -1 on error. */
static int write_or_keep(int ep, int fd, const char *buf, size_t len) {
    size_t off = 0;
    while (off < len) {
        ssize_t n = write(fd, buf + off, len - off);
        if (n > 0) {
            off += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pending *p = pending_for(fd);
            p->len = len - off;
            p->off = 0;
            p->data = malloc(p->len);
            if (!p->data) die("malloc");
            memcpy(p->data, buf + off, p->len);
            watch(ep, fd, EPOLL_CTL_MOD, EPOLLOUT);
            return 0;
        } else {
            return -1;
        }
    }
    return 0;
}

/* Flushes a kept tail; back to EPOLLIN once it is gone. */
static int flush_pending(int ep, int fd) {
    struct pending *p = pending_for(fd);
    while (p->off < p->len) {
        ssize_t n = write(fd, p->data + p->off, p->len - p->off);
        if (n > 0) {
            p->off += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return 0;
        } else {
            return -1;
        }
    }
    free(p->data);
    memset(p, 0, sizeof *p);
    watch(ep, fd, EPOLL_CTL_MOD, EPOLLIN);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s HOST PORT\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);

    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) {
        fprintf(stderr, "epoll_echo: bad IPv4 address %s\n", argv[1]);
        return 2;
    }
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0) die("socket");
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0) die("bind");
    if (listen(lfd, 1024) < 0) die("listen");
    socklen_t alen = sizeof addr;
    getsockname(lfd, (struct sockaddr *)&addr, &alen);
    printf("listening %s:%d\n", argv[1], ntohs(addr.sin_port));
    fflush(stdout);

    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    watch(ep, lfd, EPOLL_CTL_ADD, EPOLLIN);

    static char buf[BUF_SIZE];
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(ep, events, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == lfd) {
                for (;;) {
                    int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (c < 0) break; /* EAGAIN, or EMFILE: retried next wakeup */
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    pending_for(c);
                    watch(ep, c, EPOLL_CTL_ADD, EPOLLIN);
                }
                continue;
            }
            if (events[i].events & EPOLLOUT) {
                if (flush_pending(ep, fd) < 0) close_conn(ep, fd);
                continue;
            }
            ssize_t r = read(fd, buf, sizeof buf);
            if (r > 0) {
                if (write_or_keep(ep, fd, buf, (size_t)r) < 0) close_conn(ep, fd);
            } else if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
                close_conn(ep, fd);
            }
        }
    }
}
