
/*
 * Copyright (C) RedisGate authors
 */


/*
 * Redis on nginx's event loop.  Each worker keeps, per backend, a few
 * hiredis async connections; every request's commands are appended to one
 * of them, so many requests are in flight on a connection at once
 * (pipelining) and replies come back in order.
 *
 * A request never hands itself to hiredis: it owns an "op" that hiredis
 * calls back, and the request pool's cleanup detaches the op when the
 * client goes away, so a late reply finds nobody and is dropped.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_redisgate.h"


/* replies awaited on a connection before the next one takes requests */
#define NGX_HTTP_REDISGATE_BUSY  64


struct ngx_http_redisgate_op_s {
    ngx_http_redisgate_conn_t     *conn;
    ngx_http_redisgate_reply_pt    handler;
    void                          *data;      /* NULL when the request left */
    ngx_pool_cleanup_t            *cleanup;
    ngx_event_t                    timer;
    ngx_uint_t                     left;      /* replies to come */
    ngx_uint_t                     sent;
    const char                    *error;
};


static ngx_http_redisgate_conn_t *ngx_http_redisgate_redis_pick(
    ngx_http_redisgate_backend_t *backend);
static ngx_int_t ngx_http_redisgate_redis_connect(
    ngx_http_redisgate_conn_t *conn);
static void ngx_http_redisgate_redis_drop(ngx_http_redisgate_conn_t *conn,
    const char *reason);
static void ngx_http_redisgate_redis_down(ngx_http_redisgate_backend_t *b,
    const char *what, const char *detail);
static void ngx_http_redisgate_redis_reply(redisAsyncContext *ac, void *r,
    void *privdata);
static void ngx_http_redisgate_redis_setup_reply(redisAsyncContext *ac,
    void *r, void *privdata);
static void ngx_http_redisgate_redis_op_cleanup(void *data);
static void ngx_http_redisgate_redis_op_timeout(ngx_event_t *ev);
static void ngx_http_redisgate_redis_connect_timeout(ngx_event_t *ev);
static void ngx_http_redisgate_redis_connected(const redisAsyncContext *ac,
    int status);
static void ngx_http_redisgate_redis_disconnected(const redisAsyncContext *ac,
    int status);

static void ngx_http_redisgate_redis_read_handler(ngx_event_t *ev);
static void ngx_http_redisgate_redis_write_handler(ngx_event_t *ev);
static void ngx_http_redisgate_redis_add_read(void *data);
static void ngx_http_redisgate_redis_del_read(void *data);
static void ngx_http_redisgate_redis_add_write(void *data);
static void ngx_http_redisgate_redis_del_write(void *data);
static void ngx_http_redisgate_redis_cleanup(void *data);


ngx_int_t
ngx_http_redisgate_redis_init_backend(ngx_http_redisgate_backend_t *backend,
    ngx_pool_t *pool)
{
    backend->conns = ngx_pcalloc(pool, backend->pool_size
                                       * sizeof(ngx_http_redisgate_conn_t));
    if (backend->conns == NULL) {
        return NGX_ERROR;
    }

    ngx_http_redisgate_redis_init_conns(backend);

    return NGX_OK;
}


/* backend->conns points to pool_size zeroed slots */

void
ngx_http_redisgate_redis_init_conns(ngx_http_redisgate_backend_t *backend)
{
    ngx_uint_t                  i;
    ngx_http_redisgate_conn_t  *conn;

    for (i = 0; i < backend->pool_size; i++) {
        conn = &backend->conns[i];

        conn->backend = backend;
        conn->connect_timer.handler = ngx_http_redisgate_redis_connect_timeout;
        conn->connect_timer.data = conn;
        conn->connect_timer.log = backend->log;
    }

    backend->backoff = backend->backoff_min;
    backend->stats = ngx_http_redisgate_stats_backend(&backend->address.url);
}


/* replies awaited on any of its connections */

ngx_uint_t
ngx_http_redisgate_redis_busy(ngx_http_redisgate_backend_t *backend)
{
    ngx_uint_t  i;

    for (i = 0; i < backend->pool_size; i++) {
        if (backend->conns[i].pending) {
            return 1;
        }
    }

    return 0;
}


void
ngx_http_redisgate_redis_close_backend(ngx_http_redisgate_backend_t *backend)
{
    ngx_uint_t  i;

    if (backend->conns == NULL) {
        return;
    }

    for (i = 0; i < backend->pool_size; i++) {
        ngx_http_redisgate_redis_drop(&backend->conns[i],
                                      "nginx worker is exiting");
    }
}


ngx_int_t
ngx_http_redisgate_redis_send(ngx_http_redisgate_backend_t *backend,
    ngx_http_request_t *r, ngx_str_t *cmds, ngx_uint_t n, ngx_msec_t timeout,
    ngx_http_redisgate_reply_pt handler, void *data, const char **error)
{
    ngx_uint_t                  i;
    ngx_pool_cleanup_t         *cln;
    ngx_http_redisgate_op_t    *op;
    ngx_http_redisgate_conn_t  *conn;

    conn = ngx_http_redisgate_redis_pick(backend);

    if (conn == NULL) {
        *error = (const char *) backend->error;
        return NGX_DECLINED;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_ERROR;
    }

    op = ngx_calloc(sizeof(ngx_http_redisgate_op_t), r->connection->log);
    if (op == NULL) {
        return NGX_ERROR;
    }

    op->conn = conn;
    op->handler = handler;
    op->data = data;
    op->cleanup = cln;

    /* nothing can run between these appends: MULTI...EXEC stays whole */

    for (i = 0; i < n; i++) {
        if (redisAsyncFormattedCommand(conn->ac,
                                       ngx_http_redisgate_redis_reply, op,
                                       (char *) cmds[i].data, cmds[i].len)
            != REDIS_OK)
        {
            break;
        }

        op->left++;
        conn->pending++;
    }

    if (i == 0) {
        ngx_free(op);
        *error = "Redis connection is closing";
        return NGX_DECLINED;
    }

    cln->handler = ngx_http_redisgate_redis_op_cleanup;
    cln->data = op;

    op->sent = op->left;

    ngx_http_redisgate_stats_backend_add(backend->stats,
                                         NGX_HTTP_REDISGATE_STAT_IN_FLIGHT,
                                         (ngx_int_t) op->sent);

    op->timer.handler = ngx_http_redisgate_redis_op_timeout;
    op->timer.data = op;
    op->timer.log = backend->log;

    ngx_add_timer(&op->timer, timeout);

    if (i < n) {
        /* a partial transaction must never run */
        ngx_http_redisgate_redis_drop(conn, "Redis connection is closing");
    }

    return NGX_OK;
}


/*
 * The first live connection with fewer than NGX_HTTP_REDISGATE_BUSY replies
 * awaited: one connection carries the load while it can, so each of its
 * reads and writes carries many requests.  Past that, the least busy, and
 * more connections are opened.
 */

static ngx_http_redisgate_conn_t *
ngx_http_redisgate_redis_pick(ngx_http_redisgate_backend_t *backend)
{
    ngx_uint_t                  i;
    ngx_http_redisgate_conn_t  *conn, *best, *free;

    best = NULL;
    free = NULL;

    for (i = 0; i < backend->pool_size; i++) {
        conn = &backend->conns[i];

        if (conn->ac == NULL) {
            if (free == NULL) {
                free = conn;
            }

            continue;
        }

        if (conn->ac->c.flags & (REDIS_DISCONNECTING|REDIS_FREEING)) {
            continue;
        }

        if (conn->pending < NGX_HTTP_REDISGATE_BUSY) {
            return conn;
        }

        if (best == NULL || conn->pending < best->pending) {
            best = conn;
        }
    }

    /* while the backend is down, fail fast instead of queueing */

    if (free && (ngx_msec_int_t) (ngx_current_msec - backend->down_until) >= 0)
    {
        if (ngx_http_redisgate_redis_connect(free) == NGX_OK) {
            return free;
        }
    }

    return best;
}


static ngx_int_t
ngx_http_redisgate_redis_connect(ngx_http_redisgate_conn_t *conn)
{
    ngx_connection_t              *c;
    redisAsyncContext             *ac;
    ngx_http_redisgate_address_t  *addr;
    ngx_http_redisgate_backend_t  *backend;

    backend = conn->backend;
    addr = &backend->address;

    if (addr->path.len) {
        ac = redisAsyncConnectUnix((char *) addr->path.data);

    } else {
        ac = redisAsyncConnect((char *) addr->host.data, addr->port);
    }

    if (ac == NULL) {
        ngx_http_redisgate_redis_down(backend, "could not connect to",
                                      "out of memory");
        return NGX_ERROR;
    }

    if (ac->err) {
        ngx_http_redisgate_redis_down(backend, "could not connect to",
                                      ac->errstr);
        redisAsyncFree(ac);
        return NGX_ERROR;
    }

    c = ngx_http_redisgate_socket_wrap(ac->c.fd, conn,
                                       ngx_http_redisgate_redis_read_handler,
                                       ngx_http_redisgate_redis_write_handler,
                                       backend->log);
    if (c == NULL) {
        ngx_http_redisgate_redis_down(backend, "could not connect to",
                                      "no free nginx connection");
        redisAsyncFree(ac);
        return NGX_ERROR;
    }

    conn->ac = ac;
    conn->connection = c;
    conn->connected = 0;
    conn->drop_reason = NULL;

    /* the adapter goes in before the callbacks: they ask for a write */

    ac->data = conn;
    ac->ev.data = conn;
    ac->ev.addRead = ngx_http_redisgate_redis_add_read;
    ac->ev.delRead = ngx_http_redisgate_redis_del_read;
    ac->ev.addWrite = ngx_http_redisgate_redis_add_write;
    ac->ev.delWrite = ngx_http_redisgate_redis_del_write;
    ac->ev.cleanup = ngx_http_redisgate_redis_cleanup;

    ngx_http_redisgate_stats_backend_add(backend->stats,
                                         NGX_HTTP_REDISGATE_STAT_CONNECTS, 1);

    redisAsyncSetConnectCallback(ac, ngx_http_redisgate_redis_connected);
    redisAsyncSetDisconnectCallback(ac, ngx_http_redisgate_redis_disconnected);

    ngx_add_timer(&conn->connect_timer, backend->connect_timeout);

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, backend->log, 0,
                   "redisgate: connecting to %V, fd:%d, conn:%p",
                   &addr->url, c->fd, conn);

    /* queued now, sent first once connected */

    if (addr->password.len) {
        if (addr->user.len) {
            redisAsyncCommand(ac, ngx_http_redisgate_redis_setup_reply, conn,
                              "AUTH %b %b", addr->user.data, addr->user.len,
                              addr->password.data, addr->password.len);

        } else {
            redisAsyncCommand(ac, ngx_http_redisgate_redis_setup_reply, conn,
                              "AUTH %b", addr->password.data,
                              addr->password.len);
        }
    }

    if (addr->db) {
        redisAsyncCommand(ac, ngx_http_redisgate_redis_setup_reply, conn,
                          "SELECT %d", (int) addr->db);
    }

    return NGX_OK;
}


static void
ngx_http_redisgate_redis_connected(const redisAsyncContext *ac, int status)
{
    ngx_http_redisgate_conn_t  *conn = ac->data;

    if (conn->connect_timer.timer_set) {
        ngx_del_timer(&conn->connect_timer);
    }

    if (status != REDIS_OK) {
        /* hiredis frees the context after this and fails what waited */
        ngx_http_redisgate_redis_down(conn->backend, "could not connect to",
                                      ac->errstr);
        conn->drop_reason = (const char *) conn->backend->error;
        return;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, conn->backend->log, 0,
                   "redisgate: connected to %V, conn:%p",
                   &conn->backend->address.url, conn);

    conn->connected = 1;
    conn->backend->backoff = conn->backend->backoff_min;

    ngx_http_redisgate_stats_backend_add(conn->backend->stats,
                                         NGX_HTTP_REDISGATE_STAT_CONNECTIONS,
                                         1);
    conn->backend->down_until = ngx_current_msec;
}


static void
ngx_http_redisgate_redis_setup_reply(redisAsyncContext *ac, void *r,
    void *privdata)
{
    redisReply                 *reply = r;
    ngx_http_redisgate_conn_t  *conn = privdata;

    if (reply == NULL || reply->type != REDIS_REPLY_ERROR) {
        return;
    }

    ngx_log_error(NGX_LOG_ERR, conn->backend->log, 0,
                  "redisgate: Redis at %V refused AUTH or SELECT: %*s",
                  &conn->backend->address.url, (size_t) reply->len,
                  reply->str);

    ngx_http_redisgate_redis_down(conn->backend, "authentication failed at",
                                  reply->str);

    ngx_http_redisgate_redis_drop(conn, (const char *) conn->backend->error);
}


static void
ngx_http_redisgate_redis_disconnected(const redisAsyncContext *ac,
    int status)
{
    ngx_http_redisgate_conn_t  *conn = ac->data;

    if (status != REDIS_OK) {
        ngx_log_error(NGX_LOG_ERR, conn->backend->log, 0,
                      "redisgate: lost connection to Redis at %V: %s",
                      &conn->backend->address.url, ac->errstr);
        return;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, conn->backend->log, 0,
                   "redisgate: closed connection to %V, conn:%p",
                   &conn->backend->address.url, conn);
}


static void
ngx_http_redisgate_redis_connect_timeout(ngx_event_t *ev)
{
    ngx_http_redisgate_conn_t  *conn = ev->data;

    ngx_log_error(NGX_LOG_ERR, ev->log, 0,
                  "redisgate: connect to Redis at %V timed out",
                  &conn->backend->address.url);

    ngx_http_redisgate_redis_down(conn->backend, "timed out connecting to",
                                  NULL);

    ngx_http_redisgate_redis_drop(conn, (const char *) conn->backend->error);
}


static void
ngx_http_redisgate_redis_down(ngx_http_redisgate_backend_t *b,
    const char *what, const char *detail)
{
    u_char  *p;

    p = ngx_snprintf(b->error, sizeof(b->error) - 1, "%s Redis at %V",
                     what, &b->address.url);

    if (detail) {
        p = ngx_snprintf(p, b->error + sizeof(b->error) - 1 - p, ": %s",
                         detail);
    }

    *p = '\0';

    b->down_until = ngx_current_msec + b->backoff;
    b->backoff = ngx_min(b->backoff * 2, b->backoff_max);

    ngx_http_redisgate_stats_backend_add(b->stats,
                                     NGX_HTTP_REDISGATE_STAT_CONNECT_FAILURES,
                                     1);

    ngx_log_error(NGX_LOG_ERR, b->log, 0, "redisgate: %s", b->error);
}


static void
ngx_http_redisgate_redis_drop(ngx_http_redisgate_conn_t *conn,
    const char *reason)
{
    if (conn->ac == NULL
        || (conn->ac->c.flags & (REDIS_FREEING|REDIS_DISCONNECTING)))
    {
        return;
    }

    if (conn->drop_reason == NULL) {
        conn->drop_reason = reason;
    }

    /* fails every pending reply now, or after the running callback */
    redisAsyncFree(conn->ac);
}


static void
ngx_http_redisgate_redis_reply(redisAsyncContext *ac, void *r,
    void *privdata)
{
    void                         *data;
    redisReply                   *reply = r;
    ngx_http_redisgate_reply_pt   handler;
    ngx_http_redisgate_op_t    *op = privdata;
    ngx_http_redisgate_conn_t  *conn;

    conn = op->conn;

    conn->pending--;
    op->left--;

    if (reply == NULL && op->error == NULL) {
        if (conn->drop_reason) {
            op->error = conn->drop_reason;

        } else {
            ngx_snprintf(conn->backend->error,
                         sizeof(conn->backend->error) - 1,
                         "lost connection to Redis at %V: %s%Z",
                         &conn->backend->address.url,
                         ac->errstr[0] ? ac->errstr : "closed");
            conn->drop_reason = (const char *) conn->backend->error;
            op->error = conn->drop_reason;
        }
    }

    if (op->data) {
        op->handler(op->data, reply, reply ? NULL : op->error);
    }

    if (op->left) {
        return;
    }

    if (op->timer.timer_set) {
        ngx_del_timer(&op->timer);
    }

    /* one shared-memory update per request, not per reply */
    ngx_http_redisgate_stats_backend_add(conn->backend->stats,
                                         NGX_HTTP_REDISGATE_STAT_IN_FLIGHT,
                                         -(ngx_int_t) op->sent);

    data = op->data;
    handler = op->handler;

    if (data) {
        op->cleanup->handler = NULL;
    }

    ngx_free(op);

    if (data) {
        /* the last call: the request may be finalized in it */
        handler(data, NULL, NULL);
    }
}


static void
ngx_http_redisgate_redis_op_cleanup(void *data)
{
    ngx_http_redisgate_op_t  *op = data;

    /* the request is gone; its replies will be read and dropped */
    op->data = NULL;
}


static void
ngx_http_redisgate_redis_op_timeout(ngx_event_t *ev)
{
    ngx_http_redisgate_op_t    *op = ev->data;
    ngx_http_redisgate_conn_t  *conn;

    conn = op->conn;

    ngx_log_error(NGX_LOG_ERR, ev->log, 0,
                  "redisgate: Redis at %V did not answer in time, "
                  "dropping the connection", &conn->backend->address.url);

    op->error = "Redis command timed out";

    /* replies are matched by order: a late one would shift them all */
    ngx_http_redisgate_redis_drop(conn,
                             "Redis connection dropped after a command "
                             "timed out");
}


static void
ngx_http_redisgate_redis_read_handler(ngx_event_t *ev)
{
    ngx_connection_t           *c = ev->data;
    ngx_http_redisgate_conn_t  *conn = c->data;

    redisAsyncHandleRead(conn->ac);
}


static void
ngx_http_redisgate_redis_write_handler(ngx_event_t *ev)
{
    ngx_connection_t           *c = ev->data;
    ngx_http_redisgate_conn_t  *conn = c->data;

    conn->writing = 1;
    redisAsyncHandleWrite(conn->ac);

    /* the context may be gone: conn is a slot, it stays */
    conn->writing = 0;
}


/*
 * The adapter.  Level-triggered events: hiredis reads at most 16k per
 * call, and an edge-triggered loop would wait forever for the rest.
 */

static void
ngx_http_redisgate_redis_add_read(void *data)
{
    ngx_http_redisgate_conn_t  *conn = data;

    if (!conn->connection->read->active) {
        (void) ngx_add_event(conn->connection->read, NGX_READ_EVENT,
                             NGX_LEVEL_EVENT);
    }
}


static void
ngx_http_redisgate_redis_del_read(void *data)
{
    ngx_http_redisgate_conn_t  *conn = data;

    if (conn->connection->read->active) {
        (void) ngx_del_event(conn->connection->read, NGX_READ_EVENT, 0);
    }
}


/*
 * Commands appended while the event loop runs are written once it has run
 * its events, all in one write: a posted event, not a trip through epoll.
 * Only a write that could not finish (or a connect) waits for writability.
 */

static void
ngx_http_redisgate_redis_add_write(void *data)
{
    ngx_http_redisgate_conn_t  *conn = data;

    ngx_event_t  *wev;

    wev = conn->connection->write;

    if (wev->active || wev->posted) {
        return;
    }

    if (conn->writing || !(conn->ac->c.flags & REDIS_CONNECTED)) {
        (void) ngx_add_event(wev, NGX_WRITE_EVENT, NGX_LEVEL_EVENT);
        return;
    }

    ngx_post_event(wev, &ngx_posted_events);
}


static void
ngx_http_redisgate_redis_del_write(void *data)
{
    ngx_http_redisgate_conn_t  *conn = data;

    if (conn->connection->write->posted) {
        ngx_delete_posted_event(conn->connection->write);
    }

    if (conn->connection->write->active) {
        (void) ngx_del_event(conn->connection->write, NGX_WRITE_EVENT, 0);
    }
}


/* hiredis is freeing the context and will close the fd itself */

static void
ngx_http_redisgate_redis_cleanup(void *data)
{
    ngx_http_redisgate_conn_t  *conn = data;

    ngx_connection_t  *c;

    c = conn->connection;

    if (conn->connect_timer.timer_set) {
        ngx_del_timer(&conn->connect_timer);
    }

    if (c) {
        /* hiredis closes the socket right after this */
        ngx_http_redisgate_socket_release(c, 1);
    }

    if (conn->connected) {
        ngx_http_redisgate_stats_backend_add(conn->backend->stats,
                                         NGX_HTTP_REDISGATE_STAT_CONNECTIONS,
                                         -1);
    }

    conn->connection = NULL;
    conn->ac = NULL;
    conn->connected = 0;
    conn->pending = 0;
    conn->drop_reason = NULL;
}
