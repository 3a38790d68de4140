
/*
 * Copyright (C) RedisGate authors
 */


/*
 * sse-fanout: how long one PUBLISH takes to reach N Server-Sent Event
 * streams, seen by a client that costs little (epoll, one read per
 * socket and event), so that what is timed is the gateway's fan-out and
 * not the client's own work.  t/client/stream-load.mjs does the same in
 * node, with more checks; node's cost per socket is several times the
 * gateway's on a machine of 2 cores, and its p99 is then mostly its own.
 *
 *     sse-fanout PORT PATH TOKEN STREAMS MESSAGES REDIS_PORT CHANNEL
 *
 * opens STREAMS streams GET PATH (on 127.0.0.1:PORT, Authorization:
 * Bearer TOKEN), waits for each one's "data: subscribe," line, then
 * PUBLISHes MESSAGES messages on CHANNEL (Redis on 127.0.0.1:REDIS_PORT),
 * one at a time: the next 20 ms after every stream had the previous one
 * (or after 5 s).  A delivery's latency is the time from just before the
 * PUBLISH is written to the read that brought the stream its message
 * line.  Prints one JSON object; exits 1 when a stream failed to open.
 *
 * Built by bench/run with the system's cc; not part of the module.
 */


#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>


#define OPEN_AT_ONCE  256
#define MARK_LEN      15        /* "data: message," and one */


typedef struct {
    int       fd;
    int       state;            /* 0 connecting, 1 sent, 2 subscribed */
    int       seen;             /* message lines */
    size_t    carry;            /* bytes of the last read kept */
    char      tail[MARK_LEN];
} stream_t;


static double
now_ms(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);

    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}


static int
cmp_double(const void *a, const void *b)
{
    double  x = *(const double *) a, y = *(const double *) b;

    return (x > y) - (x < y);
}


static int
tcp_connect(int port, int nonblocking)
{
    int                 fd, one;
    struct sockaddr_in  sin;

    fd = socket(AF_INET, SOCK_STREAM | (nonblocking ? SOCK_NONBLOCK : 0), 0);
    if (fd == -1) {
        return -1;
    }

    one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_port = htons(port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

    if (connect(fd, (struct sockaddr *) &sin, sizeof(sin)) == -1
        && errno != EINPROGRESS)
    {
        close(fd);
        return -1;
    }

    return fd;
}


/* occurrences of mark in the carried tail and buf; the tail kept */

static int
count_marks(stream_t *s, const char *buf, size_t n, const char *mark)
{
    int     found;
    char    joined[MARK_LEN + 4096];
    size_t  len, mlen, i;

    mlen = strlen(mark);
    memcpy(joined, s->tail, s->carry);
    memcpy(joined + s->carry, buf, n);
    len = s->carry + n;

    found = 0;

    for (i = 0; i + mlen <= len; i++) {
        if (joined[i] == mark[0] && memcmp(joined + i, mark, mlen) == 0) {
            found++;
            i += mlen - 1;
        }
    }

    s->carry = len < mlen - 1 ? len : mlen - 1;
    memcpy(s->tail, joined + len - s->carry, s->carry);

    return found;
}


int
main(int argc, char **argv)
{
    int                  port, redis_port, n, messages, ep, i, k, ready;
    int                  opened, subscribed, failed, m, missing, redis;
    char                 req[2048], cmd[512], buf[4096], payload[32];
    char                *path, *token, *channel;
    double               t0, t, *lat, *fanout, deadline;
    size_t               nlat;
    ssize_t              r;
    stream_t            *st;
    struct rlimit        rl;
    struct epoll_event   ev, events[512];

    if (argc != 8) {
        fprintf(stderr, "usage: sse-fanout PORT PATH TOKEN STREAMS MESSAGES "
                        "REDIS_PORT CHANNEL\n");
        return 2;
    }

    port = atoi(argv[1]);
    path = argv[2];
    token = argv[3];
    n = atoi(argv[4]);
    messages = atoi(argv[5]);
    redis_port = atoi(argv[6]);
    channel = argv[7];

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    st = calloc(n, sizeof(stream_t));
    lat = calloc((size_t) n * messages + 1, sizeof(double));
    fanout = calloc(messages + 1, sizeof(double));
    ep = epoll_create1(0);

    if (st == NULL || lat == NULL || fanout == NULL || ep == -1) {
        perror("sse-fanout");
        return 1;
    }

    snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
             "Authorization: Bearer %s\r\n\r\n", path, token);

    /* open, OPEN_AT_ONCE at a time, until each is subscribed */

    opened = 0;
    subscribed = 0;
    failed = 0;
    deadline = now_ms() + 120000;

    while (subscribed + failed < n && now_ms() < deadline) {

        while (opened < n && opened - subscribed - failed < OPEN_AT_ONCE) {
            st[opened].fd = tcp_connect(port, 1);

            if (st[opened].fd == -1) {
                failed++;
                opened++;
                continue;
            }

            ev.events = EPOLLIN | EPOLLOUT;
            ev.data.u32 = opened;
            epoll_ctl(ep, EPOLL_CTL_ADD, st[opened].fd, &ev);
            opened++;
        }

        ready = epoll_wait(ep, events, 512, 100);

        for (i = 0; i < ready; i++) {
            stream_t  *s = &st[events[i].data.u32];

            if (s->state == 0 && (events[i].events & EPOLLOUT)) {
                if (write(s->fd, req, strlen(req)) != (ssize_t) strlen(req)) {
                    failed++;
                    s->state = 3;
                    continue;
                }

                s->state = 1;
                ev.events = EPOLLIN;
                ev.data.u32 = events[i].data.u32;
                epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
                continue;
            }

            if (!(events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
                continue;
            }

            r = read(s->fd, buf, sizeof(buf));

            if (r <= 0) {
                if (r == -1 && errno == EAGAIN) {
                    continue;
                }

                if (s->state != 3) {
                    failed++;
                    s->state = 3;
                    epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
                }

                continue;
            }

            if (s->state == 1
                && count_marks(s, buf, r, "data: subscribe,") > 0)
            {
                s->state = 2;
                s->carry = 0;
                subscribed++;
            }
        }
    }

    /* idle, then the PUBLISHes */

    usleep(500000);

    redis = tcp_connect(redis_port, 0);
    if (redis == -1) {
        perror("sse-fanout: Redis");
        return 1;
    }

    nlat = 0;
    missing = 0;

    for (m = 1; m <= messages; m++) {
        int  got = 0, want = 0;

        for (k = 0; k < n; k++) {
            want += (st[k].state == 2);
        }

        snprintf(payload, sizeof(payload), "%d", m);
        snprintf(cmd, sizeof(cmd), "*3\r\n$7\r\nPUBLISH\r\n$%zu\r\n%s\r\n"
                 "$%zu\r\n%s\r\n", strlen(channel), channel, strlen(payload),
                 payload);

        t0 = now_ms();

        if (write(redis, cmd, strlen(cmd)) != (ssize_t) strlen(cmd)
            || read(redis, buf, sizeof(buf)) <= 0)
        {
            perror("sse-fanout: PUBLISH");
            return 1;
        }

        deadline = t0 + 5000;
        t = t0;

        while (got < want && (t = now_ms()) < deadline) {
            ready = epoll_wait(ep, events, 512, 100);
            t = now_ms();

            for (i = 0; i < ready; i++) {
                stream_t  *s = &st[events[i].data.u32];

                if (s->state != 2) {
                    continue;
                }

                r = read(s->fd, buf, sizeof(buf));

                if (r <= 0) {
                    if (r == -1 && errno == EAGAIN) {
                        continue;
                    }

                    s->state = 3;
                    epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
                    continue;
                }

                k = count_marks(s, buf, r, "data: message,");

                if (k > 0 && s->seen < m) {
                    s->seen += k;
                    lat[nlat++] = now_ms() - t0;
                    got++;
                }
            }
        }

        missing += want - got;
        fanout[m - 1] = t - t0;

        usleep(20000);
    }

    qsort(lat, nlat, sizeof(double), cmp_double);
    qsort(fanout, messages, sizeof(double), cmp_double);

    printf("{\"streams\":%d,\"subscribed\":%d,\"failed\":%d,"
           "\"messages\":%d,\"delivered\":%zu,\"missing\":%d,"
           "\"p50\":%.2f,\"p99\":%.2f,\"max\":%.2f,"
           "\"fanoutP50\":%.2f,\"fanoutMax\":%.2f}\n",
           n, subscribed, failed, messages, nlat, missing,
           nlat ? lat[nlat / 2] : -1.0,
           nlat ? lat[(size_t) (nlat * 0.99)] : -1.0,
           nlat ? lat[nlat - 1] : -1.0,
           messages ? fanout[messages / 2] : -1.0,
           messages ? fanout[messages - 1] : -1.0);

    for (k = 0; k < n; k++) {
        if (st[k].fd > 0) {
            close(st[k].fd);
        }
    }

    close(redis);

    return failed ? 1 : 0;
}
