
/*
 * Copyright (C) RedisGate authors
 */


/*
 * The static source of instances and keys: redisgate_instance and
 * redisgate_key in nginx.conf.  Keys are given as SHA-256 hashes only, so
 * a configuration file never holds a usable token.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_redisgate.h"


static ngx_int_t ngx_http_redisgate_parse_address(ngx_conf_t *cf,
    ngx_str_t *url, ngx_http_redisgate_backend_t *b);
static ngx_int_t ngx_http_redisgate_parse_discovered(ngx_conf_t *cf,
    ngx_http_redisgate_url_t *parts, ngx_http_redisgate_backend_t *b);
static ngx_int_t ngx_http_redisgate_decode_userinfo(ngx_conf_t *cf,
    ngx_str_t *raw, ngx_str_t *s);
static ngx_int_t ngx_http_redisgate_organization(ngx_conf_t *cf,
    ngx_str_t *value, ngx_str_t *org);
static ngx_uint_t ngx_http_redisgate_str_eq(ngx_str_t *one, ngx_str_t *two);
static int ngx_libc_cdecl ngx_http_redisgate_instance_cmp(const void *one,
    const void *two);
static int ngx_libc_cdecl ngx_http_redisgate_key_cmp(const void *one,
    const void *two);


static ngx_str_t  ngx_http_redisgate_default_org = ngx_string("default");


/* redisgate_instance <uuid> <url> [organization=<name>]; */

char *
ngx_http_redisgate_instance(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_redisgate_main_conf_t  *rmcf = conf;

    u_char                          id[NGX_HTTP_REDISGATE_UUID_LEN];
    ngx_str_t                      *value;
    ngx_uint_t                      i;
    ngx_http_redisgate_route_t      rt;
    ngx_http_redisgate_alloc_t      a;
    ngx_http_redisgate_instance_t  *inst;

    value = cf->args->elts;

    a.alloc = ngx_http_redisgate_palloc;
    a.data = cf->pool;

    ngx_memzero(&rt, sizeof(ngx_http_redisgate_route_t));

    if (ngx_http_redisgate_parse_route(&rt, value[1].data, value[1].len,
                                       NULL, 0, 0, &a)
        != NGX_OK
        || rt.kind != NGX_HTTP_REDISGATE_ROUTE_NONE)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "instance id \"%V\" is not a UUID", &value[1]);
        return NGX_CONF_ERROR;
    }

    ngx_memcpy(id, rt.instance, NGX_HTTP_REDISGATE_UUID_LEN);

    inst = rmcf->instances.elts;

    for (i = 0; i < rmcf->instances.nelts; i++) {
        if (ngx_memcmp(inst[i].id.data, id, NGX_HTTP_REDISGATE_UUID_LEN) == 0)
        {
            return "names an instance already defined";
        }
    }

    inst = ngx_array_push(&rmcf->instances);
    if (inst == NULL) {
        return NGX_CONF_ERROR;
    }

    inst->id.len = NGX_HTTP_REDISGATE_UUID_LEN;
    inst->id.data = ngx_pnalloc(cf->pool, NGX_HTTP_REDISGATE_UUID_LEN);
    if (inst->id.data == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memcpy(inst->id.data, id, NGX_HTTP_REDISGATE_UUID_LEN);

    inst->organization = ngx_http_redisgate_default_org;

    for (i = 3; i < cf->args->nelts; i++) {
        if (ngx_strncmp(value[i].data, "organization=", 13) == 0) {
            if (ngx_http_redisgate_organization(cf, &value[i],
                                                &inst->organization)
                != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\"", &value[i]);
        return NGX_CONF_ERROR;
    }

    inst->backend = ngx_http_redisgate_static_backend(cf, rmcf, &value[2], 1);
    if (inst->backend == NULL) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/*
 * "sha256:<64 hex digits>", the way keys are configured (redisgate_key,
 * redisgate_manage_key): its 32 bytes into hash
 */

ngx_int_t
ngx_http_redisgate_key_hash(ngx_conf_t *cf, ngx_str_t *value, u_char *hash)
{
    if (value->len != 7 + 64
        || ngx_strncmp(value->data, "sha256:", 7) != 0)
    {
        /* not echoed: it may be a token pasted by mistake */
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "key is not \"sha256:<64 hex digits>\": keys are "
                           "configured by the SHA-256 of the token, never "
                           "the token itself");
        return NGX_ERROR;
    }

    if (ngx_http_redisgate_hex_decode(hash, value->data + 7, 64) != NGX_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid hex digits in key hash");
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * redisgate_key sha256:<hex> [id=<name>] [organization=<name>]
 *               [scopes=read,write,admin,manage];
 */

char *
ngx_http_redisgate_key(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_redisgate_main_conf_t  *rmcf = conf;

    ngx_str_t                 *value, hex;
    ngx_uint_t                 i;
    ngx_http_redisgate_key_t  *key;

    value = cf->args->elts;

    key = ngx_array_push(&rmcf->keys);
    if (key == NULL) {
        return NGX_CONF_ERROR;
    }

    if (ngx_http_redisgate_key_hash(cf, &value[1], key->hash) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    hex.data = value[1].data + 7;
    hex.len = 64;

    key->organization = ngx_http_redisgate_default_org;
    key->scopes = NGX_HTTP_REDISGATE_SCOPE_READ|NGX_HTTP_REDISGATE_SCOPE_WRITE;

    /* a key's id in logs defaults to the first hex digits of its hash */
    key->id.data = hex.data;
    key->id.len = 8;

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "id=", 3) == 0 && value[i].len > 3) {
            key->id.data = value[i].data + 3;
            key->id.len = value[i].len - 3;
            continue;
        }

        if (ngx_strncmp(value[i].data, "organization=", 13) == 0) {
            if (ngx_http_redisgate_organization(cf, &value[i],
                                                &key->organization)
                != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "scopes=", 7) == 0) {
            value[i].data += 7;
            value[i].len -= 7;

            if (ngx_http_redisgate_parse_scopes(&value[i], &key->scopes)
                != NGX_OK)
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid scopes \"%V\", expected a list "
                                   "of read, write, admin and manage",
                                   &value[i]);
                return NGX_CONF_ERROR;
            }

            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\"", &value[i]);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


ngx_int_t
ngx_http_redisgate_hex_decode(u_char *dst, u_char *src, size_t len)
{
    u_char      c;
    size_t      i;
    ngx_uint_t  n;

    for (i = 0; i < len; i++) {
        c = src[i];

        if (c >= '0' && c <= '9') {
            n = c - '0';

        } else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f') {
            n = (c | 0x20) - 'a' + 10;

        } else {
            return NGX_ERROR;
        }

        if (i % 2 == 0) {
            dst[i / 2] = (u_char) (n << 4);

        } else {
            dst[i / 2] |= (u_char) n;
        }
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_redisgate_parse_scopes(ngx_str_t *value, ngx_uint_t *scopes)
{
    u_char  *p, *last, *comma;
    size_t   len;

    *scopes = 0;

    p = value->data;
    last = p + value->len;

    while (p < last) {
        comma = ngx_strlchr(p, last, ',');
        if (comma == NULL) {
            comma = last;
        }

        len = comma - p;

        if (len == 4 && ngx_strncmp(p, "read", 4) == 0) {
            *scopes |= NGX_HTTP_REDISGATE_SCOPE_READ;

        } else if (len == 5 && ngx_strncmp(p, "write", 5) == 0) {
            *scopes |= NGX_HTTP_REDISGATE_SCOPE_WRITE;

        } else if (len == 5 && ngx_strncmp(p, "admin", 5) == 0) {
            *scopes |= NGX_HTTP_REDISGATE_SCOPE_ADMIN;

        } else if (len == 6 && ngx_strncmp(p, "manage", 6) == 0) {
            *scopes |= NGX_HTTP_REDISGATE_SCOPE_MANAGE;

        } else {
            return NGX_ERROR;
        }

        p = comma + 1;
    }

    return *scopes ? NGX_OK : NGX_ERROR;
}


/*
 * The backend of a Redis URL in nginx.conf.  Instances of the same URL and
 * credentials share one (share), and so a pool; the rate limit store has
 * its own, so that its short timeout never drops an instance's connection.
 */

ngx_http_redisgate_backend_t *
ngx_http_redisgate_static_backend(ngx_conf_t *cf,
    ngx_http_redisgate_main_conf_t *rmcf, ngx_str_t *url, ngx_uint_t share)
{
    ngx_uint_t                     i;
    ngx_http_redisgate_backend_t  *b, *t, **bp;

    b = ngx_pcalloc(cf->pool, sizeof(ngx_http_redisgate_backend_t));
    if (b == NULL) {
        return NULL;
    }

    if (ngx_http_redisgate_parse_address(cf, url, b) != NGX_OK) {
        return NULL;
    }

    bp = rmcf->backends.elts;

    for (i = 0; share && i < rmcf->backends.nelts; i++) {
        t = bp[i];

        if (!t->shared) {
            continue;
        }

        /* the URL holds all but the credentials, the sentinels' too */
        if (ngx_http_redisgate_str_eq(&t->address.url, &b->address.url)
            && (b->sentinel == NULL
                || ngx_http_redisgate_sentinel_same(t->sentinel, b->sentinel))
            && ngx_http_redisgate_str_eq(&t->address.user, &b->address.user)
            && ngx_http_redisgate_str_eq(&t->address.password,
                                         &b->address.password))
        {
            return t;
        }
    }

    bp = ngx_array_push(&rmcf->backends);
    if (bp == NULL) {
        return NULL;
    }

    *bp = b;
    b->shared = share;

    return b;
}


/*
 * organization=<name>: 1 to NGX_HTTP_REDISGATE_ORG_MAX bytes, as the rate
 * limit's and usage's zones keep them whole (a longer one would share
 * another's bucket)
 */

static ngx_int_t
ngx_http_redisgate_organization(ngx_conf_t *cf, ngx_str_t *value,
    ngx_str_t *org)
{
    if (value->len <= 13 || value->len - 13 > NGX_HTTP_REDISGATE_ORG_MAX) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "organization names are 1 to %d bytes long: "
                           "\"%V\"", NGX_HTTP_REDISGATE_ORG_MAX, value);
        return NGX_ERROR;
    }

    org->data = value->data + 13;
    org->len = value->len - 13;

    return NGX_OK;
}


/* byte for byte: passwords may hold %00 */

static ngx_uint_t
ngx_http_redisgate_str_eq(ngx_str_t *one, ngx_str_t *two)
{
    return one->len == two->len
           && (one->len == 0
               || ngx_memcmp(one->data, two->data, one->len) == 0);
}


/*
 * Host names are resolved here, as nginx does for upstream servers; with
 * a "resolver", they are resolved again when the answer expires.
 */

static ngx_int_t
ngx_http_redisgate_parse_address(ngx_conf_t *cf, ngx_str_t *url,
    ngx_http_redisgate_backend_t *b)
{
    u_char                        *p;
    size_t                         len;
    ngx_url_t                      u;
    ngx_str_t                      host;
    ngx_addr_t                     probe;
    ngx_http_redisgate_url_t       parts;
    ngx_http_redisgate_address_t  *addr;

    addr = &b->address;

    if (ngx_http_redisgate_parse_url(&parts, url->data, url->len) != NGX_OK) {

        /* nginx -t output and error logs are no place for a password */

        if (ngx_strlchr(url->data, url->data + url->len, '@')
            || ngx_strnstr(url->data, "password=", url->len))
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "%s (the URL is not shown: it holds "
                               "credentials)", parts.error);

        } else {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "%s: \"%V\"",
                               parts.error, url);
        }

        return NGX_ERROR;
    }

#if !(NGX_SSL)
    if (parts.tls) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "rediss:// needs nginx built with SSL");
        return NGX_ERROR;
    }
#endif

    addr->db = parts.db;
    addr->tls = parts.tls;

    if (parts.has_userinfo
        && (ngx_http_redisgate_decode_userinfo(cf, &parts.user, &addr->user)
            != NGX_OK
            || ngx_http_redisgate_decode_userinfo(cf, &parts.password,
                                                  &addr->password)
               != NGX_OK))
    {
        return NGX_ERROR;
    }

    if (parts.sentinel || parts.cluster) {
        return ngx_http_redisgate_parse_discovered(cf, &parts, b);
    }

    ngx_memzero(&u, sizeof(ngx_url_t));

    if (parts.unix_socket) {
        /* "unix:/path", as nginx names sockets */
        u.url.len = sizeof("unix:") - 1 + parts.path.len;
        u.url.data = ngx_pnalloc(cf->pool, u.url.len);
        if (u.url.data == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(ngx_cpymem(u.url.data, "unix:", sizeof("unix:") - 1),
                   parts.path.data, parts.path.len);

    } else {
        u.url = parts.host;
        u.default_port = 6379;
    }

    if (ngx_parse_url(cf->pool, &u) != NGX_OK || u.naddrs == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "%s in Redis URL \"%V\"",
                           u.err ? u.err : "host not found",
                           parts.unix_socket ? &parts.path : &parts.host);
        return NGX_ERROR;
    }

    ngx_memcpy(&b->node.sockaddr, u.addrs[0].sockaddr, u.addrs[0].socklen);
    b->node.socklen = u.addrs[0].socklen;
    b->resolved = 1;

    if (parts.unix_socket) {
        host = parts.path;

    } else {
        host = u.host;
        b->port = u.port;

        if (host.len > 2 && host.data[0] == '[') {
            host.data++;
            host.len -= 2;
        }
    }

    /* NUL-terminated: the TLS name */

    addr->host.len = host.len;
    addr->host.data = ngx_pnalloc(cf->pool, host.len + 1);
    if (addr->host.data == NULL) {
        return NGX_ERROR;
    }

    *ngx_cpymem(addr->host.data, host.data, host.len) = '\0';

    if (!parts.unix_socket
        && ngx_parse_addr(cf->pool, &probe, host.data, host.len)
           == NGX_DECLINED)
    {
        /* a name: resolved again at run time, when there is a resolver */
        b->resolve_name = addr->host;
    }

    len = sizeof("rediss://[]:65535/") - 1 + host.len + sizeof("?db=")
          + NGX_INT_T_LEN;

    addr->url.data = ngx_pnalloc(cf->pool, len);
    if (addr->url.data == NULL) {
        return NGX_ERROR;
    }

    if (parts.unix_socket) {
        p = ngx_sprintf(addr->url.data, "unix://%V?db=%ui", &host, addr->db);

    } else {
        p = ngx_sprintf(addr->url.data, "%s://%V:%d/%ui",
                        parts.tls ? "rediss" : "redis", &u.host, (int) b->port,
                        addr->db);
    }

    addr->url.len = p - addr->url.data;

    return NGX_OK;
}


/*
 * Sentinels and cluster seeds: their host names are resolved here; the
 * primaries' addresses come from them in each worker.  The URL for logs
 * and metrics keeps everything but the credentials.
 */

static ngx_int_t
ngx_http_redisgate_parse_discovered(ngx_conf_t *cf,
    ngx_http_redisgate_url_t *parts, ngx_http_redisgate_backend_t *b)
{
    u_char                        *p;
    const char                    *error;
    ngx_http_redisgate_address_t  *addr;

    addr = &b->address;

    if (parts->sentinel) {
        b->sentinel = ngx_http_redisgate_sentinel_create(cf->pool, parts, 1,
                                                         &error);

    } else {
        b->cluster = ngx_http_redisgate_cluster_create(cf->pool, parts, 1,
                                                       &error);
    }

    if (b->sentinel == NULL && b->cluster == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "%s in Redis URL \"%V\"",
                           error, &parts->host);
        return NGX_ERROR;
    }

    ngx_str_set(&addr->host, "");

    addr->url.data = ngx_pnalloc(cf->pool, sizeof("rediss-sentinel:///")
                                           + parts->host.len
                                           + parts->name.len
                                           + NGX_INT_T_LEN);
    if (addr->url.data == NULL) {
        return NGX_ERROR;
    }

    if (parts->sentinel) {
        p = ngx_sprintf(addr->url.data, "%s://%V/%V/%ui",
                        parts->tls ? "rediss-sentinel" : "redis-sentinel",
                        &parts->host, &parts->name, addr->db);

    } else {
        p = ngx_sprintf(addr->url.data, "%s://%V/0",
                        parts->tls ? "rediss-cluster" : "redis-cluster",
                        &parts->host);
    }

    addr->url.len = p - addr->url.data;

    return NGX_OK;
}


/* a user name or password, percent-decoded */

static ngx_int_t
ngx_http_redisgate_decode_userinfo(ngx_conf_t *cf, ngx_str_t *raw,
    ngx_str_t *s)
{
    s->data = ngx_pnalloc(cf->pool, raw->len + 1);
    if (s->data == NULL) {
        return NGX_ERROR;
    }

    if (ngx_http_redisgate_percent_decode(s->data, &s->len, raw->data,
                                          raw->len)
        != NGX_OK)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "malformed percent-encoding in Redis URL "
                           "credentials");
        return NGX_ERROR;
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_redisgate_static_init(ngx_conf_t *cf,
    ngx_http_redisgate_main_conf_t *rmcf)
{
    ngx_uint_t                     i, j;
    ngx_http_redisgate_key_t      *keys;

    ngx_qsort(rmcf->instances.elts, rmcf->instances.nelts,
              sizeof(ngx_http_redisgate_instance_t),
              ngx_http_redisgate_instance_cmp);

    ngx_qsort(rmcf->keys.elts, rmcf->keys.nelts,
              sizeof(ngx_http_redisgate_key_t), ngx_http_redisgate_key_cmp);

    keys = rmcf->keys.elts;

    for (i = 1, j = 0; i < rmcf->keys.nelts; i++, j++) {
        if (ngx_memcmp(keys[i].hash, keys[j].hash, 32) == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "key \"%V\" has the same hash as key \"%V\"",
                               &keys[i].id, &keys[j].id);
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


ngx_http_redisgate_instance_t *
ngx_http_redisgate_static_instance(ngx_http_redisgate_main_conf_t *rmcf,
    u_char *id)
{
    ngx_http_redisgate_instance_t  key;

    key.id.data = id;
    key.id.len = NGX_HTTP_REDISGATE_UUID_LEN;

    return bsearch(&key, rmcf->instances.elts, rmcf->instances.nelts,
                   sizeof(ngx_http_redisgate_instance_t),
                   ngx_http_redisgate_instance_cmp);
}


ngx_http_redisgate_key_t *
ngx_http_redisgate_static_key(ngx_http_redisgate_main_conf_t *rmcf,
    u_char *hash)
{
    ngx_http_redisgate_key_t  key;

    ngx_memcpy(key.hash, hash, 32);

    return bsearch(&key, rmcf->keys.elts, rmcf->keys.nelts,
                   sizeof(ngx_http_redisgate_key_t),
                   ngx_http_redisgate_key_cmp);
}


static int ngx_libc_cdecl
ngx_http_redisgate_instance_cmp(const void *one, const void *two)
{
    const ngx_http_redisgate_instance_t  *a = one, *b = two;

    return ngx_memcmp(a->id.data, b->id.data, NGX_HTTP_REDISGATE_UUID_LEN);
}


static int ngx_libc_cdecl
ngx_http_redisgate_key_cmp(const void *one, const void *two)
{
    const ngx_http_redisgate_key_t  *a = one, *b = two;

    return ngx_memcmp(a->hash, b->hash, 32);
}
