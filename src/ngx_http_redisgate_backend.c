
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
    ngx_queue_t                     queue;      /* backend->waiting */
    ngx_http_request_t             *request;
    ngx_http_redisgate_retry_pt     retry;
    ngx_pool_cleanup_t             *cleanup;
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
static void ngx_http_redisgate_backend_waiter_cleanup(void *data);
static ngx_int_t ngx_http_redisgate_backend_cmp(ngx_rbtree_node_t *one,
    ngx_rbtree_node_t *two);
static void ngx_http_redisgate_backend_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel);
static void ngx_http_redisgate_backend_sweep(ngx_event_t *ev);
static void ngx_http_redisgate_backend_free(ngx_http_redisgate_dynamic_t *d);


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

    while (!ngx_queue_empty(&bs->all)) {
        q = ngx_queue_head(&bs->all);
        d = ngx_queue_data(q, ngx_http_redisgate_dynamic_t, queue);
        ngx_http_redisgate_backend_free(d);
    }
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
        key.data = ngx_pnalloc(pool, key.len);
        if (key.data == NULL) {
            *error = "out of memory";
            return NULL;
        }
    }

    p = ngx_cpymem(key.data, ki->address.data, ki->address.len);
    *p++ = '|';
    p = ngx_sprintf(p, "%ui", ki->db);
    *p++ = '|';
    p = ngx_cpymem(p, ki->user.data, ki->user.len);
    *p++ = '|';
    p = ngx_cpymem(p, ki->password.data, ki->password.len);

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
            return &d->backend;
        }

        node = (rc < 0) ? node->left : node->right;
    }

    d = ngx_http_redisgate_backend_create(&key, ki, error);
    if (d == NULL) {
        return NULL;
    }

    d->node.key = hash;
    d->backend.last_used = ngx_current_msec;

    ngx_rbtree_insert(&bs->rbtree, &d->node);
    ngx_queue_insert_tail(&bs->all, &d->queue);

    if (!bs->sweep.timer_set) {
        ngx_add_timer(&bs->sweep, bs->rmcf->idle_timeout);
    }

    return &d->backend;
}


/*
 * One allocation: the record, the pool's slots, the key, the host (or
 * path), the user and the password.  An address that is a host name keeps
 * the name and room for the address the resolver gives.
 */

static ngx_http_redisgate_dynamic_t *
ngx_http_redisgate_backend_create(ngx_str_t *key,
    ngx_http_redisgate_keyinfo_t *ki, const char **error)
{
    u_char                          *p, *colon, text[NGX_SOCKADDR_STRLEN];
    size_t                           len;
    in_port_t                        port;
    ngx_int_t                        rc;
    ngx_str_t                        name;
    ngx_addr_t                       addr;
    ngx_pool_t                      *pool;
    ngx_http_redisgate_dynamic_t    *d;
    ngx_http_redisgate_address_t    *a;
    ngx_http_redisgate_backends_t   *bs = &ngx_http_redisgate_backends;

    len = 0;
    port = 0;
    ngx_str_null(&name);

    if (ki->address.len == 0) {
        *error = "the instance has no Redis address";
        return NULL;
    }

    if (ki->address.data[0] != '/') {
        pool = ngx_create_pool(512, bs->log);
        if (pool == NULL) {
            *error = "out of memory";
            return NULL;
        }

        rc = ngx_parse_addr_port(pool, &addr, ki->address.data,
                                 ki->address.len);

        if (rc == NGX_OK) {
            len = ngx_sock_ntop(addr.sockaddr, addr.socklen, text,
                                NGX_SOCKADDR_STRLEN, 0);
            port = ngx_inet_get_port(addr.sockaddr);
        }

        ngx_destroy_pool(pool);

        if (rc != NGX_OK) {
            /* a host name, for nginx's resolver when first used */
            colon = ngx_strlchr(ki->address.data,
                                ki->address.data + ki->address.len, ':');

            if (colon == NULL || colon == ki->address.data) {
                *error = "the instance's Redis address is not host:port "
                         "nor a unix socket path";
                return NULL;
            }

            rc = ngx_atoi(colon + 1,
                          ki->address.data + ki->address.len - colon - 1);
            if (rc < 1 || rc > 65535) {
                *error = "the instance's Redis address has no valid port";
                return NULL;
            }

            port = (in_port_t) rc;
            name.data = ki->address.data;
            name.len = colon - ki->address.data;
            len = NGX_SOCKADDR_STRLEN;

        } else if (port == 0) {
            *error = "the instance's Redis address has no port";
            return NULL;
        }
    }

    d = ngx_calloc(sizeof(ngx_http_redisgate_dynamic_t)
                   + bs->rmcf->pool_size * sizeof(ngx_http_redisgate_conn_t)
                   + key->len + ki->address.len + 1 + len + 1
                   + ki->user.len + ki->password.len + name.len
                   + sizeof("unix://?db=") + NGX_INT_T_LEN
                   + sizeof("redis:///") + ki->address.len,
                   bs->log);
    if (d == NULL) {
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

    if (len) {
        a->host.data = p;

        if (name.len) {
            a->host.len = 0;
            p += NGX_SOCKADDR_STRLEN + 1;

            d->backend.resolve_name.data = p;
            d->backend.resolve_name.len = name.len;
            p = ngx_cpymem(p, name.data, name.len);

        } else {
            a->host.len = len;
            p = ngx_cpymem(p, text, len);
            *p++ = '\0';
        }

        a->port = port;

        a->url.data = p;
        p = ngx_sprintf(p, "redis://%V/%ui", &ki->address, ki->db);
        a->url.len = p - a->url.data;

    } else {
        a->path.data = p;
        a->path.len = ki->address.len;
        p = ngx_cpymem(p, ki->address.data, ki->address.len);
        *p++ = '\0';

        a->url.data = p;
        p = ngx_sprintf(p, "unix://%V?db=%ui", &ki->address, ki->db);
        a->url.len = p - a->url.data;
    }

    a->user.data = p;
    a->user.len = ki->user.len;
    p = ngx_cpymem(p, ki->user.data, ki->user.len);

    a->password.data = p;
    a->password.len = ki->password.len;
    p = ngx_cpymem(p, ki->password.data, ki->password.len);

    a->db = ki->db;

    d->backend.pool_size = bs->rmcf->pool_size;
    d->backend.connect_timeout = bs->rmcf->connect_timeout;
    d->backend.backoff_min = bs->rmcf->backoff_min;
    d->backend.backoff_max = bs->rmcf->backoff_max;
    d->backend.log = bs->log;

    ngx_queue_init(&d->backend.waiting);

    ngx_http_redisgate_redis_init_conns(&d->backend);

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, bs->log, 0,
                   "redisgate: new backend %V", &a->url);

    return d;
}


/*
 * NGX_OK: the backend has an address to connect to.  NGX_AGAIN: its host
 * name is being resolved; retry(r) is called when that is over.
 * NGX_DECLINED: it has none, *error says why.
 */

ngx_int_t
ngx_http_redisgate_backend_ready(ngx_http_redisgate_backend_t *b,
    ngx_http_request_t *r, ngx_http_redisgate_retry_pt retry,
    const char **error)
{
    ngx_pool_cleanup_t                    *cln;
    ngx_http_core_loc_conf_t              *clcf;
    ngx_http_redisgate_resolve_waiter_t   *w;

    if (b->resolve_name.len == 0 || b->resolved_until > ngx_time()) {
        return NGX_OK;
    }

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    if (b->address.host.len) {
        /* the old answer serves while a new one comes */
        if (b->resolving == NULL) {
            (void) ngx_http_redisgate_backend_resolve(b, clcf, error);
        }

        return NGX_OK;
    }

    if (b->resolve_error && b->resolve_retry > ngx_time()) {
        *error = (const char *) b->error;
        return NGX_DECLINED;
    }

    w = ngx_palloc(r->pool, sizeof(ngx_http_redisgate_resolve_waiter_t));
    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (w == NULL || cln == NULL) {
        *error = "out of memory";
        return NGX_DECLINED;
    }

    w->request = r;
    w->retry = retry;
    w->cleanup = cln;

    cln->handler = ngx_http_redisgate_backend_waiter_cleanup;
    cln->data = w;

    ngx_queue_insert_tail(&b->waiting, &w->queue);

    if (b->resolving) {
        return NGX_AGAIN;
    }

    if (ngx_http_redisgate_backend_resolve(b, clcf, error) != NGX_OK) {
        ngx_queue_remove(&w->queue);
        cln->handler = NULL;
        return NGX_DECLINED;
    }

    if (b->resolving) {
        return NGX_AGAIN;
    }

    /* answered from the resolver's cache, right away */

    ngx_queue_remove(&w->queue);
    cln->handler = NULL;

    if (b->resolve_error) {
        *error = (const char *) b->error;
        return NGX_DECLINED;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_redisgate_backend_resolve(ngx_http_redisgate_backend_t *b,
    ngx_http_core_loc_conf_t *clcf, const char **error)
{
    ngx_resolver_ctx_t  *rctx;

    rctx = ngx_resolve_start(clcf->resolver, NULL);

    if (rctx == NULL || rctx == NGX_NO_RESOLVER) {
        *error = (rctx == NULL) ? "out of memory"
                 : "the instance's Redis address is a host name, and no "
                   "\"resolver\" is configured";
        return NGX_ERROR;
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

    u_char                               *p;
    ngx_queue_t                          *q;
    ngx_http_redisgate_resolve_waiter_t  *w;

    if (rctx->state || rctx->naddrs == 0) {
        p = ngx_snprintf(b->error, sizeof(b->error) - 1,
                         "could not resolve the Redis host \"%V\": %s",
                         &b->resolve_name,
                         rctx->state ? ngx_resolver_strerror(rctx->state)
                                     : "no address");
        *p = '\0';

        ngx_log_error(NGX_LOG_ERR, b->log, 0, "redisgate: %s", b->error);

        b->resolve_error = 1;
        b->resolve_retry = ngx_time() + 1;

        if (b->address.host.len) {
            /* keep using the last good answer a little longer */
            b->resolved_until = ngx_time() + 1;
        }

    } else {
        b->address.host.len = ngx_sock_ntop(rctx->addrs[0].sockaddr,
                                            rctx->addrs[0].socklen,
                                            b->address.host.data,
                                            NGX_SOCKADDR_STRLEN, 0);
        b->address.host.data[b->address.host.len] = '\0';

        b->resolve_error = 0;
        b->resolved_until = ngx_max(rctx->valid, ngx_time() + 1);

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, b->log, 0,
                       "redisgate: \"%V\" is %V", &b->resolve_name,
                       &b->address.host);
    }

    ngx_resolve_name_done(rctx);
    b->resolving = NULL;

    if (b->resolve_starting) {
        /* inside ngx_resolve_name(): the caller looks at the outcome */
        return;
    }

    while (!ngx_queue_empty(&b->waiting)) {
        q = ngx_queue_head(&b->waiting);
        w = ngx_queue_data(q, ngx_http_redisgate_resolve_waiter_t, queue);

        ngx_queue_remove(q);
        w->cleanup->handler = NULL;

        w->retry(w->request);
    }
}


static void
ngx_http_redisgate_backend_waiter_cleanup(void *data)
{
    ngx_http_redisgate_resolve_waiter_t  *w = data;

    ngx_queue_remove(&w->queue);
}


static void
ngx_http_redisgate_backend_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel)
{
    ngx_http_redisgate_zone_insert(temp, node, sentinel,
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
