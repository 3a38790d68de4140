
/*
 * Copyright (C) RedisGate authors
 */


/*
 * Streams: /subscribe/{channel}..., /psubscribe/{pattern}... and /monitor,
 * answered with Server-Sent Events (PROTOCOL.md, "Streaming").  The
 * stream stays open: its listeners hear the hub (pubsub.c), and each
 * event is one "data: ..." line and an empty one:
 *
 *     data: subscribe,<channel>,<count>      once Redis said so
 *     data: message,<channel>,<payload>
 *     data: pmessage,<pattern>,<channel>,<payload>
 *     data: "OK"                             MONITOR began
 *     data: <what MONITOR shows>             of the instance's database
 *     data: error,<text>                     then the stream ends
 *     :                                      a heartbeat (a comment)
 *
 * A payload (or a name) with a line break keeps it as the two characters
 * \n (\r for a carriage return): a line is an event.
 *
 * An HTTP/1.x stream outlives its request: once the answer's head is out,
 * the request is logged and freed (its pool, headers and buffers: about 9
 * kB), and the stream keeps only its connection, writing chunks to it
 * itself ("detached").  An idle stream so costs its connection and this
 * structure, about 1 kB.  An HTTP/2 stream shares its connection with
 * others: it stays a request, and its events go through nginx's filters.
 *
 * Either way, what the client has not taken yet is counted, and past
 * redisgate_sse_buffer the stream ends with an error line: a slow reader
 * never grows the worker, nor slows the others.  A client that leaves is
 * noticed by the read event, with nothing to write; its listeners leave
 * with it.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_redisgate.h"


/* the size of the buffers events are written in, most of them one */
#define NGX_HTTP_REDISGATE_STREAM_BUF  512


struct ngx_http_redisgate_stream_s {
    ngx_queue_t                     queue;      /* the worker's streams */
    ngx_queue_t                     drain;      /* ended, lines waiting */
    ngx_connection_t               *connection;
    ngx_http_request_t             *request;    /* NULL once detached */
    ngx_pool_cleanup_t             *cleanup;    /* in the request's pool */

    ngx_http_redisgate_listener_t  *listeners;
    ngx_uint_t                      nlisteners;
    ngx_uint_t                      nnames;     /* in the path */
    ngx_uint_t                      active;     /* confirmed subscriptions */
    ngx_uint_t                      kind;       /* STREAM_* */

    /* a request's: buffers through the filters */
    ngx_chain_t                    *free;
    ngx_chain_t                    *busy;

    /* detached: what the connection did not take yet */
    u_char                         *out;
    size_t                          out_pos;
    size_t                          out_last;
    size_t                          out_size;

    size_t                          limit;      /* redisgate_sse_buffer */
    ngx_msec_t                      send_timeout;

    ngx_event_t                     heartbeat;
    ngx_msec_t                      interval;
    ngx_event_t                     detach;     /* posted once it opened */

    ngx_http_redisgate_holder_t     holder;     /* of its key */

    /* usage: what it sent, counted as it goes */
    ngx_http_redisgate_usage_t     *usage;
    ngx_str_t                       organization;
    ngx_str_t                       instance;
    ngx_str_t                       key_id;     /* empty: nginx.conf's */
    off_t                           bytes_in;
    off_t                           bytes_out;  /* of its events */
    off_t                           recorded;
    time_t                          recorded_minute;
    time_t                          started;

    unsigned                        ended:1;
    unsigned                        counted:1;  /* its request, in usage */
    unsigned                        chunked:1;
    unsigned                        detachable:1;   /* HTTP/1.x, main */
    unsigned                        draining:1; /* in the draining queue */
};


static ngx_int_t ngx_http_redisgate_stream_open(ngx_http_request_t *r,
    ngx_http_redisgate_ctx_t *ctx);
static ngx_http_redisgate_stream_t *ngx_http_redisgate_stream_create(
    ngx_http_request_t *r, ngx_http_redisgate_ctx_t *ctx, ngx_uint_t argc);
static void ngx_http_redisgate_stream_retry(ngx_http_request_t *r);
static ngx_int_t ngx_http_redisgate_stream_headers(ngx_http_request_t *r);
static ngx_int_t ngx_http_redisgate_stream_listen(
    ngx_http_redisgate_stream_t *s, ngx_http_redisgate_ctx_t *ctx);
static ngx_int_t ngx_http_redisgate_stream_event(
    ngx_http_redisgate_stream_t *s, ngx_str_t *part, ngx_uint_t n);
static ngx_int_t ngx_http_redisgate_stream_write(
    ngx_http_redisgate_stream_t *s, u_char *data, size_t len);
static ngx_int_t ngx_http_redisgate_stream_filter(
    ngx_http_redisgate_stream_t *s, u_char *data, size_t len);
static ngx_int_t ngx_http_redisgate_stream_push(
    ngx_http_redisgate_stream_t *s, u_char *data, size_t len,
    ngx_uint_t frame);
static ngx_int_t ngx_http_redisgate_stream_keep(
    ngx_http_redisgate_stream_t *s, ngx_str_t *piece, ngx_uint_t n,
    size_t skip);
static ngx_int_t ngx_http_redisgate_stream_flush(
    ngx_http_redisgate_stream_t *s);
static size_t ngx_http_redisgate_stream_escaped_len(ngx_str_t *s);
static u_char *ngx_http_redisgate_stream_escape(u_char *p, ngx_str_t *s);
static void ngx_http_redisgate_stream_end(ngx_http_redisgate_stream_t *s,
    const char *error);
static void ngx_http_redisgate_stream_leave(ngx_http_redisgate_stream_t *s);
static void ngx_http_redisgate_stream_close(ngx_http_redisgate_stream_t *s);
static void ngx_http_redisgate_stream_account(ngx_http_redisgate_stream_t *s);
static void ngx_http_redisgate_stream_done(ngx_connection_t *c,
    ngx_http_request_t *r);
static void ngx_http_redisgate_stream_beat(ngx_event_t *ev);
static void ngx_http_redisgate_stream_revoked(void *data, const char *error);
static void ngx_http_redisgate_stream_reading(ngx_http_request_t *r);
static void ngx_http_redisgate_stream_writable(ngx_http_request_t *r);
static void ngx_http_redisgate_stream_cleanup(void *data);
static void ngx_http_redisgate_stream_detach(ngx_event_t *ev);
static void ngx_http_redisgate_stream_read_handler(ngx_event_t *rev);
static void ngx_http_redisgate_stream_write_handler(ngx_event_t *wev);
static ngx_uint_t ngx_http_redisgate_stream_client_left(ngx_connection_t *c);
static void ngx_http_redisgate_stream_watch(ngx_event_t *ev);


/* the worker's open streams, the ended ones whose last lines wait for the
 * socket (detached), and what ends them when it exits */
static ngx_queue_t  ngx_http_redisgate_streams;
static ngx_queue_t  ngx_http_redisgate_draining;
static ngx_event_t  ngx_http_redisgate_streams_watch;


/* a stream's kind (NGX_HTTP_REDISGATE_STREAM_*), or 0: not a stream */

ngx_uint_t
ngx_http_redisgate_stream_kind(ngx_http_redisgate_ctx_t *ctx)
{
    ngx_str_t  *name;

    if (ctx->route.kind != NGX_HTTP_REDISGATE_ROUTE_PATH) {
        return 0;
    }

    name = &ctx->route.cmd.argv[0];

    switch (name->len) {

    case 7:
        if (ngx_strncasecmp(name->data, (u_char *) "monitor", 7) == 0) {
            return NGX_HTTP_REDISGATE_STREAM_MONITOR;
        }

        break;

    case 9:
        if (ngx_strncasecmp(name->data, (u_char *) "subscribe", 9) == 0) {
            return NGX_HTTP_REDISGATE_STREAM_SUBSCRIBE;
        }

        break;

    case 10:
        if (ngx_strncasecmp(name->data, (u_char *) "psubscribe", 10) == 0) {
            return NGX_HTTP_REDISGATE_STREAM_PSUBSCRIBE;
        }

        break;
    }

    return 0;
}


/*
 * After the key, the scope and the rate (a stream costs one command): the
 * backend's address, then the stream.  NGX_DONE while it runs; else the
 * request's status.
 */

ngx_int_t
ngx_http_redisgate_stream_start(ngx_http_request_t *r,
    ngx_http_redisgate_ctx_t *ctx)
{
    ngx_int_t    rc;
    const char  *error;

    rc = ngx_http_redisgate_backend_ready(ctx->auth.backend, r,
                                          ngx_http_redisgate_stream_retry,
                                          &error);

    if (rc == NGX_AGAIN) {
        ngx_http_redisgate_wait_client(r);
        return NGX_DONE;
    }

    if (rc != NGX_OK) {
        return ngx_http_redisgate_send_error(r,
                                  NGX_HTTP_INTERNAL_SERVER_ERROR, "%s", error);
    }

    return ngx_http_redisgate_stream_open(r, ctx);
}


static void
ngx_http_redisgate_stream_retry(ngx_http_request_t *r)
{
    ngx_http_redisgate_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_redisgate_module);

    ngx_http_redisgate_resume(r, ngx_http_redisgate_stream_start(r, ctx));
}


static ngx_int_t
ngx_http_redisgate_stream_open(ngx_http_request_t *r,
    ngx_http_redisgate_ctx_t *ctx)
{
    ngx_int_t                        rc;
    ngx_str_t                       *argv;
    ngx_uint_t                       argc, kind, ended;
    ngx_http_redisgate_stream_t     *s;

    kind = ngx_http_redisgate_stream_kind(ctx);
    argv = ctx->route.cmd.argv;
    argc = ctx->route.cmd.argc;

    /* a POSTed body ("[]", as the client sends) is no channel */
    if (ctx->route.has_body_slot && ctx->route.body_slot == argc - 1) {
        argc--;
    }

    if (kind == NGX_HTTP_REDISGATE_STREAM_MONITOR) {
        if (argc != 1) {
            return ngx_http_redisgate_send_error(r, NGX_HTTP_BAD_REQUEST,
                                  "ERR wrong number of arguments for "
                                  "'monitor' command");
        }

        if (ctx->auth.backend->cluster) {
            /* a node's MONITOR shows that node's share only */
            return ngx_http_redisgate_send_error(r, NGX_HTTP_BAD_REQUEST,
                                  "ERR MONITOR is not available on a Redis "
                                  "Cluster instance");
        }

    } else if (argc < 2) {
        return ngx_http_redisgate_send_error(r, NGX_HTTP_BAD_REQUEST,
                                  "ERR %V needs at least one %s: /%V/<name>",
                                  &argv[0],
                                  kind == NGX_HTTP_REDISGATE_STREAM_PSUBSCRIBE
                                  ? "pattern" : "channel", &argv[0]);
    }

    s = ngx_http_redisgate_stream_create(r, ctx, argc);
    if (s == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->stream = s;

    rc = ngx_http_redisgate_stream_headers(r);
    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    /* the request is counted in usage as it opens, its bytes as they go */
    ngx_http_redisgate_stream_account(s);

    /* the stream may end in there (and finalize the request): this
     * reference keeps the request, and the stream, until it is known */
    r->main->count++;

    rc = ngx_http_redisgate_stream_listen(s, ctx);
    ended = (rc != NGX_OK || s->ended);

    ngx_http_finalize_request(r, NGX_DONE);

    if (ended) {
        return NGX_DONE;
    }

    /* a key revoked, an instance suspended: the stream ends (recheck.c) */
    s->holder.scope = (kind == NGX_HTTP_REDISGATE_STREAM_MONITOR)
                      ? NGX_HTTP_REDISGATE_SCOPE_ADMIN
                      : NGX_HTTP_REDISGATE_SCOPE_READ;
    s->holder.revoked = ngx_http_redisgate_stream_revoked;
    s->holder.data = s;

    if (ngx_http_redisgate_recheck_hold(&s->holder, &ctx->auth,
                                        ctx->route.instance,
                                        r->connection->log)
        != NGX_OK)
    {
        ngx_http_redisgate_stream_end(s, "out of memory");
        return NGX_DONE;
    }

    if (s->interval) {
        /* streams opened together beat apart */
        ngx_add_timer(&s->heartbeat,
                      s->interval / 2 + ngx_random() % (s->interval / 2 + 1));
    }

    if (ngx_http_redisgate_streams.next == NULL) {
        ngx_queue_init(&ngx_http_redisgate_streams);
        ngx_queue_init(&ngx_http_redisgate_draining);
        ngx_http_redisgate_streams_watch.handler =
                                            ngx_http_redisgate_stream_watch;
        ngx_http_redisgate_streams_watch.log = ngx_cycle->log;

        /* nginx's timer debug lines read ev->data as a connection: the
         * event itself is large enough to be read so */
        ngx_http_redisgate_streams_watch.data =
                                            &ngx_http_redisgate_streams_watch;
    }

    ngx_queue_insert_tail(&ngx_http_redisgate_streams, &s->queue);
    ngx_http_redisgate_stats_gauge(NGX_HTTP_REDISGATE_STAT_STREAMS, 1);

    if (!ngx_http_redisgate_streams_watch.timer_set) {
        /* not cancelable: an exiting worker waits for it, a second */
        ngx_add_timer(&ngx_http_redisgate_streams_watch, 1000);
    }

    r->read_event_handler = ngx_http_redisgate_stream_reading;
    r->write_event_handler = ngx_http_redisgate_stream_writable;

    if (r == r->main && r->stream == NULL) {
        /* once the handler that runs this is done with the request */
        s->detachable = 1;
        ngx_post_event(&s->detach, &ngx_posted_events);
    }

    return NGX_DONE;
}


/*
 * The stream, its listeners and what it keeps of the request (names, who
 * called) in one allocation of its own: a detached stream outlives the
 * request's pool.
 */

static ngx_http_redisgate_stream_t *
ngx_http_redisgate_stream_create(ngx_http_request_t *r,
    ngx_http_redisgate_ctx_t *ctx, ngx_uint_t argc)
{
    u_char                          *p;
    size_t                           size;
    ngx_uint_t                       i, n;
    ngx_str_t                       *argv;
    ngx_pool_cleanup_t              *cln;
    ngx_http_core_loc_conf_t        *clcf;
    ngx_http_redisgate_stream_t     *s;
    ngx_http_redisgate_loc_conf_t   *rlcf;
    ngx_http_redisgate_main_conf_t  *rmcf;

    rlcf = ngx_http_get_module_loc_conf(r, ngx_http_redisgate_module);
    rmcf = ngx_http_get_module_main_conf(r, ngx_http_redisgate_module);
    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    argv = ctx->route.cmd.argv;

    /* MONITOR: one listener, not of a channel */
    n = ngx_max(argc - 1, 1);

    size = sizeof(ngx_http_redisgate_stream_t)
           + n * sizeof(ngx_http_redisgate_listener_t)
           + ctx->auth.organization.len + NGX_HTTP_REDISGATE_UUID_LEN;

    if (ctx->auth.source != NGX_HTTP_REDISGATE_SOURCE_STATIC) {
        size += ctx->auth.key_id.len;
    }

    for (i = 1; i < argc; i++) {
        size += argv[i].len;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NULL;
    }

    s = ngx_alloc(size, r->connection->log);
    if (s == NULL) {
        return NULL;
    }

    ngx_memzero(s, sizeof(ngx_http_redisgate_stream_t)
                   + n * sizeof(ngx_http_redisgate_listener_t));

    s->listeners = (ngx_http_redisgate_listener_t *) &s[1];
    p = (u_char *) &s->listeners[n];

    /* the names, for the listeners (stream_listen) */
    s->nnames = argc - 1;

    for (i = 1; i < argc; i++) {
        s->listeners[i - 1].name.data = p;
        s->listeners[i - 1].name.len = argv[i].len;
        p = ngx_cpymem(p, argv[i].data, argv[i].len);
    }

    s->organization.data = p;
    s->organization.len = ctx->auth.organization.len;
    p = ngx_cpymem(p, ctx->auth.organization.data,
                   ctx->auth.organization.len);

    s->instance.data = p;
    s->instance.len = NGX_HTTP_REDISGATE_UUID_LEN;
    p = ngx_cpymem(p, ctx->route.instance, NGX_HTTP_REDISGATE_UUID_LEN);

    if (ctx->auth.source != NGX_HTTP_REDISGATE_SOURCE_STATIC) {
        s->key_id.data = p;
        s->key_id.len = ctx->auth.key_id.len;
        ngx_memcpy(p, ctx->auth.key_id.data, ctx->auth.key_id.len);
    }

    s->connection = r->connection;
    s->request = r;
    s->kind = ngx_http_redisgate_stream_kind(ctx);
    s->limit = rlcf->sse_buffer;
    s->interval = rlcf->sse_heartbeat;
    s->send_timeout = clcf->send_timeout;
    s->usage = rmcf->usage;
    s->bytes_in = r->request_length;
    s->started = ngx_time();

    s->heartbeat.handler = ngx_http_redisgate_stream_beat;
    s->heartbeat.data = s;
    s->heartbeat.log = r->connection->log;

    s->detach.handler = ngx_http_redisgate_stream_detach;
    s->detach.data = s;
    s->detach.log = r->connection->log;

    cln->handler = ngx_http_redisgate_stream_cleanup;
    cln->data = s;
    s->cleanup = cln;

    return s;
}


/* 200 and the event-stream headers, at once: the client waits for them */

static ngx_int_t
ngx_http_redisgate_stream_headers(ngx_http_request_t *r)
{
    ngx_int_t         rc;
    ngx_table_elt_t  *h;

    r->headers_out.status = NGX_HTTP_OK;
    ngx_str_set(&r->headers_out.content_type, "text/event-stream");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_length_n = -1;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Cache-Control");
    ngx_str_set(&h->value, "no-cache");

    /* a proxy in front (nginx's) passes each event on at once */
    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "X-Accel-Buffering");
    ngx_str_set(&h->value, "no");

    /* each event goes out as it comes, Nagle or not */
    if (r->stream == NULL) {
        (void) ngx_tcp_nodelay(r->connection);
    }

#if (NGX_HTTP_GZIP)
    /* events are not compressed (gzip would hold them back), and a
     * detached stream writes past nginx's filters */
    r->gzip_tested = 1;
    r->gzip_ok = 0;
#endif

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    /* out now: the client waits for them, and a detached stream writes
     * after them */
    return ngx_http_send_special(r, NGX_HTTP_FLUSH);
}


/* the listeners: of MONITOR, or of each channel (pattern) named once */

static ngx_int_t
ngx_http_redisgate_stream_listen(ngx_http_redisgate_stream_t *s,
    ngx_http_redisgate_ctx_t *ctx)
{
    ngx_int_t                        rc;
    ngx_str_t                        name;
    ngx_uint_t                       i, k;
    const char                      *error;
    ngx_http_redisgate_loc_conf_t   *rlcf;
    ngx_http_redisgate_listener_t   *l;

    rlcf = ngx_http_get_module_loc_conf(s->request, ngx_http_redisgate_module);

    if (s->kind == NGX_HTTP_REDISGATE_STREAM_MONITOR) {
        l = &s->listeners[s->nlisteners++];
        l->stream = s;
        ngx_str_set(&l->name, "monitor");

        rc = ngx_http_redisgate_pubsub_monitor(ctx->auth.backend, l,
                                               s->connection->log, &error);
        if (rc != NGX_OK) {
            ngx_http_redisgate_stream_end(s, error);
        }

        return rc;
    }

    /* the names were put in place by stream_create; kept once each, in
     * order, in the first listeners */

    for (i = 0; i < s->nnames; i++) {
        name = s->listeners[i].name;

        /* a name twice is one subscription (and one listener of it) */
        for (k = 0; k < s->nlisteners; k++) {
            if (s->listeners[k].name.len == name.len
                && ngx_memcmp(s->listeners[k].name.data, name.data,
                              name.len) == 0)
            {
                break;
            }
        }

        if (k < s->nlisteners) {
            continue;
        }

        l = &s->listeners[s->nlisteners++];
        l->name = name;
        l->stream = s;

        if (ngx_http_redisgate_pubsub_listen(ctx->auth.backend, l, &l->name,
                              s->kind == NGX_HTTP_REDISGATE_STREAM_PSUBSCRIBE,
                              rlcf->timeout, s->connection->log, &error)
            != NGX_OK)
        {
            ngx_http_redisgate_stream_end(s, error);
            return NGX_ERROR;
        }

        if (s->ended) {
            return NGX_OK;
        }
    }

    return NGX_OK;
}


/* the hub: Redis confirmed this listener's channel, or MONITOR began */

void
ngx_http_redisgate_stream_subscribed(ngx_http_redisgate_listener_t *l)
{
    u_char                       *p, count[NGX_INT_T_LEN];
    ngx_str_t                     part[3];
    ngx_http_redisgate_stream_t  *s;

    s = l->stream;

    if (s->ended || l->active) {
        return;
    }

    l->active = 1;
    s->active++;

    if (s->kind == NGX_HTTP_REDISGATE_STREAM_MONITOR) {
        /* what Redis said, as the JSON string Upstash sends */
        ngx_str_set(&part[0], "\"OK\"");
        (void) ngx_http_redisgate_stream_event(s, part, 1);
        return;
    }

    if (s->kind == NGX_HTTP_REDISGATE_STREAM_PSUBSCRIBE) {
        ngx_str_set(&part[0], "psubscribe");

    } else {
        ngx_str_set(&part[0], "subscribe");
    }

    part[1] = l->name;

    p = ngx_sprintf(count, "%ui", s->active);
    part[2].data = count;
    part[2].len = p - count;

    (void) ngx_http_redisgate_stream_event(s, part, 3);
}


/*
 * An event's line, "data: <part>[,<part>...]\n\n", each part escaped, in
 * memory of its own (ngx_free() it): the hub makes a message's once for
 * all its listeners.
 */

ngx_int_t
ngx_http_redisgate_stream_line(ngx_str_t *line, ngx_str_t *part,
    ngx_uint_t n, ngx_log_t *log)
{
    u_char      *p;
    size_t       len;
    ngx_uint_t   i;

    len = sizeof("data: ") - 1 + sizeof("\n\n") - 1;

    for (i = 0; i < n; i++) {
        len += (i > 0) + ngx_http_redisgate_stream_escaped_len(&part[i]);
    }

    line->data = ngx_alloc(len, log);
    if (line->data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(line->data, "data: ", sizeof("data: ") - 1);

    for (i = 0; i < n; i++) {
        if (i > 0) {
            *p++ = ',';
        }

        p = ngx_http_redisgate_stream_escape(p, &part[i]);
    }

    *p++ = '\n';
    *p++ = '\n';

    line->len = p - line->data;

    return NGX_OK;
}


/* the hub: a message (or a line of MONITOR), its line made already */

void
ngx_http_redisgate_stream_message(ngx_http_redisgate_listener_t *l,
    ngx_str_t *line)
{
    ngx_http_redisgate_stream_t  *s;

    s = l->stream;

    if (s->ended || !l->active) {
        return;
    }

    if (ngx_http_redisgate_stream_write(s, line->data, line->len) == NGX_OK) {
        ngx_http_redisgate_stats_count(
                              NGX_HTTP_REDISGATE_STAT_STREAM_MESSAGES, 1);
    }
}


/* the hub lost Redis: this stream ends, saying so */

void
ngx_http_redisgate_stream_lost(ngx_http_redisgate_stream_t *s,
    const char *error)
{
    if (s->ended) {
        return;
    }

    ngx_http_redisgate_stream_end(s, error ? error
                                           : "Redis unavailable: connection "
                                             "lost");
}


/* an event of this stream's own */

static ngx_int_t
ngx_http_redisgate_stream_event(ngx_http_redisgate_stream_t *s,
    ngx_str_t *part, ngx_uint_t n)
{
    ngx_int_t  rc;
    ngx_str_t  line;

    if (ngx_http_redisgate_stream_line(&line, part, n, s->connection->log)
        != NGX_OK)
    {
        ngx_http_redisgate_stream_end(s, "out of memory");
        return NGX_ERROR;
    }

    rc = ngx_http_redisgate_stream_write(s, line.data, line.len);

    ngx_free(line.data);

    return rc;
}


static size_t
ngx_http_redisgate_stream_escaped_len(ngx_str_t *s)
{
    size_t  i, len;

    len = s->len;

    for (i = 0; i < s->len; i++) {
        if (s->data[i] == '\n' || s->data[i] == '\r') {
            len++;
        }
    }

    return len;
}


static u_char *
ngx_http_redisgate_stream_escape(u_char *p, ngx_str_t *s)
{
    size_t  i;

    for (i = 0; i < s->len; i++) {
        switch (s->data[i]) {

        case '\n':
            *p++ = '\\';
            *p++ = 'n';
            break;

        case '\r':
            *p++ = '\\';
            *p++ = 'r';
            break;

        default:
            *p++ = s->data[i];
        }
    }

    return p;
}


/*
 * An event to the client, flushed.  What it has not taken yet past the
 * limit: the stream ends (NGX_ERROR; so it does when the connection
 * fails).
 */

static ngx_int_t
ngx_http_redisgate_stream_write(ngx_http_redisgate_stream_t *s, u_char *data,
    size_t len)
{
    off_t              unsent;
    ngx_int_t          rc;
    ngx_chain_t       *cl;
    ngx_connection_t  *c;

    c = s->connection;

    if (s->request) {
        /* what the filters still hold of the stream's buffers */
        unsent = 0;

        for (cl = s->busy; cl; cl = cl->next) {
            unsent += ngx_buf_size(cl->buf);
        }

    } else {
        unsent = s->out_last - s->out_pos;
    }

    if (unsent > (off_t) s->limit) {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "redisgate: a stream's client reads too slowly, %O "
                      "bytes not read, ending it", unsent);

        ngx_http_redisgate_stats_count(NGX_HTTP_REDISGATE_STAT_STREAM_DROPS,
                                       1);
        ngx_http_redisgate_stream_end(s, "the client reads too slowly: "
                                      "the stream's buffer is full");
        return NGX_ERROR;
    }

    s->bytes_out += len;

    if (s->request) {
        rc = ngx_http_redisgate_stream_filter(s, data, len);

    } else {
        rc = ngx_http_redisgate_stream_push(s, data, len, 1);
    }

    if (rc == NGX_ERROR) {
        /* the connection failed: nothing more can reach the client */
        ngx_http_redisgate_stream_end(s, NULL);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* a request's: through nginx's filters, in buffers from the free list */

static ngx_int_t
ngx_http_redisgate_stream_filter(ngx_http_redisgate_stream_t *s,
    u_char *data, size_t len)
{
    size_t               size;
    ngx_int_t            rc;
    ngx_buf_t           *b;
    ngx_chain_t         *cl;
    ngx_http_request_t  *r;

    r = s->request;

    cl = ngx_chain_get_free_buf(r->pool, &s->free);
    if (cl == NULL) {
        return NGX_ERROR;
    }

    b = cl->buf;
    size = ngx_max(len, NGX_HTTP_REDISGATE_STREAM_BUF);

    if (b->start == NULL || (size_t) (b->end - b->start) < len) {
        if (b->start) {
            /* a large one goes back to the system */
            ngx_pfree(r->pool, b->start);
        }

        b->start = ngx_palloc(r->pool, size);
        if (b->start == NULL) {
            return NGX_ERROR;
        }

        b->end = b->start + size;
    }

    b->pos = b->start;
    b->last = ngx_cpymem(b->start, data, len);
    b->temporary = 1;
    b->flush = 1;
    b->tag = (ngx_buf_tag_t) &ngx_http_redisgate_module;

    rc = ngx_http_output_filter(r, cl);

    ngx_chain_update_chains(r->pool, &s->free, &s->busy, &cl,
                            (ngx_buf_tag_t) &ngx_http_redisgate_module);

    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    if (s->detachable && !s->detach.posted && !r->connection->buffered) {
        /* it could not detach while the head waited: now it may */
        ngx_post_event(&s->detach, &ngx_posted_events);
    }

    return NGX_OK;
}


/*
 * Detached: straight to the connection, a chunk of its own when the
 * answer is chunked (frame), in one writev when nothing waits; what the
 * connection does not take waits in the stream's buffer, for the write
 * event.  NGX_ERROR: the connection failed.
 */

static ngx_int_t
ngx_http_redisgate_stream_push(ngx_http_redisgate_stream_t *s, u_char *data,
    size_t len, ngx_uint_t frame)
{
    u_char             size[NGX_OFF_T_LEN + 2];
    off_t              sent;
    size_t             total;
    ngx_buf_t          b[3];
    ngx_str_t          piece[3];
    ngx_uint_t         i, n;
    ngx_chain_t        cl[3], *rest;
    ngx_connection_t  *c;

    c = s->connection;
    n = 0;

    if (frame && s->chunked) {
        piece[n].data = size;
        piece[n++].len = ngx_sprintf(size, "%xz" CRLF, len) - size;
    }

    piece[n].data = data;
    piece[n++].len = len;

    if (frame && s->chunked) {
        piece[n].data = (u_char *) CRLF;
        piece[n++].len = sizeof(CRLF) - 1;
    }

    if (s->out_pos < s->out_last || c->ssl) {
        /* others wait: after them; or TLS, which writes from one buffer
         * (and retries with the same bytes) */
        if (ngx_http_redisgate_stream_keep(s, piece, n, 0) != NGX_OK) {
            return NGX_ERROR;
        }

        return ngx_http_redisgate_stream_flush(s) == NGX_ERROR ? NGX_ERROR
                                                               : NGX_OK;
    }

    total = 0;

    for (i = 0; i < n; i++) {
        ngx_memzero(&b[i], sizeof(ngx_buf_t));
        b[i].pos = piece[i].data;
        b[i].last = piece[i].data + piece[i].len;
        b[i].memory = 1;
        b[i].flush = 1;

        cl[i].buf = &b[i];
        cl[i].next = (i + 1 < n) ? &cl[i + 1] : NULL;

        total += piece[i].len;
    }

    sent = c->sent;

    rest = c->send_chain(c, cl, 0);

    if (rest == NGX_CHAIN_ERROR) {
        return NGX_ERROR;
    }

    sent = c->sent - sent;

    if ((size_t) sent == total) {
        return NGX_OK;
    }

    /* the socket is full: the rest waits for the write event */

    if (ngx_http_redisgate_stream_keep(s, piece, n, (size_t) sent) != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_http_redisgate_stream_flush(s) == NGX_ERROR ? NGX_ERROR
                                                           : NGX_OK;
}


/* the pieces, less their first skip bytes, to the buffer's end */

static ngx_int_t
ngx_http_redisgate_stream_keep(ngx_http_redisgate_stream_t *s,
    ngx_str_t *piece, ngx_uint_t n, size_t skip)
{
    u_char      *out;
    size_t       len, size, left;
    ngx_uint_t   i;

    len = 0;

    for (i = 0; i < n; i++) {
        len += piece[i].len;
    }

    len -= skip;
    left = s->out_last - s->out_pos;

    if (s->out_size - s->out_last < len) {
        /* what waits, moved to the start of a buffer large enough */
        size = ngx_max(left + len, NGX_HTTP_REDISGATE_STREAM_BUF);

        if (size > s->out_size) {
            size = ngx_max(size, s->out_size * 2);

            out = ngx_alloc(size, s->connection->log);
            if (out == NULL) {
                return NGX_ERROR;
            }

        } else {
            out = s->out;
            size = s->out_size;
        }

        if (left) {
            ngx_memmove(out, s->out + s->out_pos, left);
        }

        if (out != s->out) {
            if (s->out) {
                ngx_free(s->out);
            }

            s->out = out;
            s->out_size = size;
        }

        s->out_pos = 0;
        s->out_last = left;
    }

    for (i = 0; i < n; i++) {
        if (skip >= piece[i].len) {
            skip -= piece[i].len;
            continue;
        }

        s->out_last = ngx_cpymem(s->out + s->out_last, piece[i].data + skip,
                                 piece[i].len - skip)
                      - s->out;
        skip = 0;
    }

    return NGX_OK;
}


/*
 * What waits, to the connection.  NGX_OK: all of it (the buffer goes: an
 * idle stream keeps none); NGX_AGAIN: the write event will go on;
 * NGX_ERROR: the connection failed.
 */

static ngx_int_t
ngx_http_redisgate_stream_flush(ngx_http_redisgate_stream_t *s)
{
    ssize_t            n;
    ngx_uint_t         moved;
    ngx_event_t       *wev;
    ngx_connection_t  *c;

    c = s->connection;
    wev = c->write;
    moved = 0;

    while (s->out_pos < s->out_last) {
        n = c->send(c, s->out + s->out_pos, s->out_last - s->out_pos);

        if (n == NGX_ERROR) {
            return NGX_ERROR;
        }

        if (n == NGX_AGAIN) {
            /* send_timeout: between two writes that took something */
            if (moved || !wev->timer_set) {
                ngx_add_timer(wev, s->send_timeout);
            }

            if (ngx_handle_write_event(wev, 0) != NGX_OK) {
                return NGX_ERROR;
            }

            return NGX_AGAIN;
        }

        s->out_pos += n;
        moved = 1;
    }

    if (s->out) {
        ngx_free(s->out);
        s->out = NULL;
        s->out_pos = 0;
        s->out_last = 0;
        s->out_size = 0;
    }

    if (wev->timer_set) {
        ngx_del_timer(wev);
    }

    /* level-triggered events: no write event while nothing waits */
    return ngx_handle_write_event(wev, 0) == NGX_OK ? NGX_OK : NGX_ERROR;
}


/*
 * The end: its listeners leave now, an error line when there is a
 * reason, the last chunk; then the request finalized, or the connection
 * closed once what waits is out.
 */

static void
ngx_http_redisgate_stream_end(ngx_http_redisgate_stream_t *s,
    const char *error)
{
    ngx_int_t            rc;
    ngx_str_t            part[2], line;
    ngx_http_request_t  *r;

    if (s->ended) {
        return;
    }

    ngx_http_redisgate_stream_leave(s);
    s->ended = 1;

    r = s->request;
    rc = NGX_OK;

    if (error) {
        /* past the limit, and not through stream_write(), which would
         * end the stream again when the connection fails */
        ngx_str_set(&part[0], "error");
        part[1].data = (u_char *) error;
        part[1].len = ngx_strlen(error);

        if (ngx_http_redisgate_stream_line(&line, part, 2,
                                           s->connection->log)
            == NGX_OK)
        {
            rc = r ? ngx_http_redisgate_stream_filter(s, line.data, line.len)
                   : ngx_http_redisgate_stream_push(s, line.data, line.len,
                                                    1);
            ngx_free(line.data);
        }
    }

    if (r) {
        if (rc != NGX_ERROR) {
            rc = ngx_http_send_special(r, NGX_HTTP_LAST);
        }

        /* the pool's cleanup frees the stream */
        ngx_http_finalize_request(r, rc == NGX_ERROR ? NGX_ERROR : NGX_OK);
        return;
    }

    if (rc == NGX_ERROR
        || (s->chunked
            && ngx_http_redisgate_stream_push(s, (u_char *) "0" CRLF CRLF,
                                              5, 0)
               == NGX_ERROR))
    {
        ngx_http_redisgate_stream_close(s);
        return;
    }

    if (s->out_pos == s->out_last) {
        ngx_http_redisgate_stream_close(s);
        return;
    }

    /* the write handler closes it once all is out, or it timed out; an
     * exiting worker, at once */
    ngx_queue_insert_tail(&ngx_http_redisgate_draining, &s->drain);
    s->draining = 1;
}


static void
ngx_http_redisgate_stream_leave(ngx_http_redisgate_stream_t *s)
{
    ngx_uint_t  i;

    if (s->heartbeat.timer_set) {
        ngx_del_timer(&s->heartbeat);
    }

    if (s->queue.next) {
        ngx_queue_remove(&s->queue);
        s->queue.next = NULL;
        ngx_http_redisgate_stats_gauge(NGX_HTTP_REDISGATE_STAT_STREAMS, -1);
    }

    for (i = 0; i < s->nlisteners; i++) {
        ngx_http_redisgate_pubsub_leave(&s->listeners[i]);
    }

    ngx_http_redisgate_recheck_release(&s->holder);
}


/* detached, over: the connection closed and the stream freed */

static void
ngx_http_redisgate_stream_close(ngx_http_redisgate_stream_t *s)
{
    ngx_connection_t  *c;

    c = s->connection;

    ngx_http_redisgate_stream_leave(s);
    s->ended = 1;

    if (s->draining) {
        ngx_queue_remove(&s->drain);
    }

    /* its access-log line was written when it detached */
    ngx_log_error(NGX_LOG_INFO, c->log, 0,
                  "redisgate: stream closed after %T s, %O bytes of events",
                  ngx_time() - s->started, s->bytes_out);

    ngx_http_redisgate_stream_account(s);

    if (s->out) {
        ngx_free(s->out);
    }

    ngx_free(s);

    ngx_http_close_connection(c);
}


/*
 * Usage: the request when it opens (one command), then the bytes of its
 * events, each minute they were sent in (the watch asks) and at the end
 */

static void
ngx_http_redisgate_stream_account(ngx_http_redisgate_stream_t *s)
{
    if (s->usage == NULL
        || (s->counted && s->bytes_out == s->recorded))
    {
        return;
    }

    ngx_http_redisgate_usage_record(s->usage, &s->organization, &s->instance,
                                    s->key_id.len ? &s->key_id : NULL,
                                    !s->counted, !s->counted,
                                    s->counted ? 0 : s->bytes_in,
                                    s->bytes_out - s->recorded);

    s->counted = 1;
    s->recorded = s->bytes_out;
    s->recorded_minute = ngx_time() / 60;
}


/*
 * After an event that may have ended the stream (and freed it): r, the
 * request it was then, if any; the posted requests run only for one
 */

static void
ngx_http_redisgate_stream_done(ngx_connection_t *c, ngx_http_request_t *r)
{
    if (r) {
        /* c->data is the request's, unless the stream was detached */
        ngx_http_run_posted_requests(c);
    }
}


/* a comment line keeps proxies and the client's idle timers quiet */

static void
ngx_http_redisgate_stream_beat(ngx_event_t *ev)
{
    ngx_http_redisgate_stream_t *s = ev->data;

    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    c = s->connection;
    r = s->request;

    if (ngx_http_redisgate_stream_write(s, (u_char *) ":\n\n", 3)
        == NGX_OK)
    {
        ngx_add_timer(&s->heartbeat, s->interval);
    }

    ngx_http_redisgate_stream_done(c, r);
}


/* its key may no longer: the key store said so (recheck.c) */

static void
ngx_http_redisgate_stream_revoked(void *data, const char *error)
{
    ngx_http_redisgate_stream_t *s = data;

    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    c = s->connection;
    r = s->request;

    ngx_log_error(NGX_LOG_INFO, c->log, 0,
                  "redisgate: a stream's key no longer lets it run: %s",
                  error);

    ngx_http_redisgate_stream_end(s, error);
    ngx_http_redisgate_stream_done(c, r);
}


/* a request's: the client closed, nginx's test finalizes the request, and
 * the pool's cleanup makes the listeners leave */

static void
ngx_http_redisgate_stream_reading(ngx_http_request_t *r)
{
    ngx_http_test_reading(r);
}


static void
ngx_http_redisgate_stream_writable(ngx_http_request_t *r)
{
    ngx_int_t                     rc;
    ngx_event_t                  *wev;
    ngx_chain_t                  *out;
    ngx_http_redisgate_ctx_t     *ctx;
    ngx_http_redisgate_stream_t  *s;
    ngx_http_core_loc_conf_t     *clcf;

    ctx = ngx_http_get_module_ctx(r, ngx_http_redisgate_module);
    s = ctx->stream;
    wev = r->connection->write;

    if (wev->timedout) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, NGX_ETIMEDOUT,
                      "redisgate: a stream's client timed out");
        r->connection->timedout = 1;
        ngx_http_redisgate_stream_leave(s);
        s->ended = 1;
        ngx_http_finalize_request(r, NGX_HTTP_REQUEST_TIME_OUT);
        return;
    }

    rc = ngx_http_output_filter(r, NULL);

    out = NULL;
    ngx_chain_update_chains(r->pool, &s->free, &s->busy, &out,
                            (ngx_buf_tag_t) &ngx_http_redisgate_module);

    if (rc == NGX_ERROR) {
        ngx_http_redisgate_stream_leave(s);
        s->ended = 1;
        ngx_http_finalize_request(r, NGX_ERROR);
        return;
    }

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    if (r->connection->buffered) {
        if (!wev->delayed) {
            ngx_add_timer(wev, clcf->send_timeout);
        }

    } else if (wev->timer_set) {
        ngx_del_timer(wev);
    }

    if (ngx_handle_write_event(wev, clcf->send_lowat) != NGX_OK) {
        ngx_http_redisgate_stream_leave(s);
        s->ended = 1;
        ngx_http_finalize_request(r, NGX_ERROR);
    }
}


/* a request's stream, over with its request: the stream goes with it */

static void
ngx_http_redisgate_stream_cleanup(void *data)
{
    ngx_http_redisgate_stream_t *s = data;

    ngx_http_redisgate_stream_leave(s);
    s->ended = 1;

    if (s->detach.posted) {
        ngx_delete_posted_event(&s->detach);
    }

    ngx_http_redisgate_stream_account(s);

    ngx_free(s);
}


/*
 * Posted once an HTTP/1.x stream opened: the request is logged and freed,
 * the stream keeps its connection (about 9 kB less per stream).  Not
 * while anything else holds the request, or its head is not all out: then
 * it stays a request.
 */

static void
ngx_http_redisgate_stream_detach(ngx_event_t *ev)
{
    ngx_http_redisgate_stream_t *s = ev->data;

    ngx_chain_t             *cl;
    ngx_connection_t        *c;
    ngx_http_request_t      *r;
    ngx_http_connection_t   *hc;

    r = s->request;
    c = s->connection;

    if (s->ended || r == NULL) {
        return;
    }

    if (r->out || c->buffered) {
        /* the head (or an event) waits for the socket: the next write
         * that empties it posts this again */
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, c->log, 0,
                       "redisgate: the stream detaches once sent");
        return;
    }

    if (r->main->count != 1 || r->blocked || r->postponed || c->error
        || r->headers_out.content_encoding)
    {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, c->log, 0,
                       "redisgate: the stream stays a request");
        s->detachable = 0;
        return;
    }

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "redisgate: the stream keeps its connection only");

    hc = r->http_connection;
    s->chunked = r->chunked;
    s->detachable = 0;

    /* the request's buffers go with its pool; the stream no longer
     * needs them, nor its cleanup */
    s->free = NULL;
    s->busy = NULL;
    s->cleanup->handler = NULL;
    s->request = NULL;

    /* logged now (status 200, the head and the first lines), and freed */
    r->main->count = 0;
    ngx_http_free_request(r, 0);

    c->destroyed = 0;
    c->data = s;
    c->log->action = "streaming";

    c->read->handler = ngx_http_redisgate_stream_read_handler;
    c->write->handler = ngx_http_redisgate_stream_write_handler;

    /* nothing of the request's own timing stays: a send_timeout it armed
     * while the head waited, limit_rate's delay */
    if (c->read->timer_set) {
        ngx_del_timer(c->read);
    }

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

    c->write->delayed = 0;

#if (NGX_HTTP_SSL)
    if (c->ssl) {
        /* what waits moves to the start of a larger buffer as it grows:
         * OpenSSL retries a write from there */
        SSL_set_mode(c->ssl->connection, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    }
#endif

    /* nothing more is read: the header buffers go, as in a keepalive */

    if (c->buffer && c->buffer->start
        && ngx_pfree(c->pool, c->buffer->start) == NGX_OK)
    {
        c->buffer->start = NULL;
        c->buffer->pos = NULL;
        c->buffer->last = NULL;
        c->buffer->end = NULL;
    }

    for (cl = hc->free; cl; cl = cl->next) {
        ngx_pfree(c->pool, cl->buf->start);
    }

    for (cl = hc->busy; cl; cl = cl->next) {
        ngx_pfree(c->pool, cl->buf->start);
    }

    hc->free = NULL;
    hc->busy = NULL;
    hc->nbusy = 0;
}


/* detached: the client may have left */

static void
ngx_http_redisgate_stream_read_handler(ngx_event_t *rev)
{
    ngx_connection_t             *c;
    ngx_http_redisgate_stream_t  *s;

    c = rev->data;
    s = c->data;

    if (c->close) {
        /* the worker is shutting down (worker_shutdown_timeout) */
        ngx_http_redisgate_stream_close(s);
        return;
    }

    if (!ngx_http_redisgate_stream_client_left(c)) {
        return;
    }

    ngx_log_error(NGX_LOG_INFO, c->log, rev->error ? ngx_socket_errno : 0,
                  "redisgate: the client closed its stream");

#if (NGX_HTTP_SSL)
    if (c->ssl) {
        c->ssl->no_send_shutdown = 1;
    }
#endif

    ngx_http_redisgate_stream_close(s);
}


/* detached: what waited may go out now; or it timed out */

static void
ngx_http_redisgate_stream_write_handler(ngx_event_t *wev)
{
    ngx_int_t                     rc;
    ngx_connection_t             *c;
    ngx_http_redisgate_stream_t  *s;

    c = wev->data;
    s = c->data;

    if (wev->timedout) {
        ngx_log_error(NGX_LOG_INFO, c->log, NGX_ETIMEDOUT,
                      "redisgate: a stream's client timed out");
        c->timedout = 1;
        ngx_http_redisgate_stream_close(s);
        return;
    }

    rc = ngx_http_redisgate_stream_flush(s);

    if (rc == NGX_ERROR || (rc == NGX_OK && s->ended)) {
        ngx_http_redisgate_stream_close(s);
    }
}


/* as ngx_http_test_reading(): EOF or an error, not data (ignored) */

static ngx_uint_t
ngx_http_redisgate_stream_client_left(ngx_connection_t *c)
{
    int           n;
    char          buf[1];
    ngx_err_t     err;
    ngx_uint_t    told;
    ngx_event_t  *rev;

    rev = c->read;

    /* kqueue and epoll's EPOLLRDHUP say when the peer closed */
    told = 0;

#if (NGX_HAVE_KQUEUE)
    told = (ngx_event_flags & NGX_USE_KQUEUE_EVENT) != 0;
#endif

#if (NGX_HAVE_EPOLLRDHUP)
    told = told || ((ngx_event_flags & NGX_USE_EPOLL_EVENT)
                    && ngx_use_epoll_rdhup);
#endif

    if (told) {
        if (!rev->pending_eof) {
            return 0;
        }

        rev->eof = 1;
        c->error = 1;

        return 1;
    }

    n = recv(c->fd, buf, 1, MSG_PEEK);

    if (n == 0) {
        rev->eof = 1;
        c->error = 1;
        return 1;
    }

    if (n == -1) {
        err = ngx_socket_errno;

        if (err != NGX_EAGAIN) {
            rev->eof = 1;
            rev->error = 1;
            c->error = 1;
            return 1;
        }
    }

    /* bytes of the client's, never read: level-triggered events would
     * report them again and again */
    if ((ngx_event_flags & NGX_USE_LEVEL_EVENT) && rev->active) {
        (void) ngx_del_event(rev, NGX_READ_EVENT, 0);
    }

    return 0;
}


/*
 * Every second while streams are open: a worker that exits (a reload, a
 * stop) ends them, each with an error line, instead of lingering on them;
 * and usage learns what they sent in the minute that ended.
 */

static void
ngx_http_redisgate_stream_watch(ngx_event_t *ev)
{
    time_t                        minute;
    ngx_queue_t                  *q;
    ngx_connection_t             *c;
    ngx_http_request_t           *r;
    ngx_http_redisgate_stream_t  *s;

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        while (!ngx_queue_empty(&ngx_http_redisgate_streams)) {
            q = ngx_queue_head(&ngx_http_redisgate_streams);
            s = ngx_queue_data(q, ngx_http_redisgate_stream_t, queue);
            c = s->connection;
            r = s->request;

            /* it leaves the queue */
            ngx_http_redisgate_stream_end(s, "nginx is reloading or "
                                          "stopping");
            ngx_http_redisgate_stream_done(c, r);
        }

        /* what did not go out by now does not keep the worker */
        while (!ngx_queue_empty(&ngx_http_redisgate_draining)) {
            q = ngx_queue_head(&ngx_http_redisgate_draining);
            s = ngx_queue_data(q, ngx_http_redisgate_stream_t, drain);
            ngx_http_redisgate_stream_close(s);
        }

        return;
    }

    minute = ngx_time() / 60;

    for (q = ngx_queue_head(&ngx_http_redisgate_streams);
         q != ngx_queue_sentinel(&ngx_http_redisgate_streams);
         q = ngx_queue_next(q))
    {
        s = ngx_queue_data(q, ngx_http_redisgate_stream_t, queue);

        if (s->recorded_minute != minute) {
            ngx_http_redisgate_stream_account(s);
        }
    }

    if (!ngx_queue_empty(&ngx_http_redisgate_streams)
        || !ngx_queue_empty(&ngx_http_redisgate_draining))
    {
        ngx_add_timer(ev, 1000);
    }
}
