
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
 *   redis-sentinel://[[user]:password@]host[:port][,host[:port]...]
 *       /master-name[/db][?sentinel_user=...&sentinel_password=...]
 *   rediss-sentinel://...                            (TLS)
 *   redis-cluster://[[user]:password@]host[:port][,host[:port]...][/0]
 *   rediss-cluster://...                             (TLS)
 *
 * The credentials before '@' are the primary's, as in every other form;
 * the sentinels' own, when they have any, are query parameters.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_redisgate_parse.h"


static ngx_int_t ngx_http_redisgate_url_db(ngx_http_redisgate_url_t *u,
    u_char *p, u_char *last);
static u_char *ngx_http_redisgate_url_credentials(
    ngx_http_redisgate_url_t *u, u_char *p, u_char *last);
static void ngx_http_redisgate_url_userinfo(ngx_http_redisgate_url_t *u,
    u_char *p, u_char *last);
static ngx_int_t ngx_http_redisgate_url_cluster(ngx_http_redisgate_url_t *u,
    u_char *p, u_char *last);
static ngx_int_t ngx_http_redisgate_url_sentinel(ngx_http_redisgate_url_t *u,
    u_char *p, u_char *last);
static ngx_int_t ngx_http_redisgate_url_hosts(ngx_http_redisgate_url_t *u,
    u_char *p, u_char *last);
static ngx_int_t ngx_http_redisgate_url_query(ngx_http_redisgate_url_t *u,
    u_char *p, u_char *last);


ngx_int_t
ngx_http_redisgate_parse_url(ngx_http_redisgate_url_t *u, u_char *url,
    size_t len)
{
    u_char  *p, *last, *at, *q;

    ngx_memzero(u, sizeof(ngx_http_redisgate_url_t));

    p = url;
    last = url + len;

    if (len > 18 && ngx_strncmp(p, "rediss-sentinel://", 18) == 0) {
        u->tls = 1;
        return ngx_http_redisgate_url_sentinel(u, p + 18, last);
    }

    if (len > 17 && ngx_strncmp(p, "redis-sentinel://", 17) == 0) {
        return ngx_http_redisgate_url_sentinel(u, p + 17, last);
    }

    if (len > 17 && ngx_strncmp(p, "rediss-cluster://", 17) == 0) {
        u->tls = 1;
        return ngx_http_redisgate_url_cluster(u, p + 17, last);
    }

    if (len > 16 && ngx_strncmp(p, "redis-cluster://", 16) == 0) {
        return ngx_http_redisgate_url_cluster(u, p + 16, last);
    }

    if (len > 9 && ngx_strncmp(p, "rediss://", 9) == 0) {
        u->tls = 1;
        p += 9;

    } else if (len > 8 && ngx_strncmp(p, "redis://", 8) == 0) {
        p += 8;
    }

    if (p != url) {

        p = ngx_http_redisgate_url_credentials(u, p, last);

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

    u->error = "invalid Redis URL: expected redis://, rediss://, unix://, "
               "redis-sentinel:// or redis-cluster://";

    return NGX_ERROR;
}


/* after "redis-cluster://": seed nodes; a cluster has database 0 only */

static ngx_int_t
ngx_http_redisgate_url_cluster(ngx_http_redisgate_url_t *u, u_char *p,
    u_char *last)
{
    u_char  *slash;

    u->cluster = 1;

    p = ngx_http_redisgate_url_credentials(u, p, last);

    slash = ngx_strlchr(p, last, '/');

    if (slash) {
        if (last - slash > 2 || (slash + 1 < last && slash[1] != '0')) {
            u->error = "invalid Redis URL: a cluster has database 0 only";
            return NGX_ERROR;
        }

        last = slash;
    }

    if (p == last) {
        u->error = "invalid Redis URL: no host";
        return NGX_ERROR;
    }

    return ngx_http_redisgate_url_hosts(u, p, last);
}


/* after "redis-sentinel://": the sentinels, the primary's name, the rest */

static ngx_int_t
ngx_http_redisgate_url_sentinel(ngx_http_redisgate_url_t *u, u_char *p,
    u_char *last)
{
    u_char  *q, *slash;

    u->sentinel = 1;

    p = ngx_http_redisgate_url_credentials(u, p, last);

    slash = ngx_strlchr(p, last, '/');

    if (slash == NULL || slash + 1 == last || slash[1] == '/'
        || slash[1] == '?')
    {
        u->error = "invalid Redis URL: a sentinel URL names the primary: "
                   "redis-sentinel://host:port[,host:port...]/name[/db]";
        return NGX_ERROR;
    }

    if (ngx_http_redisgate_url_hosts(u, p, slash) != NGX_OK) {
        return NGX_ERROR;
    }

    p = slash + 1;

    q = ngx_strlchr(p, last, '?');

    if (q) {
        if (ngx_http_redisgate_url_query(u, q + 1, last) != NGX_OK) {
            return NGX_ERROR;
        }

        last = q;
    }

    slash = ngx_strlchr(p, last, '/');

    if (slash) {
        if (slash + 1 == last) {
            u->error = "invalid Redis URL: an empty database number";
            return NGX_ERROR;
        }

        if (ngx_http_redisgate_url_db(u, slash + 1, last) != NGX_OK) {
            return NGX_ERROR;
        }

        last = slash;
    }

    u->name.data = p;
    u->name.len = last - p;

    return NGX_OK;
}


/* "host[:port][,host[:port]...]": no empty one */

static ngx_int_t
ngx_http_redisgate_url_hosts(ngx_http_redisgate_url_t *u, u_char *p,
    u_char *last)
{
    u_char  *q;

    u->host.data = p;
    u->host.len = last - p;

    for ( ;; ) {
        q = ngx_strlchr(p, last, ',');

        if ((q ? q : last) == p) {
            u->error = "invalid Redis URL: an empty host in the list";
            return NGX_ERROR;
        }

        if (q == NULL) {
            return NGX_OK;
        }

        p = q + 1;
    }
}


/* "sentinel_user=...&sentinel_password=...", still percent-encoded */

static ngx_int_t
ngx_http_redisgate_url_query(ngx_http_redisgate_url_t *u, u_char *p,
    u_char *last)
{
    u_char     *amp, *eq;
    ngx_str_t  *value;

    while (p < last) {
        amp = ngx_strlchr(p, last, '&');

        if (amp == NULL) {
            amp = last;
        }

        eq = ngx_strlchr(p, amp, '=');

        if (eq == NULL) {
            goto invalid;
        }

        if (eq - p == sizeof("sentinel_user") - 1
            && ngx_strncmp(p, "sentinel_user", eq - p) == 0)
        {
            value = &u->sentinel_user;

        } else if (eq - p == sizeof("sentinel_password") - 1
                   && ngx_strncmp(p, "sentinel_password", eq - p) == 0)
        {
            value = &u->sentinel_password;

        } else {
            goto invalid;
        }

        value->data = eq + 1;
        value->len = amp - eq - 1;

        p = amp + 1;
    }

    return NGX_OK;

invalid:

    u->error = "invalid Redis URL: a sentinel URL takes only "
               "?sentinel_user=...&sentinel_password=...";

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


/* "[[user]:password@]host...": past the credentials, if any */

static u_char *
ngx_http_redisgate_url_credentials(ngx_http_redisgate_url_t *u, u_char *p,
    u_char *last)
{
    u_char  *q, *at;

    /* the last '@' before the path: a password may hold '@' */

    at = NULL;

    for (q = p; q < last && *q != '/'; q++) {
        if (*q == '@') {
            at = q;
        }
    }

    if (at == NULL) {
        return p;
    }

    ngx_http_redisgate_url_userinfo(u, p, at);

    return at + 1;
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
