/*
 * freeze_proxy.c - a TCP proxy for HA tests that can freeze: it forwards
 * 127.0.0.1:LISTEN to 127.0.0.1:TARGET and, on SIGUSR1, stops forwarding
 * in both directions while keeping every connection open (a half-dead
 * network path, as a partition or a stuck middlebox looks to both ends).
 * SIGUSR2 resumes. SIGTERM exits. Prints "ready" on stdout once listening.
 *
 * usage: mqs-freeze-proxy LISTEN_PORT TARGET_PORT
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_PAIRS 64

static volatile sig_atomic_t frozen, stop;

static void on_sig(int sig)
{
    if (sig == SIGUSR1)
        frozen = 1;
    else if (sig == SIGUSR2)
        frozen = 0;
    else
        stop = 1;
}

static int connect_to(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s LISTEN_PORT TARGET_PORT\n", argv[0]);
        return 2;
    }
    int lport = atoi(argv[1]), tport = atoi(argv[2]);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sig;
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGUSR2, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int ls = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(lport)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) != 0 || listen(ls, 16) != 0) {
        perror("freeze_proxy: listen");
        return 1;
    }
    printf("ready\n");
    fflush(stdout);

    int pairs[MAX_PAIRS][2];
    int n = 0;
    char buf[65536];
    while (!stop) {
        struct pollfd p[1 + 2 * MAX_PAIRS];
        p[0] = (struct pollfd){ls, POLLIN, 0};
        int k = 1;
        for (int i = 0; i < n; i++)
            for (int j = 0; j < 2; j++)
                /* frozen: read nothing, so nothing moves either way, while
                 * the kernel keeps both connections established */
                p[k++] = (struct pollfd){pairs[i][j], frozen ? 0 : POLLIN, 0};
        if (poll(p, (nfds_t)k, 50) < 0) {
            if (errno == EINTR)
                continue;
            perror("poll");
            break;
        }
        if ((p[0].revents & POLLIN) && n < MAX_PAIRS) {
            int c = accept(ls, NULL, NULL);
            if (c >= 0) {
                int t = connect_to(tport);
                if (t < 0) {
                    close(c);
                } else {
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    pairs[n][0] = c;
                    pairs[n][1] = t;
                    n++;
                }
            }
        }
        for (int i = 0, q = 1; i < n; i++, q += 2) {
            int dead = 0;
            for (int j = 0; j < 2 && !dead && !frozen; j++) {
                if (!(p[q + j].revents & (POLLIN | POLLHUP | POLLERR)))
                    continue;
                ssize_t r = read(pairs[i][j], buf, sizeof buf);
                if (r <= 0) {
                    dead = 1;
                    break;
                }
                for (ssize_t off = 0; off < r;) {
                    ssize_t w = write(pairs[i][1 - j], buf + off, (size_t)(r - off));
                    if (w <= 0) {
                        dead = 1;
                        break;
                    }
                    off += w;
                }
            }
            if (dead) {
                close(pairs[i][0]);
                close(pairs[i][1]);
                pairs[i][0] = pairs[n - 1][0];
                pairs[i][1] = pairs[n - 1][1];
                n--;
                break; /* poll indexes moved: poll again */
            }
        }
    }
    for (int i = 0; i < n; i++) {
        close(pairs[i][0]);
        close(pairs[i][1]);
    }
    close(ls);
    return 0;
}
