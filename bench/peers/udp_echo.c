/*
 * udp_echo: the floor of per-datagram server cost for bench/run.py's UDP
 * row. One thread, one blocking socket, recvfrom then sendto: two system
 * calls per datagram and nothing else, so any UDP server's cost above this
 * is its own.
 *
 * Usage: udp_echo HOST PORT   (PORT 0 picks a free port)
 * Prints "listening HOST:PORT" on stdout once bound.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s HOST PORT\n", argv[0]);
        return 2;
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) {
        fprintf(stderr, "udp_echo: bad IPv4 address %s\n", argv[1]);
        return 2;
    }
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        perror("udp_echo");
        return 1;
    }
    socklen_t alen = sizeof addr;
    getsockname(fd, (struct sockaddr *)&addr, &alen);
    printf("listening %s:%d\n", argv[1], ntohs(addr.sin_port));
    fflush(stdout);

    static char buf[65536];
    for (;;) {
        struct sockaddr_storage peer;
        socklen_t plen = sizeof peer;
        ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&peer, &plen);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("recvfrom");
            return 1;
        }
        /* A failed send (the peer's socket is gone) is not the server's end. */
        sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&peer, plen);
    }
}
