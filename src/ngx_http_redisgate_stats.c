
/*
 * Copyright (C) RedisGate authors
 */


/*
 * Counters for the operator, in one shared memory zone so that every
 * worker adds to the same numbers: requests by route and status, a
 * latency histogram, commands, rate-limited requests, key store queries,
 * and per backend its connections, replies awaited and connects.
 * redisgate_status prints them in Prometheus' text format.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_redisgate.h"


#define NGX_HTTP_REDISGATE_STATS_ROUTES    5
#define NGX_HTTP_REDISGATE_STATS_STATUSES  11
#define NGX_HTTP_REDISGATE_STATS_BUCKETS   12
#define NGX_HTTP_REDISGATE_STATS_BACKENDS  1024
#define NGX_HTTP_REDISGATE_STATS_URL_LEN   120


struct ngx_http_redisgate_backend_stats_s {
    uint32_t                        hash;
    u_char                          len;
    u_char                          url[NGX_HTTP_REDISGATE_STATS_URL_LEN];

    /* by NGX_HTTP_REDISGATE_STAT_CONNECTIONS... */
    ngx_atomic_t    counters[NGX_HTTP_REDISGATE_STAT_BACKEND_COUNTERS];
};


typedef struct {
    ngx_atomic_t                    requests[NGX_HTTP_REDISGATE_STATS_ROUTES]
                                            [NGX_HTTP_REDISGATE_STATS_STATUSES];
    ngx_atomic_t                    latency[NGX_HTTP_REDISGATE_STATS_BUCKETS];
    ngx_atomic_t                    latency_ms;

    /* by NGX_HTTP_REDISGATE_STAT_COMMANDS... */
    ngx_atomic_t                    counters[NGX_HTTP_REDISGATE_STAT_COUNTERS];
    ngx_atomic_t                    nbackends;

    ngx_http_redisgate_backend_stats_t
                                    backends[NGX_HTTP_REDISGATE_STATS_BACKENDS];
} ngx_http_redisgate_stats_t;


static ngx_int_t ngx_http_redisgate_stats_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static ngx_uint_t ngx_http_redisgate_stats_status_index(ngx_uint_t status);


typedef struct {
    char                           *name;
    char                           *help;
    char                           *type;
} ngx_http_redisgate_backend_metric_t;


/* in the order of NGX_HTTP_REDISGATE_STAT_CONNECTIONS... */

static ngx_http_redisgate_backend_metric_t
    ngx_http_redisgate_backend_metrics[
                                   NGX_HTTP_REDISGATE_STAT_BACKEND_COUNTERS] =
{
    { "redisgate_backend_connections",
      "Open connections to a Redis, all workers.", "gauge" },

    { "redisgate_backend_in_flight",
      "Replies awaited from a Redis, all workers.", "gauge" },

    { "redisgate_backend_connects_total",
      "Connections opened to a Redis (reconnects included).", "counter" },

    { "redisgate_backend_connect_failures_total",
      "Connections to a Redis that failed or timed out.", "counter" },

    { "redisgate_backend_tls_handshakes_total",
      "TLS handshakes completed with a Redis.", "counter" },

    { "redisgate_backend_tls_handshake_failures_total",
      "TLS handshakes with a Redis that failed, or whose certificate was "
      "refused.", "counter" },

    { "redisgate_backend_tls_session_reuses_total",
      "TLS handshakes with a Redis that resumed a session.", "counter" },
};


static ngx_http_redisgate_stats_t  *ngx_http_redisgate_stats;
static ngx_slab_pool_t             *ngx_http_redisgate_stats_pool;

static char  *ngx_http_redisgate_stats_routes[] = {
    "none", "json", "pipeline", "multi-exec", "path"
};

static ngx_uint_t  ngx_http_redisgate_stats_statuses[] = {
    200, 400, 401, 403, 404, 405, 413, 429, 499, 500, 0
};

/* upper bounds in milliseconds; the last is +Inf */
static ngx_msec_t  ngx_http_redisgate_stats_bounds[] = {
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 0
};


ngx_int_t
ngx_http_redisgate_stats_add(ngx_conf_t *cf)
{
    ngx_str_t        name = ngx_string("redisgate_stats");
    ngx_shm_zone_t  *shm_zone;

    shm_zone = ngx_shared_memory_add(cf, &name,
                            2 * sizeof(ngx_http_redisgate_stats_t)
                            + 8 * ngx_pagesize,
                            &ngx_http_redisgate_module);
    if (shm_zone == NULL) {
        return NGX_ERROR;
    }

    shm_zone->init = ngx_http_redisgate_stats_init_zone;

    /* not NULL: what a reload hands to the next init as the old zone's */
    shm_zone->data = (void *) 1;

    return NGX_OK;
}


static ngx_int_t
ngx_http_redisgate_stats_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_slab_pool_t  *shpool;

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    ngx_http_redisgate_stats_pool = shpool;

    if (data || shm_zone->shm.exists) {
        /* a reload keeps the zone, and with it the numbers */
        ngx_http_redisgate_stats = shpool->data;
        return NGX_OK;
    }

    ngx_http_redisgate_stats = ngx_slab_calloc(shpool,
                                         sizeof(ngx_http_redisgate_stats_t));
    if (ngx_http_redisgate_stats == NULL) {
        return NGX_ERROR;
    }

    shpool->data = ngx_http_redisgate_stats;

    return NGX_OK;
}


/* one request done, in the log phase */

void
ngx_http_redisgate_stats_request(ngx_uint_t route, ngx_uint_t status,
    ngx_msec_t ms)
{
    ngx_uint_t                   i;
    ngx_http_redisgate_stats_t  *st;

    st = ngx_http_redisgate_stats;

    if (st == NULL || route >= NGX_HTTP_REDISGATE_STATS_ROUTES) {
        return;
    }

    (void) ngx_atomic_fetch_add(&st->requests[route][
                           ngx_http_redisgate_stats_status_index(status)], 1);

    for (i = 0; i < NGX_HTTP_REDISGATE_STATS_BUCKETS - 1; i++) {
        if (ms <= ngx_http_redisgate_stats_bounds[i]) {
            break;
        }
    }

    (void) ngx_atomic_fetch_add(&st->latency[i], 1);
    (void) ngx_atomic_fetch_add(&st->latency_ms, ms);
}


static ngx_uint_t
ngx_http_redisgate_stats_status_index(ngx_uint_t status)
{
    ngx_uint_t  i;

    for (i = 0; i < NGX_HTTP_REDISGATE_STATS_STATUSES - 1; i++) {
        if (ngx_http_redisgate_stats_statuses[i] == status) {
            return i;
        }
    }

    return i;
}


void
ngx_http_redisgate_stats_count(ngx_uint_t what, ngx_uint_t n)
{
    if (ngx_http_redisgate_stats) {
        (void) ngx_atomic_fetch_add(&ngx_http_redisgate_stats->counters[what],
                                    n);
    }
}


/* up or down: open streams, subscribed channels */

void
ngx_http_redisgate_stats_gauge(ngx_uint_t what, ngx_int_t n)
{
    if (ngx_http_redisgate_stats) {
        (void) ngx_atomic_fetch_add(&ngx_http_redisgate_stats->counters[what],
                                    (ngx_atomic_int_t) n);
    }
}


/* a backend's row, found by its URL (never holding a password) */

ngx_http_redisgate_backend_stats_t *
ngx_http_redisgate_stats_backend(ngx_str_t *url)
{
    size_t                               len;
    uint32_t                             hash;
    ngx_uint_t                           i, n;
    ngx_http_redisgate_stats_t          *st;
    ngx_http_redisgate_backend_stats_t  *bs;

    st = ngx_http_redisgate_stats;

    if (st == NULL) {
        return NULL;
    }

    len = ngx_min(url->len, NGX_HTTP_REDISGATE_STATS_URL_LEN);
    hash = ngx_crc32_short(url->data, len);

    ngx_shmtx_lock(&ngx_http_redisgate_stats_pool->mutex);

    n = st->nbackends;

    for (i = 0; i < n; i++) {
        bs = &st->backends[i];

        if (bs->hash == hash && bs->len == len
            && ngx_memcmp(bs->url, url->data, len) == 0)
        {
            ngx_shmtx_unlock(&ngx_http_redisgate_stats_pool->mutex);
            return bs;
        }
    }

    bs = NULL;

    if (n < NGX_HTTP_REDISGATE_STATS_BACKENDS) {
        bs = &st->backends[n];
        bs->hash = hash;
        bs->len = (u_char) len;
        ngx_memcpy(bs->url, url->data, len);

        /* readers take nbackends without the lock: the row is ready */
        ngx_memory_barrier();
        st->nbackends = n + 1;
    }

    ngx_shmtx_unlock(&ngx_http_redisgate_stats_pool->mutex);

    return bs;
}


void
ngx_http_redisgate_stats_backend_add(ngx_http_redisgate_backend_stats_t *bs,
    ngx_uint_t what, ngx_int_t n)
{
    if (bs) {
        (void) ngx_atomic_fetch_add(&bs->counters[what],
                                    (ngx_atomic_int_t) n);
    }
}


/* location with redisgate_status: the numbers, for Prometheus */

ngx_int_t
ngx_http_redisgate_status_handler(ngx_http_request_t *r)
{
    u_char                              *p, *last;
    size_t                               size;
    ngx_int_t                            rc;
    ngx_buf_t                           *b;
    ngx_uint_t                           i, j, k, n, hits, misses, evictions;
    ngx_chain_t                          out;
    ngx_atomic_uint_t                    count, cumulative;
    ngx_http_redisgate_stats_t          *st;
    ngx_http_redisgate_zone_t          **zones;
    ngx_http_redisgate_main_conf_t      *rmcf;
    ngx_http_redisgate_backend_stats_t  *bs;
    ngx_http_redisgate_backend_metric_t *m;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    st = ngx_http_redisgate_stats;
    rmcf = ngx_http_get_module_main_conf(r, ngx_http_redisgate_module);

    n = st->nbackends;
    zones = rmcf->zones.elts;

    size = 4096
           + NGX_HTTP_REDISGATE_STATS_ROUTES * NGX_HTTP_REDISGATE_STATS_STATUSES
             * (64 + NGX_ATOMIC_T_LEN)
           + NGX_HTTP_REDISGATE_STATS_BUCKETS * (64 + NGX_ATOMIC_T_LEN)
           + n * NGX_HTTP_REDISGATE_STAT_BACKEND_COUNTERS
               * (64 + NGX_HTTP_REDISGATE_STATS_URL_LEN
                      + NGX_ATOMIC_T_LEN);

    for (i = 0; i < rmcf->zones.nelts; i++) {
        size += 64 + zones[i]->shm_zone->shm.name.len + NGX_ATOMIC_T_LEN;
    }

    b = ngx_create_temp_buf(r->pool, size);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = b->last;
    last = b->end;

    p = ngx_slprintf(p, last,
                     "# HELP redisgate_requests_total HTTP requests RedisGate "
                     "answered, by route and status.\n"
                     "# TYPE redisgate_requests_total counter\n");

    for (i = 0; i < NGX_HTTP_REDISGATE_STATS_ROUTES; i++) {
        for (j = 0; j < NGX_HTTP_REDISGATE_STATS_STATUSES; j++) {
            count = st->requests[i][j];

            if (count == 0) {
                continue;
            }

            if (ngx_http_redisgate_stats_statuses[j]) {
                p = ngx_slprintf(p, last,
                                 "redisgate_requests_total{route=\"%s\","
                                 "status=\"%ui\"} %uA\n",
                                 ngx_http_redisgate_stats_routes[i],
                                 ngx_http_redisgate_stats_statuses[j],
                                 count);

            } else {
                p = ngx_slprintf(p, last,
                                 "redisgate_requests_total{route=\"%s\","
                                 "status=\"other\"} %uA\n",
                                 ngx_http_redisgate_stats_routes[i], count);
            }
        }
    }

    p = ngx_slprintf(p, last,
                     "# HELP redisgate_request_duration_seconds Time from "
                     "the request's start to its end.\n"
                     "# TYPE redisgate_request_duration_seconds histogram\n");

    cumulative = 0;

    for (i = 0; i < NGX_HTTP_REDISGATE_STATS_BUCKETS; i++) {
        cumulative += st->latency[i];

        if (ngx_http_redisgate_stats_bounds[i]) {
            p = ngx_slprintf(p, last,
                             "redisgate_request_duration_seconds_bucket"
                             "{le=\"%.3f\"} %uA\n",
                             (double) ngx_http_redisgate_stats_bounds[i]
                             / 1000, cumulative);

        } else {
            p = ngx_slprintf(p, last,
                             "redisgate_request_duration_seconds_bucket"
                             "{le=\"+Inf\"} %uA\n", cumulative);
        }
    }

    p = ngx_slprintf(p, last,
                     "redisgate_request_duration_seconds_sum %.3f\n"
                     "redisgate_request_duration_seconds_count %uA\n",
                     (double) st->latency_ms / 1000, cumulative);

    p = ngx_slprintf(p, last,
                     "# HELP redisgate_commands_total Redis commands sent.\n"
                     "# TYPE redisgate_commands_total counter\n"
                     "redisgate_commands_total %uA\n"
                     "# HELP redisgate_rate_limited_total Requests refused "
                     "by a plan's rate (429).\n"
                     "# TYPE redisgate_rate_limited_total counter\n"
                     "redisgate_rate_limited_total %uA\n"
                     "# HELP redisgate_keystore_queries_total Lookups sent "
                     "to the key store.\n"
                     "# TYPE redisgate_keystore_queries_total counter\n"
                     "redisgate_keystore_queries_total %uA\n"
                     "# HELP redisgate_keystore_errors_total Lookups the "
                     "key store failed.\n"
                     "# TYPE redisgate_keystore_errors_total counter\n"
                     "redisgate_keystore_errors_total %uA\n"
                     "# HELP redisgate_keystore_batches_total Round trips "
                     "that carried lookups to the key store.\n"
                     "# TYPE redisgate_keystore_batches_total counter\n"
                     "redisgate_keystore_batches_total %uA\n",
                     st->counters[NGX_HTTP_REDISGATE_STAT_COMMANDS],
                     st->counters[NGX_HTTP_REDISGATE_STAT_RATE_LIMITED],
                     st->counters[NGX_HTTP_REDISGATE_STAT_KEYSTORE_QUERIES],
                     st->counters[NGX_HTTP_REDISGATE_STAT_KEYSTORE_ERRORS],
                     st->counters[NGX_HTTP_REDISGATE_STAT_KEYSTORE_BATCHES]);

    p = ngx_slprintf(p, last,
                     "# HELP redisgate_streams Open /subscribe, "
                     "/psubscribe and /monitor streams.\n"
                     "# TYPE redisgate_streams gauge\n"
                     "redisgate_streams %A\n"
                     "# HELP redisgate_stream_channels Channels and "
                     "patterns the workers are subscribed to.\n"
                     "# TYPE redisgate_stream_channels gauge\n"
                     "redisgate_stream_channels %A\n"
                     "# HELP redisgate_stream_messages_total Events "
                     "written to streams.\n"
                     "# TYPE redisgate_stream_messages_total counter\n"
                     "redisgate_stream_messages_total %uA\n"
                     "# HELP redisgate_stream_drops_total Streams ended "
                     "because their client read too slowly.\n"
                     "# TYPE redisgate_stream_drops_total counter\n"
                     "redisgate_stream_drops_total %uA\n",
                     (ngx_atomic_int_t)
                         st->counters[NGX_HTTP_REDISGATE_STAT_STREAMS],
                     (ngx_atomic_int_t)
                         st->counters[NGX_HTTP_REDISGATE_STAT_CHANNELS],
                     st->counters[NGX_HTTP_REDISGATE_STAT_STREAM_MESSAGES],
                     st->counters[NGX_HTTP_REDISGATE_STAT_STREAM_DROPS]);

    if (rmcf->cache) {
        ngx_http_redisgate_cache_stats(rmcf->cache, &hits, &misses,
                                       &evictions);

        p = ngx_slprintf(p, last,
                         "# HELP redisgate_cache_hits_total Keys found "
                         "fresh in the key cache.\n"
                         "# TYPE redisgate_cache_hits_total counter\n"
                         "redisgate_cache_hits_total %ui\n"
                         "# HELP redisgate_cache_misses_total Keys not in "
                         "the key cache, or expired there.\n"
                         "# TYPE redisgate_cache_misses_total counter\n"
                         "redisgate_cache_misses_total %ui\n"
                         "# HELP redisgate_cache_evictions_total Keys "
                         "evicted from a full key cache.\n"
                         "# TYPE redisgate_cache_evictions_total counter\n"
                         "redisgate_cache_evictions_total %ui\n",
                         hits, misses, evictions);
    }

    p = ngx_slprintf(p, last,
                     "# HELP redisgate_zone_full_total Nodes a full shared "
                     "memory zone had no room for.\n"
                     "# TYPE redisgate_zone_full_total counter\n");

    for (i = 0; i < rmcf->zones.nelts; i++) {
        p = ngx_slprintf(p, last, "redisgate_zone_full_total{zone=\"%V\"} "
                         "%uA\n", &zones[i]->shm_zone->shm.name,
                         zones[i]->sh->full);
    }

    for (k = 0; k < NGX_HTTP_REDISGATE_STAT_BACKEND_COUNTERS; k++) {
        m = &ngx_http_redisgate_backend_metrics[k];

        p = ngx_slprintf(p, last, "# HELP %s %s\n# TYPE %s %s\n",
                         m->name, m->help, m->name, m->type);

        for (i = 0; i < n; i++) {
            bs = &st->backends[i];

            p = ngx_slprintf(p, last, "%s{backend=\"%*s\"} %uA\n",
                             m->name, (size_t) bs->len, bs->url,
                             bs->counters[k]);
        }
    }

    b->last = p;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = b->last - b->pos;
    ngx_str_set(&r->headers_out.content_type, "text/plain; version=0.0.4");
    r->headers_out.content_type_len = r->headers_out.content_type.len;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}
