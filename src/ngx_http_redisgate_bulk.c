
/*
 * Copyright (C) RedisGate authors
 */


/*
 * A large value to the client as it comes from Redis.  When a single
 * command's reply is a bulk string of NGX_HTTP_REDISGATE_LINK_BULK_MIN
 * bytes or more, the transport hands it over in pieces (transport.h);
 * each piece is encoded (escaped or base64, or RESP2 as it is) into
 * buffers of NGX_HTTP_REDISGATE_BULK_BUF bytes, which go to the client at
 * once and are used again when sent.  The whole value is never in memory.
 *
 * The headers go first: Content-Length when the length is known from the
 * value's (base64, RESP2), else chunked.  When more than
 * NGX_HTTP_REDISGATE_BULK_PENDING bytes wait for a slow client, the Redis
 * connection reads no more until they drain; a client slower than the
 * command timeout is cut (redis.c), and an error after the headers can
 * only end the connection early.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_redisgate.h"


#define NGX_HTTP_REDISGATE_BULK_BUF      (32 * 1024)
#define NGX_HTTP_REDISGATE_BULK_PENDING  (256 * 1024)


struct ngx_http_redisgate_bulk_s {
    ngx_http_redisgate_piece_t   enc;
    ngx_http_redisgate_op_t     *op;        /* to resume, while paused */
    ngx_chain_t                 *cur;       /* being filled */
    ngx_chain_t                 *free;
    ngx_chain_t                 *busy;
    const char                  *error;     /* why it ended early */
    ngx_uint_t                   level;     /* to log it at */
    unsigned                     raw:1;
    unsigned                     done:1;    /* all of it is out */
};


static ngx_int_t ngx_http_redisgate_bulk_start(ngx_http_request_t *r,
    ngx_http_redisgate_ctx_t *ctx, off_t size);
static ngx_chain_t *ngx_http_redisgate_bulk_buf(ngx_http_request_t *r,
    ngx_http_redisgate_bulk_t *b);
static ngx_int_t ngx_http_redisgate_bulk_fill(ngx_http_request_t *r,
    ngx_http_redisgate_bulk_t *b, u_char *p, size_t n, ngx_uint_t final,
    ngx_chain_t **out);
static ngx_int_t ngx_http_redisgate_bulk_output(ngx_http_request_t *r,
    ngx_http_redisgate_bulk_t *b, ngx_chain_t *out);
static size_t ngx_http_redisgate_bulk_pending(ngx_http_redisgate_bulk_t *b);
static void ngx_http_redisgate_bulk_write(ngx_http_request_t *r);
static void ngx_http_redisgate_bulk_cleanup(void *data);
static void ngx_http_redisgate_bulk_end(ngx_http_request_t *r,
    ngx_http_redisgate_bulk_t *b, ngx_uint_t level, const char *error);


/* the request's ngx_http_redisgate_bulk_pt */

ngx_int_t
ngx_http_redisgate_bulk_piece(void *data, ngx_http_redisgate_op_t *op,
    u_char *p, size_t n, off_t left)
{
    ngx_http_redisgate_ctx_t *ctx = data;

    ngx_int_t                   rc;
    ngx_chain_t                *out, *cl;
    ngx_connection_t           *c;
    ngx_http_request_t         *r;
    ngx_http_redisgate_bulk_t  *b;

    r = ctx->request;

    if (p == NULL) {
        if (left >= 0) {
            return ngx_http_redisgate_bulk_start(r, ctx, left);
        }

        /* cut, too slow (redis.c logged it): the op is not ours now */
        if (ctx->bulk) {
            ctx->bulk->op = NULL;
        }

        c = r->connection;

        /* from a timer: what the end posts runs now, not at c's next event */
        ngx_http_finalize_request(r, NGX_ERROR);
        ngx_http_run_posted_requests(c);

        return NGX_OK;
    }

    b = ctx->bulk;

    if (b == NULL || b->error || b->done) {
        /* it could not start, or ended: the rest is dropped */
        return NGX_OK;
    }

    if (ngx_http_redisgate_bulk_fill(r, b, p, n, left == 0, &out) != NGX_OK) {
        ngx_http_redisgate_bulk_end(r, b, NGX_LOG_ERR, "out of memory");
        return NGX_OK;
    }

    for (cl = out; cl; cl = cl->next) {
        ctx->length += ngx_buf_size(cl->buf);
    }

    rc = ngx_http_redisgate_bulk_output(r, b, out);

    if (rc == NGX_ERROR) {
        ngx_http_redisgate_bulk_end(r, b, NGX_LOG_INFO,
                                    "the client connection failed");
        return NGX_OK;
    }

    if (b->done
        || ngx_http_redisgate_bulk_pending(b) < NGX_HTTP_REDISGATE_BULK_PENDING)
    {
        return NGX_OK;
    }

    /* enough waits for the client: Redis waits too */

    b->op = op;

    return NGX_AGAIN;
}


static ngx_int_t
ngx_http_redisgate_bulk_start(ngx_http_request_t *r,
    ngx_http_redisgate_ctx_t *ctx, off_t size)
{
    u_char                     *p;
    off_t                       length;
    ngx_int_t                   rc;
    ngx_chain_t                *cl;
    ngx_pool_cleanup_t         *cln;
    ngx_http_redisgate_bulk_t  *b;

    b = ngx_pcalloc(r->pool, sizeof(ngx_http_redisgate_bulk_t));
    cln = ngx_pool_cleanup_add(r->pool, 0);
    cl = (b && cln) ? ngx_http_redisgate_bulk_buf(r, b) : NULL;

    if (cl == NULL) {
        /* nothing is sent yet, and the pieces are dropped: an error
         * answer at the end */
        ctx->error = "out of memory";
        return NGX_OK;
    }

    cln->handler = ngx_http_redisgate_bulk_cleanup;
    cln->data = b;

    ctx->bulk = b;
    b->level = NGX_LOG_ERR;

    /*
     * The pace is the client's, and Redis waits on it: limit_rate's own
     * delays would hold the Redis connection too (nginx's unbuffered
     * proxying turns it off the same way)
     */
    r->limit_rate = 0;
    r->limit_rate_set = 1;

    b->raw = ctx->resp2;
    b->enc.base64 = ctx->encoding & NGX_HTTP_REDISGATE_ENC_BASE64;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "redisgate: a bulk reply of %O bytes, streamed", size);

    /* its opening, in the first buffer */

    if (b->raw) {
        p = ngx_sprintf(cl->buf->pos, "$%O\r\n", size);
        length = (p - cl->buf->pos) + size + 2;

    } else {
        p = ngx_cpymem(cl->buf->pos, "{\"result\":\"",
                       sizeof("{\"result\":\"") - 1);

        /* base64's length is known; escaping's is not before the end */
        length = b->enc.base64
                 ? (off_t) (sizeof("{\"result\":\"\"}") - 1)
                   + (size + 2) / 3 * 4
                 : -1;
    }

    cl->buf->last = p;
    b->cur = cl;

    rc = ngx_http_redisgate_send_header(r, NGX_HTTP_OK, length, b->raw);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        ngx_http_redisgate_bulk_end(r, b, NGX_LOG_INFO,
                                    "the headers could not be sent");
    }

    return NGX_OK;
}


/*
 * n bytes encoded into buffers, chained to *out: all of them, and the
 * end when final.  Buffers sent are used again (b->free).
 */

static ngx_int_t
ngx_http_redisgate_bulk_fill(ngx_http_request_t *r,
    ngx_http_redisgate_bulk_t *b, u_char *p, size_t n, ngx_uint_t final,
    ngx_chain_t **out)
{
    u_char        *s, *last, *end;
    size_t         k;
    ngx_buf_t     *buf;
    ngx_chain_t  **ll;

    s = p;
    last = p + n;
    ll = out;

    for ( ;; ) {

        if (b->cur == NULL) {
            b->cur = ngx_http_redisgate_bulk_buf(r, b);
            if (b->cur == NULL) {
                return NGX_ERROR;
            }
        }

        buf = b->cur->buf;

        /* two bytes stay for the end: "} or CRLF */
        end = buf->end - 2;

        if (b->raw) {
            k = ngx_min((size_t) (last - s), (size_t) (end - buf->last));
            buf->last = ngx_cpymem(buf->last, s, k);
            s += k;

        } else {
            buf->last = ngx_http_redisgate_json_piece(&b->enc, buf->last, end,
                                                      &s, last, final);
        }

        if (s == last && final && b->enc.ncarry == 0) {
            buf->last = b->raw ? ngx_cpymem(buf->last, "\r\n", 2)
                               : ngx_cpymem(buf->last, "\"}", 2);
            buf->last_buf = (r == r->main) ? 1 : 0;
            buf->last_in_chain = 1;
            b->done = 1;

        } else if (s < last || final) {
            /* full: the next */
            *ll = b->cur;
            ll = &b->cur->next;
            b->cur = NULL;
            continue;
        }

        if (buf->last == buf->pos) {
            /* nothing yet (the piece's bytes are kept for the next): the
             * buffer waits for them, an empty one must not go out */
            break;
        }

        /* what this piece made goes now */
        *ll = b->cur;
        ll = &b->cur->next;
        b->cur = NULL;

        break;
    }

    *ll = NULL;

    return NGX_OK;
}


/* an empty buffer: one sent already (b->free), or a new one */

static ngx_chain_t *
ngx_http_redisgate_bulk_buf(ngx_http_request_t *r,
    ngx_http_redisgate_bulk_t *b)
{
    ngx_chain_t  *cl;

    cl = ngx_chain_get_free_buf(r->pool, &b->free);
    if (cl == NULL) {
        return NULL;
    }

    if (cl->buf->start == NULL) {
        cl->buf->start = ngx_palloc(r->pool, NGX_HTTP_REDISGATE_BULK_BUF);
        if (cl->buf->start == NULL) {
            return NULL;
        }

        cl->buf->pos = cl->buf->start;
        cl->buf->last = cl->buf->start;
        cl->buf->end = cl->buf->start + NGX_HTTP_REDISGATE_BULK_BUF;
        cl->buf->temporary = 1;
        cl->buf->tag = (ngx_buf_tag_t) &ngx_http_redisgate_module;
    }

    return cl;
}


static ngx_int_t
ngx_http_redisgate_bulk_output(ngx_http_request_t *r,
    ngx_http_redisgate_bulk_t *b, ngx_chain_t *out)
{
    ngx_int_t                  rc;
    ngx_event_t               *wev;
    ngx_http_core_loc_conf_t  *clcf;

    rc = ngx_http_output_filter(r, out);

    ngx_chain_update_chains(r->pool, &b->free, &b->busy, &out,
                            (ngx_buf_tag_t) &ngx_http_redisgate_module);

    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    if (b->done) {
        /* the request's end sends what is left, with nginx's writer */
        return rc;
    }

    /* the client's socket drains the rest; send_timeout as proxy has it */

    r->write_event_handler = ngx_http_redisgate_bulk_write;

    wev = r->connection->write;
    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    if (ngx_handle_write_event(wev, clcf->send_lowat) != NGX_OK) {
        return NGX_ERROR;
    }

    if (wev->active && !wev->ready) {
        ngx_add_timer(wev, clcf->send_timeout);

    } else if (wev->timer_set) {
        ngx_del_timer(wev);
    }

    return rc;
}


static size_t
ngx_http_redisgate_bulk_pending(ngx_http_redisgate_bulk_t *b)
{
    size_t        size;
    ngx_chain_t  *cl;

    size = 0;

    for (cl = b->busy; cl; cl = cl->next) {
        size += ngx_buf_size(cl->buf);
    }

    return size;
}


/* the client's socket can take more */

static void
ngx_http_redisgate_bulk_write(ngx_http_request_t *r)
{
    ngx_connection_t           *c;
    ngx_http_redisgate_op_t    *op;
    ngx_http_redisgate_ctx_t   *ctx;
    ngx_http_redisgate_bulk_t  *b;

    c = r->connection;
    ctx = ngx_http_get_module_ctx(r, ngx_http_redisgate_module);
    b = ctx->bulk;

    if (c->write->timedout) {
        ngx_log_error(NGX_LOG_INFO, c->log, NGX_ETIMEDOUT,
                      "redisgate: client timed out reading a large reply");
        c->timedout = 1;
        ngx_http_finalize_request(r, NGX_HTTP_REQUEST_TIME_OUT);
        return;
    }

    if (ngx_http_redisgate_bulk_output(r, b, NULL) == NGX_ERROR) {
        ngx_http_finalize_request(r, NGX_ERROR);
        return;
    }

    if (b->op
        && ngx_http_redisgate_bulk_pending(b)
           < NGX_HTTP_REDISGATE_BULK_PENDING / 2)
    {
        op = b->op;
        b->op = NULL;
        ngx_http_redisgate_redis_resume(op);
    }
}


/* the request is over: a connection it held goes on */

static void
ngx_http_redisgate_bulk_cleanup(void *data)
{
    ngx_http_redisgate_bulk_t *b = data;

    ngx_http_redisgate_op_t  *op;

    if (b->op) {
        op = b->op;
        b->op = NULL;
        ngx_http_redisgate_redis_resume(op);
    }
}


/* the reply's handler was called: no op to resume from here on */

void
ngx_http_redisgate_bulk_replied(ngx_http_redisgate_ctx_t *ctx,
    const char *error)
{
    ngx_http_redisgate_bulk_t  *b;

    b = ctx->bulk;
    b->op = NULL;

    if (error && !b->done && b->error == NULL) {
        b->error = error;
        b->level = NGX_LOG_ERR;
    }
}


/* what the request ends with, once the reply's handler is done */

ngx_int_t
ngx_http_redisgate_bulk_finish(ngx_http_request_t *r,
    ngx_http_redisgate_ctx_t *ctx)
{
    ngx_http_redisgate_bulk_t  *b;

    b = ctx->bulk;

    if (b->done && b->error == NULL) {
        return NGX_OK;
    }

    if (!r->header_sent) {
        /* it failed before anything was sent: a JSON error still can be */
        return ngx_http_redisgate_send_error(r,
                                  NGX_HTTP_INTERNAL_SERVER_ERROR, "%s",
                                  b->error ? b->error : "Redis failed");
    }

    ngx_log_error(b->level, r->connection->log, 0,
                  "redisgate: a large reply ended after %O bytes: %s",
                  ctx->length, b->error ? b->error : "it was cut short");

    return NGX_ERROR;
}


static void
ngx_http_redisgate_bulk_end(ngx_http_request_t *r,
    ngx_http_redisgate_bulk_t *b, ngx_uint_t level, const char *error)
{
    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "redisgate: streaming a bulk reply stopped: %s", error);

    b->error = error;
    b->level = level;
    b->op = NULL;
}
