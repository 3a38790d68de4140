
/*
 * Copyright (C) RedisGate authors
 */


/*
 * One connection to one Redis node, on nginx's own connection: the way
 * nginx's upstream module reaches its servers (ngx_event_connect_peer,
 * ngx_ssl_create_connection, ngx_ssl_handshake, c->send and c->recv), so
 * that TCP, unix sockets and TLS share one I/O path.  hiredis only parses.
 *
 * Commands are copied into the link's output buffer when sent: the
 * request that sent them may be gone before they are written.  Whatever
 * was queued during a turn of the event loop is written at its end, in
 * one write (a posted event).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <ngx_event_connect.h>

#include "ngx_http_redisgate_transport.h"
#include "ngx_http_redisgate_spare.h"

#include <hiredis/sds.h>


/* read at most this much per event before letting others run */
#define NGX_HTTP_REDISGATE_LINK_READ_MAX    (1024 * 1024)

/* a large bulk's first line: "$", 18 digits at most (no off_t overflows),
 * CR, LF */
#define NGX_HTTP_REDISGATE_LINK_BULK_LINE   (1 + 18 + 2)

/* an output buffer grown past this is freed once drained */
#define NGX_HTTP_REDISGATE_LINK_OUT_KEEP    (64 * 1024)


static void ngx_http_redisgate_link_event(ngx_event_t *ev);
static void ngx_http_redisgate_link_connected(ngx_http_redisgate_link_t *link);
static void ngx_http_redisgate_link_ready(ngx_http_redisgate_link_t *link);
static void ngx_http_redisgate_link_write(ngx_http_redisgate_link_t *link);
static void ngx_http_redisgate_link_read(ngx_http_redisgate_link_t *link);
static void *ngx_http_redisgate_reply_string(const redisReadTask *task,
    char *str, size_t len);
static void *ngx_http_redisgate_reply_array(const redisReadTask *task,
    int elements);
static void *ngx_http_redisgate_reply_integer(const redisReadTask *task,
    long long value);
static void *ngx_http_redisgate_reply_nil(const redisReadTask *task);
static void *ngx_http_redisgate_reply_new(const redisReadTask *task,
    size_t size);
static ngx_int_t ngx_http_redisgate_link_bulk_start(
    ngx_http_redisgate_link_t *link);
static size_t ngx_http_redisgate_link_bulk(ngx_http_redisgate_link_t *link,
    u_char *p, size_t n);
static void ngx_http_redisgate_link_timeout(ngx_event_t *ev);
static void ngx_http_redisgate_link_lost(ngx_http_redisgate_link_t *link,
    const char *what);
static void ngx_http_redisgate_link_fail(ngx_http_redisgate_link_t *link,
    ngx_uint_t failure, ngx_err_t err, const char *fmt, ...);
static ngx_int_t ngx_http_redisgate_link_reserve(
    ngx_http_redisgate_link_t *link, size_t len, ngx_uint_t n);
static void ngx_http_redisgate_link_close_connection(
    ngx_http_redisgate_link_t *link, ngx_uint_t failed);
static void ngx_http_redisgate_link_release(ngx_connection_t *c);
static void ngx_http_redisgate_link_out_reset(ngx_http_redisgate_link_t *link);

#if (NGX_SSL)
static void ngx_http_redisgate_link_ssl_start(ngx_http_redisgate_link_t *link);
static void ngx_http_redisgate_link_ssl_handshaked(ngx_connection_t *c);
static ngx_int_t ngx_http_redisgate_link_ssl_check_name(ngx_connection_t *c,
    ngx_str_t *name);
static void ngx_http_redisgate_link_ssl_save_session(ngx_connection_t *c);
#endif


static const char  *ngx_http_redisgate_link_errors[] = {
    "Redis unavailable",
    "Redis unavailable: could not connect",
    "Redis unavailable: connect timed out",
    "Redis unavailable: TLS handshake failed",
    "Redis unavailable: TLS certificate verification failed",
    "Redis unavailable: connection lost",
    "Redis unavailable: protocol error",
    "Redis unavailable: authentication failed",
    "Redis unavailable: connection closed",
    "Redis unavailable: the primary is changing",
    "Redis unavailable: no sentinel knows the primary",
    "Redis unavailable: no cluster node gave the slot map",
};


/* what the log says before "Redis at <url>" */
static const char  *ngx_http_redisgate_link_log_what[] = {
    "failed",
    "could not connect to",
    "timed out connecting to",
    "TLS handshake failed with",
    "TLS certificate verification failed for",
    "lost connection to",
    "protocol error from",
    "authentication failed at",
    "closed the connection to",
    "not a primary:",
    "no primary for",
    "no slot map from",
};


/* replies are fed to hiredis from here, one worker at a time */
static u_char  ngx_http_redisgate_link_buffer[64 * 1024];


/*
 * hiredis' reply objects, each in one block with its string or its
 * element array; blocks of NGX_HTTP_REDISGATE_REPLY_BLOCK bytes or less
 * come from a free list of the worker.  A reply is freed as soon as its
 * handler returns, so a few blocks serve every small reply: no malloc per
 * reply.  Handlers that keep a reply copy it (scatter.c).
 */

#define NGX_HTTP_REDISGATE_REPLY_BLOCK  256
#define NGX_HTTP_REDISGATE_REPLY_KEPT   64

static ngx_http_redisgate_spares_t  ngx_http_redisgate_reply_blocks =
    ngx_http_redisgate_spares(NGX_HTTP_REDISGATE_REPLY_KEPT);

static redisReplyObjectFunctions  ngx_http_redisgate_reply_functions = {
    ngx_http_redisgate_reply_string,
    ngx_http_redisgate_reply_array,
    ngx_http_redisgate_reply_integer,
    ngx_http_redisgate_reply_nil,
    ngx_http_redisgate_link_free_reply
};


/* what a bulk handler's reply handler gets: the reply went in pieces */
redisReply  ngx_http_redisgate_link_streamed = { REDIS_REPLY_STRING, 0, 0,
                                                 NULL, 0, NULL };


const char *
ngx_http_redisgate_link_strerror(ngx_uint_t failure)
{
    if (failure > NGX_HTTP_REDISGATE_FAIL_NO_MAP) {
        failure = NGX_HTTP_REDISGATE_FAIL_NONE;
    }

    return ngx_http_redisgate_link_errors[failure];
}


ngx_int_t
ngx_http_redisgate_link_connect(ngx_http_redisgate_link_t *link,
    ngx_http_redisgate_node_t *node, ngx_log_t *log)
{
    int                tcp_nodelay;
    ngx_int_t          rc;
    ngx_connection_t  *c;

    tcp_nodelay = 1;
    link->node = node;
    link->log = log;
    link->failure = NGX_HTTP_REDISGATE_FAIL_NONE;
    link->error = NULL;
    link->was_ready = 0;
    link->replied = 0;
    link->cert_requested = 0;

    if (link->reader == NULL) {
        link->reader = redisReaderCreate();
        if (link->reader == NULL) {
            ngx_http_redisgate_link_fail(link, NGX_HTTP_REDISGATE_FAIL_CONNECT,
                                         0, "out of memory");
            return NGX_ERROR;
        }

        link->reader->fn = &ngx_http_redisgate_reply_functions;
    }

    ngx_memzero(&link->peer, sizeof(ngx_peer_connection_t));

    link->peer.sockaddr = &node->sockaddr.sockaddr;
    link->peer.socklen = node->socklen;
    link->peer.name = &node->name;
    link->peer.get = ngx_event_get_peer;
    link->peer.log = log;
    /* refused, reset, a TLS alert: the peer's doing, logged as errors */
    link->peer.log_error = NGX_ERROR_ERR;
    link->peer.tries = 1;

    rc = ngx_event_connect_peer(&link->peer);

    if (rc == NGX_ERROR || rc == NGX_BUSY || rc == NGX_DECLINED) {
        /* nginx logged connect()'s reason; it closed the socket itself */
        ngx_http_redisgate_link_fail(link, NGX_HTTP_REDISGATE_FAIL_CONNECT,
                                     ngx_socket_errno, NULL);
        return NGX_ERROR;
    }

    c = link->peer.connection;

    if (node->sockaddr.sockaddr.sa_family != AF_UNIX) {
        /* pipelined writes are small and follow each other: no Nagle */
        (void) setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY,
                          (const void *) &tcp_nodelay, sizeof(int));
    }

    c->data = link;
    c->read->handler = ngx_http_redisgate_link_event;
    c->write->handler = ngx_http_redisgate_link_event;
    c->log = log;
    c->read->log = log;
    c->write->log = log;

    link->state = NGX_HTTP_REDISGATE_LINK_CONNECTING;

    link->timer.handler = ngx_http_redisgate_link_timeout;
    link->timer.data = link;
    link->timer.log = log;

    ngx_add_timer(&link->timer, node->connect_timeout);

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, log, 0,
                   "redisgate: connecting to %V, fd:%d, link:%p",
                   &node->name, c->fd, link);

    if (rc == NGX_OK) {
        /* a unix socket, at once: go on in the event loop, not inside */
        ngx_post_event(c->write, &ngx_posted_events);
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_redisgate_link_send(ngx_http_redisgate_link_t *link, ngx_str_t *cmds,
    ngx_uint_t n, ngx_http_redisgate_link_reply_pt handler, void *data)
{
    return ngx_http_redisgate_link_send_bulk(link, cmds, n, handler, NULL,
                                             data);
}


ngx_int_t
ngx_http_redisgate_link_send_bulk(ngx_http_redisgate_link_t *link,
    ngx_str_t *cmds, ngx_uint_t n, ngx_http_redisgate_link_reply_pt handler,
    ngx_http_redisgate_link_bulk_pt bulk, void *data)
{
    size_t                           len;
    ngx_uint_t                       i, tail;
    ngx_event_t                     *wev;
    ngx_http_redisgate_link_wait_t  *w;

    if (link->state != NGX_HTTP_REDISGATE_LINK_CONNECTING
        && link->state != NGX_HTTP_REDISGATE_LINK_READY)
    {
        return NGX_DECLINED;
    }

    len = 0;

    for (i = 0; i < n; i++) {
        len += cmds[i].len;
    }

    /* room for all first: MULTI...EXEC goes whole or not at all */

    if (ngx_http_redisgate_link_reserve(link, len, handler ? n : 0)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    for (i = 0; i < n; i++) {
        ngx_memcpy(link->out + link->out_last, cmds[i].data, cmds[i].len);
        link->out_last += cmds[i].len;

        if (handler == NULL) {
            /* subscribe mode: its replies come to on_push, as messages do */
            continue;
        }

        tail = (link->wait_head + link->nwaits) & (link->wait_size - 1);
        w = &link->waits[tail];
        w->handler = handler;
        w->bulk = (i == n - 1) ? bulk : NULL;
        w->data = data;
        link->nwaits++;
    }

    if (link->state != NGX_HTTP_REDISGATE_LINK_READY) {
        /* written once connected */
        return NGX_OK;
    }

    wev = link->peer.connection->write;

    if (wev->ready && !wev->posted) {
        ngx_post_event(wev, &ngx_posted_events);
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_redisgate_link_reserve(ngx_http_redisgate_link_t *link, size_t len,
    ngx_uint_t n)
{
    u_char                          *out;
    size_t                           size;
    ngx_uint_t                       i, wsize;
    ngx_http_redisgate_link_wait_t  *waits;

    if (link->out_pos == link->out_last) {
        link->out_pos = 0;
        link->out_last = 0;
    }

    if (link->out_size - link->out_last < len) {

        if (link->out_pos && link->out_size - (link->out_last - link->out_pos)
                             >= len)
        {
            /* what is left to write moves to the front */
            ngx_memmove(link->out, link->out + link->out_pos,
                        link->out_last - link->out_pos);
            link->out_last -= link->out_pos;
            link->out_pos = 0;

        } else {
            size = ngx_max(link->out_size * 2, 4096);

            while (size < link->out_last - link->out_pos + len) {
                size *= 2;
            }

            out = ngx_alloc(size, link->log);
            if (out == NULL) {
                return NGX_ERROR;
            }

            if (link->out) {
                ngx_memcpy(out, link->out + link->out_pos,
                           link->out_last - link->out_pos);
                ngx_free(link->out);
            }

            link->out_last -= link->out_pos;
            link->out_pos = 0;
            link->out = out;
            link->out_size = size;
        }
    }

    if (link->wait_size - link->nwaits >= n) {
        return NGX_OK;
    }

    /* a power of two: the ring is indexed with a mask */
    wsize = ngx_max(link->wait_size * 2, 64);

    while (wsize < link->nwaits + n) {
        wsize *= 2;
    }

    waits = ngx_alloc(wsize * sizeof(ngx_http_redisgate_link_wait_t),
                      link->log);
    if (waits == NULL) {
        return NGX_ERROR;
    }

    /* the ring unrolled, oldest first */

    for (i = 0; i < link->nwaits; i++) {
        waits[i] = link->waits[(link->wait_head + i)
                               & (link->wait_size - 1)];
    }

    if (link->waits) {
        ngx_free(link->waits);
    }

    link->waits = waits;
    link->wait_size = wsize;
    link->wait_head = 0;

    return NGX_OK;
}


void
ngx_http_redisgate_link_close(ngx_http_redisgate_link_t *link,
    ngx_uint_t failure, const char *error)
{
    ngx_uint_t                        n;
    ngx_http_redisgate_link_wait_t    w;

    if (link->state == NGX_HTTP_REDISGATE_LINK_CLOSED
        || link->state == NGX_HTTP_REDISGATE_LINK_CLOSING)
    {
        return;
    }

    link->state = NGX_HTTP_REDISGATE_LINK_CLOSING;
    link->generation++;
    link->failure = failure;
    link->error = error ? error : ngx_http_redisgate_link_strerror(failure);

    if (link->timer.timer_set) {
        ngx_del_timer(&link->timer);
    }

    ngx_http_redisgate_link_close_connection(link,
                                  failure != NGX_HTTP_REDISGATE_FAIL_CLOSED);

    if (link->reader) {
        redisReaderFree(link->reader);
        link->reader = NULL;
    }

    ngx_http_redisgate_link_out_reset(link);

    if (link->on_close) {
        link->on_close(link);
    }

    /*
     * Those that waited, in order, from the reply half handed over.  A
     * handler may finish its request and run others: they cannot queue
     * here, nor open the link again, until it is CLOSED.
     */

    link->paused = 0;

    if (link->bulk_left) {
        link->bulk_left = 0;
        link->bulk.handler(link->bulk.data, NULL, link->error);
    }

    n = link->nwaits;

    while (n--) {
        w = link->waits[link->wait_head];
        link->wait_head = (link->wait_head + 1) & (link->wait_size - 1);
        link->nwaits--;

        w.handler(w.data, NULL, link->error);
    }

    link->state = NGX_HTTP_REDISGATE_LINK_CLOSED;
}


/* nothing left to write; a buffer a large command grew does not stay */

static void
ngx_http_redisgate_link_out_reset(ngx_http_redisgate_link_t *link)
{
    link->out_pos = 0;
    link->out_last = 0;

    if (link->out_size > NGX_HTTP_REDISGATE_LINK_OUT_KEEP) {
        ngx_free(link->out);
        link->out = NULL;
        link->out_size = 0;
    }
}


void
ngx_http_redisgate_link_free(ngx_http_redisgate_link_t *link)
{
    ngx_http_redisgate_link_close(link, NGX_HTTP_REDISGATE_FAIL_CLOSED, NULL);

    if (link->out) {
        ngx_free(link->out);
        link->out = NULL;
        link->out_size = 0;
    }

    if (link->waits) {
        ngx_free(link->waits);
        link->waits = NULL;
        link->wait_size = 0;
    }
}


static void
ngx_http_redisgate_link_close_connection(ngx_http_redisgate_link_t *link,
    ngx_uint_t failed)
{
    ngx_connection_t  *c;

    c = link->peer.connection;

    if (c == NULL) {
        return;
    }

    link->peer.connection = NULL;

    /* late events for it find nobody */
    c->data = NULL;

#if (NGX_SSL)

    if (c->ssl) {
        c->ssl->no_wait_shutdown = 1;

        if (failed) {
            c->ssl->no_send_shutdown = 1;
        }

        if (ngx_ssl_shutdown(c) == NGX_AGAIN) {
            /* the close_notify could not be written yet: nginx goes on */
            c->ssl->handler = ngx_http_redisgate_link_release;
            return;
        }
    }

#endif

    ngx_http_redisgate_link_release(c);
}


/* the connection, and the pool that TLS needed */

static void
ngx_http_redisgate_link_release(ngx_connection_t *c)
{
    ngx_pool_t  *pool;

    pool = c->pool;

    ngx_close_connection(c);

    if (pool) {
        ngx_destroy_pool(pool);
    }
}


static void
ngx_http_redisgate_link_event(ngx_event_t *ev)
{
    int                         err;
    socklen_t                   len;
    ngx_connection_t           *c;
    ngx_http_redisgate_link_t  *link;

    c = ev->data;
    link = c->data;

    if (link == NULL) {
        return;
    }

    switch (link->state) {

    case NGX_HTTP_REDISGATE_LINK_CONNECTING:

        err = 0;
        len = sizeof(int);

        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, (void *) &err, &len)
            == -1)
        {
            err = ngx_socket_errno;
        }

        if (err) {
            ngx_http_redisgate_link_fail(link,
                                         NGX_HTTP_REDISGATE_FAIL_CONNECT,
                                         err, NULL);
            return;
        }

        ngx_http_redisgate_link_connected(link);
        return;

    case NGX_HTTP_REDISGATE_LINK_READY:

        if (ev->write) {
            ngx_http_redisgate_link_write(link);

        } else {
            ngx_http_redisgate_link_read(link);
        }

        return;

    default:
        return;
    }
}


static void
ngx_http_redisgate_link_connected(ngx_http_redisgate_link_t *link)
{
    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, link->log, 0,
                   "redisgate: connected to %V, link:%p",
                   &link->node->name, link);

#if (NGX_SSL)
    if (link->node->tls) {
        ngx_http_redisgate_link_ssl_start(link);
        return;
    }
#endif

    ngx_http_redisgate_link_ready(link);
}


static void
ngx_http_redisgate_link_ready(ngx_http_redisgate_link_t *link)
{
    ngx_connection_t  *c;

    if (link->timer.timer_set) {
        ngx_del_timer(&link->timer);
    }

    c = link->peer.connection;

    c->read->handler = ngx_http_redisgate_link_event;
    c->write->handler = ngx_http_redisgate_link_event;

    link->state = NGX_HTTP_REDISGATE_LINK_READY;
    link->was_ready = 1;

    if (link->on_ready) {
        link->on_ready(link);
    }

    if (link->out_last > link->out_pos) {
        ngx_http_redisgate_link_write(link);
    }

    /* a reply may have come with the handshake's last bytes */

    if (link->state == NGX_HTTP_REDISGATE_LINK_READY
        && link->peer.connection->read->ready)
    {
        ngx_post_event(link->peer.connection->read, &ngx_posted_events);
    }
}


static void
ngx_http_redisgate_link_write(ngx_http_redisgate_link_t *link)
{
    ssize_t            n;
    ngx_connection_t  *c;

    c = link->peer.connection;

    while (link->out_pos < link->out_last) {

        n = c->send(c, link->out + link->out_pos,
                    link->out_last - link->out_pos);

        if (n == NGX_AGAIN) {
            /* the rest when the socket can take it */
            if (ngx_handle_write_event(c->write, 0) != NGX_OK) {
                ngx_http_redisgate_link_fail(link,
                                             NGX_HTTP_REDISGATE_FAIL_LOST, 0,
                                             "could not wait to write");
            }

            return;
        }

        if (n == NGX_ERROR || n == 0) {
            ngx_http_redisgate_link_lost(link, "write failed");
            return;
        }

        link->out_pos += n;
    }

    ngx_http_redisgate_link_out_reset(link);
}


static void
ngx_http_redisgate_link_read(ngx_http_redisgate_link_t *link)
{
    int                              rc;
    void                            *r;
    u_char                          *p;
    size_t                           total, size, taken;
    ssize_t                          n;
    ngx_uint_t                       generation;
    ngx_connection_t                *c;
    ngx_http_redisgate_link_wait_t   w;

    c = link->peer.connection;
    generation = link->generation;
    total = 0;

    for ( ;; ) {

        if (link->paused) {
            /* a bulk handler's reader is slow: its bytes stay in the
             * socket; level-triggered events are switched off meanwhile */
            if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
                ngx_http_redisgate_link_fail(link,
                                             NGX_HTTP_REDISGATE_FAIL_LOST, 0,
                                             "could not wait to read");
            }

            return;
        }

        n = c->recv(c, ngx_http_redisgate_link_buffer,
                    sizeof(ngx_http_redisgate_link_buffer));

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == 0 || n == NGX_ERROR) {
            if (n == 0 && ngx_http_redisgate_link_pending(link) == 0
                && link->out_last == link->out_pos)
            {
                /* an idle connection Redis closed (its timeout, a kill) */
                ngx_log_error(NGX_LOG_INFO, link->log, 0,
                              "redisgate: Redis at %V closed an idle "
                              "connection", &link->node->name);
                ngx_http_redisgate_link_close(link,
                                              NGX_HTTP_REDISGATE_FAIL_LOST,
                                              NULL);
                return;
            }

            ngx_http_redisgate_link_lost(link, n == 0 ? "closed by the server"
                                                      : "read failed");
            return;
        }

        p = ngx_http_redisgate_link_buffer;
        size = n;

        if (link->bulk_left) {
            /* a large bulk goes on: its bytes skip hiredis */
            taken = ngx_http_redisgate_link_bulk(link, p, size);

            if (link->generation != generation) {
                return;
            }

            p += taken;
            size -= taken;
        }

        if (size
            && redisReaderFeed(link->reader, (const char *) p, size)
               != REDIS_OK)
        {
            ngx_http_redisgate_link_fail(link,
                                         NGX_HTTP_REDISGATE_FAIL_PROTOCOL, 0,
                                         "%s", link->reader->errstr);
            return;
        }

        for ( ;; ) {

            if (link->bulk_left) {
                /* the rest of it comes in the next reads */
                break;
            }

            if (link->nwaits && link->waits[link->wait_head].bulk) {
                rc = ngx_http_redisgate_link_bulk_start(link);

                if (link->generation != generation) {
                    return;
                }

                if (rc == NGX_OK) {
                    continue;
                }

                if (rc == NGX_AGAIN) {
                    /* its first line is not all here yet */
                    break;
                }
            }

            r = NULL;
            rc = redisReaderGetReply(link->reader, &r);

            if (rc != REDIS_OK) {
                ngx_http_redisgate_link_fail(link,
                                             NGX_HTTP_REDISGATE_FAIL_PROTOCOL,
                                             0, "%s", link->reader->errstr);
                return;
            }

            if (r == NULL) {
                break;
            }

            if (link->nwaits) {
                w = link->waits[link->wait_head];
                link->wait_head = (link->wait_head + 1)
                                  & (link->wait_size - 1);
                link->nwaits--;
                link->replied = 1;

                w.handler(w.data, r, NULL);

            } else if (link->on_push) {
                /* subscribe mode: messages nobody asked for, one by one */
                link->on_push(link, r);

            } else {
                ngx_http_redisgate_link_free_reply(r);
                ngx_http_redisgate_link_fail(link,
                                             NGX_HTTP_REDISGATE_FAIL_PROTOCOL,
                                             0, "a reply nobody asked for");
                return;
            }

            ngx_http_redisgate_link_free_reply(r);

            if (link->generation != generation) {
                /* a handler closed the link (and maybe opened it again) */
                return;
            }
        }

        if (!c->read->ready) {
            /*
             * a short read emptied the socket: asking again would cost a
             * read() over TLS that says EAGAIN
             */
            break;
        }

        total += n;

        if (total >= NGX_HTTP_REDISGATE_LINK_READ_MAX) {
            /* the rest after others had their turn */
            ngx_post_event(c->read, &ngx_posted_events);
            return;
        }
    }

    if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
        ngx_http_redisgate_link_fail(link, NGX_HTTP_REDISGATE_FAIL_LOST, 0,
                                     "could not wait to read");
    }
}


static void *
ngx_http_redisgate_reply_string(const redisReadTask *task, char *str,
    size_t len)
{
    redisReply  *r;

    r = ngx_http_redisgate_reply_new(task, sizeof(redisReply) + len + 1);
    if (r == NULL) {
        return NULL;
    }

    r->str = (char *) (r + 1);
    r->len = len;
    ngx_memcpy(r->str, str, len);
    r->str[len] = '\0';

    return r;
}


static void *
ngx_http_redisgate_reply_array(const redisReadTask *task, int elements)
{
    size_t       size;
    redisReply  *r;

    size = sizeof(redisReply) + elements * sizeof(redisReply *);

    r = ngx_http_redisgate_reply_new(task, size);
    if (r == NULL) {
        return NULL;
    }

    r->elements = elements;

    if (elements > 0) {
        r->element = (redisReply **) (r + 1);
        ngx_memzero(r->element, elements * sizeof(redisReply *));
    }

    return r;
}


static void *
ngx_http_redisgate_reply_integer(const redisReadTask *task, long long value)
{
    redisReply  *r;

    r = ngx_http_redisgate_reply_new(task, sizeof(redisReply));
    if (r == NULL) {
        return NULL;
    }

    r->integer = value;

    return r;
}


static void *
ngx_http_redisgate_reply_nil(const redisReadTask *task)
{
    redisReply  *r;

    r = ngx_http_redisgate_reply_new(task, sizeof(redisReply));
    if (r == NULL) {
        return NULL;
    }

    /* the task's type is that of "$-1" or "*-1": a string or an array */
    r->type = REDIS_REPLY_NIL;

    return r;
}


/* a zeroed reply of the task's type in a block of size, in its parent */

static void *
ngx_http_redisgate_reply_new(const redisReadTask *task, size_t size)
{
    redisReply  *r, *parent;

    r = (size <= NGX_HTTP_REDISGATE_REPLY_BLOCK)
        ? ngx_http_redisgate_spare_get(&ngx_http_redisgate_reply_blocks)
        : NULL;

    if (r == NULL) {
        r = malloc(ngx_max(size, (size_t) NGX_HTTP_REDISGATE_REPLY_BLOCK));
        if (r == NULL) {
            return NULL;
        }
    }

    ngx_memzero(r, sizeof(redisReply));
    r->type = task->type;

    if (task->parent) {
        parent = task->parent->obj;
        parent->element[task->idx] = r;
    }

    return r;
}


/* hiredis' freeObject, and for replies the handlers got */

void
ngx_http_redisgate_link_free_reply(void *reply)
{
    size_t       size, i;
    redisReply  *r;

    r = reply;

    if (r == NULL) {
        return;
    }

    switch (r->type) {

    case REDIS_REPLY_ARRAY:
        for (i = 0; i < r->elements; i++) {
            ngx_http_redisgate_link_free_reply(r->element[i]);
        }

        size = sizeof(redisReply) + r->elements * sizeof(redisReply *);
        break;

    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
        size = sizeof(redisReply) + r->len + 1;
        break;

    default:
        size = sizeof(redisReply);
    }

    if (size > NGX_HTTP_REDISGATE_REPLY_BLOCK
        || ngx_http_redisgate_spare_put(&ngx_http_redisgate_reply_blocks, r)
           != NGX_OK)
    {
        free(r);
    }
}


/* a dynamic module's statics go with it: the blocks are freed first */

void
ngx_http_redisgate_link_exit_process(void)
{
    ngx_http_redisgate_spare_drain(&ngx_http_redisgate_reply_blocks);
}


/*
 * Between two replies, a large bulk string for a waiter that takes it in
 * pieces: its first line ("$<length>\r\n") is read here, and what came
 * with it is handed over, instead of hiredis building the whole reply.
 * hiredis 0.14's reader is read and moved at a reply's boundary only
 * (nothing of the next reply parsed: no task, or one not typed yet), the
 * way redisReaderGetReply itself moves it.  NGX_DECLINED: hiredis reads
 * it; NGX_AGAIN: its first line is cut, wait for more.
 */

static ngx_int_t
ngx_http_redisgate_link_bulk_start(ngx_http_redisgate_link_t *link)
{
    u_char        *p, *nl, *d;
    off_t          size;
    size_t         avail, taken;
    ngx_uint_t     generation;
    redisReader   *reader;

    reader = link->reader;

    if (reader->ridx > 0
        || (reader->ridx == 0 && reader->rstack[0].type >= 0))
    {
        return NGX_DECLINED;
    }

    p = (u_char *) reader->buf + reader->pos;
    avail = reader->len - reader->pos;

    if (avail == 0 || p[0] != '$') {
        return NGX_DECLINED;
    }

    nl = ngx_strlchr(p, p + ngx_min(avail, NGX_HTTP_REDISGATE_LINK_BULK_LINE),
                     '\n');

    if (nl == NULL) {
        return (avail < NGX_HTTP_REDISGATE_LINK_BULK_LINE) ? NGX_AGAIN
                                                          : NGX_DECLINED;
    }

    if (nl - p < 3 || nl[-1] != '\r') {
        return NGX_DECLINED;
    }

    size = 0;

    for (d = p + 1; d < nl - 1; d++) {
        if (*d < '0' || *d > '9') {
            /* "$-1": nil, and anything odd is hiredis' to judge */
            return NGX_DECLINED;
        }

        size = size * 10 + (*d - '0');
    }

    if (size < NGX_HTTP_REDISGATE_LINK_BULK_MIN
        || size > NGX_MAX_OFF_T_VALUE - 2)
    {
        return NGX_DECLINED;
    }

    link->bulk = link->waits[link->wait_head];
    link->wait_head = (link->wait_head + 1) & (link->wait_size - 1);
    link->nwaits--;
    link->replied = 1;
    link->bulk_left = size + 2;

    reader->pos += nl + 1 - p;

    generation = link->generation;

    (void) link->bulk.bulk(link->bulk.data, NULL, 0, size);

    if (link->generation != generation) {
        return NGX_OK;
    }

    taken = ngx_http_redisgate_link_bulk(link,
                                       (u_char *) reader->buf + reader->pos,
                                       reader->len - reader->pos);

    if (link->generation != generation) {
        return NGX_OK;
    }

    /* the reader is still the link's */
    reader->pos += taken;

    if (reader->pos == reader->len) {
        /*
         * All it holds is handed over: its buffer starts again.  hiredis
         * compacts it in redisReaderGetReply() only, which a run of large
         * replies never calls: the buffer grew by each one's first read.
         */
        sdsclear(reader->buf);
        reader->pos = 0;
        reader->len = 0;
    }

    return NGX_OK;
}


/* the bulk's bytes among p..p+n, to its handler; how many were its own */

static size_t
ngx_http_redisgate_link_bulk(ngx_http_redisgate_link_t *link, u_char *p,
    size_t n)
{
    off_t                            data;
    size_t                           take, i;
    ngx_int_t                        rc;
    ngx_uint_t                       generation;
    ngx_http_redisgate_link_wait_t   w;

    take = (off_t) n < link->bulk_left ? n : (size_t) link->bulk_left;

    /* its bytes among them; the rest is its CRLF, or some of it */
    data = ngx_min((off_t) take, link->bulk_left - 2);

    if (data < 0) {
        data = 0;
    }

    for (i = data; i < take; i++) {
        if (p[i] != (link->bulk_left - (off_t) i == 2 ? '\r' : '\n')) {
            ngx_http_redisgate_link_fail(link,
                                         NGX_HTTP_REDISGATE_FAIL_PROTOCOL, 0,
                                         "a bulk string without its CRLF");
            return take;
        }
    }

    link->bulk_left -= take;
    generation = link->generation;

    if (data) {
        rc = link->bulk.bulk(link->bulk.data, p, data,
                             ngx_max(link->bulk_left - 2, 0));

        if (link->generation != generation) {
            return take;
        }

        if (rc == NGX_AGAIN && link->bulk_left) {
            link->paused = 1;
        }
    }

    if (link->bulk_left == 0) {
        link->paused = 0;

        w = link->bulk;
        w.handler(w.data, &ngx_http_redisgate_link_streamed, NULL);
    }

    return take;
}


void
ngx_http_redisgate_link_resume(ngx_http_redisgate_link_t *link)
{
    ngx_connection_t  *c;

    if (!link->paused) {
        return;
    }

    link->paused = 0;
    c = link->peer.connection;

    if (c && !c->read->posted) {
        ngx_post_event(c->read, &ngx_posted_events);
    }
}


/*
 * The connection broke.  A TLS 1.3 server refuses a client (no client
 * certificate, a wrong one) only after the client's side of the handshake
 * is over: on a TLS link that never got a reply, that is what it was.
 */

static void
ngx_http_redisgate_link_lost(ngx_http_redisgate_link_t *link,
    const char *what)
{
#if (NGX_SSL)

    if (link->peer.connection->ssl && !link->replied) {
        ngx_http_redisgate_link_fail(link, NGX_HTTP_REDISGATE_FAIL_HANDSHAKE,
                          0, "%s before any reply: %s", what,
                          link->cert_requested
                          ? "the server asked for a client certificate, and "
                            "redisgate_ssl_certificate is not set"
                          : "the server refused the connection");
        return;
    }

#endif

    ngx_http_redisgate_link_fail(link, NGX_HTTP_REDISGATE_FAIL_LOST, 0, "%s",
                                 what);
}


static void
ngx_http_redisgate_link_timeout(ngx_event_t *ev)
{
    ngx_http_redisgate_link_t  *link = ev->data;

    ngx_http_redisgate_link_fail(link, NGX_HTTP_REDISGATE_FAIL_TIMEOUT, 0,
                                 link->peer.connection
                                 && link->peer.connection->ssl
                                 ? "in the TLS handshake" : NULL);
}


/* one line to the error log with the detail, then close */

static void
ngx_http_redisgate_link_fail(ngx_http_redisgate_link_t *link,
    ngx_uint_t failure, ngx_err_t err, const char *fmt, ...)
{
    u_char   *p, *last, text[NGX_MAX_ERROR_STR];
    va_list   args;

    last = text + sizeof(text);

    p = ngx_slprintf(text, last, "redisgate: %s Redis at %V",
                     ngx_http_redisgate_link_log_what[failure],
                     &link->node->name);

    if (fmt) {
        p = ngx_slprintf(p, last, ": ");
        va_start(args, fmt);
        p = ngx_vslprintf(p, last, fmt, args);
        va_end(args);

    } else if (err) {
        p = ngx_slprintf(p, last, ": ");
        p = ngx_strerror(err, p, last - p);
    }

    ngx_log_error(NGX_LOG_ERR, link->log, 0, "%*s", (size_t) (p - text),
                  text);

    if (failure == NGX_HTTP_REDISGATE_FAIL_HANDSHAKE
        || failure == NGX_HTTP_REDISGATE_FAIL_VERIFY)
    {
        ngx_http_redisgate_stats_backend_add(link->node->stats,
                            NGX_HTTP_REDISGATE_STAT_TLS_HANDSHAKE_FAILURES, 1);
    }

    if (link->state == NGX_HTTP_REDISGATE_LINK_CLOSED) {
        /* failed before it was opened */
        link->failure = failure;
        link->error = ngx_http_redisgate_link_strerror(failure);

        if (link->reader) {
            redisReaderFree(link->reader);
            link->reader = NULL;
        }

        return;
    }

    ngx_http_redisgate_link_close(link, failure, NULL);
}


#if (NGX_SSL)

static void
ngx_http_redisgate_link_ssl_start(ngx_http_redisgate_link_t *link)
{
    ngx_int_t                   rc;
    ngx_connection_t           *c;
    ngx_http_redisgate_tls_t   *tls;
    ngx_http_redisgate_node_t  *node;

    node = link->node;
    tls = node->tls;
    c = link->peer.connection;

    c->pool = ngx_create_pool(512, link->log);
    if (c->pool == NULL) {
        ngx_http_redisgate_link_fail(link, NGX_HTTP_REDISGATE_FAIL_HANDSHAKE,
                                     0, "out of memory");
        return;
    }

    if (ngx_ssl_create_connection(&tls->ssl, c, NGX_SSL_CLIENT) != NGX_OK) {
        ngx_http_redisgate_link_fail(link, NGX_HTTP_REDISGATE_FAIL_HANDSHAKE,
                                     0, "could not create a TLS connection");
        return;
    }

#ifdef SSL_CTRL_SET_TLSEXT_HOSTNAME

    /* as per RFC 6066, never an IP address */

    if (tls->server_name && node->tls_name.len
        && ngx_inet_addr(node->tls_name.data, node->tls_name.len)
           == INADDR_NONE
        && ngx_strlchr(node->tls_name.data,
                       node->tls_name.data + node->tls_name.len, ':')
           == NULL)
    {
        if (SSL_set_tlsext_host_name(c->ssl->connection,
                                     (char *) node->tls_name.data)
            == 0)
        {
            ngx_ssl_error(NGX_LOG_ERR, link->log, 0,
                          "SSL_set_tlsext_host_name(\"%V\") failed",
                          &node->tls_name);
            ngx_http_redisgate_link_fail(link,
                                         NGX_HTTP_REDISGATE_FAIL_HANDSHAKE,
                                         0, "could not set the server name");
            return;
        }
    }

#endif

    if (tls->session_reuse) {
        c->ssl->save_session = ngx_http_redisgate_link_ssl_save_session;

        if (node->session
            && ngx_ssl_set_session(c, node->session) != NGX_OK)
        {
            ngx_http_redisgate_link_fail(link,
                                         NGX_HTTP_REDISGATE_FAIL_HANDSHAKE,
                                         0, "could not set the session");
            return;
        }
    }

    rc = ngx_ssl_handshake(c);

    if (rc == NGX_AGAIN) {
        c->ssl->handler = ngx_http_redisgate_link_ssl_handshaked;
        return;
    }

    ngx_http_redisgate_link_ssl_handshaked(c);
}


static void
ngx_http_redisgate_link_ssl_handshaked(ngx_connection_t *c)
{
    long                        rc;
    ngx_http_redisgate_tls_t   *tls;
    ngx_http_redisgate_link_t  *link;
    ngx_http_redisgate_node_t  *node;

    link = c->data;

    if (link == NULL) {
        return;
    }

    node = link->node;
    tls = node->tls;

    if (!c->ssl->handshaked) {
        ngx_http_redisgate_link_fail(link, NGX_HTTP_REDISGATE_FAIL_HANDSHAKE,
                                     0, NULL);
        return;
    }

    ngx_http_redisgate_stats_backend_add(node->stats,
                                    NGX_HTTP_REDISGATE_STAT_TLS_HANDSHAKES, 1);

    if (SSL_session_reused(c->ssl->connection)) {
        ngx_http_redisgate_stats_backend_add(node->stats,
                                NGX_HTTP_REDISGATE_STAT_TLS_SESSION_REUSES, 1);
    }

    if (tls->verify) {
        rc = SSL_get_verify_result(c->ssl->connection);

        if (rc != X509_V_OK) {
            ngx_http_redisgate_link_fail(link,
                                         NGX_HTTP_REDISGATE_FAIL_VERIFY, 0,
                                         "(%l: %s)", rc,
                                         X509_verify_cert_error_string(rc));
            return;
        }

        if (ngx_http_redisgate_link_ssl_check_name(c, &node->tls_name)
            != NGX_OK)
        {
            ngx_http_redisgate_link_fail(link,
                                         NGX_HTTP_REDISGATE_FAIL_VERIFY, 0,
                                         "the certificate does not match "
                                         "\"%V\"", &node->tls_name);
            return;
        }
    }

    ngx_http_redisgate_link_ready(link);
}


/* a host name against the DNS names, an address against the IP ones */

static ngx_int_t
ngx_http_redisgate_link_ssl_check_name(ngx_connection_t *c, ngx_str_t *name)
{
    int    rc;
    X509  *cert;

    if (name->len == 0) {
        return NGX_ERROR;
    }

    cert = SSL_get_peer_certificate(c->ssl->connection);
    if (cert == NULL) {
        return NGX_ERROR;
    }

    /* tls_name is NUL-terminated */

    if (ngx_inet_addr(name->data, name->len) != INADDR_NONE
        || ngx_strlchr(name->data, name->data + name->len, ':'))
    {
        rc = X509_check_ip_asc(cert, (const char *) name->data, 0);

    } else {
        rc = X509_check_host(cert, (const char *) name->data, name->len, 0,
                             NULL);
    }

    X509_free(cert);

    return rc == 1 ? NGX_OK : NGX_ERROR;
}


static void
ngx_http_redisgate_link_ssl_save_session(ngx_connection_t *c)
{
    ngx_ssl_session_t          *session;
    ngx_http_redisgate_link_t  *link;

    link = c->data;

    if (link == NULL) {
        return;
    }

    session = ngx_ssl_get_session(c);
    if (session == NULL) {
        return;
    }

    ngx_http_redisgate_tls_free_session(link->node);

    link->node->session = session;
}


/*
 * The server asked for a client certificate and none is configured: go on
 * without (tls-auth-clients optional takes that), but remember it, for
 * the log line if the server then refuses the connection.
 */

int
ngx_http_redisgate_link_client_cert(ngx_ssl_conn_t *ssl_conn, X509 **x509,
    EVP_PKEY **pkey)
{
    ngx_connection_t           *c;
    ngx_http_redisgate_link_t  *link;

    c = ngx_ssl_get_connection(ssl_conn);

    if (c && c->data) {
        link = c->data;
        link->cert_requested = 1;
    }

    return 0;
}

#endif
