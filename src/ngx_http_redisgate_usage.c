
/*
 * Copyright (C) RedisGate authors
 */


/*
 * Usage accounting: requests, commands and bytes per organization,
 * instance and minute, and the keys used, added up in shared memory by
 * every worker and written to the key store in batches by the first
 * worker, never on a request's path.  A batch is taken out of the zone
 * before it is sent and put back if the write fails, so nothing is
 * counted twice; a reload keeps the zone and what it holds.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_redisgate.h"


#define NGX_HTTP_REDISGATE_USAGE_COUNTS  0
#define NGX_HTTP_REDISGATE_USAGE_KEY     1

#define NGX_HTTP_REDISGATE_USAGE_BATCH   1000
#define NGX_HTTP_REDISGATE_USAGE_ID_MAX  64


typedef struct {
    u_char                          color;
    u_char                          type;
    u_char                          org_len;
    u_char                          instance_len;
    ngx_queue_t                     queue;
    time_t                          minute;
    uint64_t                        requests;
    uint64_t                        commands;
    uint64_t                        bytes_in;
    uint64_t                        bytes_out;
    u_char                          data[1];    /* org, instance / key id */
} ngx_http_redisgate_usage_node_t;


typedef struct {
    ngx_http_redisgate_tree_t       tree;
    ngx_atomic_t                    dropped;
} ngx_http_redisgate_usage_shctx_t;


/* one entry taken out of the zone, on its way to the key store */
typedef struct {
    ngx_uint_t                      type;
    ngx_str_t                       org;
    ngx_str_t                       instance;
    time_t                          minute;
    uint64_t                        requests;
    uint64_t                        commands;
    uint64_t                        bytes_in;
    uint64_t                        bytes_out;
    u_char                          data[2 * NGX_HTTP_REDISGATE_USAGE_ID_MAX];
} ngx_http_redisgate_usage_item_t;


struct ngx_http_redisgate_usage_s {
    ngx_http_redisgate_zone_t          zone;
    ngx_msec_t                         interval;

    /* the first worker's */
    ngx_http_redisgate_pg_t           *pg;
    ngx_event_t                        timer;
    ngx_http_redisgate_usage_item_t   *batch;
    ngx_uint_t                         nbatch;
    ngx_pool_t                        *pool;
    ngx_log_t                         *log;
};


static void ngx_http_redisgate_usage_add_locked(
    ngx_http_redisgate_usage_t *usage, ngx_http_redisgate_usage_item_t *it);
static void ngx_http_redisgate_usage_flush(ngx_event_t *ev);
static void ngx_http_redisgate_usage_written(void *data, ngx_int_t rc);
static u_char *ngx_http_redisgate_usage_array(u_char *p,
    ngx_http_redisgate_usage_item_t *items, ngx_uint_t n, ngx_uint_t field);
static void ngx_http_redisgate_usage_rbtree_insert_value(
    ngx_rbtree_node_t *temp, ngx_rbtree_node_t *node,
    ngx_rbtree_node_t *sentinel);
static ngx_int_t ngx_http_redisgate_usage_node_cmp(ngx_rbtree_node_t *one,
    ngx_rbtree_node_t *two);
static ngx_int_t ngx_http_redisgate_usage_cmp(void *key,
    ngx_rbtree_node_t *node);
static void ngx_http_redisgate_usage_set(ngx_rbtree_node_t *node, void *key);


#define ngx_http_redisgate_usage_node(rbnode)                                 \
    ((ngx_http_redisgate_usage_node_t *) &(rbnode)->color)

#define ngx_http_redisgate_usage_rbnode(un)                                   \
    ((ngx_rbtree_node_t *) ((u_char *) (un)                                   \
                            - offsetof(ngx_rbtree_node_t, color)))


static char  ngx_http_redisgate_usage_query[] =
    "SELECT redisgate.record_usage($1::text[], $2::text[], $3::bigint[], "
    "$4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[]), "
    "redisgate.mark_keys_used($8::uuid[])";


ngx_http_redisgate_usage_t *
ngx_http_redisgate_usage_add(ngx_conf_t *cf, ngx_str_t *name, size_t size,
    ngx_msec_t interval)
{
    ngx_http_redisgate_usage_t  *usage;

    usage = ngx_pcalloc(cf->pool, sizeof(ngx_http_redisgate_usage_t));
    if (usage == NULL) {
        return NULL;
    }

    usage->zone.sh_size = sizeof(ngx_http_redisgate_usage_shctx_t);
    usage->zone.insert = ngx_http_redisgate_usage_rbtree_insert_value;
    usage->zone.cmp = ngx_http_redisgate_usage_cmp;
    usage->zone.set = ngx_http_redisgate_usage_set;
    usage->zone.queue = offsetof(ngx_rbtree_node_t, color)
                        + offsetof(ngx_http_redisgate_usage_node_t, queue);

    /* a node is counts not written yet: none is freed for a new one */
    usage->zone.evict = 0;
    usage->zone.what = "usage";
    usage->zone.full = "the counts are lost";

    if (ngx_http_redisgate_zone_add(cf, &usage->zone, name, size) != NGX_OK) {
        return NULL;
    }

    usage->interval = interval;

    return usage;
}


ngx_int_t
ngx_http_redisgate_usage_init_process(ngx_http_redisgate_usage_t *usage,
    ngx_http_redisgate_pg_t *pg, ngx_cycle_t *cycle)
{
    usage->log = cycle->log;

    if (ngx_worker != 0) {
        return NGX_OK;
    }

    usage->pg = pg;

    usage->batch = ngx_palloc(cycle->pool, NGX_HTTP_REDISGATE_USAGE_BATCH
                                 * sizeof(ngx_http_redisgate_usage_item_t));
    if (usage->batch == NULL) {
        return NGX_ERROR;
    }

    usage->timer.handler = ngx_http_redisgate_usage_flush;
    usage->timer.data = usage;
    usage->timer.log = cycle->log;
    usage->timer.cancelable = 1;

    ngx_add_timer(&usage->timer, usage->interval);

    return NGX_OK;
}


void
ngx_http_redisgate_usage_exit_process(ngx_http_redisgate_usage_t *usage)
{
    if (usage->timer.timer_set) {
        ngx_del_timer(&usage->timer);
    }
}


/*
 * What a request that reached Redis did, in the log phase; a stream's, as
 * it goes (requests 1 when it opens, then 0 with the bytes it sent since).
 */

void
ngx_http_redisgate_usage_record(ngx_http_redisgate_usage_t *usage,
    ngx_str_t *org, ngx_str_t *instance, ngx_str_t *key_id,
    ngx_uint_t requests, ngx_uint_t commands, off_t bytes_in, off_t bytes_out)
{
    u_char                           uuid[NGX_HTTP_REDISGATE_UUID_LEN];
    ngx_http_redisgate_usage_item_t  it;

    if (org->len == 0) {
        return;
    }

    /* mark_keys_used() takes UUIDs; a custom lookup's ids may be others */
    if (key_id
        && ngx_http_redisgate_parse_uuid(uuid, key_id->data, key_id->len)
           != NGX_OK)
    {
        key_id = NULL;
    }

    ngx_memzero(&it, offsetof(ngx_http_redisgate_usage_item_t, data));

    it.type = NGX_HTTP_REDISGATE_USAGE_COUNTS;
    it.org.data = org->data;
    it.org.len = ngx_min(org->len, NGX_HTTP_REDISGATE_USAGE_ID_MAX);
    it.instance.data = instance->data;
    it.instance.len = ngx_min(instance->len, NGX_HTTP_REDISGATE_USAGE_ID_MAX);
    it.minute = ngx_time() / 60 * 60;
    it.requests = requests;
    it.commands = commands;
    it.bytes_in = (bytes_in > 0) ? (uint64_t) bytes_in : 0;
    it.bytes_out = (bytes_out > 0) ? (uint64_t) bytes_out : 0;

    ngx_shmtx_lock(&usage->zone.shpool->mutex);

    ngx_http_redisgate_usage_add_locked(usage, &it);

    if (key_id && key_id->len && requests) {
        ngx_memzero(&it, offsetof(ngx_http_redisgate_usage_item_t, data));

        it.type = NGX_HTTP_REDISGATE_USAGE_KEY;
        it.org.data = key_id->data;
        it.org.len = ngx_min(key_id->len, NGX_HTTP_REDISGATE_USAGE_ID_MAX);
        it.instance.data = NULL;

        ngx_http_redisgate_usage_add_locked(usage, &it);
    }

    ngx_shmtx_unlock(&usage->zone.shpool->mutex);
}


static void
ngx_http_redisgate_usage_add_locked(ngx_http_redisgate_usage_t *usage,
    ngx_http_redisgate_usage_item_t *it)
{
    uint32_t                           hash;
    ngx_rbtree_node_t                 *node;
    ngx_http_redisgate_usage_node_t   *un;
    ngx_http_redisgate_usage_shctx_t  *sh;

    ngx_crc32_init(hash);
    ngx_crc32_update(&hash, (u_char *) &it->type, 1);
    ngx_crc32_update(&hash, it->org.data, it->org.len);
    ngx_crc32_update(&hash, it->instance.data, it->instance.len);
    ngx_crc32_update(&hash, (u_char *) &it->minute, sizeof(time_t));
    ngx_crc32_final(hash);

    node = ngx_http_redisgate_zone_find(&usage->zone, hash, it);

    if (node == NULL) {
        node = ngx_http_redisgate_zone_insert(&usage->zone, hash, it,
                              offsetof(ngx_rbtree_node_t, color)
                              + offsetof(ngx_http_redisgate_usage_node_t, data)
                              + it->org.len + it->instance.len);

        if (node == NULL) {
            /* full until the next write empties it: this count is lost */
            sh = (ngx_http_redisgate_usage_shctx_t *) usage->zone.sh;
            (void) ngx_atomic_fetch_add(&sh->dropped, 1);
            return;
        }
    }

    un = ngx_http_redisgate_usage_node(node);

    un->requests += it->requests;
    un->commands += it->commands;
    un->bytes_in += it->bytes_in;
    un->bytes_out += it->bytes_out;
}


/* the first worker, every interval: a batch out of the zone, to PostgreSQL */

static void
ngx_http_redisgate_usage_flush(ngx_event_t *ev)
{
    ngx_http_redisgate_usage_t *usage = ev->data;

    u_char                           *p, *buf;
    size_t                            size;
    ngx_uint_t                        n, field, dropped;
    ngx_queue_t                      *q;
    const char                       *values[8];
    ngx_http_redisgate_usage_item_t  *it;
    ngx_http_redisgate_usage_node_t  *un;
    ngx_http_redisgate_usage_shctx_t *sh;

    if (usage->nbatch) {
        /* the last batch is still on its way */
        goto next;
    }

    n = 0;

    ngx_shmtx_lock(&usage->zone.shpool->mutex);

    while (n < NGX_HTTP_REDISGATE_USAGE_BATCH
           && !ngx_queue_empty(&usage->zone.sh->queue))
    {
        q = ngx_queue_last(&usage->zone.sh->queue);
        un = ngx_queue_data(q, ngx_http_redisgate_usage_node_t, queue);

        it = &usage->batch[n++];

        it->type = un->type;
        it->org.data = it->data;
        it->org.len = un->org_len;
        it->instance.data = it->data + NGX_HTTP_REDISGATE_USAGE_ID_MAX;
        it->instance.len = un->instance_len;
        it->minute = un->minute;
        it->requests = un->requests;
        it->commands = un->commands;
        it->bytes_in = un->bytes_in;
        it->bytes_out = un->bytes_out;

        ngx_memcpy(it->org.data, un->data, un->org_len);
        ngx_memcpy(it->instance.data, un->data + un->org_len,
                   un->instance_len);

        ngx_http_redisgate_zone_delete(&usage->zone,
                                       ngx_http_redisgate_usage_rbnode(un));
    }

    sh = (ngx_http_redisgate_usage_shctx_t *) usage->zone.sh;

    dropped = sh->dropped;
    sh->dropped = 0;

    ngx_shmtx_unlock(&usage->zone.shpool->mutex);

    if (dropped) {
        ngx_log_error(NGX_LOG_WARN, ev->log, 0,
                      "redisgate: usage zone was full, %ui counts lost",
                      dropped);
    }

    if (n == 0) {
        goto next;
    }

    usage->nbatch = n;

    /* eight text arrays: "{...}" with quoted names, numbers, key ids */

    size = 8 * 3 + n * 8 * (2 + 2 * 2 * NGX_HTTP_REDISGATE_USAGE_ID_MAX
                            + NGX_INT64_LEN);

    usage->pool = ngx_create_pool(size + 1024, ev->log);
    if (usage->pool == NULL) {
        goto failed;
    }

    buf = ngx_pnalloc(usage->pool, size);
    if (buf == NULL) {
        goto failed;
    }

    p = buf;

    for (field = 0; field < 8; field++) {
        values[field] = (const char *) p;
        p = ngx_http_redisgate_usage_array(p, usage->batch, n, field);
        *p++ = '\0';
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ev->log, 0,
                   "redisgate: writing %ui usage entries", n);

    if (ngx_http_redisgate_pg_write(usage->pg, ngx_http_redisgate_usage_query,
                                    8, values,
                                    ngx_http_redisgate_usage_written, usage)
        != NGX_OK)
    {
        goto failed;
    }

    goto next;

failed:

    ngx_http_redisgate_usage_written(usage, NGX_ERROR);

next:

    if (!ngx_exiting && !ngx_terminate && !usage->timer.timer_set) {
        ngx_add_timer(&usage->timer, usage->interval);
    }
}


/* the batch is written, or it goes back into the zone for the next one */

static void
ngx_http_redisgate_usage_written(void *data, ngx_int_t rc)
{
    ngx_http_redisgate_usage_t *usage = data;

    ngx_uint_t  i;

    if (rc == NGX_DECLINED) {
        /* kept, it would block every later batch */
        ngx_log_error(NGX_LOG_ERR, usage->log, 0,
                      "redisgate: the key store refused %ui usage entries, "
                      "dropped", usage->nbatch);

    } else if (rc != NGX_OK) {
        ngx_log_error(NGX_LOG_WARN, usage->log, 0,
                      "redisgate: %ui usage entries not written, kept for "
                      "the next try", usage->nbatch);

        ngx_shmtx_lock(&usage->zone.shpool->mutex);

        for (i = 0; i < usage->nbatch; i++) {
            ngx_http_redisgate_usage_add_locked(usage, &usage->batch[i]);
        }

        ngx_shmtx_unlock(&usage->zone.shpool->mutex);
    }

    usage->nbatch = 0;

    if (usage->pool) {
        ngx_destroy_pool(usage->pool);
        usage->pool = NULL;
    }

    /* more than a batch waits: the next one now, not after the interval */

    if (rc == NGX_OK && !ngx_exiting && !ngx_terminate
        && !ngx_queue_empty(&usage->zone.sh->queue))
    {
        if (usage->timer.timer_set) {
            ngx_del_timer(&usage->timer);
        }

        ngx_add_timer(&usage->timer, 1);
    }
}


/*
 * One of the eight arrays: organizations, instances, minutes, requests,
 * commands, bytes in, bytes out (for counts), key ids (for keys).
 */

static u_char *
ngx_http_redisgate_usage_array(u_char *p,
    ngx_http_redisgate_usage_item_t *items, ngx_uint_t n, ngx_uint_t field)
{
    u_char                           *s;
    ngx_str_t                        *str;
    ngx_uint_t                        i, first;
    ngx_http_redisgate_usage_item_t  *it;

    *p++ = '{';
    first = 1;

    for (i = 0; i < n; i++) {
        it = &items[i];

        if ((field == 7) != (it->type == NGX_HTTP_REDISGATE_USAGE_KEY)) {
            continue;
        }

        if (!first) {
            *p++ = ',';
        }

        first = 0;

        switch (field) {

        case 0:
        case 1:
        case 7:
            /* a quoted element: names from nginx.conf may hold anything */
            str = (field == 1) ? &it->instance : &it->org;

            *p++ = '"';

            for (s = str->data; s < str->data + str->len; s++) {
                if (*s == '"' || *s == '\\') {
                    *p++ = '\\';
                }

                *p++ = *s;
            }

            *p++ = '"';
            break;

        case 2:
            p = ngx_sprintf(p, "%T", it->minute);
            break;

        case 3:
            p = ngx_sprintf(p, "%uL", it->requests);
            break;

        case 4:
            p = ngx_sprintf(p, "%uL", it->commands);
            break;

        case 5:
            p = ngx_sprintf(p, "%uL", it->bytes_in);
            break;

        default: /* 6 */
            p = ngx_sprintf(p, "%uL", it->bytes_out);
        }
    }

    *p++ = '}';

    return p;
}


/* how an item (the key) stands to a node */

static ngx_int_t
ngx_http_redisgate_usage_cmp(void *key, ngx_rbtree_node_t *node)
{
    ngx_http_redisgate_usage_item_t *it = key;

    ngx_int_t                         rc;
    ngx_http_redisgate_usage_node_t  *un;

    un = ngx_http_redisgate_usage_node(node);

    if (un->type != it->type) {
        return (ngx_int_t) it->type - (ngx_int_t) un->type;
    }

    if (un->minute != it->minute) {
        return (it->minute < un->minute) ? -1 : 1;
    }

    rc = ngx_memn2cmp(it->org.data, un->data, it->org.len, un->org_len);
    if (rc) {
        return rc;
    }

    return ngx_memn2cmp(it->instance.data, un->data + un->org_len,
                        it->instance.len, un->instance_len);
}


/* a new node: its key, and nothing counted yet */

static void
ngx_http_redisgate_usage_set(ngx_rbtree_node_t *node, void *key)
{
    ngx_http_redisgate_usage_item_t *it = key;

    ngx_http_redisgate_usage_node_t  *un;

    un = ngx_http_redisgate_usage_node(node);

    un->type = (u_char) it->type;
    un->org_len = (u_char) it->org.len;
    un->instance_len = (u_char) it->instance.len;
    un->minute = it->minute;
    un->requests = 0;
    un->commands = 0;
    un->bytes_in = 0;
    un->bytes_out = 0;

    ngx_memcpy(un->data, it->org.data, it->org.len);
    ngx_memcpy(un->data + it->org.len, it->instance.data, it->instance.len);
}


static void
ngx_http_redisgate_usage_rbtree_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel)
{
    ngx_http_redisgate_zone_insert_value(temp, node, sentinel,
                                         ngx_http_redisgate_usage_node_cmp);
}


static ngx_int_t
ngx_http_redisgate_usage_node_cmp(ngx_rbtree_node_t *one,
    ngx_rbtree_node_t *two)
{
    ngx_http_redisgate_usage_node_t  *un;
    ngx_http_redisgate_usage_item_t   it;

    un = ngx_http_redisgate_usage_node(one);

    it.type = un->type;
    it.minute = un->minute;
    it.org.data = un->data;
    it.org.len = un->org_len;
    it.instance.data = un->data + un->org_len;
    it.instance.len = un->instance_len;

    /* how one (as an item) stands to two */
    return ngx_http_redisgate_usage_cmp(&it, two);
}
