
/*
 * Copyright (C) RedisGate authors
 */


/*
 * Splitting a Redis URL from redisgate_instance into its parts.  Pure:
 * the parts point into the URL; resolving the host and decoding the
 * credentials are the caller's business.
 *
 *   redis://[[user]:password@]host[:port][/db]
 *   rediss://[[user]:password@]host[:port][/db]      (TLS)
 *   unix://[[user]:password@]/path/to/redis.sock[?db=N]
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_redisgate_parse.h"


static ngx_int_t ngx_http_redisgate_url_db(ngx_http_redisgate_url_t *u,
    u_char *p, u_char *last);
static void ngx_http_redisgate_url_userinfo(ngx_http_redisgate_url_t *u,
    u_char *p, u_char *last);


ngx_int_t
ngx_http_redisgate_parse_url(ngx_http_redisgate_url_t *u, u_char *url,
    size_t len)
{
    u_char  *p, *last, *at, *q;

    ngx_memzero(u, sizeof(ngx_http_redisgate_url_t));

    p = url;
    last = url + len;

    if (len > 9 && ngx_strncmp(p, "rediss://", 9) == 0) {
        u->tls = 1;
        p += 9;

    } else if (len > 8 && ngx_strncmp(p, "redis://", 8) == 0) {
        p += 8;
    }

    if (p != url) {

        /* the last '@' before the path: a password may hold '@' */

        at = NULL;

        for (q = p; q < last && *q != '/'; q++) {
            if (*q == '@') {
                at = q;
            }
        }

        if (at) {
            ngx_http_redisgate_url_userinfo(u, p, at);
            p = at + 1;
        }

        q = ngx_strlchr(p, last, '/');

        if (q) {
            if (q + 1 < last
                && ngx_http_redisgate_url_db(u, q + 1, last) != NGX_OK)
            {
                return NGX_ERROR;
            }

            last = q;
        }

        if (p == last) {
            u->error = "invalid Redis URL: no host";
            return NGX_ERROR;
        }

        u->host.data = p;
        u->host.len = last - p;

        return NGX_OK;
    }

    if (len > 7 && ngx_strncmp(p, "unix://", 7) == 0) {
        p += 7;
        u->unix_socket = 1;

        /*
         * the credentials end at the '@' the absolute path follows, so
         * that a socket path may hold '@' (/run/redis@main.sock)
         */

        at = NULL;

        if (p < last && *p != '/') {
            for (q = p; q + 1 < last; q++) {
                if (q[0] == '@' && q[1] == '/') {
                    at = q;
                    break;
                }
            }
        }

        if (at) {
            ngx_http_redisgate_url_userinfo(u, p, at);
            p = at + 1;
        }

        q = ngx_strlchr(p, last, '?');

        if (q) {
            if (last - q < 5 || ngx_strncmp(q, "?db=", 4) != 0) {
                u->error = "invalid Redis URL: a unix socket URL takes "
                           "only ?db=N";
                return NGX_ERROR;
            }

            if (ngx_http_redisgate_url_db(u, q + 4, last) != NGX_OK) {
                return NGX_ERROR;
            }

            last = q;
        }

        if (p == last || *p != '/') {
            u->error = "invalid Redis URL: the unix socket path must be "
                       "absolute";
            return NGX_ERROR;
        }

        u->path.data = p;
        u->path.len = last - p;

        return NGX_OK;
    }

    u->error = "invalid Redis URL: expected redis://, rediss:// or unix://";

    return NGX_ERROR;
}


static ngx_int_t
ngx_http_redisgate_url_db(ngx_http_redisgate_url_t *u, u_char *p,
    u_char *last)
{
    ngx_uint_t  db;

    /* Redis keeps database numbers in an int; callers leave p < last */

    for (db = 0; p < last; p++) {
        if (*p < '0' || *p > '9') {
            goto invalid;
        }

        /* checked before it is multiplied: ngx_uint_t may be 32 bits */

        if (db > (NGX_MAX_INT32_VALUE - (ngx_uint_t) (*p - '0')) / 10) {
            goto invalid;
        }

        db = db * 10 + (*p - '0');
    }

    u->db = db;

    return NGX_OK;

invalid:

    u->error = "invalid Redis URL: the database number must be 0 to "
               "2147483647";

    return NGX_ERROR;
}


/* "[user]:password" or "password", still percent-encoded */

static void
ngx_http_redisgate_url_userinfo(ngx_http_redisgate_url_t *u, u_char *p,
    u_char *last)
{
    u_char  *colon;

    u->has_userinfo = 1;

    colon = ngx_strlchr(p, last, ':');

    if (colon) {
        u->user.data = p;
        u->user.len = colon - p;
        u->password.data = colon + 1;
        u->password.len = last - colon - 1;

    } else {
        u->password.data = p;
        u->password.len = last - p;
    }
}
