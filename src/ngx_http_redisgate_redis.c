
/*
 * Copyright (C) RedisGate authors
 */


/*
 * Redis pools on nginx's event loop.  Each worker keeps, per backend, a
 * few links (transport.c); every request's commands are appended to one of
 * them, so many requests are in flight on a link at once (pipelining) and
 * replies come back in order.  The pool knows nothing of TLS or sockets.
 *
 * A request never hands itself to a link: it owns an "op" that the link
 * calls back, and the request pool's cleanup detaches the op when the
 * client goes away, so a late reply finds nobody and is dropped.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_redisgate.h"
#include "ngx_http_redisgate_spare.h"


/* replies awaited on a connection before the next one takes requests */
#define NGX_HTTP_REDISGATE_BUSY  64

/* ops kept for the next requests, at most */
#define NGX_HTTP_REDISGATE_OPS_KEPT  1024


/* asked first on a connection to what the sentinels named */
static ngx_str_t  ngx_http_redisgate_redis_role =
    ngx_string("*1\r\n$4\r\nROLE\r\n");


struct ngx_http_redisgate_op_s {
    ngx_http_redisgate_wait_t      wait;      /* over when the request left */
    ngx_http_redisgate_conn_t     *conn;
    ngx_http_redisgate_reply_pt    handler;
    ngx_http_redisgate_bulk_pt     bulk;
    void                          *data;
    ngx_msec_t                     deadline;  /* ngx_current_msec's */
    ngx_msec_t                     timeout;
    ngx_uint_t                     left;      /* replies to come */
    ngx_uint_t                     sent;
    const char                    *error;
};


static ngx_http_redisgate_conn_t *ngx_http_redisgate_redis_pick(
    ngx_http_redisgate_backend_t *backend);
static ngx_int_t ngx_http_redisgate_redis_connect(
    ngx_http_redisgate_conn_t *conn);
static ngx_int_t ngx_http_redisgate_redis_setup(
    ngx_http_redisgate_conn_t *conn);
static void ngx_http_redisgate_redis_setup_reply(void *data,
    redisReply *reply, const char *error);
static void ngx_http_redisgate_redis_role_reply(void *data, redisReply *reply,
    const char *error);
static void ngx_http_redisgate_redis_ready(ngx_http_redisgate_link_t *link);
static void ngx_http_redisgate_redis_closed(ngx_http_redisgate_link_t *link);
static void ngx_http_redisgate_redis_reply(void *data, redisReply *reply,
    const char *error);
static ngx_int_t ngx_http_redisgate_redis_bulk(void *data, u_char *p,
    size_t n, off_t left);
static void ngx_http_redisgate_redis_cut(ngx_http_redisgate_conn_t *conn);
static void ngx_http_redisgate_redis_watch(ngx_http_redisgate_conn_t *conn,
    ngx_http_redisgate_op_t *op);
static void ngx_http_redisgate_redis_timeout(ngx_event_t *ev);
static void ngx_http_redisgate_redis_retire_idle(
    ngx_http_redisgate_conn_t *conn);
static ngx_http_redisgate_op_t *ngx_http_redisgate_redis_op_get(
    ngx_log_t *log);
static void ngx_http_redisgate_redis_op_free(ngx_http_redisgate_op_t *op);


/*
 * Ops outlive their requests, so they are not the request pool's: they
 * are allocated once and kept by the worker
 */
static ngx_http_redisgate_spares_t  ngx_http_redisgate_redis_ops =
    ngx_http_redisgate_spares(NGX_HTTP_REDISGATE_OPS_KEPT);


/* a backend of nginx.conf, in each worker */

ngx_int_t
ngx_http_redisgate_redis_init_backend(ngx_http_redisgate_backend_t *backend,
    ngx_http_redisgate_main_conf_t *rmcf, ngx_cycle_t *cycle)
{
    backend->log = cycle->log;
    backend->pool_size = rmcf->pool_size;

    backend->conns = ngx_pcalloc(cycle->pool,
                      backend->pool_size * sizeof(ngx_http_redisgate_conn_t));
    if (backend->conns == NULL) {
        return NGX_ERROR;
    }

    ngx_queue_init(&backend->waiting);

    ngx_http_redisgate_redis_init_conns(backend, rmcf);

    return NGX_OK;
}


/* backend->conns points to pool_size zeroed slots */

void
ngx_http_redisgate_redis_init_conns(ngx_http_redisgate_backend_t *backend,
    ngx_http_redisgate_main_conf_t *rmcf)
{
    ngx_uint_t                  i;
    ngx_http_redisgate_conn_t  *conn;

    for (i = 0; i < backend->pool_size; i++) {
        conn = &backend->conns[i];

        conn->backend = backend;
        conn->link.on_ready = ngx_http_redisgate_redis_ready;
        conn->link.on_close = ngx_http_redisgate_redis_closed;
        conn->link.data = conn;
        conn->link.log = backend->log;

        conn->timer.handler = ngx_http_redisgate_redis_timeout;
        conn->timer.data = conn;
        conn->timer.log = backend->log;
        conn->timer.cancelable = 1;
    }

    ngx_http_redisgate_health_init(&backend->health, rmcf->backoff_min,
                                   rmcf->backoff_max, NULL);

    backend->node.name = backend->address.url;
    backend->node.connect_timeout = rmcf->connect_timeout;
    backend->node.stats =
                      ngx_http_redisgate_stats_backend(&backend->address.url);

#if (NGX_SSL)
    if (backend->address.tls) {
        backend->node.tls = rmcf->tls;
        backend->node.tls_name = rmcf->tls->name.len ? rmcf->tls->name
                                                     : backend->address.host;
    }
#endif

    if (backend->sentinel) {
        ngx_http_redisgate_sentinel_init(backend, rmcf);
    }

    if (backend->cluster) {
        ngx_http_redisgate_cluster_init(backend, rmcf);
    }
}


/* replies awaited on any of its connections */

ngx_uint_t
ngx_http_redisgate_redis_busy(ngx_http_redisgate_backend_t *backend)
{
    ngx_uint_t  i;

    for (i = 0; i < backend->pool_size; i++) {
        if (ngx_http_redisgate_link_pending(&backend->conns[i].link)) {
            return 1;
        }
    }

    return 0;
}


/*
 * The backend's address changed: no new request goes to the connections
 * open to the old one, and each closes once its replies are in.
 */

void
ngx_http_redisgate_redis_retire(ngx_http_redisgate_backend_t *backend)
{
    ngx_uint_t                  i;
    ngx_http_redisgate_conn_t  *conn;

    for (i = 0; i < backend->pool_size; i++) {
        conn = &backend->conns[i];

        if (conn->link.state == NGX_HTTP_REDISGATE_LINK_CLOSED
            || conn->link.state == NGX_HTTP_REDISGATE_LINK_CLOSING)
        {
            continue;
        }

        conn->retired = 1;

        ngx_http_redisgate_redis_retire_idle(conn);
    }
}


static void
ngx_http_redisgate_redis_retire_idle(ngx_http_redisgate_conn_t *conn)
{
    if (conn->retired && ngx_http_redisgate_link_pending(&conn->link) == 0) {
        ngx_http_redisgate_link_close(&conn->link,
                                      NGX_HTTP_REDISGATE_FAIL_CLOSED, NULL);
    }
}


void
ngx_http_redisgate_redis_close_backend(ngx_http_redisgate_backend_t *backend)
{
    ngx_uint_t  i;

    if (backend->conns == NULL) {
        return;
    }

    for (i = 0; i < backend->pool_size; i++) {
        ngx_http_redisgate_link_close(&backend->conns[i].link,
                                      NGX_HTTP_REDISGATE_FAIL_CLOSED,
                                      "nginx worker is exiting");
        ngx_http_redisgate_link_free(&backend->conns[i].link);

        if (backend->conns[i].timer.timer_set) {
            ngx_del_timer(&backend->conns[i].timer);
        }
    }

    ngx_http_redisgate_tls_free_session(&backend->node);

    ngx_http_redisgate_pubsub_close(backend);
    ngx_http_redisgate_sentinel_close(backend);
    ngx_http_redisgate_cluster_close(backend);
}


ngx_int_t
ngx_http_redisgate_redis_send(ngx_http_redisgate_backend_t *backend,
    ngx_http_request_t *r, ngx_str_t *cmds, ngx_uint_t n, ngx_msec_t timeout,
    ngx_http_redisgate_reply_pt handler, ngx_http_redisgate_bulk_pt bulk,
    void *data, const char **error)
{
    ngx_int_t                   rc;
    ngx_http_redisgate_op_t    *op;
    ngx_http_redisgate_conn_t  *conn;

    conn = ngx_http_redisgate_redis_pick(backend);

    if (conn == NULL) {
        *error = backend->health.error;
        return NGX_DECLINED;
    }

    /* the op outlives its request when the client leaves first */

    op = ngx_http_redisgate_redis_op_get(r->connection->log);
    if (op == NULL) {
        return NGX_ERROR;
    }

    op->conn = conn;
    op->handler = handler;
    op->bulk = bulk;
    op->data = data;
    op->deadline = ngx_current_msec + timeout;
    op->timeout = timeout;
    op->left = n;
    op->sent = n;

    /* all the commands or none: MULTI...EXEC stays whole */

    rc = ngx_http_redisgate_link_send_bulk(&conn->link, cmds, n,
                                      ngx_http_redisgate_redis_reply,
                                      bulk ? ngx_http_redisgate_redis_bulk
                                           : NULL,
                                      op);

    if (rc != NGX_OK) {
        ngx_http_redisgate_redis_op_free(op);
        *error = (rc == NGX_ERROR) ? "out of memory"
                                   : "Redis connection is closing";
        return NGX_DECLINED;
    }

    ngx_http_redisgate_stats_backend_add(backend->node.stats,
                                         NGX_HTTP_REDISGATE_STAT_IN_FLIGHT,
                                         (ngx_int_t) n);

    ngx_http_redisgate_redis_watch(conn, op);

    if (ngx_http_redisgate_wait(r->pool, NULL, &op->wait) != NGX_OK) {
        /* queued already: its replies will be read and dropped, and the
         * op freed with the last, as any whose request left */
        return NGX_ERROR;
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
    ngx_uint_t                  i, pending, best_pending;
    ngx_http_redisgate_conn_t  *conn, *best, *free;

    best = NULL;
    best_pending = 0;
    free = NULL;

    for (i = 0; i < backend->pool_size; i++) {
        conn = &backend->conns[i];

        switch (conn->link.state) {

        case NGX_HTTP_REDISGATE_LINK_CLOSED:
            if (free == NULL) {
                free = conn;
            }

            continue;

        case NGX_HTTP_REDISGATE_LINK_CLOSING:
            continue;

        default:
            if (conn->retired) {
                continue;
            }

            break;
        }

        pending = ngx_http_redisgate_link_pending(&conn->link);

        if (conn->link.paused) {
            /* a slow client holds it: the last choice */
            pending += NGX_HTTP_REDISGATE_BUSY;
        }

        if (pending < NGX_HTTP_REDISGATE_BUSY) {
            return conn;
        }

        if (best == NULL || pending < best_pending) {
            best = conn;
            best_pending = pending;
        }
    }

    /* while the backend is down, fail fast instead of queueing */

    if (free && ngx_http_redisgate_health_usable(&backend->health)) {
        if (ngx_http_redisgate_redis_connect(free) == NGX_OK) {
            return free;
        }
    }

    return best;
}


static ngx_int_t
ngx_http_redisgate_redis_connect(ngx_http_redisgate_conn_t *conn)
{
    ngx_http_redisgate_backend_t  *backend;

    backend = conn->backend;

    if (ngx_http_redisgate_link_connect(&conn->link, &backend->node,
                                        backend->log)
        != NGX_OK)
    {
        ngx_http_redisgate_health_down(&backend->health, conn->link.error);
        ngx_http_redisgate_stats_backend_add(backend->node.stats,
                                     NGX_HTTP_REDISGATE_STAT_CONNECT_FAILURES,
                                     1);
        return NGX_ERROR;
    }

    ngx_http_redisgate_stats_backend_add(backend->node.stats,
                                         NGX_HTTP_REDISGATE_STAT_CONNECTS, 1);

    /* queued first, sent first once connected */

    if (ngx_http_redisgate_redis_setup(conn) != NGX_OK
        || (backend->sentinel
            && ngx_http_redisgate_link_send(&conn->link,
                                            &ngx_http_redisgate_redis_role, 1,
                                            ngx_http_redisgate_redis_role_reply,
                                            conn)
               != NGX_OK))
    {
        ngx_http_redisgate_link_close(&conn->link,
                                      NGX_HTTP_REDISGATE_FAIL_CLOSED,
                                      "out of memory");
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* AUTH [user] password, SELECT db: what a connection says first */

static ngx_int_t
ngx_http_redisgate_redis_setup(ngx_http_redisgate_conn_t *conn)
{
    u_char                        *p, *buf, db[NGX_INT_T_LEN];
    size_t                         len;
    ngx_int_t                      rc;
    ngx_str_t                      auth[3], select[2], cmds[2];
    ngx_uint_t                     i, n;
    ngx_http_redisgate_cmd_t       cmd[2];
    ngx_http_redisgate_address_t  *addr;

    addr = &conn->backend->address;
    n = 0;

    if (addr->password.len) {
        ngx_str_set(&auth[0], "AUTH");
        cmd[n].argv = auth;
        cmd[n].argc = 1;

        if (addr->user.len) {
            auth[cmd[n].argc++] = addr->user;
        }

        auth[cmd[n].argc++] = addr->password;
        n++;
    }

    if (addr->db) {
        ngx_str_set(&select[0], "SELECT");
        select[1].data = db;
        select[1].len = ngx_sprintf(db, "%ui", addr->db) - db;

        cmd[n].argv = select;
        cmd[n].argc = 2;
        n++;
    }

    if (n == 0) {
        return NGX_OK;
    }

    len = 0;

    for (i = 0; i < n; i++) {
        len += ngx_http_redisgate_resp_command_len(&cmd[i]);
    }

    buf = ngx_alloc(len, conn->backend->log);
    if (buf == NULL) {
        return NGX_ERROR;
    }

    p = buf;

    for (i = 0; i < n; i++) {
        cmds[i].data = p;
        p = ngx_http_redisgate_resp_command(p, &cmd[i]);
        cmds[i].len = p - cmds[i].data;
    }

    /* the link copies them */

    rc = ngx_http_redisgate_link_send(&conn->link, cmds, n,
                                      ngx_http_redisgate_redis_setup_reply,
                                      conn);

    ngx_free(buf);

    return rc;
}


static void
ngx_http_redisgate_redis_setup_reply(void *data, redisReply *reply,
    const char *error)
{
    ngx_http_redisgate_conn_t  *conn = data;

    const char  *reason;

    if (reply == NULL) {
        return;
    }

    if (reply->type != REDIS_REPLY_ERROR) {
        ngx_http_redisgate_redis_retire_idle(conn);
        return;
    }

    ngx_log_error(NGX_LOG_ERR, conn->backend->log, 0,
                  "redisgate: authentication failed at Redis at %V: "
                  "AUTH or SELECT refused: %*s",
                  &conn->backend->address.url, (size_t) reply->len,
                  reply->str);

    reason = ngx_http_redisgate_link_strerror(NGX_HTTP_REDISGATE_FAIL_AUTH);

    ngx_http_redisgate_health_down(&conn->backend->health, reason);

    ngx_http_redisgate_stats_backend_add(conn->backend->node.stats,
                                     NGX_HTTP_REDISGATE_STAT_CONNECT_FAILURES,
                                     1);

    ngx_http_redisgate_link_close(&conn->link, NGX_HTTP_REDISGATE_FAIL_AUTH,
                                  NULL);
}


/*
 * What the sentinels named may be a replica by now (a failover since):
 * requests go to a primary only.  A user whose ACL forbids ROLE is taken
 * at the sentinels' word.
 */

static void
ngx_http_redisgate_redis_role_reply(void *data, redisReply *reply,
    const char *error)
{
    ngx_http_redisgate_conn_t  *conn = data;

    ngx_http_redisgate_backend_t  *backend;

    if (reply == NULL) {
        return;
    }

    backend = conn->backend;

    if (reply->type == REDIS_REPLY_ARRAY && reply->elements > 0
        && reply->element[0]->type == REDIS_REPLY_STRING
        && reply->element[0]->len == sizeof("master") - 1
        && ngx_strncmp(reply->element[0]->str, "master",
                       sizeof("master") - 1) == 0)
    {
        ngx_http_redisgate_redis_retire_idle(conn);
        return;
    }

    if (reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_INFO, backend->log, 0,
                      "redisgate: ROLE refused by %V, trusting the "
                      "sentinels: %*s", &backend->node.name,
                      (size_t) reply->len, reply->str);
        return;
    }

    ngx_log_error(NGX_LOG_ERR, backend->log, 0,
                  "redisgate: %V is not a primary any more (ROLE says "
                  "\"%*s\"), asking the sentinels again",
                  &backend->node.name,
                  reply->type == REDIS_REPLY_ARRAY && reply->elements > 0
                  && reply->element[0]->type == REDIS_REPLY_STRING
                  ? (size_t) reply->element[0]->len : sizeof("?") - 1,
                  reply->type == REDIS_REPLY_ARRAY && reply->elements > 0
                  && reply->element[0]->type == REDIS_REPLY_STRING
                  ? reply->element[0]->str : "?");

    ngx_http_redisgate_sentinel_stale(backend);

    ngx_http_redisgate_health_down(&backend->health,
                   ngx_http_redisgate_link_strerror(
                                             NGX_HTTP_REDISGATE_FAIL_ROLE));

    ngx_http_redisgate_link_close(&conn->link, NGX_HTTP_REDISGATE_FAIL_ROLE,
                                  NULL);
}


static void
ngx_http_redisgate_redis_ready(ngx_http_redisgate_link_t *link)
{
    ngx_http_redisgate_conn_t  *conn = link->data;

    ngx_http_redisgate_health_up(&conn->backend->health);

    ngx_http_redisgate_stats_backend_add(conn->backend->node.stats,
                                         NGX_HTTP_REDISGATE_STAT_CONNECTIONS,
                                         1);
}


/* before the replies awaited fail, with link->error */

static void
ngx_http_redisgate_redis_closed(ngx_http_redisgate_link_t *link)
{
    ngx_http_redisgate_conn_t     *conn = link->data;
    ngx_http_redisgate_backend_t  *backend;

    backend = conn->backend;
    conn->retired = 0;

    if (link->was_ready) {
        ngx_http_redisgate_stats_backend_add(backend->node.stats,
                                         NGX_HTTP_REDISGATE_STAT_CONNECTIONS,
                                         -1);
    }

    switch (link->failure) {

    case NGX_HTTP_REDISGATE_FAIL_LOST:
        /* Sentinel closes the clients of a primary it demotes */
        ngx_http_redisgate_sentinel_stale(backend);
        return;

    case NGX_HTTP_REDISGATE_FAIL_CONNECT:
    case NGX_HTTP_REDISGATE_FAIL_TIMEOUT:
    case NGX_HTTP_REDISGATE_FAIL_HANDSHAKE:
    case NGX_HTTP_REDISGATE_FAIL_VERIFY:
        ngx_http_redisgate_sentinel_stale(backend);

        /* it never worked: wait before trying again */
        ngx_http_redisgate_health_down(&backend->health, link->error);
        ngx_http_redisgate_stats_backend_add(backend->node.stats,
                                     NGX_HTTP_REDISGATE_STAT_CONNECT_FAILURES,
                                     1);
        return;

    default:
        return;
    }
}


static void
ngx_http_redisgate_redis_reply(void *data, redisReply *reply,
    const char *error)
{
    ngx_http_redisgate_op_t *op = data;

    void                         *rdata;
    ngx_int_t                     rc;
    ngx_http_redisgate_conn_t    *conn;
    ngx_http_redisgate_reply_pt   handler;

    conn = op->conn;
    op->left--;

    if (reply == NULL && op->error == NULL) {
        op->error = error;
    }

    if (reply && reply->type == REDIS_REPLY_ERROR && conn->backend->sentinel
        && reply->len > 8 && ngx_strncmp(reply->str, "READONLY", 8) == 0)
    {
        /* a replica now: passed on, and the sentinels are asked again */
        ngx_http_redisgate_sentinel_stale(conn->backend);
    }

    if (ngx_http_redisgate_waiting(&op->wait)) {
        op->handler(op->data, reply, reply ? NULL : op->error);
    }

    if (op->left) {
        return;
    }

    /* one shared-memory update per request, not per reply */
    ngx_http_redisgate_stats_backend_add(op->conn->backend->node.stats,
                                         NGX_HTTP_REDISGATE_STAT_IN_FLIGHT,
                                         -(ngx_int_t) op->sent);

    rdata = op->data;
    handler = op->handler;

    rc = ngx_http_redisgate_wait_done(&op->wait);

    ngx_http_redisgate_redis_op_free(op);

    if (ngx_http_redisgate_link_pending(&conn->link) == 0) {
        /* its timer may go off with nothing to watch: no reason to keep
         * an exiting worker */
        conn->timer.cancelable = 1;
    }

    if (rc == NGX_OK) {
        /* the last call: the request may be finalized in it */
        handler(rdata, NULL, NULL);
    }

    /* the conn is a slot of its backend: it stays */
    ngx_http_redisgate_redis_retire_idle(conn);
}


/* a dynamic module's statics go with it: what they hold is freed first */

void
ngx_http_redisgate_redis_exit_process(void)
{
    ngx_http_redisgate_spare_drain(&ngx_http_redisgate_redis_ops);
}


static ngx_http_redisgate_op_t *
ngx_http_redisgate_redis_op_get(ngx_log_t *log)
{
    ngx_http_redisgate_op_t  *op;

    op = ngx_http_redisgate_spare_get(&ngx_http_redisgate_redis_ops);

    if (op == NULL) {
        return ngx_calloc(sizeof(ngx_http_redisgate_op_t), log);
    }

    ngx_memzero(op, sizeof(ngx_http_redisgate_op_t));

    return op;
}


static void
ngx_http_redisgate_redis_op_free(ngx_http_redisgate_op_t *op)
{
    if (ngx_http_redisgate_spare_put(&ngx_http_redisgate_redis_ops, op)
        != NGX_OK)
    {
        ngx_free(op);
    }
}


/*
 * A piece of a large reply, to the request if it is still there (else it
 * is dropped); each one moves the op's deadline: a reply that takes long
 * but moves is not late.
 */

static ngx_int_t
ngx_http_redisgate_redis_bulk(void *data, u_char *p, size_t n, off_t left)
{
    ngx_http_redisgate_op_t *op = data;

    op->deadline = ngx_current_msec + op->timeout;

    if (!ngx_http_redisgate_waiting(&op->wait)) {
        return NGX_OK;
    }

    return op->bulk(op->data, op, p, n, left);
}


void
ngx_http_redisgate_redis_resume(ngx_http_redisgate_op_t *op)
{
    ngx_http_redisgate_link_t  *link;

    link = &op->conn->link;

    if (link->bulk_left && link->bulk.data == op) {
        ngx_http_redisgate_link_resume(link);
    }
}


/*
 * The request reading a large reply has not taken its pieces in time, and
 * holds the connection: it is cut from the reply, whose rest is read and
 * dropped, rather than failing everyone behind it on the connection.
 */

static void
ngx_http_redisgate_redis_cut(ngx_http_redisgate_conn_t *conn)
{
    ngx_http_redisgate_op_t  *op;

    op = conn->link.bulk.data;

    ngx_log_error(NGX_LOG_ERR, conn->backend->log, 0,
                  "redisgate: a client read a large reply from %V too "
                  "slowly, its response is cut so that the connection's "
                  "other replies go on", &conn->backend->address.url);

    ngx_http_redisgate_link_resume(&conn->link);

    if (ngx_http_redisgate_wait_done(&op->wait) == NGX_OK) {
        /* may finalize the request */
        op->bulk(op->data, op, NULL, 0, -1);
    }
}


/*
 * One timer per connection watches its ops' deadlines, not one per op:
 * replies come in order, so the op sent first is the first that can be
 * late, and a timer set for it need not move while the replies come in
 * time.  An op only sets it when it is due sooner (a location with a
 * shorter redisgate_timeout); when it goes off, the ops awaited are
 * looked at, and it is set again for the next deadline.  So a GET costs
 * the worker's timer tree nothing, where a timer per op was an insertion
 * and a deletion.
 */

static void
ngx_http_redisgate_redis_watch(ngx_http_redisgate_conn_t *conn,
    ngx_http_redisgate_op_t *op)
{
    ngx_event_t  *ev;

    ev = &conn->timer;

    /* as a timer per op did, an op awaited keeps an exiting worker */
    ev->cancelable = 0;

    if (ev->timer_set) {
        if ((ngx_msec_int_t) (op->deadline - ev->timer.key) >= 0) {
            return;
        }

        ngx_del_timer(ev);
    }

    ngx_add_timer(ev, op->timeout);
}


static void
ngx_http_redisgate_redis_timeout(ngx_event_t *ev)
{
    ngx_http_redisgate_conn_t *conn = ev->data;

    ngx_msec_t                       next;
    ngx_uint_t                       i, watched;
    ngx_msec_int_t                   due;
    ngx_http_redisgate_op_t         *op, *late;
    ngx_http_redisgate_link_t       *link;
    ngx_http_redisgate_link_wait_t  *w;

    link = &conn->link;
    late = NULL;
    next = 0;
    watched = 0;

    if (link->bulk_left
        && link->bulk.handler == ngx_http_redisgate_redis_reply)
    {
        op = link->bulk.data;

        if ((ngx_msec_int_t) (op->deadline - ngx_current_msec) <= 0) {

            if (!link->paused) {
                /* Redis stopped in the middle of it: as any late reply */
                late = op;
                goto late;
            }

            /* the large reply's client took nothing for this long */
            ngx_http_redisgate_redis_cut(conn);
            op->deadline = ngx_current_msec + op->timeout;
        }

        next = op->deadline;
        watched = 1;
    }

    for (i = 0; i < link->nwaits; i++) {
        w = ngx_http_redisgate_link_awaited(link, i);

        if (w->handler != ngx_http_redisgate_redis_reply) {
            continue;
        }

        op = w->data;

        if ((ngx_msec_int_t) (op->deadline - ngx_current_msec) <= 0) {

            if (!link->bulk_left) {
                late = op;
                goto late;
            }

            /*
             * Its reply is behind a large one that is coming: that one's
             * deadline watches it (each piece moves it), this one waits
             * on
             */
            op->deadline = ngx_current_msec + op->timeout;
        }

        if (!watched || (ngx_msec_int_t) (op->deadline - next) < 0) {
            next = op->deadline;
            watched = 1;
        }
    }

    if (watched) {
        due = next - ngx_current_msec;
        ngx_add_timer(ev, (ngx_msec_t) ngx_max(due, 1));

    } else {
        ev->cancelable = 1;
    }

    return;

late:

    ngx_log_error(NGX_LOG_ERR, ev->log, 0,
                  "redisgate: Redis at %V did not answer in time, "
                  "dropping the connection", &conn->backend->address.url);

    late->error = "Redis command timed out";

    /* replies are matched by order: a late one would shift them all */
    ngx_http_redisgate_link_close(link, NGX_HTTP_REDISGATE_FAIL_CLOSED,
                                  "Redis connection dropped after a command "
                                  "timed out");
}
