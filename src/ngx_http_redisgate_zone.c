
/*
 * Copyright (C) RedisGate authors
 */


/*
 * The shared memory zones (key cache, rate limits, usage): each keeps a
 * red-black tree and a least-recently-used queue at the start of its own
 * context, under the slab pool's mutex, and survives reloads of the same
 * name and size.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_redisgate.h"


static ngx_int_t ngx_http_redisgate_zone_init(ngx_shm_zone_t *shm_zone,
    void *data);


ngx_int_t
ngx_http_redisgate_zone_add(ngx_conf_t *cf, ngx_http_redisgate_zone_t *zone,
    ngx_str_t *name, size_t size)
{
    ngx_shm_zone_t  *shm_zone;

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

    /* a full zone makes room by itself: not worth an error line each time */
    zone->shpool->log_nomem = 0;

    return NGX_OK;
}


/*
 * The part of an insert_value common to the zones: nodes are ordered by
 * hash, then by what cmp says of the two nodes' data.
 */

void
ngx_http_redisgate_zone_insert(ngx_rbtree_node_t *temp,
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
