
/*
 * Copyright (C) RedisGate authors
 */


/*
 * Plans' rates: a token bucket per organization in shared memory, so all
 * workers draw from one bucket.  Every Redis command costs one token: a
 * pipeline of 100 costs 100.  A request is let in when the bucket holds
 * its cost, or is full; a request larger than the burst may so run the
 * bucket into debt, which later requests wait out.  Organizations nobody
 * called for a while leave the zone first when it is full.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_redisgate.h"


#define NGX_HTTP_REDISGATE_ORG_MAX  64


typedef struct {
    u_char                          color;
    u_char                          len;
    u_short                         dummy;
    ngx_queue_t                     queue;
    ngx_msec_t                      last;
    int64_t                         millitokens;
    u_char                          org[1];
} ngx_http_redisgate_bucket_t;


struct ngx_http_redisgate_limit_s {
    ngx_http_redisgate_zone_t          zone;
    ngx_uint_t                         rate;      /* default, per second */
    ngx_uint_t                         burst;
    ngx_uint_t                         nodes;     /* nginx nodes sharing */
};


static ngx_http_redisgate_bucket_t *ngx_http_redisgate_limit_lookup(
    ngx_http_redisgate_limit_t *limit, uint32_t hash, ngx_str_t *org);
static ngx_int_t ngx_http_redisgate_limit_cmp(ngx_rbtree_node_t *one,
    ngx_rbtree_node_t *two);
static void ngx_http_redisgate_limit_rbtree_insert_value(
    ngx_rbtree_node_t *temp, ngx_rbtree_node_t *node,
    ngx_rbtree_node_t *sentinel);


#define ngx_http_redisgate_bucket(rbnode)                                     \
    ((ngx_http_redisgate_bucket_t *) &(rbnode)->color)

#define ngx_http_redisgate_bucket_node(b)                                     \
    ((ngx_rbtree_node_t *) ((u_char *) (b)                                    \
                            - offsetof(ngx_rbtree_node_t, color)))


ngx_http_redisgate_limit_t *
ngx_http_redisgate_limit_add(ngx_conf_t *cf, ngx_str_t *name, size_t size,
    ngx_uint_t rate, ngx_uint_t burst, ngx_uint_t nodes)
{
    ngx_http_redisgate_limit_t  *limit;

    limit = ngx_pcalloc(cf->pool, sizeof(ngx_http_redisgate_limit_t));
    if (limit == NULL) {
        return NULL;
    }

    limit->zone.sh_size = sizeof(ngx_http_redisgate_tree_t);
    limit->zone.insert = ngx_http_redisgate_limit_rbtree_insert_value;
    limit->zone.what = "rate limit";

    if (ngx_http_redisgate_zone_add(cf, &limit->zone, name, size) != NGX_OK) {
        return NULL;
    }

    limit->rate = rate;
    limit->burst = burst;
    limit->nodes = nodes;

    return limit;
}


/*
 * Takes cost tokens from the organization's bucket.  NGX_OK: let in;
 * NGX_BUSY: over the rate.  state tells the headers' numbers either way.
 * rate and burst are the plan's (0: the zone's defaults).
 */

ngx_int_t
ngx_http_redisgate_limit_take(ngx_http_redisgate_limit_t *limit,
    ngx_str_t *org, ngx_uint_t rate, ngx_uint_t burst, ngx_uint_t cost,
    ngx_http_redisgate_limit_state_t *state)
{
    size_t                        size;
    int64_t                       max, tokens, need;
    uint32_t                      hash;
    ngx_int_t                     rc;
    ngx_msec_t                    now, elapsed;
    ngx_queue_t                  *q;
    ngx_rbtree_node_t            *node;
    ngx_http_redisgate_bucket_t  *b;

    if (rate == 0) {
        rate = limit->rate;
        burst = limit->burst;

    } else if (burst == 0) {
        burst = rate;
    }

    /* each of N nodes behind a balancer takes its share */
    rate = ngx_max(rate / limit->nodes, 1);
    burst = ngx_max(burst / limit->nodes, 1);

    max = (int64_t) burst * 1000;

    hash = ngx_crc32_short(org->data, ngx_min(org->len,
                                              NGX_HTTP_REDISGATE_ORG_MAX));
    now = ngx_current_msec;

    ngx_shmtx_lock(&limit->zone.shpool->mutex);

    b = ngx_http_redisgate_limit_lookup(limit, hash, org);

    if (b == NULL) {
        size = offsetof(ngx_rbtree_node_t, color)
               + offsetof(ngx_http_redisgate_bucket_t, org)
               + ngx_min(org->len, NGX_HTTP_REDISGATE_ORG_MAX);

        node = ngx_slab_alloc_locked(limit->zone.shpool, size);

        while (node == NULL && !ngx_queue_empty(&limit->zone.sh->queue)) {
            /* full: the organization idle the longest goes */
            q = ngx_queue_last(&limit->zone.sh->queue);
            b = ngx_queue_data(q, ngx_http_redisgate_bucket_t, queue);

            ngx_queue_remove(q);
            ngx_rbtree_delete(&limit->zone.sh->rbtree,
                              ngx_http_redisgate_bucket_node(b));
            ngx_slab_free_locked(limit->zone.shpool,
                                 ngx_http_redisgate_bucket_node(b));

            node = ngx_slab_alloc_locked(limit->zone.shpool, size);
        }

        if (node == NULL) {
            /* cannot count: let it in rather than refuse everyone */
            ngx_shmtx_unlock(&limit->zone.shpool->mutex);
            state->limit = burst;
            state->remaining = burst;
            state->reset = 0;
            state->retry_after = 0;
            return NGX_OK;
        }

        node->key = hash;

        b = ngx_http_redisgate_bucket(node);
        b->len = (u_char) ngx_min(org->len, NGX_HTTP_REDISGATE_ORG_MAX);
        ngx_memcpy(b->org, org->data, b->len);
        b->millitokens = max;
        b->last = now;

        ngx_rbtree_insert(&limit->zone.sh->rbtree, node);

    } else {
        ngx_queue_remove(&b->queue);
    }

    ngx_queue_insert_head(&limit->zone.sh->queue, &b->queue);

    elapsed = now - b->last;
    b->last = now;

    tokens = b->millitokens + (int64_t) elapsed * rate;
    if (tokens > max) {
        tokens = max;
    }

    need = (int64_t) cost * 1000;

    if (tokens >= need || tokens >= max) {
        tokens -= need;
        rc = NGX_OK;
        state->retry_after = 0;

    } else {
        rc = NGX_BUSY;

        /* seconds until the bucket holds the cost, or is full */
        need = ngx_min(need, max) - tokens;
        state->retry_after = (time_t) ((need + (int64_t) rate * 1000 - 1)
                                       / ((int64_t) rate * 1000));
    }

    b->millitokens = tokens;

    ngx_shmtx_unlock(&limit->zone.shpool->mutex);

    state->limit = burst;
    state->remaining = (tokens > 0) ? (ngx_uint_t) (tokens / 1000) : 0;
    state->reset = (time_t) ((max - tokens + (int64_t) rate * 1000 - 1)
                             / ((int64_t) rate * 1000));

    return rc;
}


static ngx_http_redisgate_bucket_t *
ngx_http_redisgate_limit_lookup(ngx_http_redisgate_limit_t *limit,
    uint32_t hash, ngx_str_t *org)
{
    size_t                        len;
    ngx_int_t                     rc;
    ngx_rbtree_node_t            *node, *sentinel;
    ngx_http_redisgate_bucket_t  *b;

    len = ngx_min(org->len, NGX_HTTP_REDISGATE_ORG_MAX);

    node = limit->zone.sh->rbtree.root;
    sentinel = limit->zone.sh->rbtree.sentinel;

    while (node != sentinel) {

        if (hash != node->key) {
            node = (hash < node->key) ? node->left : node->right;
            continue;
        }

        b = ngx_http_redisgate_bucket(node);

        rc = ngx_memn2cmp(org->data, b->org, len, (size_t) b->len);

        if (rc == 0) {
            return b;
        }

        node = (rc < 0) ? node->left : node->right;
    }

    return NULL;
}


static void
ngx_http_redisgate_limit_rbtree_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel)
{
    ngx_http_redisgate_zone_insert(temp, node, sentinel,
                                   ngx_http_redisgate_limit_cmp);
}


static ngx_int_t
ngx_http_redisgate_limit_cmp(ngx_rbtree_node_t *one, ngx_rbtree_node_t *two)
{
    ngx_http_redisgate_bucket_t  *b, *t;

    b = ngx_http_redisgate_bucket(one);
    t = ngx_http_redisgate_bucket(two);

    return ngx_memn2cmp(b->org, t->org, (size_t) b->len, (size_t) t->len);
}
