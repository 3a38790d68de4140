
/*
 * Copyright (C) RedisGate authors
 */


/*
 * Streams: /subscribe/{channel}..., /psubscribe/{pattern}... and /monitor,
 * answered with Server-Sent Events (PROTOCOL.md, "Streaming").  The
 * request stays open: its listeners hear the hub (pubsub.c), and each
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
 * Output goes through nginx's filters in buffers kept on a free list
 * (nginx's upstream does the same); what the client has not read yet is
 * counted, and past redisgate_sse_buffer the stream ends with an error
 * line: a slow reader never grows the worker, nor slows the others.  A
 * client that leaves is noticed by the read event, with nothing to write;
 * its listeners leave with it.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_redisgate.h"


/* the size of the buffers events are written in, most of them one */
#define NGX_HTTP_REDISGATE_STREAM_BUF  512


struct ngx_http_redisgate_stream_s {
    ngx_queue_t                     queue;      /* the worker's streams */
    ngx_http_request_t             *request;
    ngx_http_redisgate_listener_t  *listeners;
    ngx_uint_t                      nlisteners;
    ngx_uint_t                      active;     /* confirmed subscriptions */

    ngx_chain_t                    *free;
    ngx_chain_t                    *busy;
    off_t                           written;    /* to the filters */
    off_t                           sent_start; /* c->sent then */
    size_t                          limit;      /* redisgate_sse_buffer */

    ngx_event_t                     heartbeat;
    ngx_msec_t                      interval;

    ngx_http_redisgate_holder_t     holder;     /* of its key */

    ngx_uint_t                      kind;       /* STREAM_* */
    unsigned                        ended:1;
};


static ngx_int_t ngx_http_redisgate_stream_open(ngx_http_request_t *r,
    ngx_http_redisgate_ctx_t *ctx);
static void ngx_http_redisgate_stream_retry(ngx_http_request_t *r);
static ngx_int_t ngx_http_redisgate_stream_headers(ngx_http_request_t *r);
static ngx_int_t ngx_http_redisgate_stream_event(
    ngx_http_redisgate_stream_t *s, ngx_str_t *part, ngx_uint_t n);
static ngx_int_t ngx_http_redisgate_stream_listen(
    ngx_http_redisgate_stream_t *s, ngx_http_redisgate_ctx_t *ctx);
static ngx_int_t ngx_http_redisgate_stream_write(
    ngx_http_redisgate_stream_t *s, u_char *data, size_t len);
static size_t ngx_http_redisgate_stream_escaped_len(ngx_str_t *s);
static u_char *ngx_http_redisgate_stream_escape(u_char *p, ngx_str_t *s);
static void ngx_http_redisgate_stream_end(ngx_http_redisgate_stream_t *s,
    const char *error);
static void ngx_http_redisgate_stream_leave(ngx_http_redisgate_stream_t *s);
static void ngx_http_redisgate_stream_beat(ngx_event_t *ev);
static void ngx_http_redisgate_stream_revoked(void *data, const char *error);
static void ngx_http_redisgate_stream_reading(ngx_http_request_t *r);
static void ngx_http_redisgate_stream_writable(ngx_http_request_t *r);
static void ngx_http_redisgate_stream_cleanup(void *data);
static void ngx_http_redisgate_stream_watch(ngx_event_t *ev);


/* the worker's open streams, and what ends them when it exits */
static ngx_queue_t  ngx_http_redisgate_streams;
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
 * After the key, the scope (read) and the rate (a stream costs one
 * command): the backend's address, then the stream.  NGX_DONE while it
 * runs; else the request's status.
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
    ngx_int_t                  rc;
    ngx_http_redisgate_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_redisgate_module);

    rc = ngx_http_redisgate_stream_start(r, ctx);

    ngx_http_redisgate_resume(r, rc);
}


static ngx_int_t
ngx_http_redisgate_stream_open(ngx_http_request_t *r,
    ngx_http_redisgate_ctx_t *ctx)
{
    ngx_int_t                        rc;
    ngx_str_t                       *argv;
    ngx_uint_t                       argc, kind;
    ngx_pool_cleanup_t              *cln;
    ngx_http_redisgate_stream_t     *s;
    ngx_http_redisgate_loc_conf_t   *rlcf;

    rlcf = ngx_http_get_module_loc_conf(r, ngx_http_redisgate_module);

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

    s = ngx_pcalloc(r->pool, sizeof(ngx_http_redisgate_stream_t));
    cln = ngx_pool_cleanup_add(r->pool, 0);

    if (s == NULL || cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* MONITOR: one listener, not of a channel */
    s->listeners = ngx_pcalloc(r->pool,
                               ngx_max(argc - 1, 1)
                               * sizeof(ngx_http_redisgate_listener_t));
    if (s->listeners == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    s->request = r;
    s->kind = kind;
    s->limit = rlcf->sse_buffer;
    s->interval = rlcf->sse_heartbeat;
    s->sent_start = r->connection->sent;

    s->heartbeat.handler = ngx_http_redisgate_stream_beat;
    s->heartbeat.data = s;
    s->heartbeat.log = r->connection->log;

    cln->handler = ngx_http_redisgate_stream_cleanup;
    cln->data = s;

    ctx->stream = s;

    rc = ngx_http_redisgate_stream_headers(r);
    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    if (ngx_http_redisgate_stream_listen(s, ctx) != NGX_OK || s->ended) {
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
        ngx_add_timer(&s->heartbeat, s->interval);
    }

    if (ngx_http_redisgate_streams.next == NULL) {
        ngx_queue_init(&ngx_http_redisgate_streams);
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

    return NGX_DONE;
}


/* the listeners: of MONITOR, or of each channel (pattern) named once */

static ngx_int_t
ngx_http_redisgate_stream_listen(ngx_http_redisgate_stream_t *s,
    ngx_http_redisgate_ctx_t *ctx)
{
    ngx_int_t                        rc;
    ngx_str_t                       *argv;
    ngx_uint_t                       i, k, argc;
    const char                      *error;
    ngx_http_redisgate_loc_conf_t   *rlcf;
    ngx_http_redisgate_listener_t   *l;

    rlcf = ngx_http_get_module_loc_conf(s->request, ngx_http_redisgate_module);

    argv = ctx->route.cmd.argv;
    argc = ctx->route.cmd.argc;

    if (ctx->route.has_body_slot && ctx->route.body_slot == argc - 1) {
        argc--;
    }

    if (s->kind == NGX_HTTP_REDISGATE_STREAM_MONITOR) {
        l = &s->listeners[s->nlisteners++];
        l->stream = s;
        l->name = argv[0];

        rc = ngx_http_redisgate_pubsub_monitor(ctx->auth.backend, l,
                                               s->request->connection->log,
                                               &error);
        if (rc != NGX_OK) {
            ngx_http_redisgate_stream_end(s, error);
        }

        return rc;
    }

    for (i = 1; i < argc; i++) {

        /* a name twice is one subscription (and one listener of it) */
        for (k = 0; k < s->nlisteners; k++) {
            if (s->listeners[k].name.len == argv[i].len
                && ngx_memcmp(s->listeners[k].name.data, argv[i].data,
                              argv[i].len) == 0)
            {
                break;
            }
        }

        if (k < s->nlisteners) {
            continue;
        }

        l = &s->listeners[s->nlisteners++];
        l->stream = s;
        l->name = argv[i];

        if (ngx_http_redisgate_pubsub_listen(ctx->auth.backend, l, &l->name,
                              s->kind == NGX_HTTP_REDISGATE_STREAM_PSUBSCRIBE,
                              rlcf->timeout, s->request->connection->log,
                              &error)
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


/* 200 and the event-stream headers, at once: the client waits for them */

static ngx_int_t
ngx_http_redisgate_stream_headers(ngx_http_request_t *r)
{
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

    return ngx_http_send_header(r);
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


/* the hub: [message, channel, payload] or [pmessage, pattern, channel,
 * payload] */

void
ngx_http_redisgate_stream_message(ngx_http_redisgate_listener_t *l,
    redisReply *reply)
{
    ngx_uint_t                    i;
    ngx_str_t                     part[4];
    ngx_http_redisgate_stream_t  *s;

    s = l->stream;

    if (s->ended || !l->active) {
        return;
    }

    /* its kind, as Redis says it, then the names and the payload */
    for (i = 0; i < reply->elements; i++) {
        part[i].data = (u_char *) reply->element[i]->str;
        part[i].len = reply->element[i]->len;
    }

    (void) ngx_http_redisgate_stream_event(s, part, reply->elements);

    ngx_http_redisgate_stats_count(NGX_HTTP_REDISGATE_STAT_STREAM_MESSAGES,
                                   1);
}


/* the hub: a line of MONITOR, of the instance's database */

void
ngx_http_redisgate_stream_monitored(ngx_http_redisgate_listener_t *l,
    redisReply *reply)
{
    ngx_str_t                     line;
    ngx_http_redisgate_stream_t  *s;

    s = l->stream;

    if (s->ended || !l->active) {
        return;
    }

    line.data = (u_char *) reply->str;
    line.len = reply->len;

    (void) ngx_http_redisgate_stream_event(s, &line, 1);

    ngx_http_redisgate_stats_count(NGX_HTTP_REDISGATE_STAT_STREAM_MESSAGES,
                                   1);
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


/* "data: <part>[,<part>...]\n\n", each part escaped */

static ngx_int_t
ngx_http_redisgate_stream_event(ngx_http_redisgate_stream_t *s,
    ngx_str_t *part, ngx_uint_t n)
{
    u_char      *p, *line;
    size_t       len;
    ngx_int_t    rc;
    ngx_uint_t   i;

    len = sizeof("data: ") - 1 + sizeof("\n\n") - 1;

    for (i = 0; i < n; i++) {
        len += (i > 0) + ngx_http_redisgate_stream_escaped_len(&part[i]);
    }

    line = ngx_alloc(len, s->request->connection->log);
    if (line == NULL) {
        ngx_http_redisgate_stream_end(s, "out of memory");
        return NGX_ERROR;
    }

    p = ngx_cpymem(line, "data: ", sizeof("data: ") - 1);

    for (i = 0; i < n; i++) {
        if (i > 0) {
            *p++ = ',';
        }

        p = ngx_http_redisgate_stream_escape(p, &part[i]);
    }

    *p++ = '\n';
    *p++ = '\n';

    rc = ngx_http_redisgate_stream_write(s, line, p - line);

    ngx_free(line);

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
 * To the client, flushed; in buffers from the free list.  What it has
 * not read yet past the limit: the stream ends.
 */

static ngx_int_t
ngx_http_redisgate_stream_write(ngx_http_redisgate_stream_t *s, u_char *data,
    size_t len)
{
    size_t               size;
    off_t                unsent;
    ngx_int_t            rc;
    ngx_buf_t           *b;
    ngx_chain_t         *cl;
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = s->request;
    c = r->connection;

    unsent = s->written - (c->sent - s->sent_start);

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

    s->written += len;

    rc = ngx_http_output_filter(r, cl);

    ngx_chain_update_chains(r->pool, &s->free, &s->busy, &cl,
                            (ngx_buf_tag_t) &ngx_http_redisgate_module);

    if (rc == NGX_ERROR) {
        ngx_http_redisgate_stream_end(s, NULL);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * The end: its listeners leave now (not when the request goes), an error
 * line when there is a reason, the last chunk, and the request finalized.
 */

static void
ngx_http_redisgate_stream_end(ngx_http_redisgate_stream_t *s,
    const char *error)
{
    ngx_int_t            rc;
    ngx_str_t            part[2];
    ngx_http_request_t  *r;

    if (s->ended) {
        return;
    }

    r = s->request;

    ngx_http_redisgate_stream_leave(s);

    if (error) {
        ngx_str_set(&part[0], "error");
        part[1].data = (u_char *) error;
        part[1].len = ngx_strlen(error);

        /* written past the limit: the reason is the last line */
        s->limit = NGX_MAX_SIZE_T_VALUE;
        (void) ngx_http_redisgate_stream_event(s, part, 2);
    }

    s->ended = 1;

    rc = ngx_http_send_special(r, NGX_HTTP_LAST);

    ngx_http_finalize_request(r, rc == NGX_ERROR ? NGX_ERROR : NGX_OK);
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


/* its key may no longer: the key store said so (recheck.c) */

static void
ngx_http_redisgate_stream_revoked(void *data, const char *error)
{
    ngx_http_redisgate_stream_t *s = data;

    ngx_connection_t  *c;

    c = s->request->connection;

    ngx_log_error(NGX_LOG_INFO, c->log, 0,
                  "redisgate: a stream's key no longer lets it run: %s",
                  error);

    ngx_http_redisgate_stream_end(s, error);
    ngx_http_run_posted_requests(c);
}


/*
 * Every second while streams are open: a worker that exits (a reload, a
 * stop) ends them, each with an error line, instead of lingering on them.
 */

static void
ngx_http_redisgate_stream_watch(ngx_event_t *ev)
{
    ngx_queue_t                  *q;
    ngx_connection_t             *c;
    ngx_http_redisgate_stream_t  *s;

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        while (!ngx_queue_empty(&ngx_http_redisgate_streams)) {
            q = ngx_queue_head(&ngx_http_redisgate_streams);
            s = ngx_queue_data(q, ngx_http_redisgate_stream_t, queue);
            c = s->request->connection;

            /* it leaves the queue */
            ngx_http_redisgate_stream_end(s, "nginx is reloading or "
                                          "stopping");
            ngx_http_run_posted_requests(c);
        }

        return;
    }

    if (!ngx_queue_empty(&ngx_http_redisgate_streams)) {
        ngx_add_timer(ev, 1000);
    }
}


/* a comment line keeps proxies and the client's idle timers quiet */

static void
ngx_http_redisgate_stream_beat(ngx_event_t *ev)
{
    ngx_http_redisgate_stream_t *s = ev->data;

    ngx_connection_t  *c;

    c = s->request->connection;

    if (ngx_http_redisgate_stream_write(s, (u_char *) ":\n\n", 3)
        == NGX_OK)
    {
        ngx_add_timer(&s->heartbeat, s->interval);
    }

    ngx_http_run_posted_requests(c);
}


/* the client closed: nginx's test finalizes the request, and the pool's
 * cleanup makes the listeners leave */

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


/* the request is over, however it ended */

static void
ngx_http_redisgate_stream_cleanup(void *data)
{
    ngx_http_redisgate_stream_t *s = data;

    ngx_http_redisgate_stream_leave(s);

    s->ended = 1;
}
