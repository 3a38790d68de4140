
/*
 * Copyright (C) RedisGate authors
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_redisgate_parse.h"


static ngx_int_t ngx_http_redisgate_hex(u_char c);
static ngx_int_t ngx_http_redisgate_route_is(u_char *p, size_t len,
    ngx_str_t *name);
static ngx_int_t ngx_http_redisgate_route_query(
    ngx_http_redisgate_route_t *rt, u_char *query, size_t query_len,
    ngx_uint_t args, ngx_http_redisgate_alloc_t *a);
static ngx_int_t ngx_http_redisgate_route_push(ngx_http_redisgate_route_t *rt,
    u_char *p, size_t len, ngx_http_redisgate_alloc_t *a);


static ngx_str_t  ngx_http_redisgate_route_pipeline = ngx_string("pipeline");
static ngx_str_t  ngx_http_redisgate_route_multi = ngx_string("multi-exec");
static ngx_str_t  ngx_http_redisgate_route_token = ngx_string("_token");


ngx_int_t
ngx_http_redisgate_parse_route(ngx_http_redisgate_route_t *rt, u_char *path,
    size_t len, u_char *query, size_t query_len, ngx_uint_t body,
    ngx_http_redisgate_alloc_t *a)
{
    u_char      *p, *last, *seg;
    size_t       n;
    ngx_uint_t   max;

    last = path + len;

    /* a trailing slash names no empty argument */
    if (len && last[-1] == '/') {
        last--;
    }

    seg = path;
    p = ngx_strlchr(seg, last, '/');
    if (p == NULL) {
        p = last;
    }

    if (ngx_http_redisgate_parse_uuid(rt->instance, seg, p - seg) != NGX_OK) {
        return NGX_DECLINED;
    }

    rt->kind = body ? NGX_HTTP_REDISGATE_ROUTE_JSON
                    : NGX_HTTP_REDISGATE_ROUTE_NONE;

    if (p == last) {
        goto token_only;
    }

    p++;

    n = last - p;

    if (ngx_http_redisgate_route_is(p, n, &ngx_http_redisgate_route_pipeline)) {
        rt->kind = NGX_HTTP_REDISGATE_ROUTE_PIPELINE;
        goto token_only;
    }

    if (ngx_http_redisgate_route_is(p, n, &ngx_http_redisgate_route_multi)) {
        rt->kind = NGX_HTTP_REDISGATE_ROUTE_MULTI;
        goto token_only;
    }

    rt->kind = NGX_HTTP_REDISGATE_ROUTE_PATH;

    /* one slot per segment, the body, and two per query pair */

    max = 2;

    for (seg = p; seg < last; seg++) {
        if (*seg == '/') {
            max++;
        }
    }

    for (seg = query; seg < query + query_len; seg++) {
        if (*seg == '&') {
            max += 2;
        }
    }

    max += query_len ? 2 : 0;

    rt->cmd.argv = a->alloc(a->data, max * sizeof(ngx_str_t));
    if (rt->cmd.argv == NULL) {
        return NGX_ERROR;
    }

    rt->cmd.argc = 0;

    for ( ;; ) {
        seg = ngx_strlchr(p, last, '/');
        if (seg == NULL) {
            seg = last;
        }

        if (ngx_http_redisgate_route_push(rt, p, seg - p, a) != NGX_OK) {
            return rt->error ? NGX_ABORT : NGX_ERROR;
        }

        if (seg == last) {
            break;
        }

        p = seg + 1;
    }

    if (body) {
        rt->body_slot = rt->cmd.argc++;
        rt->has_body_slot = 1;
        ngx_str_null(&rt->cmd.argv[rt->body_slot]);
    }

    return ngx_http_redisgate_route_query(rt, query, query_len, 1, a);

token_only:

    /* commands come from the body: the query holds nothing but _token */

    return ngx_http_redisgate_route_query(rt, query, query_len, 0, a);
}


/*
 * ?EX=100&NX -> "EX", "100", "NX" when args is set; _token is never an
 * argument, and the last one counts
 */

static ngx_int_t
ngx_http_redisgate_route_query(ngx_http_redisgate_route_t *rt, u_char *query,
    size_t query_len, ngx_uint_t args, ngx_http_redisgate_alloc_t *a)
{
    u_char     *p, *last, *eq, *pair_end;
    ngx_str_t   key;

    if (query_len == 0) {
        /* query may be NULL then */
        return NGX_OK;
    }

    p = query;
    last = query + query_len;

    while (p < last) {
        pair_end = ngx_strlchr(p, last, '&');
        if (pair_end == NULL) {
            pair_end = last;
        }

        if (pair_end == p) {
            p++;
            continue;
        }

        eq = ngx_strlchr(p, pair_end, '=');

        key.data = p;
        key.len = (eq ? eq : pair_end) - p;

        /* not past the end: the last pair has no '&' after it */
        p = (pair_end == last) ? last : pair_end + 1;

        if (key.len == ngx_http_redisgate_route_token.len
            && ngx_memcmp(key.data, ngx_http_redisgate_route_token.data,
                          key.len)
               == 0)
        {
            if (eq) {
                rt->token.data = eq + 1;
                rt->token.len = pair_end - eq - 1;
            }

            continue;
        }

        if (!args) {
            continue;
        }

        if (ngx_http_redisgate_route_push(rt, key.data, key.len, a)
            != NGX_OK)
        {
            return rt->error ? NGX_ABORT : NGX_ERROR;
        }

        if (eq
            && ngx_http_redisgate_route_push(rt, eq + 1, pair_end - eq - 1, a)
               != NGX_OK)
        {
            return rt->error ? NGX_ABORT : NGX_ERROR;
        }
    }

    return NGX_OK;
}


/* a fixed route name, in any case */

static ngx_int_t
ngx_http_redisgate_route_is(u_char *p, size_t len, ngx_str_t *name)
{
    size_t  i;

    if (len != name->len) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        if (ngx_tolower(p[i]) != name->data[i]) {
            return 0;
        }
    }

    return 1;
}


static ngx_int_t
ngx_http_redisgate_route_push(ngx_http_redisgate_route_t *rt, u_char *p,
    size_t len, ngx_http_redisgate_alloc_t *a)
{
    ngx_str_t  *arg;

    arg = &rt->cmd.argv[rt->cmd.argc];

    if (ngx_strlchr(p, p + len, '%') == NULL) {
        /* nothing to decode: point into the request line */
        arg->data = p;
        arg->len = len;
        rt->cmd.argc++;
        return NGX_OK;
    }

    arg->data = a->alloc(a->data, len);
    if (arg->data == NULL) {
        return NGX_ERROR;
    }

    if (ngx_http_redisgate_percent_decode(arg->data, &arg->len, p, len)
        != NGX_OK)
    {
        rt->error = "malformed percent-encoding in the URL";
        return NGX_ERROR;
    }

    rt->cmd.argc++;

    return NGX_OK;
}


ngx_int_t
ngx_http_redisgate_percent_decode(u_char *dst, size_t *dst_len, u_char *src,
    size_t len)
{
    u_char     *d, *last;
    ngx_int_t   hi, lo;

    if (len == 0) {
        /* src may be NULL then, an empty ngx_str_t's data */
        *dst_len = 0;
        return NGX_OK;
    }

    d = dst;
    last = src + len;

    while (src < last) {
        if (*src != '%') {
            *d++ = *src++;
            continue;
        }

        if (last - src < 3) {
            return NGX_ERROR;
        }

        hi = ngx_http_redisgate_hex(src[1]);
        lo = ngx_http_redisgate_hex(src[2]);

        if (hi < 0 || lo < 0) {
            return NGX_ERROR;
        }

        *d++ = (u_char) (hi << 4 | lo);
        src += 3;
    }

    *dst_len = d - dst;

    return NGX_OK;
}


static ngx_int_t
ngx_http_redisgate_hex(u_char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }

    c |= 0x20;

    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }

    return -1;
}


/* 8-4-4-4-12 hex digits in any case, stored in lower case */

ngx_int_t
ngx_http_redisgate_parse_uuid(u_char *dst, u_char *p, size_t len)
{
    u_char      c, out[NGX_HTTP_REDISGATE_UUID_LEN];
    ngx_uint_t  i;

    /* a hex digit's lower case; 0 for any other byte (on every request) */
    static u_char  lower[256] = {
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', 0, 0, 0, 0, 0, 0,
        0, 'a', 'b', 'c', 'd', 'e', 'f', 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 'a', 'b', 'c', 'd', 'e', 'f', 0, 0, 0, 0, 0, 0, 0, 0, 0
        /* the rest: 0 */
    };

    if (len != NGX_HTTP_REDISGATE_UUID_LEN
        || p[8] != '-' || p[13] != '-' || p[18] != '-' || p[23] != '-')
    {
        return NGX_ERROR;
    }

    /* dst is left alone on an error */

    for (i = 0; i < NGX_HTTP_REDISGATE_UUID_LEN; i++) {
        c = lower[p[i]];

        if (c == 0) {
            if (i == 8 || i == 13 || i == 18 || i == 23) {
                out[i] = '-';
                continue;
            }

            return NGX_ERROR;
        }

        out[i] = c;
    }

    ngx_memcpy(dst, out, NGX_HTTP_REDISGATE_UUID_LEN);

    return NGX_OK;
}
