
/*
 * Copyright (C) RedisGate authors
 */


/*
 * One request, in order: route, body, commands, key, policy, Redis, reply.
 * Everything after "Redis" happens in ngx_http_redisgate_on_reply, called
 * by the connection pool once per reply and once more when all are in.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_redisgate.h"




static void ngx_http_redisgate_body_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_redisgate_process(ngx_http_request_t *r,
    ngx_http_redisgate_ctx_t *ctx);
static void ngx_http_redisgate_resolved(ngx_http_request_t *r,
    ngx_int_t rc);
static ngx_int_t ngx_http_redisgate_authorized(ngx_http_request_t *r,
    ngx_http_redisgate_ctx_t *ctx, ngx_int_t rc);
static ngx_int_t ngx_http_redisgate_check_rate(ngx_http_request_t *r,
    ngx_http_redisgate_ctx_t *ctx);
static ngx_int_t ngx_http_redisgate_check_stream(ngx_http_request_t *r,
    ngx_http_redisgate_ctx_t *ctx);
static ngx_int_t ngx_http_redisgate_run(ngx_http_request_t *r,
    ngx_http_redisgate_ctx_t *ctx);
static void ngx_http_redisgate_rate_checked(ngx_http_request_t *r,
    ngx_int_t rc);
static ngx_int_t ngx_http_redisgate_rate_decided(ngx_http_request_t *r,
    ngx_http_redisgate_ctx_t *ctx, ngx_int_t rc);
static ngx_int_t ngx_http_redisgate_read_headers(ngx_http_request_t *r,
    ngx_http_redisgate_ctx_t *ctx);
static ngx_uint_t ngx_http_redisgate_is(ngx_str_t *s, char *text);
static ngx_int_t ngx_http_redisgate_token(ngx_http_request_t *r,
    ngx_http_redisgate_ctx_t *ctx, ngx_str_t *token);
static ngx_int_t ngx_http_redisgate_decode_body(ngx_http_request_t *r,
    ngx_http_redisgate_ctx_t *ctx);
static ngx_int_t ngx_http_redisgate_check_commands(ngx_http_request_t *r,
    ngx_http_redisgate_ctx_t *ctx);
static ngx_int_t ngx_http_redisgate_send_commands(ngx_http_request_t *r,
    ngx_http_redisgate_ctx_t *ctx);
static ngx_int_t ngx_http_redisgate_dispatch(ngx_http_request_t *r,
    ngx_http_redisgate_ctx_t *ctx);
static void ngx_http_redisgate_retry_send(ngx_http_request_t *r);
static void ngx_http_redisgate_on_reply(void *data, redisReply *reply,
    const char *error);
static redisReply *ngx_http_redisgate_exec_error(ngx_http_request_t *r,
    redisReply *exec, redisReply *queued);
static ngx_int_t ngx_http_redisgate_add_entry(ngx_http_redisgate_ctx_t *ctx,
    redisReply *reply, ngx_uint_t map, ngx_uint_t comma);
static u_char *ngx_http_redisgate_reserve(ngx_http_redisgate_ctx_t *ctx,
    size_t len);
static ngx_int_t ngx_http_redisgate_finish(ngx_http_request_t *r,
    ngx_http_redisgate_ctx_t *ctx);
static ngx_int_t ngx_http_redisgate_send(ngx_http_request_t *r,
    ngx_uint_t status, ngx_chain_t *out, off_t length, ngx_uint_t raw);
static ngx_int_t ngx_http_redisgate_sync_token(ngx_http_request_t *r);
static ngx_int_t ngx_http_redisgate_allow_header(ngx_http_request_t *r);
static ngx_int_t ngx_http_redisgate_rate_headers(ngx_http_request_t *r);


static ngx_str_t  ngx_http_redisgate_json_type =
    ngx_string("application/json");
static ngx_str_t  ngx_http_redisgate_resp_type =
    ngx_string("application/octet-stream");

static ngx_str_t  ngx_http_redisgate_multi =
    ngx_string("*1\r\n$5\r\nMULTI\r\n");
static ngx_str_t  ngx_http_redisgate_exec = ngx_string("*1\r\n$4\r\nEXEC\r\n");
static ngx_str_t  ngx_http_redisgate_flushdb = ngx_string("FLUSHDB");

static ngx_uint_t  ngx_http_redisgate_sync_counter;


/* the size of the buffers a response's entries are written into */
#define NGX_HTTP_REDISGATE_OUT_SIZE  8192

/* set when the worker starts: tells this worker's sync tokens apart */
time_t  ngx_http_redisgate_worker_start;


void *
ngx_http_redisgate_palloc(void *pool, size_t size)
{
    return ngx_palloc(pool, size);
}


ngx_int_t
ngx_http_redisgate_handler(ngx_http_request_t *r)
{
    u_char                         *path, *q;
    size_t                          len;
    ngx_int_t                       rc;
    ngx_uint_t                      body;
    ngx_http_redisgate_ctx_t       *ctx;
    ngx_http_redisgate_alloc_t      a;
    ngx_http_redisgate_loc_conf_t  *rlcf;

    rlcf = ngx_http_get_module_loc_conf(r, ngx_http_redisgate_module);

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_redisgate_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->request = r;
    ctx->last = &ctx->out;
    ctx->status = NGX_HTTP_OK;

    ngx_http_set_ctx(r, ctx, ngx_http_redisgate_module);

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD|NGX_HTTP_POST|NGX_HTTP_PUT)))
    {
        return ngx_http_redisgate_send_error(r, NGX_HTTP_NOT_ALLOWED,
                                  "method %V is not allowed: use GET, HEAD, "
                                  "POST or PUT", &r->method_name);
    }

    /*
     * The raw URI, not r->uri: a %2F inside a key is not a separator.
     * Skip as many segments as the location prefix has.
     */

    path = r->unparsed_uri.data;
    len = r->unparsed_uri.len;

    q = ngx_strlchr(path, path + len, '?');
    if (q) {
        len = q - path;
    }

    for (rc = 0; rc < (ngx_int_t) rlcf->skip; rc++) {
        while (len && *path == '/') {
            path++;
            len--;
        }

        while (len && *path != '/') {
            path++;
            len--;
        }
    }

    if (len && *path == '/') {
        path++;
        len--;
    }

    body = (r->method & (NGX_HTTP_POST|NGX_HTTP_PUT))
           && (r->headers_in.content_length_n > 0 || r->headers_in.chunked);

    a.alloc = ngx_http_redisgate_palloc;
    a.data = r->pool;

    rc = ngx_http_redisgate_parse_route(&ctx->route, path, len,
                                        r->args.data, r->args.len, body, &a);

    switch (rc) {

    case NGX_OK:
        break;

    case NGX_DECLINED:
        return ngx_http_redisgate_send_error(r, NGX_HTTP_NOT_FOUND,
                                             "instance not found");

    case NGX_ABORT:
        return ngx_http_redisgate_send_error(r, NGX_HTTP_BAD_REQUEST, "%s",
                                             ctx->route.error);

    default:
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if ((ctx->route.kind == NGX_HTTP_REDISGATE_ROUTE_PIPELINE
         || ctx->route.kind == NGX_HTTP_REDISGATE_ROUTE_MULTI)
        && r->method != NGX_HTTP_POST)
    {
        return ngx_http_redisgate_send_error(r, NGX_HTTP_NOT_ALLOWED,
                                  "/pipeline and /multi-exec take POST");
    }

    rc = ngx_http_read_client_request_body(r,
                                           ngx_http_redisgate_body_handler);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        if (rc == NGX_HTTP_REQUEST_ENTITY_TOO_LARGE) {
            return ngx_http_redisgate_send_error(r, rc,
                                  "request body is larger than "
                                  "client_max_body_size");
        }

        return rc;
    }

    return NGX_DONE;
}


static void
ngx_http_redisgate_body_handler(ngx_http_request_t *r)
{
    ngx_int_t                  rc;
    ngx_http_redisgate_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_redisgate_module);

    rc = ngx_http_redisgate_process(r, ctx);

    if (rc == NGX_DONE) {
        return;
    }

    ngx_http_finalize_request(r, rc);
}


/*
 * The steps return NGX_DECLINED to go on; anything else is the request's
 * outcome, already answered or to answer: it goes to finalize.
 */

static ngx_int_t
ngx_http_redisgate_process(ngx_http_request_t *r,
    ngx_http_redisgate_ctx_t *ctx)
{
    ngx_int_t   rc;
    ngx_str_t   token, instance;

    rc = ngx_http_redisgate_read_headers(r, ctx);
    if (rc != NGX_DECLINED) {
        return rc;
    }

    rc = ngx_http_redisgate_decode_body(r, ctx);
    if (rc != NGX_DECLINED) {
        return rc;
    }

    rc = ngx_http_redisgate_token(r, ctx, &token);
    if (rc != NGX_DECLINED) {
        return rc;
    }

    instance.data = ctx->route.instance;
    instance.len = NGX_HTTP_REDISGATE_UUID_LEN;

    rc = ngx_http_redisgate_resolve(r, &token, &instance, &ctx->auth,
                                    ngx_http_redisgate_resolved);

    if (rc == NGX_AGAIN) {
        /* the key store answers later; notice a client that leaves */
        ngx_http_redisgate_wait_client(r);
        return NGX_DONE;
    }

    return ngx_http_redisgate_authorized(r, ctx, rc);
}


static void
ngx_http_redisgate_resolved(ngx_http_request_t *r, ngx_int_t rc)
{
    ngx_http_redisgate_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_redisgate_module);

    rc = ngx_http_redisgate_authorized(r, ctx, rc);

    ngx_http_redisgate_resume(r, rc);
}


/* after the key: its scopes and the policy, then Redis */

static ngx_int_t
ngx_http_redisgate_authorized(ngx_http_request_t *r,
    ngx_http_redisgate_ctx_t *ctx, ngx_int_t rc)
{
    if (rc != NGX_OK) {
        return ngx_http_redisgate_send_error(r, rc, "%s", ctx->auth.error);
    }

    if (ngx_http_redisgate_stream_kind(ctx)) {
        /* a stream: its scope, not the policy's deny-list of pub/sub */
        rc = ngx_http_redisgate_check_stream(r, ctx);
        if (rc != NGX_DECLINED) {
            return rc;
        }

    } else {
        rc = ngx_http_redisgate_check_commands(r, ctx);
        if (rc != NGX_DECLINED) {
            return rc;
        }
    }

    rc = ngx_http_redisgate_check_rate(r, ctx);
    if (rc != NGX_DECLINED) {
        return rc;
    }

    return ngx_http_redisgate_run(r, ctx);
}


/*
 * subscribe and psubscribe need read; MONITOR (every command of the
 * database, other keys' values included) needs admin, and the operator's
 * redisgate_monitor on
 */

static ngx_int_t
ngx_http_redisgate_check_stream(ngx_http_request_t *r,
    ngx_http_redisgate_ctx_t *ctx)
{
    ngx_uint_t                      scope;
    ngx_http_redisgate_loc_conf_t  *rlcf;

    scope = NGX_HTTP_REDISGATE_SCOPE_READ;

    if (ngx_http_redisgate_stream_kind(ctx)
        == NGX_HTTP_REDISGATE_STREAM_MONITOR)
    {
        rlcf = ngx_http_get_module_loc_conf(r, ngx_http_redisgate_module);

        if (!rlcf->monitor) {
            return ngx_http_redisgate_send_error(r, NGX_HTTP_FORBIDDEN,
                                  "Forbidden: MONITOR is not enabled on "
                                  "this server");
        }

        scope = NGX_HTTP_REDISGATE_SCOPE_ADMIN;
    }

    if (!(ctx->auth.scopes & scope)) {
        return ngx_http_redisgate_send_error(r, NGX_HTTP_FORBIDDEN,
                              "Forbidden: this API key's scopes do not "
                              "allow '%V'", &ctx->route.cmd.argv[0]);
    }

    return NGX_DECLINED;
}


/* let in: the commands to Redis, or the stream */

static ngx_int_t
ngx_http_redisgate_run(ngx_http_request_t *r, ngx_http_redisgate_ctx_t *ctx)
{
    if (ngx_http_redisgate_stream_kind(ctx)) {
        return ngx_http_redisgate_stream_start(r, ctx);
    }

    return ngx_http_redisgate_send_commands(r, ctx);
}


/* each command costs one token of the organization's bucket */

static ngx_int_t
ngx_http_redisgate_check_rate(ngx_http_request_t *r,
    ngx_http_redisgate_ctx_t *ctx)
{
    ngx_int_t                        rc;
    ngx_http_redisgate_main_conf_t  *rmcf;

    rmcf = ngx_http_get_module_main_conf(r, ngx_http_redisgate_module);

    if (rmcf->limit == NULL) {
        return NGX_DECLINED;
    }

    ctx->limited = 1;

    rc = ngx_http_redisgate_limit_take(rmcf->limit, r,
                                       &ctx->auth.organization,
                                       ctx->auth.rate, ctx->auth.burst,
                                       ctx->ncmds, &ctx->limit,
                                       ngx_http_redisgate_rate_checked);

    if (rc == NGX_AGAIN) {
        /* the limit's store answers later; notice a client that leaves */
        ngx_http_redisgate_wait_client(r);
        return NGX_DONE;
    }

    return ngx_http_redisgate_rate_decided(r, ctx, rc);
}


/* the limit's store answered (or failed, and this server counted) */

static void
ngx_http_redisgate_rate_checked(ngx_http_request_t *r, ngx_int_t rc)
{
    ngx_http_redisgate_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_redisgate_module);

    rc = ngx_http_redisgate_rate_decided(r, ctx, rc);

    if (rc == NGX_DECLINED) {
        rc = ngx_http_redisgate_run(r, ctx);
    }

    ngx_http_redisgate_resume(r, rc);
}


/* NGX_OK: on to Redis (NGX_DECLINED); NGX_BUSY: 429 */

static ngx_int_t
ngx_http_redisgate_rate_decided(ngx_http_request_t *r,
    ngx_http_redisgate_ctx_t *ctx, ngx_int_t rc)
{
    if (rc == NGX_OK) {
        return NGX_DECLINED;
    }

    ctx->rate_refused = 1;

    ngx_http_redisgate_stats_count(NGX_HTTP_REDISGATE_STAT_RATE_LIMITED, 1);

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "redisgate: organization \"%V\" over its rate, key \"%V\"",
                  &ctx->auth.organization, &ctx->auth.key_id);

    return ngx_http_redisgate_send_error(r, NGX_HTTP_TOO_MANY_REQUESTS,
                                  "Too Many Requests: the organization's "
                                  "plan allows %ui commands at once, retry "
                                  "in %T s", ctx->limit.limit,
                                  ctx->limit.retry_after);
}


static ngx_int_t
ngx_http_redisgate_read_headers(ngx_http_request_t *r,
    ngx_http_redisgate_ctx_t *ctx)
{
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (ngx_http_redisgate_is(&h[i].key, "Upstash-Encoding")) {
            if (!ngx_http_redisgate_is(&h[i].value, "base64")) {
                return ngx_http_redisgate_send_error(r, NGX_HTTP_BAD_REQUEST,
                                  "Upstash-Encoding must be base64");
            }

            ctx->encoding = NGX_HTTP_REDISGATE_ENC_BASE64;

        } else if (ngx_http_redisgate_is(&h[i].key,
                                         "Upstash-Response-Format"))
        {
            if (ngx_http_redisgate_is(&h[i].value, "resp2")) {
                ctx->resp2 = 1;

            } else if (!ngx_http_redisgate_is(&h[i].value, "json")) {
                return ngx_http_redisgate_send_error(r, NGX_HTTP_BAD_REQUEST,
                                  "Upstash-Response-Format must be json or "
                                  "resp2");
            }

        } else if (ngx_http_redisgate_is(&h[i].key, "RedisGate-Hash-Format")) {
            if (ngx_http_redisgate_is(&h[i].value, "object")) {
                ctx->hash_object = 1;

            } else if (!ngx_http_redisgate_is(&h[i].value, "array")) {
                return ngx_http_redisgate_send_error(r, NGX_HTTP_BAD_REQUEST,
                                  "RedisGate-Hash-Format must be array or "
                                  "object");
            }
        }
    }

    if (ctx->resp2 && ctx->encoding) {
        return ngx_http_redisgate_send_error(r, NGX_HTTP_BAD_REQUEST,
                                  "Upstash-Response-Format: resp2 cannot be "
                                  "combined with Upstash-Encoding");
    }

    if (ctx->resp2 && ctx->route.kind == NGX_HTTP_REDISGATE_ROUTE_MULTI) {
        return ngx_http_redisgate_send_error(r, NGX_HTTP_BAD_REQUEST,
                                  "Upstash-Response-Format: resp2 is not "
                                  "available for /multi-exec");
    }

    return NGX_DECLINED;
}


/* a header name or value, in any case */

static ngx_uint_t
ngx_http_redisgate_is(ngx_str_t *s, char *text)
{
    size_t  len;

    len = ngx_strlen(text);

    return s->len == len
           && ngx_strncasecmp(s->data, (u_char *) text, len) == 0;
}


/* Authorization: Bearer wins over ?_token= */

static ngx_int_t
ngx_http_redisgate_token(ngx_http_request_t *r, ngx_http_redisgate_ctx_t *ctx,
    ngx_str_t *token)
{
    u_char           *p, *last;
    ngx_table_elt_t  *h;

    h = r->headers_in.authorization;

    if (h) {
        p = h->value.data;
        last = p + h->value.len;

        if (h->value.len < 7
            || ngx_strncasecmp(p, (u_char *) "Bearer ", 7) != 0)
        {
            return ngx_http_redisgate_send_error(r, NGX_HTTP_UNAUTHORIZED,
                                  "Unauthorized: expected "
                                  "\"Authorization: Bearer <api key>\"");
        }

        for (p += 7; p < last && *p == ' '; p++) { /* void */ }

        while (last > p && last[-1] == ' ') {
            last--;
        }

        token->data = p;
        token->len = last - p;

    } else if (ctx->route.token.len) {
        token->data = ngx_pnalloc(r->pool, ctx->route.token.len);
        if (token->data == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (ngx_http_redisgate_percent_decode(token->data, &token->len,
                                              ctx->route.token.data,
                                              ctx->route.token.len)
            != NGX_OK)
        {
            return ngx_http_redisgate_send_error(r, NGX_HTTP_UNAUTHORIZED,
                                  "Unauthorized: malformed _token");
        }

    } else {
        token->len = 0;
    }

    if (token->len == 0) {
        return ngx_http_redisgate_send_error(r, NGX_HTTP_UNAUTHORIZED,
                                  "Unauthorized: missing API key, send "
                                  "\"Authorization: Bearer <api key>\"");
    }

    return NGX_DECLINED;
}


static ngx_int_t
ngx_http_redisgate_decode_body(ngx_http_request_t *r,
    ngx_http_redisgate_ctx_t *ctx)
{
    u_char                     *buf;
    off_t                       offset, size;
    ssize_t                     n;
    ngx_int_t                   rc;
    ngx_buf_t                  *b;
    ngx_str_t                   body;
    ngx_uint_t                  in_file, nbufs;
    ngx_chain_t                *cl;
    ngx_http_redisgate_json_t  *j;
    ngx_http_redisgate_alloc_t  a;
    ngx_http_redisgate_loc_conf_t  *rlcf;

    switch (ctx->route.kind) {

    case NGX_HTTP_REDISGATE_ROUTE_NONE:
        return ngx_http_redisgate_send_error(r, NGX_HTTP_BAD_REQUEST,
                                  "no command: use /{instance}/{command}/... "
                                  "or POST a JSON array");

    case NGX_HTTP_REDISGATE_ROUTE_PATH:
        ctx->cmds = &ctx->route.cmd;
        ctx->ncmds = 1;

        if (ctx->route.has_body_slot) {
            if (ngx_http_redisgate_body_bytes(r, &body) != NGX_OK) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            ctx->route.cmd.argv[ctx->route.body_slot] = body;
        }

        return NGX_DECLINED;

    default:
        break;
    }

    /* "Content-Length: 0" still gets one empty buffer from nginx */

    size = 0;
    in_file = 0;
    nbufs = 0;

    if (r->request_body) {
        for (cl = r->request_body->bufs; cl; cl = cl->next) {
            size += ngx_buf_size(cl->buf);
            in_file |= cl->buf->in_file;
            nbufs++;
        }
    }

    if (size == 0) {
        return ngx_http_redisgate_send_error(r, NGX_HTTP_BAD_REQUEST,
                                  "empty request body: expected a JSON array");
    }

    rlcf = ngx_http_get_module_loc_conf(r, ngx_http_redisgate_module);

    a.alloc = ngx_http_redisgate_palloc;
    a.data = r->pool;

    j = ngx_http_redisgate_json_create(
                         ctx->route.kind != NGX_HTTP_REDISGATE_ROUTE_JSON,
                         rlcf->max_commands, &a);
    if (j == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    buf = NULL;
    rc = NGX_OK;

    if (!in_file) {

        /*
         * In memory, the usual case: in one piece (two buffers, when part
         * of the body came with the headers, are copied into one) for the
         * decoder's fast path, and for yajl when that declines.  The
         * commands may point into it: it lives as long as the request.
         */

        if (ngx_http_redisgate_body_bytes(r, &body) != NGX_OK) {
            ngx_http_redisgate_json_destroy(j);
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        rc = ngx_http_redisgate_json_fast(j, body.data, body.len, &ctx->cmds,
                                          &ctx->ncmds);
        if (rc == NGX_OK) {
            ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                           "redisgate json: %O bytes in %ui buffer(s), "
                           "%ui command(s), without yajl",
                           size, nbufs, ctx->ncmds);

            ngx_http_redisgate_json_destroy(j);
            return NGX_DECLINED;
        }

        rc = ngx_http_redisgate_json_feed(j, body.data, body.len);
    }

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "redisgate json: %O bytes in %ui buffer(s)%s, to yajl",
                   size, nbufs, in_file ? " and a file" : "");

    for (cl = in_file ? r->request_body->bufs : NULL;
         cl && rc == NGX_OK;
         cl = cl->next)
    {
        b = cl->buf;

        if (!b->in_file) {
            rc = ngx_http_redisgate_json_feed(j, b->pos, b->last - b->pos);
            continue;
        }

        /*
         * a body larger than client_body_buffer_size, in a temp file:
         * streamed through yajl, never whole in memory
         */

        if (buf == NULL) {
            buf = ngx_palloc(r->pool, 65536);
            if (buf == NULL) {
                rc = NGX_ERROR;
                break;
            }
        }

        for (offset = b->file_pos; offset < b->file_last; offset += n) {
            n = ngx_read_file(b->file, buf,
                              (size_t) ngx_min(65536, b->file_last - offset),
                              offset);
            if (n <= 0) {
                ngx_http_redisgate_json_destroy(j);
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            rc = ngx_http_redisgate_json_feed(j, buf, n);
            if (rc != NGX_OK) {
                break;
            }
        }
    }

    if (rc == NGX_OK) {
        rc = ngx_http_redisgate_json_finish(j, &ctx->cmds, &ctx->ncmds);
    }

    ngx_http_redisgate_json_destroy(j);

    if (rc != NGX_OK) {
        return ngx_http_redisgate_send_error(r, NGX_HTTP_BAD_REQUEST, "%s",
                                       ngx_http_redisgate_json_error(j));
    }

    return NGX_DECLINED;
}


/* the raw body as one string: in place when nginx kept it in one buffer */

ngx_int_t
ngx_http_redisgate_body_bytes(ngx_http_request_t *r, ngx_str_t *body)
{
    u_char       *p;
    off_t         len;
    ssize_t       n;
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    ngx_str_null(body);

    if (r->request_body == NULL || r->request_body->bufs == NULL) {
        return NGX_OK;
    }

    cl = r->request_body->bufs;

    if (cl->next == NULL && !cl->buf->in_file) {
        body->data = cl->buf->pos;
        body->len = cl->buf->last - cl->buf->pos;
        return NGX_OK;
    }

    len = 0;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        len += ngx_buf_size(cl->buf);
    }

    body->data = ngx_pnalloc(r->pool, len);
    if (body->data == NULL) {
        return NGX_ERROR;
    }

    p = body->data;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;

        if (b->in_file) {
            n = ngx_read_file(b->file, p, b->file_last - b->file_pos,
                              b->file_pos);
            if (n != b->file_last - b->file_pos) {
                return NGX_ERROR;
            }

            p += n;
            continue;
        }

        p = ngx_cpymem(p, b->pos, b->last - b->pos);
    }

    body->len = p - body->data;

    return NGX_OK;
}


static ngx_int_t
ngx_http_redisgate_check_commands(ngx_http_request_t *r,
    ngx_http_redisgate_ctx_t *ctx)
{
    u_char                          name[NGX_HTTP_REDISGATE_NAME_MAX];
    ngx_int_t                       rc;
    ngx_str_t                       reason, other, *script, *same;
    ngx_uint_t                      i, map, by_name;
    ngx_http_redisgate_cmd_t       *cmd;
    ngx_http_redisgate_alloc_t      a;
    ngx_http_redisgate_loc_conf_t  *rlcf;

    rlcf = ngx_http_get_module_loc_conf(r, ngx_http_redisgate_module);

    ctx->map = ngx_pcalloc(r->pool, ctx->ncmds);
    if (ctx->map == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    a.alloc = ngx_http_redisgate_palloc;
    a.data = r->pool;

    same = NULL;
    map = 0;

    for (i = 0; i < ctx->ncmds; i++) {
        cmd = &ctx->cmds[i];

        /*
         * FLUSHALL, for a tenant, means everything this instance holds:
         * its database, not the server's (ASYNC or SYNC kept)
         */

        if (cmd->argv[0].len == 8
            && ngx_strncasecmp(cmd->argv[0].data, (u_char *) "flushall", 8)
               == 0)
        {
            cmd->argv[0] = ngx_http_redisgate_flushdb;
        }

        /*
         * A NUL in a command's name: Redis 7.0 finds commands with
         * strcasecmp(), which stops there, so "CONFIG\0" is CONFIG when
         * its hash lands in CONFIG's bucket (a random seed decides):
         * never a name the policy did not see
         */

        if (ngx_strlchr(cmd->argv[0].data,
                        cmd->argv[0].data + cmd->argv[0].len, '\0'))
        {
            return ngx_http_redisgate_send_error(r, NGX_HTTP_BAD_REQUEST,
                                  "ERR a command name cannot hold a NUL "
                                  "byte");
        }

        /* a pipeline of a hundred GETs asks the policy once */

        if (same && same->len == cmd->argv[0].len
            && ngx_memcmp(same->data, cmd->argv[0].data, same->len) == 0)
        {
            ctx->map[i] = ctx->map[i - 1];
            continue;
        }

        reason.data = name;

        rc = ngx_http_redisgate_policy_check(rlcf, cmd, ctx->auth.scopes,
                                             &reason, &map, &by_name);

        if (rc == NGX_DECLINED) {
            return ngx_http_redisgate_send_error(r, NGX_HTTP_BAD_REQUEST,
                                  "ERR command '%V' is not allowed through "
                                  "this gateway", &reason);
        }

        if (rc == NGX_ABORT) {
            ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                           "redisgate: key \"%V\" lacks the scope for %V",
                           &ctx->auth.key_id, &reason);

            return ngx_http_redisgate_send_error(r, NGX_HTTP_FORBIDDEN,
                                  "Forbidden: this API key's scopes do not "
                                  "allow '%V'", &reason);
        }

        if (ngx_http_redisgate_policy_check_db(cmd,
                                               ctx->auth.backend->address.db,
                                               &other)
            != NGX_OK)
        {
            return ngx_http_redisgate_send_error(r, NGX_HTTP_BAD_REQUEST,
                                  "ERR COPY into another database (DB %V) "
                                  "is not allowed through this gateway: an "
                                  "instance is one database", &other);
        }

        ctx->map[i] = (u_char) (map && ctx->hash_object);

        /* EVAL/EVAL_RO script, SCRIPT LOAD script */

        script = NULL;

        if (((reason.len == 4 && ngx_strncmp(name, "eval", 4) == 0)
             || (reason.len == 7 && ngx_strncmp(name, "eval_ro", 7) == 0))
            && cmd->argc > 1)
        {
            script = &cmd->argv[1];

        } else if (reason.len == 11
                   && ngx_strncmp(name, "script|load", 11) == 0
                   && cmd->argc > 2)
        {
            script = &cmd->argv[2];
        }

        if (script
            && ngx_http_redisgate_command_fix_script(script, &a) != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        same = (by_name && script == NULL) ? &cmd->argv[0] : NULL;
    }

    return NGX_DECLINED;
}


static ngx_int_t
ngx_http_redisgate_send_commands(ngx_http_request_t *r,
    ngx_http_redisgate_ctx_t *ctx)
{
    u_char      *p;
    size_t       len;
    ngx_str_t   *resp;
    ngx_uint_t   i, n, multi;

    multi = (ctx->route.kind == NGX_HTTP_REDISGATE_ROUTE_MULTI);
    n = ctx->ncmds + (multi ? 2 : 0);

    resp = ngx_palloc(r->pool, n * sizeof(ngx_str_t));
    if (resp == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    len = 0;

    for (i = 0; i < ctx->ncmds; i++) {
        len += ngx_http_redisgate_resp_command_len(&ctx->cmds[i]);
    }

    /* one buffer for all; the link copies them when they are queued */

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    i = 0;

    if (multi) {
        resp[i++] = ngx_http_redisgate_multi;
    }

    for ( /* void */ ; i < ctx->ncmds + multi; i++) {
        resp[i].data = p;
        p = ngx_http_redisgate_resp_command(p, &ctx->cmds[i - multi]);
        resp[i].len = p - resp[i].data;
    }

    if (multi) {
        resp[i++] = ngx_http_redisgate_exec;
    }

    ngx_log_debug4(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "redisgate: %ui command(s) to %V for key \"%V\", "
                   "first \"%V\"", ctx->ncmds,
                   &ctx->auth.backend->address.url, &ctx->auth.key_id,
                   &ctx->cmds[0].argv[0]);

    ctx->resp = resp;
    ctx->nresp = n;

    return ngx_http_redisgate_dispatch(r, ctx);
}


/*
 * To the backend's pool, once it has an address (a host name from the key
 * store may have to be resolved first): NGX_DONE while the answer is out.
 */

static ngx_int_t
ngx_http_redisgate_dispatch(ngx_http_request_t *r,
    ngx_http_redisgate_ctx_t *ctx)
{
    ngx_int_t                       rc;
    ngx_uint_t                      single;
    const char                     *error;
    ngx_http_redisgate_loc_conf_t  *rlcf;

    rlcf = ngx_http_get_module_loc_conf(r, ngx_http_redisgate_module);

    rc = ngx_http_redisgate_backend_ready(ctx->auth.backend, r,
                                          ngx_http_redisgate_retry_send,
                                          &error);

    if (rc == NGX_OK) {
        /* a single command's large value goes to the client as it comes */
        single = (ctx->route.kind == NGX_HTTP_REDISGATE_ROUTE_JSON
                  || ctx->route.kind == NGX_HTTP_REDISGATE_ROUTE_PATH)
                 && ctx->ncmds == 1 && r->method != NGX_HTTP_HEAD;

        rc = ngx_http_redisgate_backend_send(ctx->auth.backend, r, ctx->cmds,
                         ctx->resp, ctx->ncmds,
                         ctx->route.kind == NGX_HTTP_REDISGATE_ROUTE_MULTI,
                         rlcf->timeout, ngx_http_redisgate_on_reply,
                         single ? ngx_http_redisgate_bulk_piece : NULL, ctx,
                         &error);

        if (rc == NGX_OK) {
            ctx->redis_start = ngx_current_msec;
            ngx_http_redisgate_stats_count(NGX_HTTP_REDISGATE_STAT_COMMANDS,
                                           ctx->ncmds);
        }
    }

    if (rc == NGX_ABORT) {
        /* a transaction whose keys are in several slots of a cluster */
        return ngx_http_redisgate_send_error(r, NGX_HTTP_BAD_REQUEST, "%s",
                                             error);
    }

    if (rc == NGX_DECLINED) {
        return ngx_http_redisgate_send_error(r,
                                  NGX_HTTP_INTERNAL_SERVER_ERROR, "%s", error);
    }

    if (rc != NGX_OK && rc != NGX_AGAIN) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* notice a client that leaves while waiting */
    ngx_http_redisgate_wait_client(r);

    return NGX_DONE;
}


/* the backend's host name is resolved (or not): send what was waiting */

static void
ngx_http_redisgate_retry_send(ngx_http_request_t *r)
{
    ngx_int_t                  rc;
    ngx_http_redisgate_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_redisgate_module);

    rc = ngx_http_redisgate_dispatch(r, ctx);

    ngx_http_redisgate_resume(r, rc);
}


static void
ngx_http_redisgate_on_reply(void *data, redisReply *reply, const char *error)
{
    ngx_http_redisgate_ctx_t *ctx = data;

    size_t               i;
    ngx_int_t            rc;
    ngx_uint_t           index, multi;
    redisReply           aborted;
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = ctx->request;

    if (reply == NULL && error == NULL) {
        c = r->connection;

        ctx->redis_time = ngx_current_msec - ctx->redis_start;
        ctx->redis_done = 1;

        rc = ngx_http_redisgate_finish(r, ctx);

        ngx_http_finalize_request(r, rc);
        ngx_http_run_posted_requests(c);
        return;
    }

    index = ctx->replies++;

    if (ctx->bulk) {
        ngx_http_redisgate_bulk_replied(ctx, error);
    }

    if (reply == &ngx_http_redisgate_link_streamed) {
        /* it went to the client in pieces (bulk.c) */
        return;
    }

    if (reply == NULL) {
        if (ctx->error == NULL) {
            ctx->error = error;
        }

        return;
    }

    if (ctx->error) {
        return;
    }

    multi = (ctx->route.kind == NGX_HTTP_REDISGATE_ROUTE_MULTI);

    if (!multi) {
        if (ctx->route.kind != NGX_HTTP_REDISGATE_ROUTE_PIPELINE
            && reply->type == REDIS_REPLY_ERROR)
        {
            ctx->status = NGX_HTTP_BAD_REQUEST;
        }

        if (ngx_http_redisgate_add_entry(ctx, reply, ctx->map[index], index)
            != NGX_OK)
        {
            ctx->error = "out of memory";
        }

        return;
    }

    /* MULTI, then QUEUED or an error per command, then EXEC */

    if (index <= ctx->ncmds) {
        if (reply->type == REDIS_REPLY_ERROR && ctx->queue_error == NULL) {
            /* EXEC will refuse; keep the reason (freed after we return) */
            ctx->queue_error = ngx_palloc(r->pool, sizeof(redisReply));
            if (ctx->queue_error == NULL) {
                ctx->error = "out of memory";
                return;
            }

            *ctx->queue_error = *reply;
            ctx->queue_error->str = ngx_pnalloc(r->pool, reply->len);
            if (ctx->queue_error->str == NULL) {
                ctx->error = "out of memory";
                return;
            }

            ngx_memcpy(ctx->queue_error->str, reply->str, reply->len);
        }

        return;
    }

    if (reply->type != REDIS_REPLY_ARRAY) {
        /* EXECABORT: one error for the whole transaction */
        ctx->status = NGX_HTTP_BAD_REQUEST;

        if (reply->type == REDIS_REPLY_ERROR && ctx->queue_error) {
            reply = ngx_http_redisgate_exec_error(r, reply, ctx->queue_error);
            if (reply == NULL) {
                ctx->error = "out of memory";
                return;
            }
        }

        if (reply->type == REDIS_REPLY_NIL) {
            /* hiredis' reply is its own to free: a copy says it instead */
            ngx_memzero(&aborted, sizeof(redisReply));
            aborted.type = REDIS_REPLY_ERROR;
            aborted.str = "EXECABORT Transaction aborted";
            aborted.len = sizeof("EXECABORT Transaction aborted") - 1;
            reply = &aborted;
        }

        if (ngx_http_redisgate_add_entry(ctx, reply, 0, 0) != NGX_OK) {
            ctx->error = "out of memory";
        }

        return;
    }

    for (i = 0; i < reply->elements; i++) {
        if (ngx_http_redisgate_add_entry(ctx, reply->element[i],
                                         i < ctx->ncmds ? ctx->map[i] : 0, i)
            != NGX_OK)
        {
            ctx->error = "out of memory";
            return;
        }
    }
}


/* "EXECABORT Transaction discarded ...: ERR unknown command 'foo'" */

static redisReply *
ngx_http_redisgate_exec_error(ngx_http_request_t *r, redisReply *exec,
    redisReply *queued)
{
    u_char      *p;
    size_t       len;
    redisReply  *e;

    e = ngx_palloc(r->pool, sizeof(redisReply));
    if (e == NULL) {
        return NULL;
    }

    *e = *exec;

    len = exec->len;

    if (len && exec->str[len - 1] == '.') {
        len--;
    }

    e->str = ngx_pnalloc(r->pool, len + 2 + queued->len);
    if (e->str == NULL) {
        return NULL;
    }

    p = ngx_cpymem(e->str, exec->str, len);
    *p++ = ':';
    *p++ = ' ';
    p = ngx_cpymem(p, queued->str, queued->len);

    e->len = p - (u_char *) e->str;

    return e;
}


/* {"result":X} or {"error":"..."}, after a comma unless it is the first */

static ngx_int_t
ngx_http_redisgate_add_entry(ngx_http_redisgate_ctx_t *ctx, redisReply *reply,
    ngx_uint_t map, ngx_uint_t comma)
{
    u_char      *p;
    size_t       len;
    ngx_uint_t   flags;

    if (ctx->resp2) {
        len = ngx_http_redisgate_resp_reply_len(reply);

        p = ngx_http_redisgate_reserve(ctx, len);
        if (p == NULL) {
            return NGX_ERROR;
        }

        p = ngx_http_redisgate_resp_reply(p, reply);

        goto done;
    }

    flags = ctx->encoding | (map ? NGX_HTTP_REDISGATE_ENC_MAP : 0);

    if (reply->type == REDIS_REPLY_ERROR) {
        len = sizeof(",{\"error\":}") - 1
              + ngx_http_redisgate_json_string_len((u_char *) reply->str,
                                                   reply->len, 0);

    } else {
        len = sizeof(",{\"result\":}") - 1
              + ngx_http_redisgate_json_value_len(reply, flags);
    }

    p = ngx_http_redisgate_reserve(ctx, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    if (comma) {
        *p++ = ',';
    }

    if (reply->type == REDIS_REPLY_ERROR) {
        p = ngx_cpymem(p, "{\"error\":", sizeof("{\"error\":") - 1);
        p = ngx_http_redisgate_json_string(p, (u_char *) reply->str,
                                           reply->len, 0);

    } else {
        p = ngx_cpymem(p, "{\"result\":", sizeof("{\"result\":") - 1);
        p = ngx_http_redisgate_json_value(p, reply, flags);
    }

    *p++ = '}';

done:

    ctx->length += p - ctx->out_buf->last;
    ctx->out_buf->last = p;

    return NGX_OK;
}


/*
 * Room for len bytes at the end of the response: entries share buffers of
 * NGX_HTTP_REDISGATE_OUT_SIZE (or one of their own when larger), so a
 * pipeline's thousand small answers cost a few allocations, not thousands.
 * A single command's answer is all one entry: its buffer is just its size,
 * which for a small answer stays in the pool's block instead of a malloc
 * and a free of 8 kB (ngx_palloc takes anything above a page from the
 * heap).
 */

static u_char *
ngx_http_redisgate_reserve(ngx_http_redisgate_ctx_t *ctx, size_t len)
{
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    b = ctx->out_buf;

    if (b && (size_t) (b->end - b->last) >= len) {
        return b->last;
    }

    b = ngx_create_temp_buf(ctx->request->pool,
                            ctx->ncmds > 1
                            ? ngx_max(len, NGX_HTTP_REDISGATE_OUT_SIZE)
                            : len);
    if (b == NULL) {
        return NULL;
    }

    cl = ngx_alloc_chain_link(ctx->request->pool);
    if (cl == NULL) {
        return NULL;
    }

    cl->buf = b;
    cl->next = NULL;

    *ctx->last = cl;
    ctx->last = &cl->next;
    ctx->out_buf = b;

    return b->last;
}


static ngx_int_t
ngx_http_redisgate_finish(ngx_http_request_t *r, ngx_http_redisgate_ctx_t *ctx)
{
    ngx_buf_t    *b;
    ngx_chain_t  *open, *close;

    if (ctx->bulk) {
        return ngx_http_redisgate_bulk_finish(r, ctx);
    }

    if (ctx->error) {
        return ngx_http_redisgate_send_error(r,
                                  NGX_HTTP_INTERNAL_SERVER_ERROR, "%s",
                                  ctx->error);
    }

    if (ctx->resp2
        || ctx->route.kind == NGX_HTTP_REDISGATE_ROUTE_JSON
        || ctx->route.kind == NGX_HTTP_REDISGATE_ROUTE_PATH
        || ctx->status != NGX_HTTP_OK)
    {
        return ngx_http_redisgate_send(r, ctx->status, ctx->out, ctx->length,
                                       ctx->resp2);
    }

    /* pipeline and multi-exec: [entry,entry,...] */

    open = ngx_alloc_chain_link(r->pool);
    close = ngx_alloc_chain_link(r->pool);
    if (open == NULL || close == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->pos = (u_char *) "[";
    b->last = b->pos + 1;
    b->memory = 1;
    open->buf = b;
    open->next = ctx->out;

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->pos = (u_char *) "]";
    b->last = b->pos + 1;
    b->memory = 1;
    close->buf = b;
    close->next = NULL;

    *ctx->last = close;

    return ngx_http_redisgate_send(r, NGX_HTTP_OK, open, ctx->length + 2, 0);
}


static ngx_int_t
ngx_http_redisgate_send(ngx_http_request_t *r, ngx_uint_t status,
    ngx_chain_t *out, off_t length, ngx_uint_t raw)
{
    ngx_int_t     rc;
    ngx_chain_t  *cl;

    if (out == NULL) {
        r->header_only = 1;
    }

    rc = ngx_http_redisgate_send_header(r, status, length, raw);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    for (cl = out; cl->next; cl = cl->next) { /* void */ }

    cl->buf->last_buf = (r == r->main) ? 1 : 0;
    cl->buf->last_in_chain = 1;

    return ngx_http_output_filter(r, out);
}


/* a response's headers, with the token's and the rate limit's */

ngx_int_t
ngx_http_redisgate_send_header(ngx_http_request_t *r, ngx_uint_t status,
    off_t length, ngx_uint_t raw)
{
    r->headers_out.status = status;
    r->headers_out.content_length_n = length;
    r->headers_out.content_type = raw ? ngx_http_redisgate_resp_type
                                      : ngx_http_redisgate_json_type;
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    if (ngx_http_redisgate_sync_token(r) != NGX_OK
        || ngx_http_redisgate_rate_headers(r) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (r->method == NGX_HTTP_HEAD) {
        r->header_only = 1;
    }

    return ngx_http_send_header(r);
}


ngx_int_t
ngx_http_redisgate_send_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *fmt, ...)
{
    u_char        text[512], *last, *p;
    size_t        len;
    va_list       args;
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    va_start(args, fmt);
    last = ngx_vslprintf(text, text + sizeof(text), fmt, args);
    va_end(args);

    len = sizeof("{\"error\":}") - 1
          + ngx_http_redisgate_json_string_len(text, last - text, 0);

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_cpymem(b->last, "{\"error\":", sizeof("{\"error\":") - 1);
    p = ngx_http_redisgate_json_string(p, text, last - text, 0);
    *p++ = '}';
    b->last = p;

    if (r->headers_in.content_length_n > 0 || r->headers_in.chunked) {
        /* an answer before the body was read: nginx drops the rest */
        if (r->request_body == NULL
            && ngx_http_discard_request_body(r) != NGX_OK)
        {
            r->keepalive = 0;
        }
    }

    if (status == NGX_HTTP_NOT_ALLOWED) {
        if (ngx_http_redisgate_allow_header(r) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    out.buf = b;
    out.next = NULL;

    rc = ngx_http_redisgate_send(r, status, &out, b->last - b->pos, 0);

    return rc;
}


static ngx_int_t
ngx_http_redisgate_allow_header(ngx_http_request_t *r)
{
    return ngx_http_redisgate_add_header(r, "Allow",
                                         (u_char *) "GET, HEAD, POST, PUT",
                                         sizeof("GET, HEAD, POST, PUT") - 1);
}


/* RateLimit-Limit, -Remaining, -Reset, and Retry-After when over */

static ngx_int_t
ngx_http_redisgate_rate_headers(ngx_http_request_t *r)
{
    u_char                    *p, *last;
    ngx_http_redisgate_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_redisgate_module);

    if (ctx == NULL || !ctx->limited) {
        return NGX_OK;
    }

    p = ngx_pnalloc(r->pool, 4 * NGX_TIME_T_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    last = ngx_sprintf(p, "%ui", ctx->limit.limit);
    if (ngx_http_redisgate_add_header(r, "RateLimit-Limit", p, last - p)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    p = last;
    last = ngx_sprintf(p, "%ui", ctx->limit.remaining);
    if (ngx_http_redisgate_add_header(r, "RateLimit-Remaining", p, last - p)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    p = last;
    last = ngx_sprintf(p, "%T", ctx->limit.reset);
    if (ngx_http_redisgate_add_header(r, "RateLimit-Reset", p, last - p)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (ctx->limit.retry_after == 0) {
        return NGX_OK;
    }

    p = last;
    last = ngx_sprintf(p, "%T", ctx->limit.retry_after);

    return ngx_http_redisgate_add_header(r, "Retry-After", p, last - p);
}


ngx_int_t
ngx_http_redisgate_add_header(ngx_http_request_t *r, char *name,
    u_char *value, size_t len)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    h->key.data = (u_char *) name;
    h->key.len = ngx_strlen(name);
    h->value.data = value;
    h->value.len = len;

    return NGX_OK;
}


/*
 * upstash-sync-token: fresh on every response.  Reads go to the same
 * primary, so a per-worker counter behind a per-worker prefix will do.
 */

static ngx_int_t
ngx_http_redisgate_sync_token(ngx_http_request_t *r)
{
    u_char  *p, *last;

    p = ngx_pnalloc(r->pool, NGX_INT_T_LEN * 3 + 2);
    if (p == NULL) {
        return NGX_ERROR;
    }

    last = ngx_sprintf(p, "%xP-%xT-%xi", ngx_pid,
                       ngx_http_redisgate_worker_start,
                       ++ngx_http_redisgate_sync_counter);

    return ngx_http_redisgate_add_header(r, "upstash-sync-token", p,
                                         last - p);
}


/* the log phase: every request this module answered, into the stats */

ngx_int_t
ngx_http_redisgate_log_handler(ngx_http_request_t *r)
{
    ngx_str_t                        instance;
    ngx_time_t                      *tp;
    ngx_msec_int_t                   ms;
    ngx_http_redisgate_ctx_t        *ctx;
    ngx_http_redisgate_main_conf_t  *rmcf;

    ctx = ngx_http_get_module_ctx(r, ngx_http_redisgate_module);

    if (ctx == NULL) {
        return NGX_OK;
    }

    tp = ngx_timeofday();

    ms = (ngx_msec_int_t) ((tp->sec - r->start_sec) * 1000
                           + (tp->msec - r->start_msec));

    ngx_http_redisgate_stats_request(ctx->route.kind, r->headers_out.status,
                                     (ngx_msec_t) ngx_max(ms, 0));

    rmcf = ngx_http_get_module_main_conf(r, ngx_http_redisgate_module);

    if (rmcf->usage && ctx->redis_start) {
        instance.data = ctx->route.instance;
        instance.len = NGX_HTTP_REDISGATE_UUID_LEN;

        /* keys of the key store are marked used; nginx.conf's have no row */
        ngx_http_redisgate_usage_record(rmcf->usage, &ctx->auth.organization,
                                &instance,
                                (ctx->auth.source
                                 == NGX_HTTP_REDISGATE_SOURCE_STATIC)
                                ? NULL : &ctx->auth.key_id,
                                1, ctx->ncmds, r->request_length,
                                r->headers_out.content_length_n >= 0
                                ? r->headers_out.content_length_n
                                : ctx->length);
    }

    return NGX_OK;
}


/* the request waits for something else: only a client leaving wakes it */

void
ngx_http_redisgate_wait_client(ngx_http_request_t *r)
{
    r->read_event_handler = ngx_http_test_reading;
    r->write_event_handler = ngx_http_request_empty_handler;
}


/* a step that ran from an event: the request finalized unless it waits */

void
ngx_http_redisgate_resume(ngx_http_request_t *r, ngx_int_t rc)
{
    ngx_connection_t  *c;

    c = r->connection;

    if (rc != NGX_DONE) {
        ngx_http_finalize_request(r, rc);
    }

    ngx_http_run_posted_requests(c);
}
