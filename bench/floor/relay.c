/*
 * The floor of a keep-alive HTTP proxy on this kernel, as a measuring instrument
 * (bench/FLOOR.md), not a proxy: one thread, epoll, each client connection paired
 * with its own backend connection, bytes relayed as they come with one recv and
 * one send per message. No parsing, no routing, no pool, no checks: the system
 * calls any proxy must make for a small keep-alive request (2 recv, 2 send, plus
 * its share of epoll_wait), and almost nothing else.
 *
 * With -s it splices instead (for large bodies): what is readable goes into a
 * 256 KiB pipe, and out of it to the peer, waiting in poll(2) while the peer's
 * send buffer is full (one connection at a time: a measuring instrument).
 *
 *   gcc -O2 -o relay relay.c && ./relay [-s] LISTEN_PORT BACKEND_PORT [BACKEND_PORT...]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAXFD 65536
static int peer[MAXFD];

static int spliced;

static void nonblock_nodelay(int fd) {
    int one = 1;
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* Splice mode: move what `fd` has now to its peer through `pipefd`. */
static int relay_splice(int fd, int to, int pipefd[2]) {
    ssize_t in = splice(fd, NULL, pipefd[1], NULL, 256 * 1024, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
    if (in < 0 && errno == EAGAIN) return 0;
    if (in <= 0) return -1;
    while (in > 0) {
        ssize_t out = splice(pipefd[0], NULL, to, NULL, in, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
        if (out < 0 && errno == EAGAIN) {
            struct pollfd p = {.fd = to, .events = POLLOUT};
            poll(&p, 1, -1);
            continue;
        }
        if (out <= 0) return -1;
        in -= out;
    }
    return 0;
}

static struct sockaddr_in loopback(int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

int main(int argc, char **argv) {
    if (argc > 1 && argv[1][0] == '-' && argv[1][1] == 's') {
        spliced = 1;
        argv++;
        argc--;
    }
    if (argc < 3) {
        fprintf(stderr, "usage: relay [-s] LISTEN_PORT BACKEND_PORT...\n");
        return 2;
    }
    static int pipes[MAXFD][2];
    int nb = argc - 2, next = 0, one = 1;
    int l = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = loopback(atoi(argv[1]));
    if (bind(l, (void *)&a, sizeof a) || listen(l, 1024)) {
        perror("listen");
        return 1;
    }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = l}, evs[64];
    epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev);
    static char buf[65536];
    for (;;) {
        int n = epoll_wait(ep, evs, 64, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == l) {
                int c = accept(l, NULL, NULL);
                if (c < 0) continue;
                int b = socket(AF_INET, SOCK_STREAM, 0);
                struct sockaddr_in ba = loopback(atoi(argv[2 + next++ % nb]));
                if (c >= MAXFD || b >= MAXFD || connect(b, (void *)&ba, sizeof ba)) {
                    close(c);
                    close(b);
                    continue;
                }
                nonblock_nodelay(c);
                nonblock_nodelay(b);
                peer[c] = b;
                peer[b] = c;
                if (spliced) {
                    if (pipe(pipes[c]) || pipe(pipes[b])) return 1;
                    fcntl(pipes[c][1], F_SETPIPE_SZ, 256 * 1024);
                    fcntl(pipes[b][1], F_SETPIPE_SZ, 256 * 1024);
                }
                ev.data.fd = c;
                epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
                ev.data.fd = b;
                epoll_ctl(ep, EPOLL_CTL_ADD, b, &ev);
                continue;
            }
            if (spliced) {
                if (relay_splice(fd, peer[fd], pipes[fd])) {
                    int p = peer[fd];
                    close(pipes[fd][0]), close(pipes[fd][1]);
                    close(pipes[p][0]), close(pipes[p][1]);
                    close(p);
                    close(fd);
                }
                continue;
            }
            ssize_t got = recv(fd, buf, sizeof buf, 0);
            if (got < 0 && errno == EAGAIN) continue;
            if (got <= 0) {
                close(peer[fd]);
                close(fd);
                continue;
            }
            /* Small messages: the send buffer always has room; a short send would
             * only happen with large bodies, which this instrument does not measure. */
            for (ssize_t off = 0; off < got;) {
                ssize_t w = send(peer[fd], buf + off, got - off, MSG_NOSIGNAL);
                if (w < 0 && errno != EAGAIN) break;
                if (w > 0) off += w;
            }
        }
    }
}
