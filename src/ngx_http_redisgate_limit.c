
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
 *
 * With store=, the bucket is in that Redis, for every nginx server that
 * names it: a script takes tokens from it in leases of 50 ms of the rate
 * (at least the request's cost), and the workers spend a lease from the
 * shared zone.  Only the request that finds the lease spent waits for the
 * store.  What the store said last, refilled at the rate since, tells
 * whether asking could help: an organization over its rate does not reach
 * the store at each request.  A store that fails or does not answer makes
 * the worker count locally (each server its share, as nodes= says) for a
 * second, doubling while it keeps not answering in time.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_redisgate.h"


/* the store's bucket, in millitokens; what it granted and what is left */
#define NGX_HTTP_REDISGATE_LIMIT_SCRIPT                                      \
    "local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2]) "              \
    "local want, need = tonumber(ARGV[3]), tonumber(ARGV[4]) "               \
    "local t = redis.call('TIME') "                                          \
    "local now = t[1] * 1000 + math.floor(t[2] / 1000) "                     \
    "local max = burst * 1000 "                                              \
    "local b = redis.call('HMGET', KEYS[1], 'tokens', 'at') "                \
    "local tokens = tonumber(b[1]) or max "                                  \
    "local at = tonumber(b[2]) or now "                                      \
    "if now > at then "                                                      \
    "  tokens = math.min(max, tokens + (now - at) * rate) "                  \
    "end "                                                                   \
    "local granted = 0 "                                                     \
    "if tokens >= need * 1000 or tokens >= max then "                        \
    "  granted = math.max(need, math.min(want, math.floor(tokens / 1000))) " \
    "  tokens = tokens - granted * 1000 "                                    \
    "end "                                                                   \
    "redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now) "              \
    "redis.call('PEXPIRE', KEYS[1], "                                        \
    "  math.ceil((max - tokens) / rate) + 1000) "                            \
    "return {granted, tokens}"

/* how long a store that failed is not asked: doubling, up to the max */
#define NGX_HTTP_REDISGATE_LIMIT_STORE_DOWN      1000
#define NGX_HTTP_REDISGATE_LIMIT_STORE_DOWN_MAX  30000


typedef struct {
    u_char                          color;
    u_char                          len;
    u_short                         dummy;
    ngx_queue_t                     queue;
    ngx_msec_t                      last;
    int64_t                         millitokens;

    /* with a store */
    int64_t                         lease;      /* granted, not spent */
    int64_t                         store;      /* the store's, last seen */
    ngx_msec_t                      store_at;   /* when */

    u_char                          org[1];
} ngx_http_redisgate_bucket_t;


struct ngx_http_redisgate_limit_s {
    ngx_http_redisgate_zone_t          zone;
    ngx_uint_t                         rate;      /* default, per second */
    ngx_uint_t                         burst;
    ngx_uint_t                         nodes;     /* nginx nodes sharing */

    ngx_http_redisgate_backend_t      *store;     /* NULL: this server's */
    ngx_msec_t                         timeout;
};


/* one request asking the store for a lease */
typedef struct {
    ngx_http_redisgate_limit_t        *limit;
    ngx_http_request_t                *request;
    ngx_str_t                          org;
    ngx_uint_t                         rate;
    ngx_uint_t                         burst;
    ngx_uint_t                         cost;
    ngx_http_redisgate_limit_state_t  *state;
    ngx_http_redisgate_limited_pt      done;
    ngx_int_t                          granted;   /* -1: no answer */
    int64_t                            tokens;
    const char                        *error;
    ngx_msec_t                         start;     /* asked */
    ngx_http_redisgate_cmd_t           cmd;       /* EVAL script 1 key */
    ngx_str_t                          resp;
} ngx_http_redisgate_lease_t;


/* a store that failed, in this worker: counted here until then */
static ngx_msec_t  ngx_http_redisgate_limit_store_down;
static ngx_msec_t  ngx_http_redisgate_limit_store_wait;


static ngx_int_t ngx_http_redisgate_limit_local(
    ngx_http_redisgate_limit_t *limit, ngx_str_t *org, ngx_uint_t rate,
    ngx_uint_t burst, ngx_uint_t cost,
    ngx_http_redisgate_limit_state_t *state);
static ngx_http_redisgate_bucket_t *ngx_http_redisgate_limit_bucket(
    ngx_http_redisgate_limit_t *limit, ngx_str_t *org, int64_t max,
    ngx_msec_t now);
static void ngx_http_redisgate_limit_plan(ngx_http_redisgate_limit_t *limit,
    ngx_uint_t *rate, ngx_uint_t *burst);
static void ngx_http_redisgate_limit_uncounted(
    ngx_http_redisgate_limit_state_t *state, ngx_uint_t burst);
static int64_t ngx_http_redisgate_limit_estimate(
    ngx_http_redisgate_bucket_t *b, ngx_uint_t rate, int64_t max,
    ngx_msec_t now);
static void ngx_http_redisgate_limit_shared_state(
    ngx_http_redisgate_bucket_t *b, ngx_uint_t rate, int64_t max,
    ngx_uint_t cost, ngx_msec_t now,
    ngx_http_redisgate_limit_state_t *state);
static ngx_int_t ngx_http_redisgate_limit_ask(
    ngx_http_redisgate_limit_t *limit, ngx_http_request_t *r, ngx_str_t *org,
    ngx_uint_t rate, ngx_uint_t burst, ngx_uint_t cost,
    ngx_http_redisgate_limit_state_t *state,
    ngx_http_redisgate_limited_pt done);
static ngx_int_t ngx_http_redisgate_limit_send(
    ngx_http_redisgate_lease_t *lease);
static void ngx_http_redisgate_limit_retry(ngx_http_request_t *r);
static void ngx_http_redisgate_limit_reply(void *data, redisReply *reply,
    const char *error);
static void ngx_http_redisgate_limit_store_failed(
    ngx_http_redisgate_limit_t *limit, const char *error, ngx_uint_t slow);
static uint32_t ngx_http_redisgate_limit_key(ngx_str_t *org, ngx_str_t *key);
static ngx_int_t ngx_http_redisgate_limit_cmp(void *key,
    ngx_rbtree_node_t *node);
static void ngx_http_redisgate_limit_set(ngx_rbtree_node_t *node, void *key);
static ngx_int_t ngx_http_redisgate_limit_node_cmp(ngx_rbtree_node_t *one,
    ngx_rbtree_node_t *two);
static void ngx_http_redisgate_limit_rbtree_insert_value(
    ngx_rbtree_node_t *temp, ngx_rbtree_node_t *node,
    ngx_rbtree_node_t *sentinel);


#define ngx_http_redisgate_bucket(rbnode)                                     \
    ((ngx_http_redisgate_bucket_t *) &(rbnode)->color)


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
    limit->zone.cmp = ngx_http_redisgate_limit_cmp;
    limit->zone.set = ngx_http_redisgate_limit_set;
    limit->zone.queue = offsetof(ngx_rbtree_node_t, color)
                        + offsetof(ngx_http_redisgate_bucket_t, queue);

    /* an organization idle the longest starts again with a full bucket */
    limit->zone.evict = 1;
    limit->zone.what = "rate limit";
    limit->zone.full = "the request goes in uncounted";

    if (ngx_http_redisgate_zone_add(cf, &limit->zone, name, size) != NGX_OK) {
        return NULL;
    }

    limit->rate = rate;
    limit->burst = burst;
    limit->nodes = nodes;

    return limit;
}


/* what a store is, for each worker: its backend, as any instance's */

void
ngx_http_redisgate_limit_set_store(ngx_http_redisgate_limit_t *limit,
    ngx_http_redisgate_backend_t *store, ngx_msec_t timeout)
{
    limit->store = store;
    limit->timeout = timeout;
}


/*
 * Takes cost tokens from the organization's bucket.  NGX_OK: let in;
 * NGX_BUSY: over the rate; NGX_AGAIN: the store is asked, done(r, NGX_OK
 * or NGX_BUSY) follows.  state tells the headers' numbers.  rate and burst
 * are the plan's (0: the zone's defaults).
 */

ngx_int_t
ngx_http_redisgate_limit_take(ngx_http_redisgate_limit_t *limit,
    ngx_http_request_t *r, ngx_str_t *org, ngx_uint_t rate, ngx_uint_t burst,
    ngx_uint_t cost, ngx_http_redisgate_limit_state_t *state,
    ngx_http_redisgate_limited_pt done)
{
    int64_t                       max;
    ngx_int_t                     rc;
    ngx_msec_t                    now;
    ngx_http_redisgate_bucket_t  *b;

    ngx_http_redisgate_limit_plan(limit, &rate, &burst);

    now = ngx_current_msec;

    if (limit->store == NULL
        || (ngx_msec_int_t) (ngx_http_redisgate_limit_store_down - now) > 0)
    {
        return ngx_http_redisgate_limit_local(limit, org, rate, burst, cost,
                                              state);
    }

    max = (int64_t) burst * 1000;

    ngx_shmtx_lock(&limit->zone.shpool->mutex);

    b = ngx_http_redisgate_limit_bucket(limit, org, max, now);

    if (b == NULL) {
        /* cannot count: let it in rather than refuse everyone */
        ngx_shmtx_unlock(&limit->zone.shpool->mutex);
        ngx_http_redisgate_limit_uncounted(state, burst);
        return NGX_OK;
    }

    if (b->lease >= (int64_t) cost * 1000) {
        /* the fast path: a lease this server holds */
        b->lease -= (int64_t) cost * 1000;
        rc = NGX_OK;

    } else if (ngx_http_redisgate_limit_estimate(b, rate, max, now)
               < ngx_min((int64_t) cost * 1000, max))
    {
        /* the store's bucket, as last seen and refilled since, cannot
         * hold it: no use asking */
        rc = NGX_BUSY;

    } else {
        rc = NGX_AGAIN;
    }

    if (rc != NGX_AGAIN) {
        ngx_http_redisgate_limit_shared_state(b, rate, max,
                                              rc == NGX_BUSY ? cost : 0,
                                              now, state);
    }

    ngx_shmtx_unlock(&limit->zone.shpool->mutex);

    if (rc != NGX_AGAIN) {
        return rc;
    }

    return ngx_http_redisgate_limit_ask(limit, r, org, rate, burst, cost,
                                        state, done);
}


/* this server's own bucket: all of the plan, or its share of N servers */

static ngx_int_t
ngx_http_redisgate_limit_local(ngx_http_redisgate_limit_t *limit,
    ngx_str_t *org, ngx_uint_t rate, ngx_uint_t burst, ngx_uint_t cost,
    ngx_http_redisgate_limit_state_t *state)
{
    int64_t                       max, tokens, need;
    ngx_int_t                     rc;
    ngx_msec_t                    now, elapsed;
    ngx_http_redisgate_bucket_t  *b;

    /* each of N nodes behind a balancer takes its share */
    rate = ngx_max(rate / limit->nodes, 1);
    burst = ngx_max(burst / limit->nodes, 1);

    max = (int64_t) burst * 1000;
    now = ngx_current_msec;

    ngx_shmtx_lock(&limit->zone.shpool->mutex);

    b = ngx_http_redisgate_limit_bucket(limit, org, max, now);

    if (b == NULL) {
        ngx_shmtx_unlock(&limit->zone.shpool->mutex);
        ngx_http_redisgate_limit_uncounted(state, burst);
        return NGX_OK;
    }

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


/* a plan's rate and burst: 0 takes the zone's defaults, no burst the rate */

static void
ngx_http_redisgate_limit_plan(ngx_http_redisgate_limit_t *limit,
    ngx_uint_t *rate, ngx_uint_t *burst)
{
    if (*rate == 0) {
        *rate = limit->rate;
        *burst = limit->burst;

    } else if (*burst == 0) {
        *burst = *rate;
    }
}


/*
 * What the organization's bucket holds now, taking nothing (the management
 * API shows it): the zone's count, or with a store what it said last,
 * refilled since, and this server's lease.  An organization not counted
 * yet has a full bucket.
 */

void
ngx_http_redisgate_limit_peek(ngx_http_redisgate_limit_t *limit,
    ngx_str_t *org, ngx_uint_t rate, ngx_uint_t burst,
    ngx_http_redisgate_limit_state_t *state)
{
    int64_t                       max, tokens, per_second;
    uint32_t                      hash;
    ngx_str_t                     key;
    ngx_msec_t                    now;
    ngx_rbtree_node_t            *node;
    ngx_http_redisgate_bucket_t  *b;

    ngx_http_redisgate_limit_plan(limit, &rate, &burst);

    if (limit->store == NULL) {
        /* counted here: this node's share, as limit_local() counts */
        rate = ngx_max(rate / limit->nodes, 1);
        burst = ngx_max(burst / limit->nodes, 1);
    }

    max = (int64_t) burst * 1000;
    per_second = (int64_t) rate * 1000;
    now = ngx_current_msec;
    tokens = max;

    hash = ngx_http_redisgate_limit_key(org, &key);

    ngx_shmtx_lock(&limit->zone.shpool->mutex);

    node = ngx_http_redisgate_zone_find(&limit->zone, hash, &key);

    if (node) {
        b = ngx_http_redisgate_bucket(node);

        if (limit->store == NULL) {
            tokens = ngx_min(b->millitokens
                             + (int64_t) (now - b->last) * (int64_t) rate,
                             max);

        } else {
            tokens = ngx_http_redisgate_limit_estimate(b, rate, max, now)
                     + b->lease;
        }
    }

    ngx_shmtx_unlock(&limit->zone.shpool->mutex);

    state->limit = burst;
    state->remaining = (tokens > 0) ? (ngx_uint_t) (tokens / 1000) : 0;
    state->reset = (tokens >= max) ? 0
                   : (time_t) ((max - tokens + per_second - 1) / per_second);
    state->retry_after = 0;
}


/* the organization's bucket, made when new; the zone locked.  NULL: full */

static ngx_http_redisgate_bucket_t *
ngx_http_redisgate_limit_bucket(ngx_http_redisgate_limit_t *limit,
    ngx_str_t *org, int64_t max, ngx_msec_t now)
{
    uint32_t                      hash;
    ngx_str_t                     key;
    ngx_rbtree_node_t            *node;
    ngx_http_redisgate_bucket_t  *b;

    hash = ngx_http_redisgate_limit_key(org, &key);

    node = ngx_http_redisgate_zone_find(&limit->zone, hash, &key);

    if (node) {
        ngx_http_redisgate_zone_touch(&limit->zone, node);
        return ngx_http_redisgate_bucket(node);
    }

    node = ngx_http_redisgate_zone_insert(&limit->zone, hash, &key,
                                  offsetof(ngx_rbtree_node_t, color)
                                  + offsetof(ngx_http_redisgate_bucket_t, org)
                                  + key.len);
    if (node == NULL) {
        return NULL;
    }

    b = ngx_http_redisgate_bucket(node);

    b->millitokens = max;
    b->lease = 0;
    b->store = max;
    b->store_at = now;
    b->last = now;

    return b;
}


/* a zone too full to count in: the request goes in */

static void
ngx_http_redisgate_limit_uncounted(ngx_http_redisgate_limit_state_t *state,
    ngx_uint_t burst)
{
    state->limit = burst;
    state->remaining = burst;
    state->reset = 0;
    state->retry_after = 0;
}


/* the store's bucket now, from what it said last and the rate since */

static int64_t
ngx_http_redisgate_limit_estimate(ngx_http_redisgate_bucket_t *b,
    ngx_uint_t rate, int64_t max, ngx_msec_t now)
{
    int64_t  tokens;

    tokens = b->store + (int64_t) (now - b->store_at) * (int64_t) rate;

    return ngx_min(tokens, max);
}


/* the headers with a store: its bucket as estimated, and the lease */

static void
ngx_http_redisgate_limit_shared_state(ngx_http_redisgate_bucket_t *b,
    ngx_uint_t rate, int64_t max, ngx_uint_t cost, ngx_msec_t now,
    ngx_http_redisgate_limit_state_t *state)
{
    int64_t  store, left, need, per_second;

    per_second = (int64_t) rate * 1000;
    store = ngx_http_redisgate_limit_estimate(b, rate, max, now);
    left = store + b->lease;
    need = ngx_min((int64_t) cost * 1000, max);

    state->limit = (ngx_uint_t) (max / 1000);
    state->remaining = (left > 0) ? (ngx_uint_t) (left / 1000) : 0;
    state->reset = (time_t) ((max - store + per_second - 1) / per_second);

    /*
     * a cost is given only for a refusal: then at least a second, even
     * when the estimate holds the cost (the store said no, or this
     * worker's lease is spent below it)
     */

    if (cost == 0) {
        state->retry_after = 0;

    } else {
        state->retry_after = (left < need)
                             ? (time_t) ((need - left + per_second - 1)
                                         / per_second)
                             : 1;

        if (state->retry_after < 1) {
            state->retry_after = 1;
        }
    }
}


/*
 * The store, for a lease: EVAL of the script with the bucket's key, the
 * plan, what a lease is (50 ms of the rate, within the burst, at least
 * the cost) and the cost.  Not asked: the local count answers.
 */

static ngx_int_t
ngx_http_redisgate_limit_ask(ngx_http_redisgate_limit_t *limit,
    ngx_http_request_t *r, ngx_str_t *org, ngx_uint_t rate, ngx_uint_t burst,
    ngx_uint_t cost, ngx_http_redisgate_limit_state_t *state,
    ngx_http_redisgate_limited_pt done)
{
    u_char                      *p;
    u_char                       nums[4][NGX_INT_T_LEN];
    ngx_str_t                    argv[8];
    ngx_uint_t                   want, i;
    ngx_http_redisgate_cmd_t     cmd;
    ngx_http_redisgate_ctx_t    *ctx;
    ngx_http_redisgate_lease_t  *lease;

    lease = ngx_pcalloc(r->pool, sizeof(ngx_http_redisgate_lease_t));
    if (lease == NULL) {
        return ngx_http_redisgate_limit_local(limit, org, rate, burst, cost,
                                              state);
    }

    lease->limit = limit;
    lease->request = r;
    lease->org = *org;
    lease->rate = rate;
    lease->burst = burst;
    lease->cost = cost;
    lease->state = state;
    lease->done = done;
    lease->granted = -1;

    want = ngx_max(cost, ngx_min(burst, ngx_max(rate / 20, 1)));

    ngx_str_set(&argv[0], "EVAL");
    ngx_str_set(&argv[1], NGX_HTTP_REDISGATE_LIMIT_SCRIPT);
    ngx_str_set(&argv[2], "1");

    /* one key, in one slot of a cluster whatever the name holds */
    argv[3].len = sizeof("redisgate:limit:{}") - 1 + org->len;
    argv[3].data = ngx_pnalloc(r->pool, argv[3].len);
    if (argv[3].data == NULL) {
        return ngx_http_redisgate_limit_local(limit, org, rate, burst, cost,
                                              state);
    }

    ngx_sprintf(argv[3].data, "redisgate:limit:{%V}", org);

    argv[4].data = nums[0];
    argv[4].len = ngx_sprintf(nums[0], "%ui", rate) - nums[0];
    argv[5].data = nums[1];
    argv[5].len = ngx_sprintf(nums[1], "%ui", burst) - nums[1];
    argv[6].data = nums[2];
    argv[6].len = ngx_sprintf(nums[2], "%ui", want) - nums[2];
    argv[7].data = nums[3];
    argv[7].len = ngx_sprintf(nums[3], "%ui", cost) - nums[3];

    cmd.argv = argv;
    cmd.argc = 8;

    lease->resp.data = ngx_pnalloc(r->pool,
                                   ngx_http_redisgate_resp_command_len(&cmd));
    if (lease->resp.data == NULL) {
        return ngx_http_redisgate_limit_local(limit, org, rate, burst, cost,
                                              state);
    }

    p = ngx_http_redisgate_resp_command(lease->resp.data, &cmd);
    lease->resp.len = p - lease->resp.data;

    /* the command, for a cluster's routing: its key after the rest */
    lease->cmd.argv = ngx_palloc(r->pool, 4 * sizeof(ngx_str_t));
    if (lease->cmd.argv == NULL) {
        return ngx_http_redisgate_limit_local(limit, org, rate, burst, cost,
                                              state);
    }

    for (i = 0; i < 4; i++) {
        lease->cmd.argv[i] = argv[i];
    }

    lease->cmd.argc = 4;

    /* for the retry, when the store's address is not known yet */
    ctx = ngx_http_get_module_ctx(r, ngx_http_redisgate_module);
    ctx->lease = lease;
    lease->start = ngx_current_msec;

    return ngx_http_redisgate_limit_send(lease);
}


/* to the store once it has an address (asked again when it had none) */

static ngx_int_t
ngx_http_redisgate_limit_send(ngx_http_redisgate_lease_t *lease)
{
    ngx_int_t                    rc;
    const char                  *error;
    ngx_http_redisgate_limit_t  *limit;

    limit = lease->limit;

    rc = ngx_http_redisgate_backend_ready(limit->store, lease->request,
                                          ngx_http_redisgate_limit_retry,
                                          &error);

    if (rc == NGX_AGAIN) {
        return NGX_AGAIN;
    }

    if (rc == NGX_OK) {
        rc = ngx_http_redisgate_backend_send(limit->store, lease->request,
                                             &lease->cmd, &lease->resp, 1, 0,
                                             limit->timeout,
                                             ngx_http_redisgate_limit_reply,
                                             NULL, lease, &error);
        if (rc == NGX_OK) {
            return NGX_AGAIN;
        }
    }

    ngx_http_redisgate_limit_store_failed(limit, error, 0);

    return ngx_http_redisgate_limit_local(limit, &lease->org, lease->rate,
                                          lease->burst, lease->cost,
                                          lease->state);
}


static void
ngx_http_redisgate_limit_retry(ngx_http_request_t *r)
{
    ngx_int_t                    rc;
    ngx_http_redisgate_ctx_t    *ctx;
    ngx_http_redisgate_lease_t  *lease;

    ctx = ngx_http_get_module_ctx(r, ngx_http_redisgate_module);
    lease = ctx->lease;

    rc = ngx_http_redisgate_limit_send(lease);

    if (rc != NGX_AGAIN) {
        lease->done(r, rc);
    }
}


/* [granted, the store's millitokens], then the end */

static void
ngx_http_redisgate_limit_reply(void *data, redisReply *reply,
    const char *error)
{
    ngx_http_redisgate_lease_t *lease = data;

    int64_t                       max, need;
    ngx_int_t                     rc;
    ngx_msec_t                    now;
    ngx_http_redisgate_bucket_t  *b;
    ngx_http_redisgate_limit_t   *limit;

    limit = lease->limit;

    if (reply) {
        if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2
            && reply->element[0]->type == REDIS_REPLY_INTEGER
            && reply->element[1]->type == REDIS_REPLY_INTEGER
            && reply->element[0]->integer >= 0)
        {
            lease->granted = (ngx_int_t) reply->element[0]->integer;
            lease->tokens = reply->element[1]->integer;

        } else {
            ngx_log_error(NGX_LOG_ERR, lease->request->connection->log, 0,
                          "redisgate: the rate limit store %V answered "
                          "%*s", &limit->store->address.url,
                          reply->type == REDIS_REPLY_ERROR
                          ? (size_t) reply->len : sizeof("something else")
                                                  - 1,
                          reply->type == REDIS_REPLY_ERROR
                          ? reply->str : "something else");
        }

        return;
    }

    if (error) {
        /* the link logged why; the end follows */
        lease->granted = -1;
        lease->error = error;
        return;
    }

    if (lease->granted < 0) {
        /* slow: it took about the whole timeout */
        ngx_http_redisgate_limit_store_failed(limit, lease->error
                                                     ? lease->error
                                                     : "a wrong answer",
                                      ngx_current_msec - lease->start
                                      >= limit->timeout / 2);

        rc = ngx_http_redisgate_limit_local(limit, &lease->org, lease->rate,
                                            lease->burst, lease->cost,
                                            lease->state);
        lease->done(lease->request, rc);
        return;
    }

    /* it answers: the next failure is counted around for a second */
    ngx_http_redisgate_limit_store_wait = 0;

    max = (int64_t) lease->burst * 1000;
    need = (int64_t) lease->cost * 1000;
    now = ngx_current_msec;

    ngx_shmtx_lock(&limit->zone.shpool->mutex);

    b = ngx_http_redisgate_limit_bucket(limit, &lease->org, max, now);

    if (b == NULL) {
        ngx_shmtx_unlock(&limit->zone.shpool->mutex);
        ngx_http_redisgate_limit_uncounted(lease->state, lease->burst);
        lease->done(lease->request, NGX_OK);
        return;
    }

    /* what the next requests estimate from, until the store is asked */
    b->store = lease->tokens;
    b->store_at = now;

    if (lease->granted > 0) {
        /* the cost now, the rest for the next requests of any worker */
        b->lease += (int64_t) lease->granted * 1000 - need;
        rc = NGX_OK;

    } else {
        rc = NGX_BUSY;
    }

    ngx_http_redisgate_limit_shared_state(b, lease->rate, max,
                                          rc == NGX_OK ? 0 : lease->cost,
                                          now, lease->state);

    ngx_shmtx_unlock(&limit->zone.shpool->mutex);

    lease->done(lease->request, rc);
}


/*
 * Counted here for a while, said once: a second after a quick failure (a
 * refused connection: the store is asked again soon after it is back),
 * doubling while the store keeps not answering in time (each time costs
 * a request its wait), back to a second once it answers.
 */

static void
ngx_http_redisgate_limit_store_failed(ngx_http_redisgate_limit_t *limit,
    const char *error, ngx_uint_t slow)
{
    if ((ngx_msec_int_t) (ngx_http_redisgate_limit_store_down
                          - ngx_current_msec) > 0)
    {
        return;
    }

    if (ngx_http_redisgate_limit_store_wait == 0 || !slow) {
        ngx_http_redisgate_limit_store_wait =
                                        NGX_HTTP_REDISGATE_LIMIT_STORE_DOWN;
    }

    ngx_http_redisgate_limit_store_down = ngx_current_msec
                                        + ngx_http_redisgate_limit_store_wait;

    ngx_log_error(NGX_LOG_WARN, limit->store->log, 0,
                  "redisgate: the rate limit store %V failed (%s): this "
                  "server counts its share of each plan for %M ms",
                  &limit->store->address.url, error ? error : "no answer",
                  ngx_http_redisgate_limit_store_wait);

    ngx_http_redisgate_limit_store_wait =
                            ngx_min(2 * ngx_http_redisgate_limit_store_wait,
                                    NGX_HTTP_REDISGATE_LIMIT_STORE_DOWN_MAX);
}


/* what a bucket is found by: the organization's name, cut to fit */

static uint32_t
ngx_http_redisgate_limit_key(ngx_str_t *org, ngx_str_t *key)
{
    key->data = org->data;
    key->len = ngx_min(org->len, NGX_HTTP_REDISGATE_ORG_MAX);

    return ngx_crc32_short(key->data, key->len);
}


static ngx_int_t
ngx_http_redisgate_limit_cmp(void *key, ngx_rbtree_node_t *node)
{
    ngx_str_t                    *org = key;
    ngx_http_redisgate_bucket_t  *b;

    b = ngx_http_redisgate_bucket(node);

    return ngx_memn2cmp(org->data, b->org, org->len, (size_t) b->len);
}


static void
ngx_http_redisgate_limit_set(ngx_rbtree_node_t *node, void *key)
{
    ngx_str_t                    *org = key;
    ngx_http_redisgate_bucket_t  *b;

    b = ngx_http_redisgate_bucket(node);

    b->len = (u_char) org->len;
    ngx_memcpy(b->org, org->data, org->len);
}


static void
ngx_http_redisgate_limit_rbtree_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel)
{
    ngx_http_redisgate_zone_insert_value(temp, node, sentinel,
                                         ngx_http_redisgate_limit_node_cmp);
}


static ngx_int_t
ngx_http_redisgate_limit_node_cmp(ngx_rbtree_node_t *one,
    ngx_rbtree_node_t *two)
{
    ngx_str_t                     org;
    ngx_http_redisgate_bucket_t  *b;

    b = ngx_http_redisgate_bucket(one);

    org.data = b->org;
    org.len = b->len;

    return ngx_http_redisgate_limit_cmp(&org, two);
}
