
/*
 * Copyright (C) RedisGate authors
 */


/*
 * Variables for log_format and the rest of nginx.conf: who called, what
 * ran, how long Redis took, where the key came from, what the rate limit
 * said, and the request URI with ?_token= blotted out.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_redisgate.h"


#define NGX_HTTP_REDISGATE_VAR_ORGANIZATION  0
#define NGX_HTTP_REDISGATE_VAR_INSTANCE      1
#define NGX_HTTP_REDISGATE_VAR_KEY_ID        2
#define NGX_HTTP_REDISGATE_VAR_COMMAND       3
#define NGX_HTTP_REDISGATE_VAR_COMMANDS      4
#define NGX_HTTP_REDISGATE_VAR_REDIS_TIME    5
#define NGX_HTTP_REDISGATE_VAR_CACHE         6
#define NGX_HTTP_REDISGATE_VAR_RATE_LIMIT    7


static ngx_int_t ngx_http_redisgate_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_redisgate_request_uri_variable(
    ngx_http_request_t *r, ngx_http_variable_value_t *v, uintptr_t data);
static void ngx_http_redisgate_variable_set(ngx_http_variable_value_t *v,
    u_char *data, size_t len);


static ngx_http_variable_t  ngx_http_redisgate_vars[] = {

    { ngx_string("redisgate_organization"), NULL,
      ngx_http_redisgate_variable, NGX_HTTP_REDISGATE_VAR_ORGANIZATION,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("redisgate_instance"), NULL,
      ngx_http_redisgate_variable, NGX_HTTP_REDISGATE_VAR_INSTANCE,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("redisgate_key_id"), NULL,
      ngx_http_redisgate_variable, NGX_HTTP_REDISGATE_VAR_KEY_ID,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("redisgate_command"), NULL,
      ngx_http_redisgate_variable, NGX_HTTP_REDISGATE_VAR_COMMAND,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("redisgate_commands"), NULL,
      ngx_http_redisgate_variable, NGX_HTTP_REDISGATE_VAR_COMMANDS,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("redisgate_redis_time"), NULL,
      ngx_http_redisgate_variable, NGX_HTTP_REDISGATE_VAR_REDIS_TIME,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("redisgate_cache"), NULL,
      ngx_http_redisgate_variable, NGX_HTTP_REDISGATE_VAR_CACHE,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("redisgate_rate_limit"), NULL,
      ngx_http_redisgate_variable, NGX_HTTP_REDISGATE_VAR_RATE_LIMIT,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("redisgate_request_uri"), NULL,
      ngx_http_redisgate_request_uri_variable, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


static ngx_str_t  ngx_http_redisgate_sources[] = {
    ngx_null_string,
    ngx_string("static"),
    ngx_string("hit"),
    ngx_string("miss"),
    ngx_string("stale")
};


ngx_int_t
ngx_http_redisgate_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_redisgate_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_redisgate_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    u_char                    *p;
    ngx_str_t                 *s;
    ngx_http_redisgate_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_redisgate_module);

    if (ctx == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    switch (data) {

    case NGX_HTTP_REDISGATE_VAR_ORGANIZATION:
        s = &ctx->auth.organization;
        break;

    case NGX_HTTP_REDISGATE_VAR_INSTANCE:
        if (ctx->route.instance[0] == '\0') {
            v->not_found = 1;
            return NGX_OK;
        }

        ngx_http_redisgate_variable_set(v, ctx->route.instance,
                                        NGX_HTTP_REDISGATE_UUID_LEN);
        return NGX_OK;

    case NGX_HTTP_REDISGATE_VAR_KEY_ID:
        s = &ctx->auth.key_id;
        break;

    case NGX_HTTP_REDISGATE_VAR_COMMAND:
        if (ctx->ncmds == 0) {
            v->not_found = 1;
            return NGX_OK;
        }

        /* lower case, and never an argument: those may be secrets */
        s = &ctx->cmds[0].argv[0];

        p = ngx_pnalloc(r->pool, ngx_min(s->len, 64));
        if (p == NULL) {
            return NGX_ERROR;
        }

        ngx_strlow(p, s->data, ngx_min(s->len, 64));
        ngx_http_redisgate_variable_set(v, p, ngx_min(s->len, 64));
        return NGX_OK;

    case NGX_HTTP_REDISGATE_VAR_COMMANDS:
        p = ngx_pnalloc(r->pool, NGX_INT_T_LEN);
        if (p == NULL) {
            return NGX_ERROR;
        }

        ngx_http_redisgate_variable_set(v, p,
                                        ngx_sprintf(p, "%ui", ctx->ncmds) - p);
        return NGX_OK;

    case NGX_HTTP_REDISGATE_VAR_REDIS_TIME:
        if (!ctx->redis_done) {
            v->not_found = 1;
            return NGX_OK;
        }

        p = ngx_pnalloc(r->pool, NGX_TIME_T_LEN + 4);
        if (p == NULL) {
            return NGX_ERROR;
        }

        ngx_http_redisgate_variable_set(v, p,
                                        ngx_sprintf(p, "%T.%03M",
                                            (time_t) ctx->redis_time / 1000,
                                            ctx->redis_time % 1000)
                                        - p);
        return NGX_OK;

    case NGX_HTTP_REDISGATE_VAR_CACHE:
        s = &ngx_http_redisgate_sources[ctx->auth.source];
        break;

    default: /* NGX_HTTP_REDISGATE_VAR_RATE_LIMIT */
        if (!ctx->limited) {
            v->not_found = 1;
            return NGX_OK;
        }

        if (ctx->rate_refused) {
            ngx_http_redisgate_variable_set(v, (u_char *) "limited", 7);

        } else {
            ngx_http_redisgate_variable_set(v, (u_char *) "passed", 6);
        }

        return NGX_OK;
    }

    if (s->len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    ngx_http_redisgate_variable_set(v, s->data, s->len);

    return NGX_OK;
}


/* $request_uri, with the value of every _token= query argument hidden */

static ngx_int_t
ngx_http_redisgate_request_uri_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t  uri;

    if (r->unparsed_uri.len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    if (ngx_http_redisgate_redact(r->pool, &r->unparsed_uri, &uri)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_http_redisgate_variable_set(v, uri.data, uri.len);

    return NGX_OK;
}


/*
 * The post-read phase, for every request: a request line with ?_token=
 * is what nginx prints in its error log lines ("request: ...") and in
 * $request, so it gets the hidden value too.
 */

ngx_int_t
ngx_http_redisgate_redact_handler(ngx_http_request_t *r)
{
    ngx_str_t  line;

    if (r->args.len == 0
        || ngx_strlcasestrn(r->args.data, r->args.data + r->args.len,
                            (u_char *) "_token=", 7 - 1)
           == NULL)
    {
        return NGX_DECLINED;
    }

    if (ngx_http_redisgate_redact(r->pool, &r->request_line, &line)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    r->request_line = line;

    return NGX_DECLINED;
}


/*
 * "...?a=1&_token=secret&b=2 ..." as "...?a=1&_token=***&b=2 ...": the
 * value of each _token= argument of the query up to the first space
 */

ngx_int_t
ngx_http_redisgate_redact(ngx_pool_t *pool, ngx_str_t *src, ngx_str_t *dst)
{
    u_char  *p, *q, *last, *end, *d;

    p = src->data;
    last = src->data + src->len;

    q = ngx_strlchr(p, last, '?');

    if (q == NULL) {
        *dst = *src;
        return NGX_OK;
    }

    /* "_token=***" is at most twice what it replaces */
    dst->data = ngx_pnalloc(pool, 2 * src->len + 16);
    if (dst->data == NULL) {
        return NGX_ERROR;
    }

    d = ngx_cpymem(dst->data, p, q + 1 - p);
    p = q + 1;

    end = ngx_strlchr(p, last, ' ');
    if (end == NULL) {
        end = last;
    }

    while (p < end) {
        q = ngx_strlchr(p, end, '&');
        if (q == NULL) {
            q = end;
        }

        if (q - p > 7 && ngx_strncmp(p, "_token=", 7) == 0) {
            d = ngx_cpymem(d, "_token=***", 10);

        } else {
            d = ngx_cpymem(d, p, q - p);
        }

        if (q < end) {
            *d++ = '&';
        }

        p = q + 1;
    }

    /* " HTTP/1.1" of a request line */
    d = ngx_cpymem(d, end, last - end);

    dst->len = d - dst->data;

    return NGX_OK;
}


static void
ngx_http_redisgate_variable_set(ngx_http_variable_value_t *v, u_char *data,
    size_t len)
{
    v->data = data;
    v->len = len;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;
}
