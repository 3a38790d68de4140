
/*
 * Copyright (C) RedisGate authors
 */


/*
 * A Redis Cluster as one backend (redis-cluster:// URLs): which primary
 * serves which of the 16384 hash slots, per worker.
 *
 * The map comes from CLUSTER SLOTS, asked of the seed nodes in turn
 * (ask.c) when a request first needs it, and again in the background
 * when it is stale: a MOVED reply (whose slot is set at once), a node
 * lost, or every NGX_HTTP_REDISGATE_CLUSTER_REFRESH seconds of use.
 *
 * Each primary is a backend of its own ("redis://ip:port/0" with the
 * cluster's credentials), found in backend.c's per-worker tree: its pool,
 * health and metrics are a plain backend's, opened lazily, and shared by
 * every instance on the same cluster.  The cluster holds a reference on
 * each, so that the idle sweep leaves them alone.
 *
 * How a request's commands go to the nodes is scatter.c's business.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_redisgate.h"


/* the map is asked again after this many seconds of use */
#define NGX_HTTP_REDISGATE_CLUSTER_REFRESH  10

#define NGX_HTTP_REDISGATE_CLUSTER_PORT     6379


struct ngx_http_redisgate_cluster_s {
    ngx_http_redisgate_backend_t   *backend;    /* the instances' */

    /* CLUSTER SLOTS, to the seeds */
    ngx_http_redisgate_ask_t        ask;
    ngx_str_t                       question[2];

    uint16_t                       *slots;      /* node index + 1; 0: none */
    ngx_http_redisgate_backend_t  **nodes;      /* primaries, by address */
    ngx_uint_t                      nnodes;

    time_t                          mapped;     /* when the map came */
    time_t                          retry;      /* none answered: not before */

    ngx_pool_t                     *pool;       /* its own, when dynamic */

    unsigned                        known:1;
    unsigned                        stale:1;
};


static ngx_int_t ngx_http_redisgate_cluster_answer(
    ngx_http_redisgate_ask_t *ask, redisReply *reply);
static void ngx_http_redisgate_cluster_over(ngx_http_redisgate_ask_t *ask);
static ngx_http_redisgate_backend_t *ngx_http_redisgate_cluster_primary(
    ngx_http_redisgate_cluster_t *cl, u_char *ip, size_t ip_len,
    ngx_int_t port, const char **error);
static int ngx_libc_cdecl ngx_http_redisgate_cluster_cmp(const void *one,
    const void *two);
static void ngx_http_redisgate_cluster_release(
    ngx_http_redisgate_backend_t **nodes, ngx_uint_t n);


/*
 * The seeds of a parsed redis-cluster:// URL.  resolve: host names may be
 * resolved now (nginx.conf); otherwise only addresses (the key store's).
 */

ngx_http_redisgate_cluster_t *
ngx_http_redisgate_cluster_create(ngx_pool_t *pool,
    ngx_http_redisgate_url_t *u, ngx_uint_t resolve, const char **error)
{
    ngx_http_redisgate_ask_t      *ask;
    ngx_http_redisgate_cluster_t  *cl;

    cl = ngx_pcalloc(pool, sizeof(ngx_http_redisgate_cluster_t));
    if (cl == NULL) {
        *error = "out of memory";
        return NULL;
    }

    ask = &cl->ask;

    ask->nodes = ngx_http_redisgate_ask_nodes(pool, &u->host,
                                              NGX_HTTP_REDISGATE_CLUSTER_PORT,
                                              resolve, "cluster seed",
                                              &ask->nnodes, error);
    if (ask->nodes == NULL) {
        return NULL;
    }

    ngx_str_set(&cl->question[0], "CLUSTER");
    ngx_str_set(&cl->question[1], "SLOTS");

    ask->argv = cl->question;
    ask->argc = 2;
    ask->answer = ngx_http_redisgate_cluster_answer;
    ask->over = ngx_http_redisgate_cluster_over;
    ask->data = cl;

    return cl;
}


/* a key-store instance's cluster, with a pool of its own */

ngx_http_redisgate_cluster_t *
ngx_http_redisgate_cluster_create_dynamic(ngx_str_t *address, ngx_uint_t db,
    ngx_log_t *log, const char **error)
{
    ngx_pool_t                    *pool;
    ngx_http_redisgate_url_t       u;
    ngx_http_redisgate_cluster_t  *cl;

    if (ngx_http_redisgate_parse_url(&u, address->data, address->len)
        != NGX_OK)
    {
        *error = u.error;
        return NULL;
    }

    if (u.has_userinfo) {
        *error = "the instance's cluster address carries credentials: the "
                 "key store has columns for them";
        return NULL;
    }

    if (db) {
        *error = "the instance's database is not 0: a cluster has "
                 "database 0 only";
        return NULL;
    }

    pool = ngx_create_pool(1024, log);
    if (pool == NULL) {
        *error = "out of memory";
        return NULL;
    }

    cl = ngx_http_redisgate_cluster_create(pool, &u, 0, error);

    if (cl == NULL) {
        ngx_destroy_pool(pool);
        return NULL;
    }

    cl->pool = pool;

    return cl;
}


void
ngx_http_redisgate_cluster_destroy(ngx_http_redisgate_cluster_t *cl)
{
    if (cl->pool) {
        ngx_destroy_pool(cl->pool);
    }
}


/* in each worker */

void
ngx_http_redisgate_cluster_init(ngx_http_redisgate_backend_t *b,
    ngx_http_redisgate_main_conf_t *rmcf)
{
    ngx_uint_t                     i;
    ngx_http_redisgate_cluster_t  *cl;

    cl = b->cluster;
    cl->backend = b;

    for (i = 0; i < cl->ask.nnodes; i++) {
        cl->ask.nodes[i].connect_timeout = rmcf->connect_timeout;
#if (NGX_SSL)
        if (b->address.tls) {
            cl->ask.nodes[i].tls = rmcf->tls;
        }
#endif
    }

    /* the seeds take the nodes' credentials */
    cl->ask.user = b->address.user;
    cl->ask.password = b->address.password;
    cl->ask.log = b->log;
    cl->ask.timeout = rmcf->connect_timeout;

    ngx_http_redisgate_ask_init(&cl->ask);

    /* no connection of its own: its primaries have them */
    b->resolved = 0;
}


void
ngx_http_redisgate_cluster_close(ngx_http_redisgate_backend_t *b)
{
    ngx_http_redisgate_cluster_t  *cl;

    cl = b->cluster;

    if (cl == NULL || cl->backend == NULL) {
        return;
    }

    ngx_http_redisgate_ask_close(&cl->ask);

    ngx_http_redisgate_cluster_release(cl->nodes, cl->nnodes);

    if (cl->nodes) {
        ngx_free(cl->nodes);
    }

    if (cl->slots) {
        ngx_free(cl->slots);
    }

    cl->backend = NULL;

    /* closed once: a dynamic cluster's memory goes with its pool */
    b->cluster = NULL;

    ngx_http_redisgate_cluster_destroy(cl);
}


/*
 * As backend_ready(): NGX_OK when the map is known (asked again in the
 * background when stale or old), NGX_AGAIN while it is asked, NGX_DECLINED
 * with *error when no seed gave it lately.
 */

ngx_int_t
ngx_http_redisgate_cluster_ready(ngx_http_redisgate_backend_t *b,
    const char **error)
{
    ngx_http_redisgate_cluster_t  *cl;

    cl = b->cluster;

    if (cl->known) {
        if ((cl->stale
             || ngx_time() - cl->mapped >= NGX_HTTP_REDISGATE_CLUSTER_REFRESH)
            && cl->retry <= ngx_time())
        {
            ngx_http_redisgate_ask_start(&cl->ask);
        }

        return NGX_OK;
    }

    if (cl->ask.asking || cl->retry <= ngx_time()) {
        ngx_http_redisgate_ask_start(&cl->ask);

        if (cl->ask.asking) {
            return NGX_AGAIN;
        }
    }

    /* the seeds refused the nodes' credentials: say that, not "no map" */
    *error = ngx_http_redisgate_link_strerror(cl->ask.auth_failed
                                              ? NGX_HTTP_REDISGATE_FAIL_AUTH
                                              : NGX_HTTP_REDISGATE_FAIL_NO_MAP);
    return NGX_DECLINED;
}


/* the map may be out of date: the next request asks again */

void
ngx_http_redisgate_cluster_stale(ngx_http_redisgate_cluster_t *cl)
{
    cl->stale = 1;
}


/* the primary that serves a slot; NGX_HTTP_REDISGATE_SLOTS: any of them */

ngx_http_redisgate_backend_t *
ngx_http_redisgate_cluster_node(ngx_http_redisgate_cluster_t *cl,
    ngx_uint_t slot)
{
    ngx_uint_t  i;

    if (cl->nnodes == 0) {
        return NULL;
    }

    if (slot < NGX_HTTP_REDISGATE_SLOTS && cl->slots[slot]) {
        return cl->nodes[cl->slots[slot] - 1];
    }

    /* a keyless command, or a slot no node serves: it will say so */
    i = (slot < NGX_HTTP_REDISGATE_SLOTS) ? slot : (ngx_uint_t) ngx_random();

    return cl->nodes[i % cl->nnodes];
}


/* the primaries, in the order of their addresses */

ngx_http_redisgate_backend_t **
ngx_http_redisgate_cluster_nodes(ngx_http_redisgate_cluster_t *cl,
    ngx_uint_t *n)
{
    *n = cl->nnodes;
    return cl->nodes;
}


/* the primary at "ip:port" (of a MOVED or an ASK); NULL: not one */

ngx_http_redisgate_backend_t *
ngx_http_redisgate_cluster_at(ngx_http_redisgate_cluster_t *cl, u_char *addr,
    size_t len)
{
    u_char                        *colon;
    ngx_int_t                      port;
    ngx_uint_t                     i;
    const char                    *error;
    ngx_http_redisgate_backend_t  *node;

    colon = NULL;

    for (i = len; i > 0; i--) {
        if (addr[i - 1] == ':') {
            colon = &addr[i - 1];
            break;
        }
    }

    if (colon == NULL) {
        return NULL;
    }

    port = ngx_atoi(colon + 1, addr + len - colon - 1);

    node = ngx_http_redisgate_cluster_primary(cl, addr, colon - addr, port,
                                              &error);
    if (node == NULL) {
        ngx_log_error(NGX_LOG_ERR, cl->backend->log, 0,
                      "redisgate: redirected to \"%*s\" in %V: %s", len,
                      addr, &cl->backend->address.url, error);
    }

    return node;
}


/*
 * MOVED: the slot's new primary, at once; the rest of the map is asked
 * for at the next request.
 */

void
ngx_http_redisgate_cluster_moved(ngx_http_redisgate_cluster_t *cl,
    ngx_uint_t slot, ngx_http_redisgate_backend_t *node)
{
    ngx_uint_t                      i;
    ngx_http_redisgate_backend_t  **nodes;

    cl->stale = 1;

    for (i = 0; i < cl->nnodes; i++) {
        if (cl->nodes[i] == node) {
            cl->slots[slot] = (uint16_t) (i + 1);
            return;
        }
    }

    /* a primary the map does not have yet: at the end, until the map */

    nodes = ngx_alloc((cl->nnodes + 1) * sizeof(ngx_http_redisgate_backend_t *),
                      cl->backend->log);
    if (nodes == NULL) {
        return;
    }

    if (cl->nnodes) {
        ngx_memcpy(nodes, cl->nodes,
                   cl->nnodes * sizeof(ngx_http_redisgate_backend_t *));
    }

    if (cl->nodes) {
        ngx_free(cl->nodes);
    }

    cl->nodes = nodes;
    cl->nodes[cl->nnodes++] = node;
    node->refs++;

    cl->slots[slot] = (uint16_t) cl->nnodes;
}


/*
 * CLUSTER SLOTS: [[start, end, [ip, port, id, ...], replica...], ...].
 * NGX_OK: the new map is in place; NGX_DECLINED: ask the next seed.
 */

static ngx_int_t
ngx_http_redisgate_cluster_answer(ngx_http_redisgate_ask_t *ask,
    redisReply *reply)
{
    ngx_http_redisgate_cluster_t *cl = ask->data;

    u_char                         ip[NGX_SOCKADDR_STRLEN];
    size_t                         ip_len;
    uint16_t                      *slots;
    ngx_int_t                      port;
    ngx_uint_t                     i, j, k, n, start, end;
    redisReply                    *range, *primary;
    const char                    *error;
    ngx_http_redisgate_backend_t  *node, **nodes, **owners;

    slots = NULL;
    nodes = NULL;

    if (reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, ask->log, 0,
                      "redisgate: %V refused CLUSTER SLOTS: %*s",
                      &ask->node->name, (size_t) reply->len, reply->str);
        return NGX_DECLINED;
    }

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements == 0) {
        ngx_log_error(NGX_LOG_ERR, ask->log, 0,
                      "redisgate: %V serves no slot (CLUSTER SLOTS is "
                      "empty)", &ask->node->name);
        return NGX_DECLINED;
    }

    slots = ngx_calloc(NGX_HTTP_REDISGATE_SLOTS * sizeof(uint16_t),
                       ask->log);

    /* the primaries, then each range's */
    nodes = ngx_alloc(2 * reply->elements
                      * sizeof(ngx_http_redisgate_backend_t *), ask->log);

    if (slots == NULL || nodes == NULL) {
        goto failed;
    }

    owners = nodes + reply->elements;

    /* the primaries first, then sorted by address: a SCAN cursor's node
     * means the same after the next map */

    n = 0;

    for (i = 0; i < reply->elements; i++) {
        range = reply->element[i];

        if (range->type != REDIS_REPLY_ARRAY || range->elements < 3
            || range->element[0]->type != REDIS_REPLY_INTEGER
            || range->element[1]->type != REDIS_REPLY_INTEGER
            || range->element[2]->type != REDIS_REPLY_ARRAY
            || range->element[2]->elements < 2
            || range->element[2]->element[0]->type != REDIS_REPLY_STRING
            || range->element[2]->element[1]->type != REDIS_REPLY_INTEGER
            || range->element[0]->integer < 0
            || range->element[1]->integer >= NGX_HTTP_REDISGATE_SLOTS
            || range->element[0]->integer > range->element[1]->integer)
        {
            ngx_log_error(NGX_LOG_ERR, ask->log, 0,
                          "redisgate: %V answered CLUSTER SLOTS with "
                          "something else than slot ranges",
                          &ask->node->name);
            goto declined;
        }

        primary = range->element[2];
        port = (ngx_int_t) primary->element[1]->integer;

        if (primary->element[0]->len == 0
            || (primary->element[0]->len == 1
                && primary->element[0]->str[0] == '?'))
        {
            /* an endpoint it does not know: the node asked */
            ip_len = ngx_sock_ntop(&ask->node->sockaddr.sockaddr,
                                   ask->node->socklen, ip, sizeof(ip), 0);

        } else {
            ip_len = ngx_min(primary->element[0]->len, sizeof(ip));
            ngx_memcpy(ip, primary->element[0]->str, ip_len);
        }

        node = ngx_http_redisgate_cluster_primary(cl, ip, ip_len, port,
                                                  &error);
        if (node == NULL) {
            ngx_log_error(NGX_LOG_ERR, ask->log, 0,
                          "redisgate: %V named a primary at \"%*s:%i\": %s",
                          &ask->node->name, ip_len, ip, port, error);
            goto declined;
        }

        for (k = 0; k < n && nodes[k] != node; k++) { /* void */ }

        if (k == n) {
            nodes[n++] = node;
        }

        /* the range's node, for the second pass */
        owners[i] = node;
    }

    ngx_qsort(nodes, n, sizeof(ngx_http_redisgate_backend_t *),
              ngx_http_redisgate_cluster_cmp);

    for (i = 0; i < reply->elements; i++) {
        range = reply->element[i];

        for (k = 0; nodes[k] != owners[i]; k++) { /* void */ }

        start = (ngx_uint_t) range->element[0]->integer;
        end = (ngx_uint_t) range->element[1]->integer;

        for (j = start; j <= end; j++) {
            slots[j] = (uint16_t) (k + 1);
        }
    }

    for (k = 0; k < n; k++) {
        nodes[k]->refs++;
    }

    ngx_http_redisgate_cluster_release(cl->nodes, cl->nnodes);

    if (cl->nodes) {
        ngx_free(cl->nodes);
    }

    if (cl->slots) {
        ngx_free(cl->slots);
    }

    cl->nodes = nodes;
    cl->nnodes = n;
    cl->slots = slots;

    if (!cl->known) {
        ngx_log_error(NGX_LOG_INFO, ask->log, 0,
                      "redisgate: %V: %ui primaries, map from %V",
                      &cl->backend->address.url, n, &ask->node->name);
    }

    cl->known = 1;
    cl->stale = 0;
    cl->mapped = ngx_time();
    cl->retry = 0;

    ngx_http_redisgate_backend_wake(cl->backend);

    return NGX_OK;

failed:

    ngx_log_error(NGX_LOG_ERR, ask->log, 0,
                  "redisgate: out of memory for the slot map of %V",
                  &cl->backend->address.url);

declined:

    if (slots) {
        ngx_free(slots);
    }

    if (nodes) {
        ngx_free(nodes);
    }

    return NGX_DECLINED;
}


/* every seed was asked, none gave the map */

static void
ngx_http_redisgate_cluster_over(ngx_http_redisgate_ask_t *ask)
{
    ngx_http_redisgate_cluster_t *cl = ask->data;

    ngx_log_error(NGX_LOG_ERR, ask->log, 0,
                  "redisgate: no seed of %V gave the slot map%s",
                  &cl->backend->address.url,
                  cl->known ? ", the last one stays" : "");

    /* a second without asking: requests fail fast, or use the last map */
    cl->retry = ngx_time() + 1;

    ngx_http_redisgate_backend_wake(cl->backend);
}


/* the backend of a primary, from backend.c's tree, with our credentials */

static ngx_http_redisgate_backend_t *
ngx_http_redisgate_cluster_primary(ngx_http_redisgate_cluster_t *cl,
    u_char *ip, size_t ip_len, ngx_int_t port, const char **error)
{
    u_char                         buf[sizeof("rediss://[]:65535")
                                       + NGX_SOCKADDR_STRLEN];
    u_char                        *p;
    ngx_http_redisgate_address_t  *a;
    ngx_http_redisgate_keyinfo_t   ki;

    if (port < 1 || port > 65535 || ip_len == 0
        || ip_len > NGX_SOCKADDR_STRLEN)
    {
        *error = "not an address";
        return NULL;
    }

    a = &cl->backend->address;

    p = buf;

    if (a->tls) {
        p = ngx_cpymem(p, "rediss://", sizeof("rediss://") - 1);
    }

    if (ngx_strlchr(ip, ip + ip_len, ':')) {
        p = ngx_sprintf(p, "[%*s]:%i", ip_len, ip, port);

    } else {
        p = ngx_sprintf(p, "%*s:%i", ip_len, ip, port);
    }

    ngx_memzero(&ki, sizeof(ngx_http_redisgate_keyinfo_t));

    ki.address.data = buf;
    ki.address.len = p - buf;
    ki.user = a->user;
    ki.password = a->password;

    return ngx_http_redisgate_backend_get(&ki, NULL, error);
}


static int ngx_libc_cdecl
ngx_http_redisgate_cluster_cmp(const void *one, const void *two)
{
    ngx_http_redisgate_backend_t  *a, *b;

    a = *(ngx_http_redisgate_backend_t **) one;
    b = *(ngx_http_redisgate_backend_t **) two;

    return (int) ngx_memn2cmp(a->address.url.data, b->address.url.data,
                              a->address.url.len, b->address.url.len);
}


static void
ngx_http_redisgate_cluster_release(ngx_http_redisgate_backend_t **nodes,
    ngx_uint_t n)
{
    ngx_uint_t  i;

    for (i = 0; i < n; i++) {
        nodes[i]->refs--;
    }
}
