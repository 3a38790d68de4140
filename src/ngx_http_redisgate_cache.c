
/*
 * Copyright (C) RedisGate authors
 */


/*
 * The key cache: what the key store said of (token hash, instance), shared
 * by all workers in one shared memory zone.  A red-black tree finds an
 * entry, a queue keeps them in least-recently-used order, and the oldest
 * go when the zone is full (zone.c).  Entries outlive their TTL by the
 * stale window, for use only while the key store cannot be reached.
 *
 * What the key store announces costs no walk through every entry.  The
 * tree orders entries by token, then instance, so that a key's entries
 * are found together and go at once.  An instance's or an organization's
 * announcement is noted instead, with the generation it made: an entry
 * last known good at an older generation is held against the notes newer
 * than that when it is next found, and goes if one names its instance or
 * organization.  Only the last few are noted; an entry older than the
 * oldest of them is taken for changed, as after "all".
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_redisgate.h"


/* announcements of instances and organizations, noted */
#define NGX_HTTP_REDISGATE_CACHE_NEWS  64


typedef struct {
    u_char                          color;
    u_char                          dummy;
    u_short                         status;

    ngx_queue_t                     queue;

    /* for announcements: the generation it is known good at, and its ids */
    ngx_atomic_uint_t               checked;
    uint32_t                        instance_id;
    uint32_t                        org_id;

    time_t                          fresh_until;
    time_t                          stale_until;
    time_t                          key_expires;

    u_char                          hash[32];
    u_char                          instance[NGX_HTTP_REDISGATE_UUID_LEN];

    ngx_uint_t                      scopes;
    ngx_uint_t                      rate;
    ngx_uint_t                      burst;
    ngx_uint_t                      db;

    u_char                          lens[5];    /* of the strings in data */
    u_char                          data[1];
} ngx_http_redisgate_cache_node_t;


/* an instance or an organization announced: the id's hash (cache_id()) */
typedef struct {
    ngx_atomic_uint_t               generation;
    uint32_t                        id;
} ngx_http_redisgate_cache_news_t;


typedef struct {
    ngx_http_redisgate_tree_t       tree;

    ngx_atomic_t                    hits;
    ngx_atomic_t                    misses;

    /* counts the key store's announcements */
    ngx_atomic_t                    generation;

    /* entries known good before it are not: "all", or news not noted */
    ngx_atomic_uint_t               voided;

    ngx_uint_t                      nnews;      /* ever */
    ngx_http_redisgate_cache_news_t news[NGX_HTTP_REDISGATE_CACHE_NEWS];
} ngx_http_redisgate_cache_shctx_t;


struct ngx_http_redisgate_cache_s {
    ngx_http_redisgate_zone_t       zone;
};


#define ngx_http_redisgate_cache_sh(cache)                                    \
    ((ngx_http_redisgate_cache_shctx_t *) (cache)->zone.sh)

#define ngx_http_redisgate_cache_inc(cache, counter)                          \
    (void) ngx_atomic_fetch_add(&ngx_http_redisgate_cache_sh(cache)->counter, 1)


static ngx_uint_t ngx_http_redisgate_cache_current(
    ngx_http_redisgate_cache_shctx_t *sh, ngx_http_redisgate_cache_node_t *cn);
static ngx_uint_t ngx_http_redisgate_cache_evict_token(
    ngx_http_redisgate_cache_t *cache, u_char *hash);
static void ngx_http_redisgate_cache_note(ngx_http_redisgate_cache_shctx_t *sh,
    ngx_atomic_uint_t generation, uint32_t id);
static uint32_t ngx_http_redisgate_cache_id(const char *kind, u_char *id,
    size_t len);
static ngx_uint_t ngx_http_redisgate_cache_expired(
    ngx_http_redisgate_zone_t *zone, ngx_rbtree_node_t *node);
static ngx_int_t ngx_http_redisgate_cache_cmp(void *key,
    ngx_rbtree_node_t *node);
static void ngx_http_redisgate_cache_set(ngx_rbtree_node_t *node, void *key);
static void ngx_http_redisgate_cache_rbtree_insert_value(
    ngx_rbtree_node_t *temp, ngx_rbtree_node_t *node,
    ngx_rbtree_node_t *sentinel);
static ngx_int_t ngx_http_redisgate_cache_node_cmp(ngx_rbtree_node_t *one,
    ngx_rbtree_node_t *two);


#define ngx_http_redisgate_cache_node(rbnode)                                 \
    ((ngx_http_redisgate_cache_node_t *) &(rbnode)->color)

/* a token's entries share their tree hash: its SHA-256's first bytes */
#define ngx_http_redisgate_cache_hash(hash)                                   \
    ((uint32_t) (hash)[0] << 24 | (uint32_t) (hash)[1] << 16                 \
     | (uint32_t) (hash)[2] << 8 | (uint32_t) (hash)[3])


ngx_http_redisgate_cache_t *
ngx_http_redisgate_cache_add(ngx_conf_t *cf, ngx_str_t *name, size_t size)
{
    ngx_http_redisgate_cache_t  *cache;

    cache = ngx_pcalloc(cf->pool, sizeof(ngx_http_redisgate_cache_t));
    if (cache == NULL) {
        return NULL;
    }

    cache->zone.sh_size = sizeof(ngx_http_redisgate_cache_shctx_t);
    cache->zone.insert = ngx_http_redisgate_cache_rbtree_insert_value;
    cache->zone.cmp = ngx_http_redisgate_cache_cmp;
    cache->zone.set = ngx_http_redisgate_cache_set;
    cache->zone.expired = ngx_http_redisgate_cache_expired;
    cache->zone.queue = offsetof(ngx_rbtree_node_t, color)
                        + offsetof(ngx_http_redisgate_cache_node_t, queue);
    cache->zone.evict = 1;
    cache->zone.what = "key cache";
    cache->zone.full = "the answer is not cached";

    if (ngx_http_redisgate_zone_add(cf, &cache->zone, name, size) != NGX_OK) {
        return NULL;
    }

    return cache;
}


/*
 * NGX_OK: a fresh entry.  NGX_AGAIN: an entry past its TTL but inside the
 * stale window (the caller uses it only if the key store is down).
 * NGX_DECLINED: none.  Strings are copied into pool.
 */

ngx_int_t
ngx_http_redisgate_cache_get(ngx_http_redisgate_cache_t *cache,
    u_char *hash, u_char *instance, ngx_http_redisgate_keyinfo_t *ki,
    ngx_pool_t *pool)
{
    u_char                           *p, *src;
    u_char                            key[32 + NGX_HTTP_REDISGATE_UUID_LEN];
    time_t                            now;
    ngx_int_t                         rc;
    ngx_str_t                        *s[5];
    ngx_uint_t                        i;
    ngx_rbtree_node_t                *node;
    ngx_http_redisgate_cache_node_t  *cn;

    ngx_memcpy(key, hash, 32);
    ngx_memcpy(key + 32, instance, NGX_HTTP_REDISGATE_UUID_LEN);

    now = ngx_time();

    ngx_shmtx_lock(&cache->zone.shpool->mutex);

    node = ngx_http_redisgate_zone_find(&cache->zone,
                                        ngx_http_redisgate_cache_hash(hash),
                                        key);

    cn = node ? ngx_http_redisgate_cache_node(node) : NULL;

    if (cn == NULL
        || !ngx_http_redisgate_cache_current(ngx_http_redisgate_cache_sh(cache),
                                             cn)
        || cn->stale_until <= now
        || (cn->key_expires && cn->key_expires <= now))
    {
        if (node) {
            ngx_http_redisgate_zone_delete(&cache->zone, node);
        }

        ngx_shmtx_unlock(&cache->zone.shpool->mutex);
        ngx_http_redisgate_cache_inc(cache, misses);
        return NGX_DECLINED;
    }

    ngx_http_redisgate_zone_touch(&cache->zone, node);

    ki->status = cn->status;
    ki->scopes = cn->scopes;
    ki->rate = cn->rate;
    ki->burst = cn->burst;
    ki->db = cn->db;
    ki->key_expires = cn->key_expires;

    s[0] = &ki->key_id;
    s[1] = &ki->organization;
    s[2] = &ki->address;
    s[3] = &ki->user;
    s[4] = &ki->password;

    rc = (cn->fresh_until > now) ? NGX_OK : NGX_AGAIN;

    /* one allocation for the five strings, each NUL-terminated */

    p = ngx_pnalloc(pool, cn->lens[0] + cn->lens[1] + cn->lens[2]
                          + cn->lens[3] + cn->lens[4] + 5);
    if (p == NULL) {
        rc = NGX_ERROR;

    } else {
        src = cn->data;

        for (i = 0; i < 5; i++) {
            s[i]->len = cn->lens[i];
            s[i]->data = p;

            /* addresses go to hiredis as C strings */
            p = ngx_cpymem(p, src, s[i]->len);
            *p++ = '\0';
            src += s[i]->len;
        }
    }

    ngx_shmtx_unlock(&cache->zone.shpool->mutex);

    if (rc == NGX_OK) {
        ngx_http_redisgate_cache_inc(cache, hits);
    }

    return rc;
}


void
ngx_http_redisgate_cache_put(ngx_http_redisgate_cache_t *cache,
    u_char *hash, u_char *instance, ngx_http_redisgate_keyinfo_t *ki,
    time_t ttl, time_t stale, ngx_atomic_uint_t generation)
{
    u_char                           *p, key[32 + NGX_HTTP_REDISGATE_UUID_LEN];
    size_t                            size;
    time_t                            now;
    uint32_t                          instance_id, org_id;
    ngx_str_t                        *s[5];
    ngx_uint_t                        i;
    ngx_rbtree_node_t                *node;
    ngx_http_redisgate_cache_node_t  *cn;

    s[0] = &ki->key_id;
    s[1] = &ki->organization;
    s[2] = &ki->address;
    s[3] = &ki->user;
    s[4] = &ki->password;

    size = offsetof(ngx_rbtree_node_t, color)
           + offsetof(ngx_http_redisgate_cache_node_t, data);

    for (i = 0; i < 5; i++) {
        if (s[i]->len > 255) {
            /* no such key id or address in practice: do not cache it */
            return;
        }

        size += s[i]->len;
    }

    ngx_memcpy(key, hash, 32);
    ngx_memcpy(key + 32, instance, NGX_HTTP_REDISGATE_UUID_LEN);

    instance_id = ngx_http_redisgate_cache_id("instance:", instance,
                                              NGX_HTTP_REDISGATE_UUID_LEN);
    org_id = ngx_http_redisgate_cache_id("organization:",
                                         ki->organization.data,
                                         ki->organization.len);
    now = ngx_time();

    ngx_shmtx_lock(&cache->zone.shpool->mutex);

    /*
     * An announcement since the answer was asked for may concern it: it
     * is not cached.  Announcements move the generation under this lock,
     * so none can come between this check and the insert.
     */

    if (ngx_http_redisgate_cache_sh(cache)->generation != generation) {
        ngx_shmtx_unlock(&cache->zone.shpool->mutex);
        return;
    }

    node = ngx_http_redisgate_zone_find(&cache->zone,
                                        ngx_http_redisgate_cache_hash(hash),
                                        key);
    if (node) {
        ngx_http_redisgate_zone_delete(&cache->zone, node);
    }

    node = ngx_http_redisgate_zone_insert(&cache->zone,
                                          ngx_http_redisgate_cache_hash(hash),
                                          key, size);
    if (node == NULL) {
        ngx_shmtx_unlock(&cache->zone.shpool->mutex);
        return;
    }

    cn = ngx_http_redisgate_cache_node(node);

    cn->checked = generation;
    cn->instance_id = instance_id;
    cn->org_id = org_id;

    cn->status = (u_short) ki->status;
    cn->fresh_until = now + ttl;
    cn->stale_until = now + ttl + stale;
    cn->key_expires = ki->key_expires;
    cn->scopes = ki->scopes;
    cn->rate = ki->rate;
    cn->burst = ki->burst;
    cn->db = ki->db;

    p = cn->data;

    for (i = 0; i < 5; i++) {
        cn->lens[i] = (u_char) s[i]->len;
        p = ngx_cpymem(p, s[i]->data, s[i]->len);
    }

    ngx_shmtx_unlock(&cache->zone.shpool->mutex);
}


/*
 * What the key store announced: "key:<sha256 hex>", "instance:<uuid>",
 * "organization:<uuid>" or "all".  No entry it touches is used again: a
 * key's go now, the others when next found (or when the zone needs room).
 */

void
ngx_http_redisgate_cache_evict(ngx_http_redisgate_cache_t *cache,
    ngx_str_t *what, ngx_log_t *log)
{
    u_char                            *id, hash[32];
    size_t                             len;
    uint32_t                           h;
    ngx_uint_t                         n, kind;
    ngx_atomic_uint_t                  generation;
    ngx_http_redisgate_cache_shctx_t  *sh;

    enum { ALL, KEY, INSTANCE, ORGANIZATION };

    id = NULL;
    len = 0;

    if (what->len == 4 + 64 && ngx_strncmp(what->data, "key:", 4) == 0) {
        kind = KEY;

        if (ngx_http_redisgate_hex_decode(hash, what->data + 4, 64)
            != NGX_OK)
        {
            ngx_log_error(NGX_LOG_INFO, log, 0,
                          "redisgate: key store changed \"%V\", 0 cached "
                          "entries evicted", what);
            return;
        }

    } else if (what->len == 9 + NGX_HTTP_REDISGATE_UUID_LEN
               && ngx_strncmp(what->data, "instance:", 9) == 0)
    {
        kind = INSTANCE;
        id = what->data + 9;
        len = NGX_HTTP_REDISGATE_UUID_LEN;

    } else if (what->len > 13
               && ngx_strncmp(what->data, "organization:", 13) == 0)
    {
        kind = ORGANIZATION;
        id = what->data + 13;
        len = what->len - 13;

    } else {
        kind = ALL;
    }

    h = 0;

    if (kind == INSTANCE || kind == ORGANIZATION) {
        h = ngx_http_redisgate_cache_id(kind == INSTANCE ? "instance:"
                                                         : "organization:",
                                        id, len);
    }

    n = 0;
    sh = ngx_http_redisgate_cache_sh(cache);

    ngx_shmtx_lock(&cache->zone.shpool->mutex);

    /* answers read before this must not be cached after it */
    generation = ngx_atomic_fetch_add(&sh->generation, 1) + 1;

    switch (kind) {

    case KEY:
        n = ngx_http_redisgate_cache_evict_token(cache, hash);
        break;

    case ALL:
        sh->voided = generation;
        break;

    default:
        ngx_http_redisgate_cache_note(sh, generation, h);
    }

    ngx_shmtx_unlock(&cache->zone.shpool->mutex);

    switch (kind) {

    case KEY:
        ngx_log_error(NGX_LOG_INFO, log, 0,
                      "redisgate: key store changed \"%V\", %ui cached "
                      "entries evicted", what, n);
        break;

    case ALL:
        ngx_log_error(NGX_LOG_INFO, log, 0,
                      "redisgate: key store changed \"%V\", every cached "
                      "entry voided", what);
        break;

    default:
        ngx_log_error(NGX_LOG_INFO, log, 0,
                      "redisgate: key store changed \"%V\", its cached "
                      "entries voided", what);
    }
}


/* the token's entries, whatever their instance: together in the tree */

static ngx_uint_t
ngx_http_redisgate_cache_evict_token(ngx_http_redisgate_cache_t *cache,
    u_char *hash)
{
    uint32_t            key;
    ngx_int_t           rc;
    ngx_uint_t          n;
    ngx_rbtree_node_t  *node, *sentinel, *first, *next;

    key = ngx_http_redisgate_cache_hash(hash);

    /* the first of them: the leftmost node of the token */

    node = cache->zone.sh->rbtree.root;
    sentinel = cache->zone.sh->rbtree.sentinel;
    first = NULL;

    while (node != sentinel) {

        if (key != node->key) {
            node = (key < node->key) ? node->left : node->right;
            continue;
        }

        rc = ngx_memcmp(hash, ngx_http_redisgate_cache_node(node)->hash, 32);

        if (rc > 0) {
            node = node->right;
            continue;
        }

        if (rc == 0) {
            first = node;
        }

        node = node->left;
    }

    n = 0;

    for (node = first; node; node = next) {

        if (node->key != key
            || ngx_memcmp(ngx_http_redisgate_cache_node(node)->hash, hash, 32)
               != 0)
        {
            break;
        }

        /* a deletion moves no other node: the next one stays the next */
        next = ngx_rbtree_next(&cache->zone.sh->rbtree, node);

        ngx_http_redisgate_zone_delete(&cache->zone, node);
        n++;
    }

    return n;
}


/* an instance or an organization announced, for entries found later */

static void
ngx_http_redisgate_cache_note(ngx_http_redisgate_cache_shctx_t *sh,
    ngx_atomic_uint_t generation, uint32_t id)
{
    ngx_http_redisgate_cache_news_t  *news;

    news = &sh->news[sh->nnews % NGX_HTTP_REDISGATE_CACHE_NEWS];

    if (sh->nnews >= NGX_HTTP_REDISGATE_CACHE_NEWS
        && sh->voided < news->generation)
    {
        /* no longer noted: an entry older than it may be what it named */
        sh->voided = news->generation;
    }

    news->generation = generation;
    news->id = id;

    sh->nnews++;
}


/*
 * Whether an entry is still good, after announcements since it was last
 * known so: the notes newer than that, newest first, name neither its
 * instance nor its organization.  Good: known so now.
 */

static ngx_uint_t
ngx_http_redisgate_cache_current(ngx_http_redisgate_cache_shctx_t *sh,
    ngx_http_redisgate_cache_node_t *cn)
{
    ngx_uint_t                        i;
    ngx_http_redisgate_cache_news_t  *news;

    if (cn->checked == sh->generation) {
        return 1;
    }

    if (cn->checked < sh->voided) {
        return 0;
    }

    for (i = sh->nnews;
         i > 0 && sh->nnews - i < NGX_HTTP_REDISGATE_CACHE_NEWS;
         i--)
    {
        news = &sh->news[(i - 1) % NGX_HTTP_REDISGATE_CACHE_NEWS];

        if (news->generation <= cn->checked) {
            break;
        }

        if (news->id == cn->instance_id || news->id == cn->org_id) {
            return 0;
        }
    }

    cn->checked = sh->generation;

    return 1;
}


/*
 * An instance's or an organization's id as announcements name it, in any
 * case: a hash of the kind and the id in lower case.  Two ids of the same
 * hash void each other's entries, which then cost a lookup, nothing more.
 */

static uint32_t
ngx_http_redisgate_cache_id(const char *kind, u_char *id, size_t len)
{
    u_char    c;
    uint32_t  crc;

    ngx_crc32_init(crc);
    ngx_crc32_update(&crc, (u_char *) kind, ngx_strlen(kind));

    while (len--) {
        c = *id++;
        c = ngx_tolower(c);
        ngx_crc32_update(&crc, &c, 1);
    }

    ngx_crc32_final(crc);

    return crc;
}


/*
 * Whatever changed while nobody listened is unknown: every entry is looked
 * up again, but stays usable as stale while the key store cannot answer
 * (its lookup connections may still be backing off when the listener is
 * back, and deleting the entries would turn that into 500s).
 */

void
ngx_http_redisgate_cache_expire_all(ngx_http_redisgate_cache_t *cache)
{
    time_t                            now, window;
    ngx_queue_t                      *q;
    ngx_http_redisgate_cache_node_t  *cn;

    now = ngx_time();

    ngx_shmtx_lock(&cache->zone.shpool->mutex);

    ngx_http_redisgate_cache_inc(cache, generation);

    for (q = ngx_queue_head(&cache->zone.sh->queue);
         q != ngx_queue_sentinel(&cache->zone.sh->queue);
         q = ngx_queue_next(q))
    {
        cn = ngx_queue_data(q, ngx_http_redisgate_cache_node_t, queue);

        if (cn->fresh_until > now) {

            /*
             * fresh for no worker, whatever its clock says; stale for the
             * entry's own window from now: none for unknown keys or with
             * stale=0, which the next get then deletes
             */

            window = cn->stale_until - cn->fresh_until;
            cn->fresh_until = 0;
            cn->stale_until = window ? now + window : 0;
        }
    }

    ngx_shmtx_unlock(&cache->zone.shpool->mutex);
}


/* a hit a worker served from what it remembers, counted all the same */

void
ngx_http_redisgate_cache_count_hit(ngx_http_redisgate_cache_t *cache)
{
    ngx_http_redisgate_cache_inc(cache, hits);
}


ngx_atomic_uint_t
ngx_http_redisgate_cache_generation(ngx_http_redisgate_cache_t *cache)
{
    return ngx_http_redisgate_cache_sh(cache)->generation;
}


void
ngx_http_redisgate_cache_stats(ngx_http_redisgate_cache_t *cache,
    ngx_uint_t *hits, ngx_uint_t *misses, ngx_uint_t *evictions)
{
    ngx_http_redisgate_cache_shctx_t  *sh;

    sh = ngx_http_redisgate_cache_sh(cache);

    *hits = sh->hits;
    *misses = sh->misses;
    *evictions = sh->tree.evicted;
}


/* dead: past its stale window or its key's expiry, or voided */

static ngx_uint_t
ngx_http_redisgate_cache_expired(ngx_http_redisgate_zone_t *zone,
    ngx_rbtree_node_t *node)
{
    time_t                             now;
    ngx_http_redisgate_cache_node_t   *cn;
    ngx_http_redisgate_cache_shctx_t  *sh;

    now = ngx_time();
    cn = ngx_http_redisgate_cache_node(node);
    sh = (ngx_http_redisgate_cache_shctx_t *) zone->sh;

    return cn->stale_until <= now
           || (cn->key_expires && cn->key_expires <= now)
           || cn->checked < sh->voided;
}


/* the key: the token's hash, then the instance, as in the node */

static ngx_int_t
ngx_http_redisgate_cache_cmp(void *key, ngx_rbtree_node_t *node)
{
    return ngx_memcmp(key, ngx_http_redisgate_cache_node(node)->hash,
                      32 + NGX_HTTP_REDISGATE_UUID_LEN);
}


static void
ngx_http_redisgate_cache_set(ngx_rbtree_node_t *node, void *key)
{
    ngx_memcpy(ngx_http_redisgate_cache_node(node)->hash, key,
               32 + NGX_HTTP_REDISGATE_UUID_LEN);
}


static void
ngx_http_redisgate_cache_rbtree_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel)
{
    ngx_http_redisgate_zone_insert_value(temp, node, sentinel,
                                         ngx_http_redisgate_cache_node_cmp);
}


static ngx_int_t
ngx_http_redisgate_cache_node_cmp(ngx_rbtree_node_t *one,
    ngx_rbtree_node_t *two)
{
    return ngx_http_redisgate_cache_cmp(
                                 ngx_http_redisgate_cache_node(one)->hash, two);
}
