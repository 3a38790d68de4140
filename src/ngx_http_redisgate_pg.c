
/*
 * Copyright (C) RedisGate authors
 */


/*
 * The key store: PostgreSQL through libpq on nginx's event loop.  Each
 * worker keeps a few connections for lookups (one round trip at a time on
 * each, more wait in a queue) and the first worker one more that LISTENs
 * for the key store's announcements and evicts from the shared cache.
 *
 * Lookups for the same (token hash, instance) share one lookup: requests
 * that miss the cache together wait on it.  The lookups queued in an
 * event-loop turn go out together, up to NGX_HTTP_REDISGATE_PG_BATCH on a
 * connection: with the default query as one redisgate.lookup_many()
 * statement, otherwise (an operator's redisgate_pg_query, the management
 * API's calls) as statements of their own in one libpq pipeline, a Sync
 * after each, so that each is its own transaction as if sent alone.
 * Nothing here blocks: PQconnectStart/PQconnectPoll, PQsendQueryParams,
 * PQconsumeInput.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <libpq-fe.h>

#include "ngx_http_redisgate.h"


#define NGX_HTTP_REDISGATE_PG_NONE        0
#define NGX_HTTP_REDISGATE_PG_CONNECTING  1
#define NGX_HTTP_REDISGATE_PG_IDLE        2
#define NGX_HTTP_REDISGATE_PG_BUSY        3

#define NGX_HTTP_REDISGATE_PG_MAX_QUEUED  1024

/*
 * The most lookups (or statements) in one round trip.  Bursts seldom fill
 * it: a round trip carries what the event-loop turns during the last one
 * queued, about 30 under a cold start from 256 connections.  It bounds a
 * backlog (a full queue goes out in 16 round trips), how long a batch's
 * first lookup waits for its last, and how many requests one failure
 * answers with 500; PostgreSQL's share of a round trip's fixed cost is a
 * few microseconds a lookup at 64, so more would gain little.
 */
#define NGX_HTTP_REDISGATE_PG_BATCH       64


typedef struct ngx_http_redisgate_pg_conn_s    ngx_http_redisgate_pg_conn_t;
typedef struct ngx_http_redisgate_pg_lookup_s  ngx_http_redisgate_pg_lookup_t;


struct ngx_http_redisgate_pg_conn_s {
    ngx_http_redisgate_pg_t         *pg;
    PGconn                          *conn;
    ngx_connection_t                *connection;
    ngx_event_t                      timer;      /* connect, query, retry */
    ngx_uint_t                       state;

    /* the round trip running: its jobs in the order sent, NULL answered */
    ngx_http_redisgate_pg_lookup_t  *jobs[NGX_HTTP_REDISGATE_PG_BATCH];
    ngx_uint_t                       njobs;
    ngx_uint_t                       nsynced;    /* a pipeline's, over */

    unsigned                         pipeline:1;
    unsigned                         ended:1;    /* a statement's results */
    unsigned                         listener:1;
    unsigned                         listening:1;

    /* the listener also writes (usage), one statement at a time */
    ngx_http_redisgate_pg_done_pt    write_done;
    void                            *write_data;
    ngx_int_t                        write_rc;
};


/*
 * A query waiting for a connection, or running: a key's lookup (shared by
 * the requests that need the same key), or a call (one caller's own
 * statement, the management API's)
 */

struct ngx_http_redisgate_pg_lookup_s {
    ngx_queue_t                      queue;      /* pg->lookups */
    ngx_queue_t                      waiters;
    u_char                           hash[32];
    u_char                           hash_hex[65];
    u_char                           instance[NGX_HTTP_REDISGATE_UUID_LEN + 1];
    ngx_atomic_uint_t                generation;  /* the cache's, at start */

    const char                      *query;
    int                              nvalues;
    const char                     **values;
    const char                      *params[2];  /* a lookup's */

    unsigned                         sent:1;
    unsigned                         call:1;
};


typedef struct {
    ngx_http_redisgate_wait_t        wait;       /* in lookup->waiters */
    ngx_http_redisgate_pg_handler_pt handler;    /* a lookup's */
    ngx_http_redisgate_pg_call_pt    call;       /* a call's */
    void                            *data;
} ngx_http_redisgate_pg_waiter_t;


struct ngx_http_redisgate_pg_s {
    ngx_str_t                        conninfo;   /* NUL-terminated */
    ngx_str_t                        query;      /* NUL-terminated */
    ngx_msec_t                       timeout;
    ngx_uint_t                       nconns;

    ngx_http_redisgate_cache_t      *cache;
    time_t                           ttl;
    time_t                           negative_ttl;
    time_t                           stale;

    /* per worker, from init_process on */
    ngx_http_redisgate_pg_conn_t    *conns;
    ngx_http_redisgate_pg_conn_t     listener;
    ngx_queue_t                      lookups;
    ngx_uint_t                       nlookups;
    ngx_http_redisgate_health_t      health;
    ngx_msec_t                       backoff_min;
    ngx_msec_t                       backoff_max;
    ngx_log_t                       *log;

    /* lookups go out from the event loop, never inside the caller */
    ngx_event_t                      dispatch;

    /* the default query's lookups go out as lookup_many() statements */
    unsigned                         many:1;
};


static void ngx_http_redisgate_pg_dispatch(ngx_http_redisgate_pg_t *pg);
static void ngx_http_redisgate_pg_dispatch_handler(ngx_event_t *ev);
static ngx_uint_t ngx_http_redisgate_pg_take(ngx_http_redisgate_pg_t *pg,
    ngx_http_redisgate_pg_conn_t *pc);
static ngx_int_t ngx_http_redisgate_pg_connect(
    ngx_http_redisgate_pg_conn_t *pc);
static void ngx_http_redisgate_pg_poll(ngx_http_redisgate_pg_conn_t *pc);
static ngx_int_t ngx_http_redisgate_pg_wrap(ngx_http_redisgate_pg_conn_t *pc);
static void ngx_http_redisgate_pg_unwrap(ngx_http_redisgate_pg_conn_t *pc);
static void ngx_http_redisgate_pg_close(ngx_http_redisgate_pg_conn_t *pc,
    const char *reason);
static void ngx_http_redisgate_pg_send(ngx_http_redisgate_pg_conn_t *pc);
static u_char *ngx_http_redisgate_pg_array(u_char *p,
    ngx_http_redisgate_pg_conn_t *pc, size_t offset, size_t len);
static void ngx_http_redisgate_pg_flush(ngx_http_redisgate_pg_conn_t *pc);
static void ngx_http_redisgate_pg_read(ngx_http_redisgate_pg_conn_t *pc);
static void ngx_http_redisgate_pg_lost(ngx_http_redisgate_pg_conn_t *pc);
static void ngx_http_redisgate_pg_over(ngx_http_redisgate_pg_conn_t *pc);
static void ngx_http_redisgate_pg_listener_result(
    ngx_http_redisgate_pg_conn_t *pc, PGresult *res);
static void ngx_http_redisgate_pg_answer(ngx_http_redisgate_pg_conn_t *pc,
    ngx_http_redisgate_pg_lookup_t *lk, PGresult *res);
static void ngx_http_redisgate_pg_many(ngx_http_redisgate_pg_conn_t *pc,
    PGresult *res);
static ngx_int_t ngx_http_redisgate_pg_no_many(
    ngx_http_redisgate_pg_conn_t *pc, PGresult *res);
static void ngx_http_redisgate_pg_found(ngx_http_redisgate_pg_conn_t *pc,
    ngx_http_redisgate_pg_lookup_t *lk, PGresult *res, int row);
static void ngx_http_redisgate_pg_fail(ngx_http_redisgate_pg_conn_t *pc,
    const char *error);
static void ngx_http_redisgate_pg_notifies(ngx_http_redisgate_pg_conn_t *pc);
static ngx_uint_t ngx_http_redisgate_pg_unavailable(
    ngx_http_redisgate_pg_conn_t *pc, PGresult *res);
static void ngx_http_redisgate_pg_value(PGresult *res, int row, int col,
    ngx_str_t *value);
static void ngx_http_redisgate_pg_finish(ngx_http_redisgate_pg_t *pg,
    ngx_http_redisgate_pg_lookup_t *lk, ngx_int_t rc,
    ngx_http_redisgate_keyinfo_t *ki, PGresult *res, const char *error);
static void ngx_http_redisgate_pg_down(ngx_http_redisgate_pg_t *pg,
    const char *what, const char *detail);
static void ngx_http_redisgate_pg_error(ngx_http_redisgate_pg_t *pg,
    const char *what, const char *detail);
static void ngx_http_redisgate_pg_notice(void *arg, const char *message);
static void ngx_http_redisgate_pg_write_over(ngx_http_redisgate_pg_conn_t *pc,
    ngx_int_t rc);
static void ngx_http_redisgate_pg_event_handler(ngx_event_t *ev);
static void ngx_http_redisgate_pg_timer_handler(ngx_event_t *ev);
static void ngx_http_redisgate_pg_want_write(ngx_http_redisgate_pg_conn_t *pc,
    ngx_uint_t want);


/* what clients are told when a lookup fails */
static const char  ngx_http_redisgate_pg_unavailable_text[] =
    "key store unavailable";
static const char  ngx_http_redisgate_pg_failed_text[] =
    "key store lookup failed";


static char  ngx_http_redisgate_pg_default_query[] =
    "SELECT key_id, organization_id, scopes, expires_at, "
    "organization_status, instance_status, redis_address, redis_db, "
    "redis_user, redis_password, requests_per_second, burst "
    "FROM redisgate.lookup($1, $2::uuid)";

/* the default query for a batch: $1 the hashes, $2 the instances */
static char  ngx_http_redisgate_pg_many_query[] =
    "SELECT key_id, organization_id, scopes, expires_at, "
    "organization_status, instance_status, redis_address, redis_db, "
    "redis_user, redis_password, requests_per_second, burst, pair "
    "FROM redisgate.lookup_many($1::text[], $2::uuid[])";

/* the column of lookup_many()'s "pair", after lookup()'s 12 */
#define NGX_HTTP_REDISGATE_PG_PAIR  12

/* an array's element: "{" or ",", a hash's 64 hex digits or a UUID */
#define NGX_HTTP_REDISGATE_PG_ARRAYS                                        \
    (NGX_HTTP_REDISGATE_PG_BATCH * (1 + 64 + 1 + NGX_HTTP_REDISGATE_UUID_LEN)\
     + 4)


/* nginx -t tells of a conninfo libpq cannot read */

ngx_int_t
ngx_http_redisgate_pg_check_conninfo(ngx_conf_t *cf, ngx_str_t *conninfo)
{
    char             *err, *s;
    PQconninfoOption *opts;

    s = ngx_pnalloc(cf->pool, conninfo->len + 1);
    if (s == NULL) {
        return NGX_ERROR;
    }

    *ngx_cpymem(s, conninfo->data, conninfo->len) = '\0';

    err = NULL;
    opts = PQconninfoParse(s, &err);

    if (opts == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid PostgreSQL connection string: %s",
                           err ? err : "out of memory");
        if (err) {
            PQfreemem(err);
        }

        return NGX_ERROR;
    }

    PQconninfoFree(opts);

    return NGX_OK;
}


ngx_http_redisgate_pg_t *
ngx_http_redisgate_pg_create(ngx_conf_t *cf, ngx_str_t *conninfo)
{
    ngx_http_redisgate_pg_t  *pg;

    pg = ngx_pcalloc(cf->pool, sizeof(ngx_http_redisgate_pg_t));
    if (pg == NULL) {
        return NULL;
    }

    pg->conninfo.len = conninfo->len;
    pg->conninfo.data = ngx_pnalloc(cf->pool, conninfo->len + 1);
    if (pg->conninfo.data == NULL) {
        return NULL;
    }

    *ngx_cpymem(pg->conninfo.data, conninfo->data, conninfo->len) = '\0';

    pg->query.data = (u_char *) ngx_http_redisgate_pg_default_query;
    pg->query.len = sizeof(ngx_http_redisgate_pg_default_query) - 1;

    pg->timeout = 5000;
    pg->nconns = 2;
    pg->many = 1;
    pg->ttl = 60;
    pg->negative_ttl = 5;
    pg->stale = 300;

    return pg;
}


void
ngx_http_redisgate_pg_set_connections(ngx_http_redisgate_pg_t *pg,
    ngx_uint_t n)
{
    pg->nconns = n;
}


ngx_int_t
ngx_http_redisgate_pg_set_query(ngx_conf_t *cf, ngx_http_redisgate_pg_t *pg,
    ngx_str_t *query)
{
    pg->query.len = query->len;
    pg->query.data = ngx_pnalloc(cf->pool, query->len + 1);
    if (pg->query.data == NULL) {
        return NGX_ERROR;
    }

    *ngx_cpymem(pg->query.data, query->data, query->len) = '\0';

    /* the operator's query goes out as is, one statement a lookup */
    pg->many = 0;

    return NGX_OK;
}


void
ngx_http_redisgate_pg_configure(ngx_http_redisgate_pg_t *pg,
    ngx_http_redisgate_main_conf_t *rmcf)
{
    pg->cache = rmcf->cache;
    pg->timeout = rmcf->pg_timeout;
    pg->ttl = rmcf->cache_ttl;
    pg->negative_ttl = rmcf->cache_negative_ttl;
    pg->stale = rmcf->cache_stale;
    pg->backoff_min = rmcf->backoff_min;
    pg->backoff_max = rmcf->backoff_max;
}


ngx_int_t
ngx_http_redisgate_pg_init_process(ngx_http_redisgate_pg_t *pg,
    ngx_cycle_t *cycle)
{
    ngx_uint_t                     i;
    ngx_http_redisgate_pg_conn_t  *pc;

    pg->log = cycle->log;

    ngx_http_redisgate_health_init(&pg->health, pg->backoff_min,
                                   pg->backoff_max,
                                   ngx_http_redisgate_pg_unavailable_text);

    ngx_queue_init(&pg->lookups);

    pg->dispatch.handler = ngx_http_redisgate_pg_dispatch_handler;
    pg->dispatch.data = pg;
    pg->dispatch.log = cycle->log;

    pg->conns = ngx_pcalloc(cycle->pool,
                          pg->nconns * sizeof(ngx_http_redisgate_pg_conn_t));
    if (pg->conns == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < pg->nconns; i++) {
        pc = &pg->conns[i];
        pc->pg = pg;
        pc->timer.handler = ngx_http_redisgate_pg_timer_handler;
        pc->timer.data = pc;
        pc->timer.log = cycle->log;
    }

    /*
     * one worker listens for what changed, for all (the cache is shared),
     * and writes what the workers counted
     */

    if (ngx_worker == 0) {
        pc = &pg->listener;
        pc->pg = pg;
        pc->listener = 1;
        pc->timer.handler = ngx_http_redisgate_pg_timer_handler;
        pc->timer.data = pc;
        pc->timer.log = cycle->log;
        pc->timer.cancelable = 1;

        ngx_add_timer(&pc->timer, 1);
    }

    return NGX_OK;
}


void
ngx_http_redisgate_pg_exit_process(ngx_http_redisgate_pg_t *pg)
{
    ngx_uint_t  i;

    if (pg->conns == NULL) {
        return;
    }

    if (pg->dispatch.posted) {
        ngx_delete_posted_event(&pg->dispatch);
    }

    for (i = 0; i < pg->nconns; i++) {
        ngx_http_redisgate_pg_close(&pg->conns[i], "nginx worker is exiting");
    }

    ngx_http_redisgate_pg_close(&pg->listener, "nginx worker is exiting");

    if (pg->listener.timer.timer_set) {
        ngx_del_timer(&pg->listener.timer);
    }
}


/*
 * NGX_AGAIN: handler(data, ...) is called later.  NGX_ERROR: the key store
 * cannot take it now (down or overloaded); the reason is in *error.
 */

ngx_int_t
ngx_http_redisgate_pg_lookup(ngx_http_redisgate_pg_t *pg,
    ngx_pool_t *pool, ngx_log_t *log, u_char *hash, u_char *instance,
    ngx_http_redisgate_pg_handler_pt handler, void *data,
    const char **error)
{
    ngx_queue_t                     *q;
    ngx_http_redisgate_pg_lookup_t  *lk;
    ngx_http_redisgate_pg_waiter_t  *w;

    lk = NULL;

    for (q = ngx_queue_head(&pg->lookups);
         q != ngx_queue_sentinel(&pg->lookups);
         q = ngx_queue_next(q))
    {
        lk = ngx_queue_data(q, ngx_http_redisgate_pg_lookup_t, queue);

        if (!lk->call && ngx_memcmp(lk->hash, hash, 32) == 0
            && ngx_memcmp(lk->instance, instance,
                          NGX_HTTP_REDISGATE_UUID_LEN) == 0)
        {
            break;
        }

        lk = NULL;
    }

    if (lk == NULL) {
        if (!ngx_http_redisgate_health_usable(&pg->health)) {
            *error = pg->health.error;
            return NGX_ERROR;
        }

        if (pg->nlookups >= NGX_HTTP_REDISGATE_PG_MAX_QUEUED) {
            *error = "key store is overloaded";
            return NGX_ERROR;
        }

        lk = ngx_calloc(sizeof(ngx_http_redisgate_pg_lookup_t), pg->log);
        if (lk == NULL) {
            *error = "out of memory";
            return NGX_ERROR;
        }

        ngx_memcpy(lk->hash, hash, 32);
        ngx_hex_dump(lk->hash_hex, hash, 32);
        ngx_memcpy(lk->instance, instance, NGX_HTTP_REDISGATE_UUID_LEN);

        lk->query = (const char *) pg->query.data;
        lk->params[0] = (const char *) lk->hash_hex;
        lk->params[1] = (const char *) lk->instance;
        lk->values = lk->params;
        lk->nvalues = 2;

        if (pg->cache) {
            lk->generation = ngx_http_redisgate_cache_generation(pg->cache);
        }

        ngx_queue_init(&lk->waiters);
        ngx_queue_insert_tail(&pg->lookups, &lk->queue);
        pg->nlookups++;

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, log, 0,
                       "redisgate: key store lookup for sha256 %*s...",
                       (size_t) 8, lk->hash_hex);

    } else {
        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, log, 0,
                       "redisgate: joining the key store lookup for "
                       "sha256 %*s...", (size_t) 8, lk->hash_hex);
    }

    /*
     * the waiter lives in pool (a request's, a stream's check): when that
     * goes first, the lookup goes on for the cache and the others
     */

    w = ngx_palloc(pool, sizeof(ngx_http_redisgate_pg_waiter_t));

    if (w == NULL
        || ngx_http_redisgate_wait(pool, &lk->waiters, &w->wait) != NGX_OK)
    {
        if (ngx_queue_empty(&lk->waiters) && !lk->sent) {
            ngx_queue_remove(&lk->queue);
            pg->nlookups--;
            ngx_free(lk);
        }

        *error = "out of memory";
        return NGX_ERROR;
    }

    w->handler = handler;
    w->data = data;

    /*
     * sent from the event loop, this turn: a failure found at once (no
     * connection to be had) reaches handler then, not before this returns;
     * and the lookups of one turn go out together
     */

    if (!pg->dispatch.posted) {
        ngx_post_event(&pg->dispatch, &ngx_posted_events);
    }

    return NGX_AGAIN;
}


static void
ngx_http_redisgate_pg_dispatch_handler(ngx_event_t *ev)
{
    ngx_http_redisgate_pg_dispatch(ev->data);
}


/* queued lookups to idle connections; connections opened as needed */

static void
ngx_http_redisgate_pg_dispatch(ngx_http_redisgate_pg_t *pg)
{
    ngx_uint_t                       i, pending, connecting;
    ngx_queue_t                     *q;
    ngx_http_redisgate_pg_conn_t    *pc;
    ngx_http_redisgate_pg_lookup_t  *lk;

again:

    for (i = 0; i < pg->nconns; i++) {
        pc = &pg->conns[i];

        if (pc->state != NGX_HTTP_REDISGATE_PG_IDLE) {
            continue;
        }

        if (ngx_http_redisgate_pg_take(pg, pc) == 0) {
            break;
        }

        ngx_http_redisgate_pg_send(pc);

        if (pc->state != NGX_HTTP_REDISGATE_PG_BUSY) {
            /* the send failed and closed the connection: its jobs are
             * answered (and freed), and their waiters may have changed
             * the queue; from the start, with the connections left */
            goto again;
        }
    }

    pending = 0;

    for (q = ngx_queue_head(&pg->lookups);
         q != ngx_queue_sentinel(&pg->lookups);
         q = ngx_queue_next(q))
    {
        lk = ngx_queue_data(q, ngx_http_redisgate_pg_lookup_t, queue);

        if (!lk->sent) {
            pending++;
        }
    }

    if (pending == 0) {
        return;
    }

    connecting = 0;

    for (i = 0; i < pg->nconns; i++) {
        if (pg->conns[i].state == NGX_HTTP_REDISGATE_PG_CONNECTING) {
            connecting++;
        }
    }

    /* a connection each for as many batches as wait */

    for (i = 0;
         i < pg->nconns && connecting * NGX_HTTP_REDISGATE_PG_BATCH < pending;
         i++)
    {
        pc = &pg->conns[i];

        if (pc->state != NGX_HTTP_REDISGATE_PG_NONE) {
            continue;
        }

        if (!ngx_http_redisgate_health_usable(&pg->health)) {
            break;
        }

        if (ngx_http_redisgate_pg_connect(pc) == NGX_OK) {
            connecting++;
        }
    }

    if (connecting == 0) {
        /* nothing will carry them: fail them now, not at a timeout */
        for (i = 0; i < pg->nconns; i++) {
            if (pg->conns[i].state == NGX_HTTP_REDISGATE_PG_BUSY) {
                return;
            }
        }

        while (!ngx_queue_empty(&pg->lookups)) {
            q = ngx_queue_head(&pg->lookups);
            lk = ngx_queue_data(q, ngx_http_redisgate_pg_lookup_t, queue);
            ngx_http_redisgate_pg_finish(pg, lk, NGX_ERROR, NULL, NULL,
                                      ngx_http_redisgate_pg_unavailable_text);
        }
    }
}


/*
 * The next round trip's jobs, in queue order: lookups for one
 * lookup_many(), or statements of their own (calls, and lookups by the
 * operator's query), never both in one
 */

static ngx_uint_t
ngx_http_redisgate_pg_take(ngx_http_redisgate_pg_t *pg,
    ngx_http_redisgate_pg_conn_t *pc)
{
    ngx_uint_t                       many, kind;
    ngx_queue_t                     *q, *next;
    ngx_http_redisgate_pg_lookup_t  *lk;

    pc->njobs = 0;
    many = 0;

    for (q = ngx_queue_head(&pg->lookups);
         q != ngx_queue_sentinel(&pg->lookups)
         && pc->njobs < NGX_HTTP_REDISGATE_PG_BATCH;
         q = next)
    {
        next = ngx_queue_next(q);
        lk = ngx_queue_data(q, ngx_http_redisgate_pg_lookup_t, queue);

        if (lk->sent) {
            continue;
        }

        if (lk->call && ngx_queue_empty(&lk->waiters)) {
            /* its caller left before it went out: it does not go */
            ngx_queue_remove(&lk->queue);
            pg->nlookups--;
            ngx_free(lk);
            continue;
        }

        kind = (pg->many && !lk->call);

        if (pc->njobs == 0) {
            many = kind;

        } else if (kind != many) {
            continue;
        }

        lk->sent = 1;
        pc->jobs[pc->njobs++] = lk;
    }

    pc->pipeline = !many;

    return pc->njobs;
}


static ngx_int_t
ngx_http_redisgate_pg_connect(ngx_http_redisgate_pg_conn_t *pc)
{
    ngx_http_redisgate_pg_t  *pg = pc->pg;

    pc->conn = PQconnectStart((const char *) pg->conninfo.data);

    if (pc->conn == NULL) {
        ngx_http_redisgate_pg_down(pg, "could not connect to the key store",
                                   "out of memory");
        return NGX_ERROR;
    }

    if (PQstatus(pc->conn) == CONNECTION_BAD) {
        ngx_http_redisgate_pg_down(pg, "could not connect to the key store",
                                   PQerrorMessage(pc->conn));
        PQfinish(pc->conn);
        pc->conn = NULL;
        return NGX_ERROR;
    }

    (void) PQsetnonblocking(pc->conn, 1);
    (void) PQsetNoticeProcessor(pc->conn, ngx_http_redisgate_pg_notice, pg);

    pc->state = NGX_HTTP_REDISGATE_PG_CONNECTING;
    pc->listening = 0;

    ngx_add_timer(&pc->timer, pg->timeout);

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, pg->log, 0,
                   "redisgate: connecting to the key store, pc:%p", pc);

    if (ngx_http_redisgate_pg_wrap(pc) != NGX_OK) {
        ngx_http_redisgate_pg_close(pc, "no free nginx connection");
        return NGX_ERROR;
    }

    /* before the first PQconnectPoll(), libpq waits for writability */
    ngx_http_redisgate_pg_want_write(pc, 1);

    return NGX_OK;
}


static void
ngx_http_redisgate_pg_poll(ngx_http_redisgate_pg_conn_t *pc)
{
    PostgresPollingStatusType  rc;

    rc = PQconnectPoll(pc->conn);

    if (rc == PGRES_POLLING_FAILED) {
        ngx_http_redisgate_pg_down(pc->pg,
                                   "could not connect to the key store",
                                   PQerrorMessage(pc->conn));
        ngx_http_redisgate_pg_close(pc, NULL);
        ngx_http_redisgate_pg_dispatch(pc->pg);
        return;
    }

    /* libpq may have moved to another socket (another address) */
    if (pc->connection->fd != PQsocket(pc->conn)) {
        ngx_http_redisgate_pg_unwrap(pc);

        if (PQsocket(pc->conn) < 0
            || ngx_http_redisgate_pg_wrap(pc) != NGX_OK)
        {
            ngx_http_redisgate_pg_down(pc->pg,
                                       "could not connect to the key store",
                                       "no usable socket");
            ngx_http_redisgate_pg_close(pc, NULL);
            ngx_http_redisgate_pg_dispatch(pc->pg);
            return;
        }
    }

    switch (rc) {

    case PGRES_POLLING_READING:
        ngx_http_redisgate_pg_want_write(pc, 0);
        return;

    case PGRES_POLLING_WRITING:
        ngx_http_redisgate_pg_want_write(pc, 1);
        return;

    default: /* PGRES_POLLING_OK */
        break;
    }

    if (pc->timer.timer_set) {
        ngx_del_timer(&pc->timer);
    }

    ngx_http_redisgate_pg_want_write(pc, 0);

    ngx_http_redisgate_health_up(&pc->pg->health);

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, pc->pg->log, 0,
                   "redisgate: connected to the key store, pc:%p", pc);

    if (pc->listener) {
        if (PQsendQuery(pc->conn, "LISTEN redisgate") == 0) {
            ngx_http_redisgate_pg_close(pc, PQerrorMessage(pc->conn));
            return;
        }

        pc->state = NGX_HTTP_REDISGATE_PG_BUSY;
        ngx_http_redisgate_pg_flush(pc);
        return;
    }

    pc->state = NGX_HTTP_REDISGATE_PG_IDLE;

    ngx_http_redisgate_pg_dispatch(pc->pg);
}


static ngx_int_t
ngx_http_redisgate_pg_wrap(ngx_http_redisgate_pg_conn_t *pc)
{
    ngx_connection_t  *c;

    c = ngx_http_redisgate_socket_wrap(PQsocket(pc->conn), pc,
                                       ngx_http_redisgate_pg_event_handler,
                                       ngx_http_redisgate_pg_event_handler,
                                       pc->pg->log);
    if (c == NULL) {
        return NGX_ERROR;
    }

    pc->connection = c;

    if (ngx_add_event(c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT) != NGX_OK) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* forget the nginx side of the socket; libpq owns and closes the fd */

static void
ngx_http_redisgate_pg_unwrap(ngx_http_redisgate_pg_conn_t *pc)
{
    if (pc->connection == NULL) {
        return;
    }

    /*
     * libpq closes the socket itself when the server goes away, or when it
     * moves to another address
     */
    ngx_http_redisgate_socket_release(pc->connection,
                                      pc->conn == NULL
                                      || PQsocket(pc->conn)
                                         != pc->connection->fd);

    pc->connection = NULL;
}


static void
ngx_http_redisgate_pg_want_write(ngx_http_redisgate_pg_conn_t *pc,
    ngx_uint_t want)
{
    ngx_event_t  *wev;

    wev = pc->connection->write;

    if (want && !wev->active) {
        (void) ngx_add_event(wev, NGX_WRITE_EVENT, NGX_LEVEL_EVENT);

    } else if (!want && wev->active) {
        (void) ngx_del_event(wev, NGX_WRITE_EVENT, 0);
    }
}


static void
ngx_http_redisgate_pg_close(ngx_http_redisgate_pg_conn_t *pc,
    const char *reason)
{
    if (pc->timer.timer_set && !pc->listener) {
        ngx_del_timer(&pc->timer);
    }

    if (pc->conn) {
        if (reason) {
            ngx_log_error(NGX_LOG_INFO, pc->pg->log, 0,
                          "redisgate: closing a key store connection: %s",
                          reason);
        }

        ngx_http_redisgate_pg_unwrap(pc);
        PQfinish(pc->conn);
        pc->conn = NULL;
    }

    pc->state = NGX_HTTP_REDISGATE_PG_NONE;
    pc->listening = 0;

    ngx_http_redisgate_pg_fail(pc, ngx_http_redisgate_pg_unavailable_text);

    if (pc->write_done) {
        ngx_http_redisgate_pg_write_over(pc, NGX_ERROR);
    }

    if (pc->listener && !ngx_exiting && !ngx_terminate) {
        /* listening is not request-driven: try again by itself */
        if (pc->timer.timer_set) {
            ngx_del_timer(&pc->timer);
        }

        ngx_add_timer(&pc->timer, pc->pg->health.backoff);
    }
}


/*
 * The jobs taken, in one round trip: one lookup_many() statement, or a
 * pipeline of statements with a Sync after each (their own transactions,
 * the same messages as one at a time, without the waits between them)
 */

static void
ngx_http_redisgate_pg_send(ngx_http_redisgate_pg_conn_t *pc)
{
    u_char                          *p;
    const char                      *values[2];
    ngx_uint_t                       i;
    ngx_http_redisgate_pg_lookup_t  *lk;

    /* libpq copies a statement's parameters into its output buffer */
    u_char                           arrays[NGX_HTTP_REDISGATE_PG_ARRAYS];

    /* busy from here: a failure below closes it, answering the jobs */
    pc->state = NGX_HTTP_REDISGATE_PG_BUSY;
    pc->nsynced = 0;
    pc->ended = 0;

    ngx_http_redisgate_stats_count(NGX_HTTP_REDISGATE_STAT_KEYSTORE_QUERIES,
                                   pc->njobs);
    ngx_http_redisgate_stats_count(NGX_HTTP_REDISGATE_STAT_KEYSTORE_BATCHES,
                                   1);

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, pc->pg->log, 0,
                   "redisgate: key store round trip of %ui %s, pc:%p",
                   pc->njobs, pc->pipeline ? "statements" : "lookups", pc);

    if (!pc->pipeline) {
        /* {hash,...} and {uuid,...}: hex digits and dashes, no quotes */
        values[0] = (const char *) arrays;
        p = ngx_http_redisgate_pg_array(arrays, pc,
                          offsetof(ngx_http_redisgate_pg_lookup_t, hash_hex),
                          64);
        values[1] = (const char *) p;
        (void) ngx_http_redisgate_pg_array(p, pc,
                          offsetof(ngx_http_redisgate_pg_lookup_t, instance),
                          NGX_HTTP_REDISGATE_UUID_LEN);

        if (PQsendQueryParams(pc->conn, ngx_http_redisgate_pg_many_query, 2,
                              NULL, values, NULL, NULL, 0)
            == 0)
        {
            goto failed;
        }

    } else {
        if (PQenterPipelineMode(pc->conn) == 0) {
            goto failed;
        }

        for (i = 0; i < pc->njobs; i++) {
            lk = pc->jobs[i];

            if (PQsendQueryParams(pc->conn, lk->query, lk->nvalues, NULL,
                                  lk->values, NULL, NULL, 0)
                == 0
                || PQpipelineSync(pc->conn) == 0)
            {
                goto failed;
            }
        }
    }

    ngx_add_timer(&pc->timer, pc->pg->timeout);

    ngx_http_redisgate_pg_flush(pc);

    return;

failed:

    ngx_http_redisgate_pg_error(pc->pg, "key store lookup failed",
                                PQerrorMessage(pc->conn));
    ngx_http_redisgate_pg_close(pc, NULL);
}


/* a text array of one field of the jobs, "{a,b,...}", NUL-terminated */

static u_char *
ngx_http_redisgate_pg_array(u_char *p, ngx_http_redisgate_pg_conn_t *pc,
    size_t offset, size_t len)
{
    ngx_uint_t  i;

    for (i = 0; i < pc->njobs; i++) {
        *p++ = i ? ',' : '{';
        p = ngx_cpymem(p, (u_char *) pc->jobs[i] + offset, len);
    }

    *p++ = '}';
    *p++ = '\0';

    return p;
}


static void
ngx_http_redisgate_pg_flush(ngx_http_redisgate_pg_conn_t *pc)
{
    int  rc;

    rc = PQflush(pc->conn);

    if (rc < 0) {
        ngx_http_redisgate_pg_error(pc->pg, "lost the key store connection",
                                    PQerrorMessage(pc->conn));
        ngx_http_redisgate_pg_close(pc, NULL);
        return;
    }

    ngx_http_redisgate_pg_want_write(pc, rc == 1);
}


static void
ngx_http_redisgate_pg_event_handler(ngx_event_t *ev)
{
    ngx_connection_t              *c = ev->data;
    ngx_http_redisgate_pg_conn_t  *pc = c->data;

    switch (pc->state) {

    case NGX_HTTP_REDISGATE_PG_CONNECTING:
        ngx_http_redisgate_pg_poll(pc);
        return;

    case NGX_HTTP_REDISGATE_PG_BUSY:
    case NGX_HTTP_REDISGATE_PG_IDLE:
        if (ev->write) {
            ngx_http_redisgate_pg_flush(pc);
            return;
        }

        ngx_http_redisgate_pg_read(pc);
        return;

    default:
        return;
    }
}


static void
ngx_http_redisgate_pg_read(ngx_http_redisgate_pg_conn_t *pc)
{
    PGresult                        *res;
    ngx_http_redisgate_pg_lookup_t  *lk;

    if (PQconsumeInput(pc->conn) == 0) {
        ngx_http_redisgate_pg_lost(pc);
        return;
    }

    if (pc->listener) {
        ngx_http_redisgate_pg_notifies(pc);
    }

    while (pc->conn && pc->state == NGX_HTTP_REDISGATE_PG_BUSY) {

        if (PQisBusy(pc->conn)) {
            return;
        }

        res = PQgetResult(pc->conn);

        if (res == NULL) {
            if (!pc->pipeline || pc->nsynced == pc->njobs) {
                ngx_http_redisgate_pg_over(pc);
                return;
            }

            /*
             * a statement's results are over, its Sync comes next; a
             * second end in a row: libpq lost the pipeline
             */

            if (pc->ended || PQstatus(pc->conn) == CONNECTION_BAD) {
                ngx_http_redisgate_pg_lost(pc);
                return;
            }

            pc->ended = 1;
            continue;
        }

        pc->ended = 0;

        if (PQresultStatus(res) == PGRES_PIPELINE_SYNC) {
            PQclear(res);

            if (++pc->nsynced < pc->njobs) {
                continue;
            }

            if (PQexitPipelineMode(pc->conn) == 0) {
                ngx_http_redisgate_pg_lost(pc);
                return;
            }

            ngx_http_redisgate_pg_over(pc);
            return;
        }

        if (pc->listener) {
            ngx_http_redisgate_pg_listener_result(pc, res);

        } else if (!pc->pipeline) {
            ngx_http_redisgate_pg_many(pc, res);

        } else if (pc->nsynced < pc->njobs && pc->jobs[pc->nsynced]) {
            /* the statement's first result answers it */
            lk = pc->jobs[pc->nsynced];
            pc->jobs[pc->nsynced] = NULL;

            ngx_http_redisgate_pg_answer(pc, lk, res);
        }

        PQclear(res);
    }
}


/* a connection libpq cannot go on with: its jobs fail, the others go on */

static void
ngx_http_redisgate_pg_lost(ngx_http_redisgate_pg_conn_t *pc)
{
    ngx_http_redisgate_pg_error(pc->pg, "lost the key store connection",
                                PQerrorMessage(pc->conn));
    ngx_http_redisgate_pg_close(pc, NULL);
    ngx_http_redisgate_pg_dispatch(pc->pg);
}


/* the round trip is over: the connection takes the next one */

static void
ngx_http_redisgate_pg_over(ngx_http_redisgate_pg_conn_t *pc)
{
    if (pc->timer.timer_set) {
        ngx_del_timer(&pc->timer);
    }

    pc->state = NGX_HTTP_REDISGATE_PG_IDLE;
    pc->listening = pc->listener;

    /*
     * every statement has answered its job by now (a job sent again, for
     * want of lookup_many(), is back in the queue); one left unanswered
     * would wait forever
     */
    ngx_http_redisgate_pg_fail(pc, ngx_http_redisgate_pg_failed_text);

    if (pc->write_done) {
        ngx_http_redisgate_pg_write_over(pc, pc->write_rc);
    }

    ngx_http_redisgate_pg_dispatch(pc->pg);
}


static void
ngx_http_redisgate_pg_listener_result(ngx_http_redisgate_pg_conn_t *pc,
    PGresult *res)
{
    char  *state;

    if (pc->write_done) {
        if (PQresultStatus(res) == PGRES_TUPLES_OK
            || PQresultStatus(res) == PGRES_COMMAND_OK)
        {
            pc->write_rc = NGX_OK;

        } else {
            ngx_log_error(NGX_LOG_ERR, pc->pg->log, 0,
                          "redisgate: writing to the key store failed: %s",
                          PQresultErrorMessage(res));

            /* SQLSTATE class 22, data exception: trying again cannot help */
            state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

            pc->write_rc = (state && state[0] == '2' && state[1] == '2')
                           ? NGX_DECLINED : NGX_ERROR;
        }

        return;
    }

    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        ngx_log_error(NGX_LOG_ERR, pc->pg->log, 0,
                      "redisgate: LISTEN failed: %s",
                      PQresultErrorMessage(res));
        return;
    }

    /* listening now: whatever changed while nobody listened expires */
    if (pc->pg->cache) {
        ngx_http_redisgate_cache_expire_all(pc->pg->cache);
    }
}


/* one statement's result to its job: a call's rows, a lookup's first row */

static void
ngx_http_redisgate_pg_answer(ngx_http_redisgate_pg_conn_t *pc,
    ngx_http_redisgate_pg_lookup_t *lk, PGresult *res)
{
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        ngx_http_redisgate_pg_error(pc->pg, lk->call
                                            ? "key store call failed"
                                            : "key store lookup failed",
                                    PQresultErrorMessage(res));

        ngx_http_redisgate_pg_finish(pc->pg, lk, NGX_ERROR, NULL, NULL,
                                 ngx_http_redisgate_pg_unavailable(pc, res)
                                 ? ngx_http_redisgate_pg_unavailable_text
                                 : ngx_http_redisgate_pg_failed_text);
        return;
    }

    if (lk->call) {
        /* the caller reads the rows itself */
        ngx_http_redisgate_pg_finish(pc->pg, lk, NGX_OK, NULL, res, NULL);
        return;
    }

    ngx_http_redisgate_pg_found(pc, lk, res, PQntuples(res) ? 0 : -1);
}


/*
 * lookup_many()'s rows to the lookups they answer ("pair": the position
 * in the batch, from 1); a lookup without a row has no live key.  A
 * failure fails them all, as it would fail each alone.
 */

static void
ngx_http_redisgate_pg_many(ngx_http_redisgate_pg_conn_t *pc, PGresult *res)
{
    int                              row, nrows;
    u_char                          *s;
    ngx_int_t                        n;
    ngx_uint_t                       i;
    ngx_http_redisgate_pg_lookup_t  *lk;

    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        if (ngx_http_redisgate_pg_no_many(pc, res) == NGX_OK) {
            return;
        }

        ngx_http_redisgate_pg_error(pc->pg, "key store lookup failed",
                                    PQresultErrorMessage(res));
        ngx_http_redisgate_pg_fail(pc,
                                   ngx_http_redisgate_pg_unavailable(pc, res)
                                   ? ngx_http_redisgate_pg_unavailable_text
                                   : ngx_http_redisgate_pg_failed_text);
        return;
    }

    nrows = PQntuples(res);

    if (nrows && PQnfields(res) <= NGX_HTTP_REDISGATE_PG_PAIR) {
        ngx_http_redisgate_pg_error(pc->pg, "key store lookup failed",
                                    "redisgate.lookup_many() returned "
                                    "no \"pair\" column");
        ngx_http_redisgate_pg_fail(pc, ngx_http_redisgate_pg_failed_text);
        return;
    }

    for (row = 0; row < nrows; row++) {
        s = (u_char *) PQgetvalue(res, row, NGX_HTTP_REDISGATE_PG_PAIR);
        n = ngx_atoi(s, ngx_strlen(s));

        /* a second row for a pair: the first counts, as with lookup() */
        if (n < 1 || (ngx_uint_t) n > pc->njobs || pc->jobs[n - 1] == NULL) {
            continue;
        }

        lk = pc->jobs[n - 1];
        pc->jobs[n - 1] = NULL;

        ngx_http_redisgate_pg_found(pc, lk, res, row);
    }

    for (i = 0; i < pc->njobs; i++) {
        lk = pc->jobs[i];

        if (lk) {
            pc->jobs[i] = NULL;
            ngx_http_redisgate_pg_found(pc, lk, res, -1);
        }
    }
}


/*
 * A key store whose schema predates lookup_many() (42883, undefined
 * function), or whose role may run lookup() only (42501): this worker
 * looks keys up with a lookup() each from now on, pipelined, and the
 * batch goes out again so.  Said once, as an error: the operator has a
 * schema to apply or a grant to give.
 */

static ngx_int_t
ngx_http_redisgate_pg_no_many(ngx_http_redisgate_pg_conn_t *pc,
    PGresult *res)
{
    char        *state;
    ngx_uint_t   i;

    state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

    if (state == NULL
        || (ngx_strcmp(state, "42883") != 0
            && ngx_strcmp(state, "42501") != 0))
    {
        return NGX_DECLINED;
    }

    if (pc->pg->many) {
        pc->pg->many = 0;

        ngx_http_redisgate_pg_error(pc->pg,
                           "redisgate.lookup_many() failed, this worker "
                           "looks keys up one at a time until nginx reloads "
                           "(apply sql/schema.sql, grant EXECUTE on it)",
                           PQresultErrorMessage(res));
    }

    for (i = 0; i < pc->njobs; i++) {
        if (pc->jobs[i]) {
            pc->jobs[i]->sent = 0;
            pc->jobs[i] = NULL;
        }
    }

    return NGX_OK;
}


/* a lookup's answer from row (-1: no row, an unknown key) */

static void
ngx_http_redisgate_pg_found(ngx_http_redisgate_pg_conn_t *pc,
    ngx_http_redisgate_pg_lookup_t *lk, PGresult *res, int row)
{
    u_char                        *s;
    ngx_int_t                      n;
    ngx_str_t                      scopes;
    ngx_http_redisgate_keyinfo_t   ki;

    ngx_memzero(&ki, sizeof(ngx_http_redisgate_keyinfo_t));

    if (row < 0) {
        ki.status = NGX_HTTP_REDISGATE_KEY_UNKNOWN;
        ngx_http_redisgate_pg_finish(pc->pg, lk, NGX_OK, &ki, NULL, NULL);
        return;
    }

    if (PQnfields(res) < 12) {
        ngx_http_redisgate_pg_error(pc->pg, "key store lookup failed",
                                    "the query returned fewer than 12 "
                                    "columns");
        ngx_http_redisgate_pg_finish(pc->pg, lk, NGX_ERROR, NULL, NULL,
                                     ngx_http_redisgate_pg_failed_text);
        return;
    }

    ngx_http_redisgate_pg_value(res, row, 0, &ki.key_id);
    ngx_http_redisgate_pg_value(res, row, 1, &ki.organization);
    ngx_http_redisgate_pg_value(res, row, 2, &scopes);
    ngx_http_redisgate_pg_value(res, row, 6, &ki.address);
    ngx_http_redisgate_pg_value(res, row, 8, &ki.user);
    ngx_http_redisgate_pg_value(res, row, 9, &ki.password);

    if (ngx_http_redisgate_parse_scopes(&scopes, &ki.scopes) != NGX_OK) {
        ngx_log_error(NGX_LOG_WARN, pc->pg->log, 0,
                      "redisgate: key \"%V\" has invalid scopes \"%V\" in "
                      "the key store, it may run nothing", &ki.key_id,
                      &scopes);
        ki.scopes = 0;
    }

    s = (u_char *) PQgetvalue(res, row, 3);
    n = ngx_atoi(s, ngx_strlen(s));

    if (n == NGX_ERROR && *s != '\0') {
        /* an expiry that cannot be read: the key is expired */
        ngx_log_error(NGX_LOG_WARN, pc->pg->log, 0,
                      "redisgate: key \"%V\" has an invalid expires_at "
                      "\"%s\" in the key store", &ki.key_id, s);
        n = 1;
    }

    ki.key_expires = (n > 0) ? (time_t) n : 0;

    s = (u_char *) PQgetvalue(res, row, 7);
    n = ngx_atoi(s, ngx_strlen(s));
    ki.db = (n > 0) ? (ngx_uint_t) n : 0;

    s = (u_char *) PQgetvalue(res, row, 10);
    n = ngx_atoi(s, ngx_strlen(s));
    ki.rate = (n > 0) ? (ngx_uint_t) n : 0;

    s = (u_char *) PQgetvalue(res, row, 11);
    n = ngx_atoi(s, ngx_strlen(s));
    ki.burst = (n > 0) ? (ngx_uint_t) n : 0;

    s = (u_char *) PQgetvalue(res, row, 4);

    if (ngx_strcmp(s, "active") != 0) {
        ki.status = NGX_HTTP_REDISGATE_KEY_ORG_SUSPENDED;

    } else if (PQgetisnull(res, row, 5)) {
        ki.status = NGX_HTTP_REDISGATE_KEY_NO_INSTANCE;

    } else if (ngx_strcmp(PQgetvalue(res, row, 5), "active") != 0) {
        ki.status = NGX_HTTP_REDISGATE_KEY_INSTANCE_SUSPENDED;

    } else {
        ki.status = NGX_HTTP_REDISGATE_KEY_OK;
    }

    ngx_http_redisgate_pg_finish(pc->pg, lk, NGX_OK, &ki, NULL, NULL);
}


/* the jobs of the round trip not answered yet, answered with error */

static void
ngx_http_redisgate_pg_fail(ngx_http_redisgate_pg_conn_t *pc,
    const char *error)
{
    ngx_uint_t                       i;
    ngx_http_redisgate_pg_lookup_t  *lk;

    for (i = 0; i < pc->njobs; i++) {
        lk = pc->jobs[i];

        if (lk) {
            pc->jobs[i] = NULL;
            ngx_http_redisgate_pg_finish(pc->pg, lk, NGX_ERROR, NULL, NULL,
                                         error);
        }
    }

    pc->njobs = 0;
}


/*
 * A server going away fails the query that runs, with no SQL error in it:
 * a lost connection, SQLSTATE class 08 (connection exception), 57
 * (operator intervention: shutdown, crash) or 53 (out of resources).
 */

static ngx_uint_t
ngx_http_redisgate_pg_unavailable(ngx_http_redisgate_pg_conn_t *pc,
    PGresult *res)
{
    char  *state;

    if (PQstatus(pc->conn) == CONNECTION_BAD) {
        return 1;
    }

    state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

    return state == NULL
           || (state[0] == '0' && state[1] == '8')
           || (state[0] == '5' && (state[1] == '7' || state[1] == '3'));
}


static void
ngx_http_redisgate_pg_value(PGresult *res, int row, int col,
    ngx_str_t *value)
{
    value->data = (u_char *) PQgetvalue(res, row, col);
    value->len = PQgetisnull(res, row, col) ? 0 : ngx_strlen(value->data);
}


/*
 * The answer to everyone waiting on it: a lookup's (ki) also to the cache;
 * a call's (res, valid while its caller runs) to its caller, if still there
 */

static void
ngx_http_redisgate_pg_finish(ngx_http_redisgate_pg_t *pg,
    ngx_http_redisgate_pg_lookup_t *lk, ngx_int_t rc,
    ngx_http_redisgate_keyinfo_t *ki, PGresult *res, const char *error)
{
    time_t                           ttl;
    ngx_queue_t                     *q;
    ngx_http_redisgate_pg_waiter_t  *w;

    ngx_queue_remove(&lk->queue);
    pg->nlookups--;

    if (rc != NGX_OK) {
        ngx_http_redisgate_stats_count(NGX_HTTP_REDISGATE_STAT_KEYSTORE_ERRORS,
                                       1);
    }

    /*
     * An announcement during the query may concern this answer: hand it
     * to those who asked, but do not cache it.
     */

    if (rc == NGX_OK && !lk->call && pg->cache) {
        ttl = (ki->status == NGX_HTTP_REDISGATE_KEY_UNKNOWN)
              ? pg->negative_ttl : pg->ttl;

        ngx_http_redisgate_cache_put(pg->cache, lk->hash, lk->instance, ki,
                             ttl,
                             ki->status == NGX_HTTP_REDISGATE_KEY_UNKNOWN
                             ? 0 : pg->stale, lk->generation);
    }

    while (!ngx_queue_empty(&lk->waiters)) {
        q = ngx_queue_head(&lk->waiters);
        w = ngx_queue_data(q, ngx_http_redisgate_pg_waiter_t, wait.queue);

        (void) ngx_http_redisgate_wait_done(&w->wait);

        /* may finalize the request, and with it w */
        if (lk->call) {
            w->call(w->data, rc, res, error);

        } else {
            w->handler(w->data, rc, ki, error);
        }
    }

    ngx_free(lk);
}


/*
 * A statement of the caller's own (the management API's): query with n
 * values (a value without data is SQL NULL), on the lookup connections,
 * in their queue.  NGX_AGAIN: handler(data, ...) is called from the event
 * loop later; NGX_ERROR: the key store cannot take it (*error why).
 */

ngx_int_t
ngx_http_redisgate_pg_call(ngx_http_redisgate_pg_t *pg, ngx_pool_t *pool,
    ngx_log_t *log, const char *query, ngx_uint_t n, ngx_str_t *values,
    ngx_http_redisgate_pg_call_pt handler, void *data, const char **error)
{
    u_char                          *p;
    size_t                           size;
    ngx_uint_t                       i;
    ngx_http_redisgate_pg_lookup_t  *lk;
    ngx_http_redisgate_pg_waiter_t  *w;

    if (!ngx_http_redisgate_health_usable(&pg->health)) {
        *error = pg->health.error;
        return NGX_ERROR;
    }

    if (pg->nlookups >= NGX_HTTP_REDISGATE_PG_MAX_QUEUED) {
        *error = "key store is overloaded";
        return NGX_ERROR;
    }

    /* the job, its values' pointers and the values, NUL-terminated */
    size = sizeof(ngx_http_redisgate_pg_lookup_t) + n * sizeof(char *);

    for (i = 0; i < n; i++) {
        size += values[i].len + 1;
    }

    lk = ngx_calloc(size, log);
    if (lk == NULL) {
        *error = "out of memory";
        return NGX_ERROR;
    }

    lk->call = 1;
    lk->query = query;
    lk->nvalues = (int) n;
    lk->values = (const char **) &lk[1];
    p = (u_char *) &lk->values[n];

    for (i = 0; i < n; i++) {
        if (values[i].data == NULL) {
            lk->values[i] = NULL;
            continue;
        }

        lk->values[i] = (const char *) p;
        p = ngx_cpymem(p, values[i].data, values[i].len);
        *p++ = '\0';
    }

    ngx_queue_init(&lk->waiters);

    w = ngx_palloc(pool, sizeof(ngx_http_redisgate_pg_waiter_t));

    if (w == NULL
        || ngx_http_redisgate_wait(pool, &lk->waiters, &w->wait) != NGX_OK)
    {
        ngx_free(lk);
        *error = "out of memory";
        return NGX_ERROR;
    }

    w->call = handler;
    w->handler = NULL;
    w->data = data;

    ngx_queue_insert_tail(&pg->lookups, &lk->queue);
    pg->nlookups++;

    if (!pg->dispatch.posted) {
        ngx_post_event(&pg->dispatch, &ngx_posted_events);
    }

    return NGX_AGAIN;
}


static void
ngx_http_redisgate_pg_notifies(ngx_http_redisgate_pg_conn_t *pc)
{
    ngx_str_t   what;
    PGnotify   *notify;

    while ((notify = PQnotifies(pc->conn)) != NULL) {
        what.data = (u_char *) notify->extra;
        what.len = ngx_strlen(what.data);

        /* the cache says what it did */
        if (pc->pg->cache) {
            ngx_http_redisgate_cache_evict(pc->pg->cache, &what, pc->pg->log);

        } else {
            ngx_log_error(NGX_LOG_INFO, pc->pg->log, 0,
                          "redisgate: key store changed \"%V\"", &what);
        }

        PQfreemem(notify);
    }
}


static void
ngx_http_redisgate_pg_timer_handler(ngx_event_t *ev)
{
    ngx_http_redisgate_pg_conn_t  *pc = ev->data;

    switch (pc->state) {

    case NGX_HTTP_REDISGATE_PG_NONE:
        /* the listener's retry */
        if (ngx_http_redisgate_pg_connect(pc) != NGX_OK && !pc->conn) {
            if (!pc->timer.timer_set && !ngx_exiting && !ngx_terminate) {
                ngx_add_timer(&pc->timer, pc->pg->health.backoff);
            }
        }

        return;

    case NGX_HTTP_REDISGATE_PG_CONNECTING:
        ngx_http_redisgate_pg_down(pc->pg,
                                   "timed out connecting to the key store",
                                   NULL);
        ngx_http_redisgate_pg_close(pc, NULL);
        ngx_http_redisgate_pg_dispatch(pc->pg);
        return;

    default:
        ngx_http_redisgate_pg_error(pc->pg, "key store timed out", NULL);
        ngx_http_redisgate_pg_close(pc, NULL);
        ngx_http_redisgate_pg_dispatch(pc->pg);
        return;
    }
}


static void
ngx_http_redisgate_pg_down(ngx_http_redisgate_pg_t *pg, const char *what,
    const char *detail)
{
    ngx_http_redisgate_pg_error(pg, what, detail);

    ngx_http_redisgate_health_down(&pg->health,
                                   ngx_http_redisgate_pg_unavailable_text);
}


/*
 * The detail (libpq's words) to the log; clients waiting on the key store
 * are told one of the fixed texts below, nothing of its insides.
 */

static void
ngx_http_redisgate_pg_error(ngx_http_redisgate_pg_t *pg, const char *what,
    const char *detail)
{
    u_char  *p, *last, text[256];

    last = text + sizeof(text);

    p = ngx_slprintf(text, last, "%s", what);

    if (detail) {
        /* libpq's first line; a hint follows on the next */
        p = ngx_slprintf(p, last, ": %*s",
                         (size_t) (ngx_strchr(detail, '\n')
                                   ? ngx_strchr(detail, '\n') - detail
                                   : (ngx_int_t) ngx_strlen(detail)),
                         detail);
    }

    while (p > text && p[-1] == ' ') {
        p--;
    }

    ngx_log_error(NGX_LOG_ERR, pg->log, 0, "redisgate: %*s",
                  (size_t) (p - text), text);
}


/*
 * A statement on the listening connection, for what the workers counted.
 * NGX_DECLINED: not now (not connected, or busy); done(data, rc) is called
 * once otherwise, rc NGX_OK, NGX_ERROR (try again later) or NGX_DECLINED
 * (the key store refused the data itself).
 */

ngx_int_t
ngx_http_redisgate_pg_write(ngx_http_redisgate_pg_t *pg, const char *query,
    int n, const char **values, ngx_http_redisgate_pg_done_pt done,
    void *data)
{
    ngx_http_redisgate_pg_conn_t  *pc;

    pc = &pg->listener;

    if (!pc->listener || pc->state != NGX_HTTP_REDISGATE_PG_IDLE
        || pc->write_done)
    {
        return NGX_DECLINED;
    }

    if (PQsendQueryParams(pc->conn, query, n, NULL, values, NULL, NULL, 0)
        == 0)
    {
        ngx_http_redisgate_pg_error(pg, "writing to the key store failed",
                                    PQerrorMessage(pc->conn));
        ngx_http_redisgate_pg_close(pc, NULL);
        return NGX_DECLINED;
    }

    pc->write_done = done;
    pc->write_data = data;
    pc->write_rc = NGX_ERROR;
    pc->state = NGX_HTTP_REDISGATE_PG_BUSY;

    if (pc->timer.timer_set) {
        ngx_del_timer(&pc->timer);
    }

    ngx_add_timer(&pc->timer, pg->timeout);

    ngx_http_redisgate_pg_flush(pc);

    return NGX_OK;
}


static void
ngx_http_redisgate_pg_write_over(ngx_http_redisgate_pg_conn_t *pc,
    ngx_int_t rc)
{
    void                           *data;
    ngx_http_redisgate_pg_done_pt   done;

    done = pc->write_done;
    data = pc->write_data;

    pc->write_done = NULL;
    pc->write_data = NULL;

    done(data, rc);
}


/* libpq's notices (a server shutting down...) as one line of the log */

static void
ngx_http_redisgate_pg_notice(void *arg, const char *message)
{
    ngx_http_redisgate_pg_t *pg = arg;

    size_t  len;

    len = ngx_strlen(message);

    while (len && (message[len - 1] == '\n' || message[len - 1] == ' ')) {
        len--;
    }

    ngx_log_error(NGX_LOG_INFO, pg->log, 0, "redisgate: key store says: %*s",
                  len, message);
}
