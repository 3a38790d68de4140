
/*
 * Copyright (C) RedisGate authors
 */


/*
 * The shared memory zones (key cache, rate limits, usage): each keeps a
 * red-black tree and a least-recently-used queue at the start of its own
 * context, under the slab pool's mutex, and survives reloads of the same
 * name and size.
 *
 * Every zone finds and makes its nodes here, so that a full zone behaves
 * the same in all of them, as nginx's limit_req does: before a node is
 * made, the least recently used nodes that have expired go (at most two);
 * when there is no room, the least recently used nodes go, live or not,
 * one at a time until the new one fits, at most a page's worth (none in a
 * zone whose nodes cannot be lost: usage's are counts not yet written).
 * If the node still does not fit, it is not made: the caller does without
 * (each room says how), the zone counts it, and an alert says so, at most
 * once a second for each zone.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_redisgate.h"


/* expired nodes freed before a node is made, whether the zone is full */
#define NGX_HTTP_REDISGATE_ZONE_EXPIRE  2

/* nodes freed at most to make room for one (see zone_alloc()) */
#define NGX_HTTP_REDISGATE_ZONE_EVICT   32


#define ngx_http_redisgate_zone_queue(zone, node)                             \
    ((ngx_queue_t *) ((u_char *) (node) + (zone)->queue))

#define ngx_http_redisgate_zone_node(zone, q)                                 \
    ((ngx_rbtree_node_t *) ((u_char *) (q) - (zone)->queue))


static ngx_int_t ngx_http_redisgate_zone_init(ngx_shm_zone_t *shm_zone,
    void *data);
static ngx_rbtree_node_t *ngx_http_redisgate_zone_alloc(
    ngx_http_redisgate_zone_t *zone, size_t size);
static void ngx_http_redisgate_zone_full(ngx_http_redisgate_zone_t *zone);


ngx_int_t
ngx_http_redisgate_zone_add(ngx_conf_t *cf, ngx_http_redisgate_zone_t *zone,
    ngx_str_t *name, size_t size)
{
    ngx_shm_zone_t                  *shm_zone;
    ngx_http_redisgate_zone_t      **zp;
    ngx_http_redisgate_main_conf_t  *rmcf;

    shm_zone = ngx_shared_memory_add(cf, name, size,
                                     &ngx_http_redisgate_module);
    if (shm_zone == NULL) {
        return NGX_ERROR;
    }

    if (shm_zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "zone \"%V\" is already used", name);
        return NGX_ERROR;
    }

    shm_zone->init = ngx_http_redisgate_zone_init;
    shm_zone->data = zone;

    zone->shm_zone = shm_zone;

    rmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_redisgate_module);

    zp = ngx_array_push(&rmcf->zones);
    if (zp == NULL) {
        return NGX_ERROR;
    }

    *zp = zone;

    return NGX_OK;
}


static ngx_int_t
ngx_http_redisgate_zone_init(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_redisgate_zone_t  *ozone = data;

    size_t                      len;
    ngx_http_redisgate_tree_t  *tree;
    ngx_http_redisgate_zone_t  *zone;

    zone = shm_zone->data;

    if (ozone) {
        /* a reload: what the zone holds stays */
        zone->sh = ozone->sh;
        zone->shpool = ozone->shpool;
        return NGX_OK;
    }

    zone->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        zone->sh = zone->shpool->data;
        return NGX_OK;
    }

    zone->sh = ngx_slab_calloc(zone->shpool, zone->sh_size);
    if (zone->sh == NULL) {
        return NGX_ERROR;
    }

    zone->shpool->data = zone->sh;

    tree = zone->sh;

    ngx_rbtree_init(&tree->rbtree, &tree->sentinel, zone->insert);
    ngx_queue_init(&tree->queue);

    len = sizeof(" in redisgate  zone \"\"") + ngx_strlen(zone->what)
          + shm_zone->shm.name.len;

    zone->shpool->log_ctx = ngx_slab_alloc(zone->shpool, len);
    if (zone->shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(zone->shpool->log_ctx, " in redisgate %s zone \"%V\"%Z",
                zone->what, &shm_zone->shm.name);

    /* a full zone makes room by itself, or says so once a second */
    zone->shpool->log_nomem = 0;

    return NGX_OK;
}


/* the node of that hash whose key compares equal, or NULL */

ngx_rbtree_node_t *
ngx_http_redisgate_zone_find(ngx_http_redisgate_zone_t *zone,
    ngx_rbtree_key_t hash, void *key)
{
    ngx_int_t           rc;
    ngx_rbtree_node_t  *node, *sentinel;

    node = zone->sh->rbtree.root;
    sentinel = zone->sh->rbtree.sentinel;

    while (node != sentinel) {

        if (hash != node->key) {
            node = (hash < node->key) ? node->left : node->right;
            continue;
        }

        rc = zone->cmp(key, node);

        if (rc == 0) {
            return node;
        }

        node = (rc < 0) ? node->left : node->right;
    }

    return NULL;
}


/*
 * A new node of size bytes with that hash and key (the caller found none),
 * in the tree and the most recently used; the rest of it is the caller's
 * to fill.  NULL: the zone is full, and stays so for this node.
 */

ngx_rbtree_node_t *
ngx_http_redisgate_zone_insert(ngx_http_redisgate_zone_t *zone,
    ngx_rbtree_key_t hash, void *key, size_t size)
{
    ngx_rbtree_node_t  *node;

    node = ngx_http_redisgate_zone_alloc(zone, size);
    if (node == NULL) {
        ngx_http_redisgate_zone_full(zone);
        return NULL;
    }

    node->key = hash;
    zone->set(node, key);

    ngx_rbtree_insert(&zone->sh->rbtree, node);
    ngx_queue_insert_head(&zone->sh->queue,
                          ngx_http_redisgate_zone_queue(zone, node));

    return node;
}


/* the node was used: the last to go */

void
ngx_http_redisgate_zone_touch(ngx_http_redisgate_zone_t *zone,
    ngx_rbtree_node_t *node)
{
    ngx_queue_t  *q;

    q = ngx_http_redisgate_zone_queue(zone, node);

    ngx_queue_remove(q);
    ngx_queue_insert_head(&zone->sh->queue, q);
}


void
ngx_http_redisgate_zone_delete(ngx_http_redisgate_zone_t *zone,
    ngx_rbtree_node_t *node)
{
    ngx_queue_remove(ngx_http_redisgate_zone_queue(zone, node));
    ngx_rbtree_delete(&zone->sh->rbtree, node);
    ngx_slab_free_locked(zone->shpool, node);
}


/*
 * The slab allocator's memory, bounded in what it frees: nodes are freed
 * one at a time, from the least recently used, until the new one fits.
 * A freed node of the new one's size makes room at once; one of another
 * size only once its whole page is free, hence up to a page's worth of
 * the smallest nodes (128 bytes: 32 in a 4k page) before giving up.
 */

static ngx_rbtree_node_t *
ngx_http_redisgate_zone_alloc(ngx_http_redisgate_zone_t *zone, size_t size)
{
    ngx_uint_t          n;
    ngx_queue_t        *q;
    ngx_rbtree_node_t  *node;

    if (zone->expired) {
        for (n = 0; n < NGX_HTTP_REDISGATE_ZONE_EXPIRE; n++) {

            if (ngx_queue_empty(&zone->sh->queue)) {
                break;
            }

            q = ngx_queue_last(&zone->sh->queue);
            node = ngx_http_redisgate_zone_node(zone, q);

            /* the others were used since: no use looking further */
            if (!zone->expired(zone, node)) {
                break;
            }

            ngx_http_redisgate_zone_delete(zone, node);
        }
    }

    node = ngx_slab_alloc_locked(zone->shpool, size);

    for (n = 0; node == NULL && zone->evict
                && n < NGX_HTTP_REDISGATE_ZONE_EVICT; n++)
    {
        if (ngx_queue_empty(&zone->sh->queue)) {
            break;
        }

        q = ngx_queue_last(&zone->sh->queue);

        ngx_http_redisgate_zone_delete(zone,
                                       ngx_http_redisgate_zone_node(zone, q));
        (void) ngx_atomic_fetch_add(&zone->sh->evicted, 1);

        node = ngx_slab_alloc_locked(zone->shpool, size);
    }

    return node;
}


/*
 * Counted every time, said once a second for all workers: a zone that is
 * too small stays so, and each request would say it again.  The slab
 * allocator's own "no memory" line is off (log_nomem).
 */

static void
ngx_http_redisgate_zone_full(ngx_http_redisgate_zone_t *zone)
{
    ngx_atomic_uint_t  n;

    n = ngx_atomic_fetch_add(&zone->sh->full, 1) + 1;

    if (zone->sh->alerted == ngx_time()) {
        return;
    }

    zone->sh->alerted = ngx_time();

    ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, 0,
                  "redisgate: could not allocate node%s: the zone is full, "
                  "%s (%uA so far)", zone->shpool->log_ctx, zone->full, n);
}


/*
 * The part of an insert_value common to the zones: nodes are ordered by
 * hash, then by what cmp says of the two nodes' data.
 */

void
ngx_http_redisgate_zone_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel,
    ngx_http_redisgate_node_cmp_pt cmp)
{
    ngx_rbtree_node_t  **p;

    for ( ;; ) {

        if (node->key < temp->key) {
            p = &temp->left;

        } else if (node->key > temp->key) {
            p = &temp->right;

        } else {
            p = (cmp(node, temp) < 0) ? &temp->left : &temp->right;
        }

        if (*p == sentinel) {
            break;
        }

        temp = *p;
    }

    *p = node;
    node->parent = temp;
    node->left = sentinel;
    node->right = sentinel;
    ngx_rbt_red(node);
}
