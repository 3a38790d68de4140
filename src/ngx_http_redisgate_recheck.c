
/*
 * Copyright (C) RedisGate authors
 */


/*
 * Keys that long requests hold.  A stream lives for hours on the key that
 * opened it; a key revoked or expired, an instance or an organization
 * suspended, a scope taken away must end it within a second.
 *
 * Per worker, each key of the key store that streams hold (a token's hash
 * and an instance) is watched once, however many streams hold it.  When
 * the key store announces a change (the shared cache's generation moves;
 * every second without a cache), a watched key is looked up again, in the
 * cache first and then in PostgreSQL, and the streams it no longer lets
 * run end.  A key store that cannot answer ends nothing: the streams go
 * on, as requests go on with a stale cache entry, and the key is asked
 * for again a second later.
 *
 * Keys of nginx.conf change only with a reload, which ends every stream.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_redisgate.h"


/* how often the worker looks at the generation, and at key expiries */
#define NGX_HTTP_REDISGATE_RECHECK_TICK    250

/* without a cache, or after the key store could not answer */
#define NGX_HTTP_REDISGATE_RECHECK_AGAIN   1000

#define NGX_HTTP_REDISGATE_RECHECK_BUCKETS 64

/* every holder, whatever scope it needs */
#define NGX_HTTP_REDISGATE_RECHECK_ALL     ((ngx_uint_t) -1)


struct ngx_http_redisgate_watch_s {
    ngx_queue_t                     queue;      /* in its bucket */
    ngx_queue_t                     holders;
    u_char                          hash[32];
    u_char                          instance[NGX_HTTP_REDISGATE_UUID_LEN];

    ngx_atomic_uint_t               generation; /* the cache's when asked */
    ngx_msec_t                      asked;
    time_t                          expires;    /* the key's; 0: never */

    ngx_pool_t                     *pool;       /* while PostgreSQL answers */

    unsigned                        retry:1;    /* no answer: ask again */
    unsigned                        judging:1;  /* holders leave meanwhile */
};


static ngx_http_redisgate_watch_t *ngx_http_redisgate_recheck_find(
    u_char *hash, u_char *instance);
static void ngx_http_redisgate_recheck_tick(ngx_event_t *ev);
static void ngx_http_redisgate_recheck_ask(ngx_http_redisgate_watch_t *w,
    ngx_http_redisgate_main_conf_t *rmcf);
static void ngx_http_redisgate_recheck_answered(void *data, ngx_int_t rc,
    ngx_http_redisgate_keyinfo_t *ki, const char *error);
static void ngx_http_redisgate_recheck_judge(ngx_http_redisgate_watch_t *w,
    ngx_http_redisgate_keyinfo_t *ki);
static void ngx_http_redisgate_recheck_end(ngx_http_redisgate_watch_t *w,
    ngx_uint_t scopes, const char *error);
static void ngx_http_redisgate_recheck_free(ngx_http_redisgate_watch_t *w);


/* the worker's watched keys, by the first byte of their hash */
static ngx_queue_t
    ngx_http_redisgate_watches[NGX_HTTP_REDISGATE_RECHECK_BUCKETS];
static ngx_uint_t   ngx_http_redisgate_nwatches;
static ngx_event_t  ngx_http_redisgate_recheck_timer;


/*
 * h holds auth's key (of the key store) for instance: h->revoked(h->data,
 * why) is called when it may no longer, h->scope being the scope it needs.
 * Keys of nginx.conf hold nothing.
 */

ngx_int_t
ngx_http_redisgate_recheck_hold(ngx_http_redisgate_holder_t *h,
    ngx_http_redisgate_auth_t *auth, u_char *instance, ngx_log_t *log)
{
    ngx_uint_t                       i;
    ngx_http_redisgate_watch_t      *w;
    ngx_http_redisgate_main_conf_t  *rmcf;

    h->watch = NULL;

    if (auth->source == NGX_HTTP_REDISGATE_SOURCE_STATIC) {
        return NGX_OK;
    }

    rmcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                               ngx_http_redisgate_module);

    if (ngx_http_redisgate_nwatches == 0
        && ngx_http_redisgate_watches[0].next == NULL)
    {
        for (i = 0; i < NGX_HTTP_REDISGATE_RECHECK_BUCKETS; i++) {
            ngx_queue_init(&ngx_http_redisgate_watches[i]);
        }

        ngx_http_redisgate_recheck_timer.handler =
                                           ngx_http_redisgate_recheck_tick;
        ngx_http_redisgate_recheck_timer.log = ngx_cycle->log;
        ngx_http_redisgate_recheck_timer.cancelable = 1;

        /* nginx's timer debug lines read ev->data as a connection */
        ngx_http_redisgate_recheck_timer.data =
                                           &ngx_http_redisgate_recheck_timer;
    }

    w = ngx_http_redisgate_recheck_find(auth->hash, instance);

    if (w == NULL) {
        w = ngx_calloc(sizeof(ngx_http_redisgate_watch_t), log);
        if (w == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(w->hash, auth->hash, 32);
        ngx_memcpy(w->instance, instance, NGX_HTTP_REDISGATE_UUID_LEN);
        ngx_queue_init(&w->holders);

        /* what the stream was let in on is as new as this */
        w->generation = rmcf->cache
                        ? ngx_http_redisgate_cache_generation(rmcf->cache) : 0;
        w->asked = ngx_current_msec;
        w->expires = auth->expires;

        ngx_queue_insert_tail(&ngx_http_redisgate_watches[
                                  auth->hash[0]
                                  % NGX_HTTP_REDISGATE_RECHECK_BUCKETS],
                              &w->queue);
        ngx_http_redisgate_nwatches++;
    }

    h->watch = w;
    ngx_queue_insert_tail(&w->holders, &h->queue);

    if (!ngx_http_redisgate_recheck_timer.timer_set) {
        ngx_add_timer(&ngx_http_redisgate_recheck_timer,
                      NGX_HTTP_REDISGATE_RECHECK_TICK);
    }

    return NGX_OK;
}


/* h lets go (its stream ends); the last holder of a key ends its watch */

void
ngx_http_redisgate_recheck_release(ngx_http_redisgate_holder_t *h)
{
    ngx_http_redisgate_watch_t  *w;

    w = h->watch;

    if (w == NULL) {
        return;
    }

    h->watch = NULL;
    ngx_queue_remove(&h->queue);

    if (ngx_queue_empty(&w->holders) && !w->judging) {
        ngx_http_redisgate_recheck_free(w);
    }
}


static ngx_http_redisgate_watch_t *
ngx_http_redisgate_recheck_find(u_char *hash, u_char *instance)
{
    ngx_queue_t                 *q, *bucket;
    ngx_http_redisgate_watch_t  *w;

    bucket = &ngx_http_redisgate_watches[hash[0]
                                         % NGX_HTTP_REDISGATE_RECHECK_BUCKETS];

    for (q = ngx_queue_head(bucket);
         q != ngx_queue_sentinel(bucket);
         q = ngx_queue_next(q))
    {
        w = ngx_queue_data(q, ngx_http_redisgate_watch_t, queue);

        if (ngx_memcmp(w->hash, hash, 32) == 0
            && ngx_memcmp(w->instance, instance, NGX_HTTP_REDISGATE_UUID_LEN)
               == 0)
        {
            return w;
        }
    }

    return NULL;
}


/* every 250 ms while keys are held: what changed, what expired */

static void
ngx_http_redisgate_recheck_tick(ngx_event_t *ev)
{
    time_t                           now;
    ngx_uint_t                       i, due;
    ngx_queue_t                     *q, *next, *bucket;
    ngx_atomic_uint_t                generation;
    ngx_http_redisgate_watch_t      *w;
    ngx_http_redisgate_main_conf_t  *rmcf;

    rmcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                               ngx_http_redisgate_module);

    generation = rmcf->cache
                 ? ngx_http_redisgate_cache_generation(rmcf->cache) : 0;
    now = ngx_time();

    for (i = 0; i < NGX_HTTP_REDISGATE_RECHECK_BUCKETS; i++) {
        bucket = &ngx_http_redisgate_watches[i];

        for (q = ngx_queue_head(bucket);
             q != ngx_queue_sentinel(bucket);
             q = next)
        {
            /* w may go in there: its streams end */
            next = ngx_queue_next(q);
            w = ngx_queue_data(q, ngx_http_redisgate_watch_t, queue);

            if (w->pool) {
                /* PostgreSQL is answering */
                continue;
            }

            if (w->expires && w->expires <= now) {
                ngx_http_redisgate_recheck_end(w,
                                               NGX_HTTP_REDISGATE_RECHECK_ALL,
                                               "Unauthorized: invalid API "
                                               "key");
                continue;
            }

            if (w->retry || rmcf->cache == NULL) {
                due = (ngx_msec_int_t) (ngx_current_msec - w->asked)
                      >= NGX_HTTP_REDISGATE_RECHECK_AGAIN;

            } else {
                due = (w->generation != generation);
            }

            if (due) {
                ngx_http_redisgate_recheck_ask(w, rmcf);
            }
        }
    }

    if (ngx_http_redisgate_nwatches) {
        ngx_add_timer(ev, NGX_HTTP_REDISGATE_RECHECK_TICK);
    }
}


/* the cache, else PostgreSQL */

static void
ngx_http_redisgate_recheck_ask(ngx_http_redisgate_watch_t *w,
    ngx_http_redisgate_main_conf_t *rmcf)
{
    ngx_int_t                     rc;
    ngx_pool_t                   *pool;
    const char                   *error;
    ngx_http_redisgate_keyinfo_t  ki;

    /* taken first: an announcement while asking makes it ask again */
    w->generation = rmcf->cache
                    ? ngx_http_redisgate_cache_generation(rmcf->cache) : 0;
    w->asked = ngx_current_msec;
    w->retry = 0;

    pool = ngx_create_pool(512, ngx_cycle->log);
    if (pool == NULL) {
        w->retry = 1;
        return;
    }

    rc = NGX_DECLINED;

    if (rmcf->cache) {
        rc = ngx_http_redisgate_cache_get(rmcf->cache, w->hash, w->instance,
                                          &ki, pool);
    }

    if (rc == NGX_OK) {
        ngx_http_redisgate_recheck_judge(w, &ki);
        ngx_destroy_pool(pool);
        return;
    }

    if (rmcf->pg == NULL) {
        ngx_destroy_pool(pool);
        return;
    }

    /* the answer comes from the event loop, never before this returns */
    rc = ngx_http_redisgate_pg_lookup(rmcf->pg, pool, ngx_cycle->log,
                                      w->hash, w->instance,
                                      ngx_http_redisgate_recheck_answered, w,
                                      &error);

    if (rc == NGX_AGAIN) {
        w->pool = pool;
        return;
    }

    ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                  "redisgate: could not look a streamed key up again: %s",
                  error);

    ngx_destroy_pool(pool);
    w->retry = 1;
}


static void
ngx_http_redisgate_recheck_answered(void *data, ngx_int_t rc,
    ngx_http_redisgate_keyinfo_t *ki, const char *error)
{
    ngx_http_redisgate_watch_t *w = data;

    ngx_pool_t  *pool;

    /* the waiter is in the pool: gone with it, once this returns */
    pool = w->pool;
    w->pool = NULL;

    if (rc == NGX_OK) {
        w->judging = 1;
        ngx_http_redisgate_recheck_judge(w, ki);
        w->judging = 0;

    } else {
        ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                      "redisgate: could not look a streamed key up again: "
                      "%s", error);
        w->retry = 1;
    }

    ngx_destroy_pool(pool);

    if (ngx_queue_empty(&w->holders)) {
        ngx_http_redisgate_recheck_free(w);
    }
}


/* what the key store says now: the streams it no longer lets run end */

static void
ngx_http_redisgate_recheck_judge(ngx_http_redisgate_watch_t *w,
    ngx_http_redisgate_keyinfo_t *ki)
{
    const char  *error;

    if (ngx_http_redisgate_keyinfo_refused(ki, &error) != NGX_OK) {
        ngx_http_redisgate_recheck_end(w, NGX_HTTP_REDISGATE_RECHECK_ALL,
                                       error);
        return;
    }

    w->expires = ki->key_expires;

    /* those that need a scope the key has no more */
    ngx_http_redisgate_recheck_end(w, ~ki->scopes,
                                   "Forbidden: this API key's scopes no "
                                   "longer allow this stream");
}


/* the holders that need one of scopes end, with error */

static void
ngx_http_redisgate_recheck_end(ngx_http_redisgate_watch_t *w,
    ngx_uint_t scopes, const char *error)
{
    ngx_uint_t                    judging;
    ngx_queue_t                  *q, *next;
    ngx_http_redisgate_holder_t  *h;

    judging = w->judging;
    w->judging = 1;

    for (q = ngx_queue_head(&w->holders);
         q != ngx_queue_sentinel(&w->holders);
         q = next)
    {
        /* a holder ending lets go of itself, and only of itself */
        next = ngx_queue_next(q);
        h = ngx_queue_data(q, ngx_http_redisgate_holder_t, queue);

        if (h->scope & scopes) {
            h->revoked(h->data, error);
        }
    }

    w->judging = judging;

    if (!judging && ngx_queue_empty(&w->holders)) {
        ngx_http_redisgate_recheck_free(w);
    }
}


static void
ngx_http_redisgate_recheck_free(ngx_http_redisgate_watch_t *w)
{
    if (w->pool) {
        /* the waiter leaves the lookup, which goes on for the cache */
        ngx_destroy_pool(w->pool);
    }

    ngx_queue_remove(&w->queue);
    ngx_http_redisgate_nwatches--;
    ngx_free(w);

    if (ngx_http_redisgate_nwatches == 0
        && ngx_http_redisgate_recheck_timer.timer_set)
    {
        ngx_del_timer(&ngx_http_redisgate_recheck_timer);
    }
}
