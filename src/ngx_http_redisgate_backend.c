
/*
 * Copyright (C) RedisGate authors
 */


/*
 * Backends named by the key store at run time: one per distinct Redis
 * (address, database, user, password), found in a per-worker tree, with
 * its own pool.  A backend nobody used for a while is closed and freed, so
 * a thousand instances that sleep cost no connections.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_redisgate.h"


typedef struct {
    ngx_http_redisgate_wait_t       wait;       /* in backend->waiting */
    ngx_http_request_t             *request;
    ngx_http_redisgate_retry_pt     retry;
} ngx_http_redisgate_resolve_waiter_t;


typedef struct {
    ngx_rbtree_node_t               node;
    ngx_queue_t                     queue;
    ngx_http_redisgate_backend_t    backend;
    ngx_str_t                       key;        /* address|db|user|pass */
} ngx_http_redisgate_dynamic_t;


typedef struct {
    ngx_rbtree_t                    rbtree;
    ngx_rbtree_node_t               sentinel;
    ngx_queue_t                     all;
    ngx_event_t                     sweep;
    ngx_http_redisgate_main_conf_t *rmcf;
    ngx_log_t                      *log;
} ngx_http_redisgate_backends_t;


static ngx_http_redisgate_dynamic_t *ngx_http_redisgate_backend_create(
    ngx_str_t *key, ngx_http_redisgate_keyinfo_t *ki, const char **error);
static ngx_int_t ngx_http_redisgate_backend_resolve(
    ngx_http_redisgate_backend_t *b, ngx_http_core_loc_conf_t *clcf,
    const char **error);
static void ngx_http_redisgate_backend_resolved(ngx_resolver_ctx_t *rctx);
static ngx_int_t ngx_http_redisgate_backend_wait(
    ngx_http_redisgate_backend_t *b, ngx_http_request_t *r,
    ngx_http_redisgate_retry_pt retry, const char **error);
static void ngx_http_redisgate_backend_set_address(
    ngx_http_redisgate_backend_t *b, ngx_resolver_addr_t *ra);
static ngx_int_t ngx_http_redisgate_backend_cmp(ngx_rbtree_node_t *one,
    ngx_rbtree_node_t *two);
static void ngx_http_redisgate_backend_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel);
static void ngx_http_redisgate_backend_sweep(ngx_event_t *ev);
static void ngx_http_redisgate_backend_free(ngx_http_redisgate_dynamic_t *d);
static u_char *ngx_http_redisgate_backend_copy(u_char *p, ngx_str_t *s);


static ngx_http_redisgate_backends_t  ngx_http_redisgate_backends;


ngx_int_t
ngx_http_redisgate_backend_init_process(ngx_http_redisgate_main_conf_t *rmcf,
    ngx_cycle_t *cycle)
{
    ngx_http_redisgate_backends_t  *bs = &ngx_http_redisgate_backends;

    ngx_rbtree_init(&bs->rbtree, &bs->sentinel,
                    ngx_http_redisgate_backend_insert_value);
    ngx_queue_init(&bs->all);

    bs->rmcf = rmcf;
    bs->log = cycle->log;

    bs->sweep.handler = ngx_http_redisgate_backend_sweep;
    bs->sweep.data = bs;
    bs->sweep.log = cycle->log;
    bs->sweep.cancelable = 1;

    return NGX_OK;
}


void
ngx_http_redisgate_backend_exit_process(void)
{
    ngx_queue_t                    *q;
    ngx_http_redisgate_dynamic_t   *d;
    ngx_http_redisgate_backends_t  *bs = &ngx_http_redisgate_backends;

    if (bs->log == NULL) {
        return;
    }

    if (bs->sweep.timer_set) {
        ngx_del_timer(&bs->sweep);
    }

    /* clusters first: they let go of their primaries, which may come
     * before them in the queue */

    for (q = ngx_queue_head(&bs->all);
         q != ngx_queue_sentinel(&bs->all);
         q = ngx_queue_next(q))
    {
        d = ngx_queue_data(q, ngx_http_redisgate_dynamic_t, queue);

        if (d->backend.cluster) {
            ngx_http_redisgate_cluster_close(&d->backend);
        }
    }

    while (!ngx_queue_empty(&bs->all)) {
        q = ngx_queue_head(&bs->all);
        d = ngx_queue_data(q, ngx_http_redisgate_dynamic_t, queue);
        ngx_http_redisgate_backend_free(d);
    }
}


/* a string that may be empty, with no data (a cluster's credentials) */

static u_char *
ngx_http_redisgate_backend_copy(u_char *p, ngx_str_t *s)
{
    return s->len ? ngx_cpymem(p, s->data, s->len) : p;
}


/* the backend for what the key store said, created on first use */

ngx_http_redisgate_backend_t *
ngx_http_redisgate_backend_get(ngx_http_redisgate_keyinfo_t *ki,
    ngx_pool_t *pool, const char **error)
{
    u_char                         *p, buf[512];
    uint32_t                        hash;
    ngx_int_t                       rc;
    ngx_str_t                       key;
    ngx_rbtree_node_t              *node, *sentinel;
    ngx_http_redisgate_dynamic_t   *d;
    ngx_http_redisgate_backends_t  *bs = &ngx_http_redisgate_backends;

    /* "address|db|user|password", on the stack when it fits: every request */

    key.len = ki->address.len + ki->user.len + ki->password.len
              + NGX_INT_T_LEN + 3;

    if (key.len <= sizeof(buf)) {
        key.data = buf;

    } else {
        /* without a pool (a cluster's primaries): long credentials */
        key.data = pool ? ngx_pnalloc(pool, key.len)
                        : ngx_alloc(key.len, bs->log);
        if (key.data == NULL) {
            *error = "out of memory";
            return NULL;
        }
    }

    p = ngx_http_redisgate_backend_copy(key.data, &ki->address);
    *p++ = '|';
    p = ngx_sprintf(p, "%ui", ki->db);
    *p++ = '|';
    p = ngx_http_redisgate_backend_copy(p, &ki->user);
    *p++ = '|';
    p = ngx_http_redisgate_backend_copy(p, &ki->password);

    key.len = p - key.data;

    hash = ngx_crc32_short(key.data, key.len);

    node = bs->rbtree.root;
    sentinel = bs->rbtree.sentinel;

    while (node != sentinel) {

        if (hash != node->key) {
            node = (hash < node->key) ? node->left : node->right;
            continue;
        }

        d = (ngx_http_redisgate_dynamic_t *) node;

        rc = ngx_memn2cmp(key.data, d->key.data, key.len, d->key.len);

        if (rc == 0) {
            d->backend.last_used = ngx_current_msec;
            goto found;
        }

        node = (rc < 0) ? node->left : node->right;
    }

    d = ngx_http_redisgate_backend_create(&key, ki, error);
    if (d == NULL) {
        goto failed;
    }

    d->node.key = hash;
    d->backend.last_used = ngx_current_msec;

    ngx_rbtree_insert(&bs->rbtree, &d->node);
    ngx_queue_insert_tail(&bs->all, &d->queue);

    if (!bs->sweep.timer_set) {
        ngx_add_timer(&bs->sweep, bs->rmcf->idle_timeout);
    }

found:

    if (pool == NULL && key.data != buf) {
        ngx_free(key.data);
    }

    return &d->backend;

failed:

    if (pool == NULL && key.data != buf) {
        ngx_free(key.data);
    }

    return NULL;
}


/*
 * One allocation: the record, the pool's slots, the key, the URL for the
 * log, the host, the user and the password.  The address is "host:port",
 * "rediss://host:port" (TLS), a unix socket's path, or
 * "redis[s]-sentinel://address[:port],.../name" (sentinel.c); a host name
 * is resolved by nginx's resolver when first used.
 */

static ngx_http_redisgate_dynamic_t *
ngx_http_redisgate_backend_create(ngx_str_t *key,
    ngx_http_redisgate_keyinfo_t *ki, const char **error)
{
    u_char                          *p, *q, *colon;
    ngx_int_t                        rc;
    ngx_str_t                        address, host;
    ngx_uint_t                       tls;
    ngx_addr_t                       addr;
    ngx_pool_t                      *pool;
    ngx_sockaddr_t                   sa;
    socklen_t                        socklen;
    in_port_t                        port;
    ngx_http_redisgate_dynamic_t    *d;
    ngx_http_redisgate_address_t    *a;
    ngx_http_redisgate_cluster_t    *cluster;
    ngx_http_redisgate_sentinel_t   *sentinel;
    ngx_http_redisgate_backends_t   *bs = &ngx_http_redisgate_backends;

    address = ki->address;
    tls = 0;
    port = 0;
    socklen = 0;
    sentinel = NULL;
    cluster = NULL;

    if ((address.len > 17
         && ngx_strncmp(address.data, "redis-sentinel://", 17) == 0)
        || (address.len > 18
            && ngx_strncmp(address.data, "rediss-sentinel://", 18) == 0))
    {
        tls = (address.data[5] == 's');

#if !(NGX_SSL)
        if (tls) {
            *error = "Redis unavailable: nginx was built without TLS";
            return NULL;
        }
#endif

        sentinel = ngx_http_redisgate_sentinel_create_dynamic(&address,
                                                              bs->log, error);
        if (sentinel == NULL) {
            return NULL;
        }

        ngx_str_set(&host, "");

        goto create;
    }

    if ((address.len > 16
         && ngx_strncmp(address.data, "redis-cluster://", 16) == 0)
        || (address.len > 17
            && ngx_strncmp(address.data, "rediss-cluster://", 17) == 0))
    {
        tls = (address.data[5] == 's');

#if !(NGX_SSL)
        if (tls) {
            *error = "Redis unavailable: nginx was built without TLS";
            return NULL;
        }
#endif

        cluster = ngx_http_redisgate_cluster_create_dynamic(&address, ki->db,
                                                            bs->log, error);
        if (cluster == NULL) {
            return NULL;
        }

        ngx_str_set(&host, "");

        goto create;
    }

    if (address.len > 9 && ngx_strncmp(address.data, "rediss://", 9) == 0) {
        tls = 1;
        address.data += 9;
        address.len -= 9;

#if !(NGX_SSL)
        *error = "Redis unavailable: nginx was built without TLS";
        return NULL;
#endif
    }

    if (address.len == 0) {
        *error = "the instance has no Redis address";
        return NULL;
    }

    host = address;

    if (address.data[0] == '/' && !tls) {

        if (address.len >= sizeof(sa.sockaddr_un.sun_path)) {
            *error = "the instance's unix socket path is too long";
            return NULL;
        }

        ngx_memzero(&sa, sizeof(ngx_sockaddr_t));
        sa.sockaddr_un.sun_family = AF_UNIX;
        ngx_memcpy(sa.sockaddr_un.sun_path, address.data, address.len);
        socklen = sizeof(struct sockaddr_un);

    } else {
        colon = NULL;

        for (p = address.data + address.len - 1; p > address.data; p--) {
            if (*p == ':') {
                colon = p;
                break;
            }

            if (*p == ']') {
                break;
            }
        }

        if (colon == NULL) {
            *error = "the instance's Redis address is not host:port "
                     "nor a unix socket path";
            return NULL;
        }

        rc = ngx_atoi(colon + 1, address.data + address.len - colon - 1);
        if (rc < 1 || rc > 65535) {
            *error = "the instance's Redis address has no valid port";
            return NULL;
        }

        port = (in_port_t) rc;
        host.len = colon - address.data;

        if (host.len > 2 && host.data[0] == '[' && colon[-1] == ']') {
            host.data++;
            host.len -= 2;
        }

        pool = ngx_create_pool(512, bs->log);
        if (pool == NULL) {
            *error = "out of memory";
            return NULL;
        }

        rc = ngx_parse_addr(pool, &addr, host.data, host.len);

        if (rc == NGX_OK) {
            ngx_memcpy(&sa, addr.sockaddr, addr.socklen);
            socklen = addr.socklen;
            ngx_inet_set_port(&sa.sockaddr, port);
        }

        ngx_destroy_pool(pool);
    }

create:

    d = ngx_calloc(sizeof(ngx_http_redisgate_dynamic_t)
                   + bs->rmcf->pool_size * sizeof(ngx_http_redisgate_conn_t)
                   + key->len + host.len + 1
                   + ki->user.len + ki->password.len
                   + sizeof("rediss://") + ki->address.len
                   + sizeof("?db=/") + NGX_INT_T_LEN,
                   bs->log);
    if (d == NULL) {
        if (sentinel) {
            ngx_http_redisgate_sentinel_destroy(sentinel);
        }

        if (cluster) {
            ngx_http_redisgate_cluster_destroy(cluster);
        }

        *error = "out of memory";
        return NULL;
    }

    a = &d->backend.address;
    p = (u_char *) &d[1];

    d->backend.conns = (ngx_http_redisgate_conn_t *) p;
    p += bs->rmcf->pool_size * sizeof(ngx_http_redisgate_conn_t);

    d->key.data = p;
    d->key.len = key->len;
    p = ngx_cpymem(p, key->data, key->len);

    /* NUL-terminated: the TLS name */
    a->host.data = p;
    a->host.len = host.len;
    p = ngx_cpymem(p, host.data, host.len);
    *p++ = '\0';

    a->url.data = p;

    if (cluster) {
        p = ngx_sprintf(p, "%V/0", &address);

    } else if (sentinel) {
        /* the sentinels' credentials stay out of logs and metrics */
        q = ngx_strlchr(address.data, address.data + address.len, '?');

        if (q) {
            address.len = q - address.data;
        }

        p = ngx_sprintf(p, "%V/%ui", &address, ki->db);

    } else if (port) {
        p = ngx_sprintf(p, "%s://%V/%ui", tls ? "rediss" : "redis", &address,
                        ki->db);

    } else {
        p = ngx_sprintf(p, "unix://%V?db=%ui", &address, ki->db);
    }

    a->url.len = p - a->url.data;

    a->user.data = p;
    a->user.len = ki->user.len;
    p = ngx_http_redisgate_backend_copy(p, &ki->user);

    a->password.data = p;
    a->password.len = ki->password.len;
    p = ngx_http_redisgate_backend_copy(p, &ki->password);

    a->db = ki->db;
    a->tls = tls;

    d->backend.pool_size = bs->rmcf->pool_size;
    d->backend.log = bs->log;
    d->backend.port = port;
    d->backend.sentinel = sentinel;
    d->backend.cluster = cluster;

    if (socklen) {
        ngx_memcpy(&d->backend.node.sockaddr, &sa, socklen);
        d->backend.node.socklen = socklen;
        d->backend.resolved = 1;

    } else {
        /* a host name, for nginx's resolver when first used */
        d->backend.resolve_name = a->host;
    }

    ngx_queue_init(&d->backend.waiting);

    ngx_http_redisgate_redis_init_conns(&d->backend, bs->rmcf);

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, bs->log, 0,
                   "redisgate: new backend %V", &a->url);

    return d;
}


/*
 * NGX_OK: the backend has an address to connect to.  NGX_AGAIN: its host
 * name is being resolved; retry(r) is called when that is over.
 * NGX_DECLINED: it has none, *error says why.
 *
 * A name that has an address already (from nginx.conf, resolved when the
 * configuration was read, or an earlier answer) is resolved again in the
 * background when its answer expires, if nginx has a resolver.
 */

ngx_int_t
ngx_http_redisgate_backend_ready(ngx_http_redisgate_backend_t *b,
    ngx_http_request_t *r, ngx_http_redisgate_retry_pt retry,
    const char **error)
{
    ngx_int_t                  rc;
    ngx_http_core_loc_conf_t  *clcf;

    if (b->sentinel || b->cluster) {
        rc = b->sentinel ? ngx_http_redisgate_sentinel_ready(b, error)
                         : ngx_http_redisgate_cluster_ready(b, error);

        if (rc != NGX_AGAIN) {
            return rc;
        }

        return ngx_http_redisgate_backend_wait(b, r, retry, error);
    }

    if (b->resolve_name.len == 0 || b->resolved_until > ngx_time()) {
        return NGX_OK;
    }

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    if (b->resolved) {
        /* the old answer serves while a new one comes */
        if (b->resolving == NULL
            && ngx_http_redisgate_backend_resolve(b, clcf, error)
               == NGX_DECLINED)
        {
            /* no resolver: the address read at start stays */
            b->resolved_until = NGX_MAX_TIME_T_VALUE;
        }

        return NGX_OK;
    }

    if (b->resolve_error && b->resolve_retry > ngx_time()) {
        *error = "Redis unavailable: could not resolve the host";
        return NGX_DECLINED;
    }

    if (b->resolving) {
        return ngx_http_redisgate_backend_wait(b, r, retry, error);
    }

    rc = ngx_http_redisgate_backend_resolve(b, clcf, error);

    if (rc != NGX_OK) {
        return NGX_DECLINED;
    }

    if (b->resolving) {
        return ngx_http_redisgate_backend_wait(b, r, retry, error);
    }

    /* answered from the resolver's cache, right away */

    if (b->resolve_error) {
        *error = "Redis unavailable: could not resolve the host";
        return NGX_DECLINED;
    }

    return NGX_OK;
}


/*
 * n commands (in resp, formatted; MULTI and EXEC around them when multi)
 * to a ready backend: a cluster's through scatter.c, any other's through
 * its pool.  handler gets each reply in order, then (NULL, NULL).
 * NGX_ABORT: a transaction across a cluster's slots, *error says so.
 */

ngx_int_t
ngx_http_redisgate_backend_send(ngx_http_redisgate_backend_t *b,
    ngx_http_request_t *r, ngx_http_redisgate_cmd_t *cmds, ngx_str_t *resp,
    ngx_uint_t n, ngx_uint_t multi, ngx_msec_t timeout,
    ngx_http_redisgate_reply_pt handler, ngx_http_redisgate_bulk_pt bulk,
    void *data, const char **error)
{
    if (b->cluster) {
        /* replies come whole: a cluster's may be gathered from nodes */
        return ngx_http_redisgate_scatter(b, r, cmds, resp, n, multi,
                                          timeout, handler, data, error);
    }

    return ngx_http_redisgate_redis_send(b, r, resp, n + (multi ? 2 : 0),
                                         timeout, handler, bulk, data, error);
}


/* r waits for the backend's address: retry(r) when it is found, or not */

static ngx_int_t
ngx_http_redisgate_backend_wait(ngx_http_redisgate_backend_t *b,
    ngx_http_request_t *r, ngx_http_redisgate_retry_pt retry,
    const char **error)
{
    ngx_http_redisgate_resolve_waiter_t  *w;

    w = ngx_palloc(r->pool, sizeof(ngx_http_redisgate_resolve_waiter_t));
    if (w == NULL
        || ngx_http_redisgate_wait(r->pool, &b->waiting, &w->wait) != NGX_OK)
    {
        *error = "out of memory";
        return NGX_DECLINED;
    }

    w->request = r;
    w->retry = retry;

    return NGX_AGAIN;
}


/* the requests that waited for the address try again */

void
ngx_http_redisgate_backend_wake(ngx_http_redisgate_backend_t *b)
{
    ngx_queue_t                          *q;
    ngx_http_redisgate_resolve_waiter_t  *w;

    while (!ngx_queue_empty(&b->waiting)) {
        q = ngx_queue_head(&b->waiting);
        w = ngx_queue_data(q, ngx_http_redisgate_resolve_waiter_t,
                           wait.queue);

        (void) ngx_http_redisgate_wait_done(&w->wait);

        w->retry(w->request);
    }
}


static ngx_int_t
ngx_http_redisgate_backend_resolve(ngx_http_redisgate_backend_t *b,
    ngx_http_core_loc_conf_t *clcf, const char **error)
{
    ngx_resolver_ctx_t  *rctx;

    rctx = ngx_resolve_start(clcf->resolver, NULL);

    if (rctx == NULL) {
        *error = "out of memory";
        return NGX_ERROR;
    }

    if (rctx == NGX_NO_RESOLVER) {
        *error = "the instance's Redis address is a host name, and no "
                 "\"resolver\" is configured";
        return NGX_DECLINED;
    }

    rctx->name = b->resolve_name;
    rctx->handler = ngx_http_redisgate_backend_resolved;
    rctx->data = b;
    rctx->timeout = clcf->resolver_timeout;

    b->resolving = rctx;
    b->resolve_starting = 1;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, b->log, 0,
                   "redisgate: resolving \"%V\"", &b->resolve_name);

    if (ngx_resolve_name(rctx) != NGX_OK) {
        b->resolving = NULL;
        b->resolve_starting = 0;
        *error = "could not start resolving the instance's Redis host";
        return NGX_ERROR;
    }

    b->resolve_starting = 0;

    return NGX_OK;
}


static void
ngx_http_redisgate_backend_resolved(ngx_resolver_ctx_t *rctx)
{
    ngx_http_redisgate_backend_t *b = rctx->data;

    if (rctx->state || rctx->naddrs == 0) {
        ngx_log_error(NGX_LOG_ERR, b->log, 0,
                      "redisgate: could not resolve the Redis host \"%V\": "
                      "%s", &b->resolve_name,
                      rctx->state ? ngx_resolver_strerror(rctx->state)
                                  : "no address");

        b->resolve_error = 1;
        b->resolve_retry = ngx_time() + 1;

        if (b->resolved) {
            /* keep using the last good answer a little longer */
            b->resolved_until = ngx_time() + 1;
        }

    } else {
        ngx_http_redisgate_backend_set_address(b, &rctx->addrs[0]);

        b->resolve_error = 0;
        b->resolved_until = ngx_max(rctx->valid, ngx_time() + 1);
    }

    ngx_resolve_name_done(rctx);
    b->resolving = NULL;

    if (b->resolve_starting) {
        /* inside ngx_resolve_name(): the caller looks at the outcome */
        return;
    }

    ngx_http_redisgate_backend_wake(b);
}


static void
ngx_http_redisgate_backend_set_address(ngx_http_redisgate_backend_t *b,
    ngx_resolver_addr_t *ra)
{
    ngx_sockaddr_t   sa;

    ngx_memcpy(&sa, ra->sockaddr, ra->socklen);
    ngx_inet_set_port(&sa.sockaddr, b->port);

    ngx_http_redisgate_backend_move(b, &sa, ra->socklen);

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, b->log, 0,
                   "redisgate: \"%V\" resolved", &b->resolve_name);
}


/*
 * A new address, from the resolver or the sentinels.  When it moved (a
 * failover), the next requests go to the new one, at once, and the
 * connections to the old one close once the replies awaited on them are
 * in.
 */

void
ngx_http_redisgate_backend_move(ngx_http_redisgate_backend_t *b,
    ngx_sockaddr_t *sa, socklen_t socklen)
{
    if (b->resolved
        && ngx_cmp_sockaddr(&sa->sockaddr, socklen,
                            &b->node.sockaddr.sockaddr, b->node.socklen, 1)
           == NGX_OK)
    {
        return;
    }

    if (b->resolved) {
        ngx_log_error(NGX_LOG_NOTICE, b->log, 0,
                      "redisgate: %V moved, closing the connections to the "
                      "old address", &b->address.url);

        ngx_http_redisgate_redis_retire(b);

        /* the old address's failures say nothing of the new one */
        ngx_http_redisgate_health_up(&b->health);
    }

    ngx_memcpy(&b->node.sockaddr, sa, socklen);
    b->node.socklen = socklen;
    b->resolved = 1;
}


static void
ngx_http_redisgate_backend_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel)
{
    ngx_http_redisgate_zone_insert_value(temp, node, sentinel,
                                         ngx_http_redisgate_backend_cmp);
}


static ngx_int_t
ngx_http_redisgate_backend_cmp(ngx_rbtree_node_t *one, ngx_rbtree_node_t *two)
{
    ngx_http_redisgate_dynamic_t  *d, *t;

    d = (ngx_http_redisgate_dynamic_t *) one;
    t = (ngx_http_redisgate_dynamic_t *) two;

    return ngx_memn2cmp(d->key.data, t->key.data, d->key.len, t->key.len);
}


/* idle backends close their pools and go */

static void
ngx_http_redisgate_backend_sweep(ngx_event_t *ev)
{
    ngx_http_redisgate_backends_t *bs = ev->data;

    ngx_queue_t                   *q, *next;
    ngx_http_redisgate_dynamic_t  *d;

    for (q = ngx_queue_head(&bs->all);
         q != ngx_queue_sentinel(&bs->all);
         q = next)
    {
        next = ngx_queue_next(q);
        d = ngx_queue_data(q, ngx_http_redisgate_dynamic_t, queue);

        if (ngx_current_msec - d->backend.last_used < bs->rmcf->idle_timeout
            || d->backend.refs
            || ngx_http_redisgate_pubsub_busy(&d->backend)
            || ngx_http_redisgate_redis_busy(&d->backend)
            || d->backend.resolving
            || !ngx_queue_empty(&d->backend.waiting))
        {
            continue;
        }

        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, bs->log, 0,
                       "redisgate: closing idle backend %V",
                       &d->backend.address.url);

        ngx_http_redisgate_backend_free(d);
    }

    if (!ngx_queue_empty(&bs->all) && !ngx_exiting) {
        ngx_add_timer(&bs->sweep, bs->rmcf->idle_timeout);
    }
}


static void
ngx_http_redisgate_backend_free(ngx_http_redisgate_dynamic_t *d)
{
    ngx_http_redisgate_backends_t  *bs = &ngx_http_redisgate_backends;

    ngx_http_redisgate_redis_close_backend(&d->backend);

    ngx_rbtree_delete(&bs->rbtree, &d->node);
    ngx_queue_remove(&d->queue);

    ngx_free(d);
}
