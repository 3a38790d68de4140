
/*
 * Copyright (C) RedisGate authors
 */


#ifndef _NGX_HTTP_REDISGATE_H_INCLUDED_
#define _NGX_HTTP_REDISGATE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <hiredis/hiredis.h>

#include "ngx_http_redisgate_commands.h"
#include "ngx_http_redisgate_parse.h"
#include "ngx_http_redisgate_transport.h"
#include "ngx_http_redisgate_stats.h"


#define NGX_HTTP_REDISGATE_SCOPE_READ    0x01
#define NGX_HTTP_REDISGATE_SCOPE_WRITE   0x02
#define NGX_HTTP_REDISGATE_SCOPE_ADMIN   0x04
/* the management API's; no data access, and data scopes do not imply it */
#define NGX_HTTP_REDISGATE_SCOPE_MANAGE  0x08

/* longest organization name: nginx.conf's; the key store's are UUIDs */
#define NGX_HTTP_REDISGATE_ORG_MAX       64

/* longest "command|subcommand" name the policy looks up */
#define NGX_HTTP_REDISGATE_NAME_MAX      64


typedef struct ngx_http_redisgate_backend_s  ngx_http_redisgate_backend_t;
typedef struct ngx_http_redisgate_conn_s     ngx_http_redisgate_conn_t;
typedef struct ngx_http_redisgate_op_s       ngx_http_redisgate_op_t;
typedef struct ngx_http_redisgate_bulk_s     ngx_http_redisgate_bulk_t;
typedef struct ngx_http_redisgate_cache_s    ngx_http_redisgate_cache_t;
typedef struct ngx_http_redisgate_pg_s       ngx_http_redisgate_pg_t;
typedef struct ngx_http_redisgate_limit_s    ngx_http_redisgate_limit_t;
typedef struct ngx_http_redisgate_usage_s    ngx_http_redisgate_usage_t;
typedef struct ngx_http_redisgate_sentinel_s ngx_http_redisgate_sentinel_t;
typedef struct ngx_http_redisgate_cluster_s  ngx_http_redisgate_cluster_t;
typedef struct ngx_http_redisgate_hub_s      ngx_http_redisgate_hub_t;
typedef struct ngx_http_redisgate_stream_s   ngx_http_redisgate_stream_t;


/* at the start of every zone's shared context */
typedef struct {
    ngx_rbtree_t                    rbtree;
    ngx_rbtree_node_t               sentinel;
    ngx_queue_t                     queue;      /* least recently used last */
    ngx_atomic_t                    evicted;    /* freed to make room */
    ngx_atomic_t                    full;       /* not made: no room */
    time_t                          alerted;    /* when said last */
} ngx_http_redisgate_tree_t;


typedef struct ngx_http_redisgate_zone_s  ngx_http_redisgate_zone_t;

/* orders two nodes of a tree that have the same hash */
typedef ngx_int_t (*ngx_http_redisgate_node_cmp_pt)(ngx_rbtree_node_t *one,
    ngx_rbtree_node_t *two);
/* how a key stands to a node of the same hash: < 0, 0 or > 0 */
typedef ngx_int_t (*ngx_http_redisgate_zone_cmp_pt)(void *key,
    ngx_rbtree_node_t *node);
/* writes a key into a new node, before the node goes into the tree */
typedef void (*ngx_http_redisgate_zone_set_pt)(ngx_rbtree_node_t *node,
    void *key);
/* a node nobody can use any more */
typedef ngx_uint_t (*ngx_http_redisgate_zone_expired_pt)(
    ngx_http_redisgate_zone_t *zone, ngx_rbtree_node_t *node);


/* one of the module's shared memory zones, as each worker sees it */
struct ngx_http_redisgate_zone_s {
    ngx_shm_zone_t                 *shm_zone;
    ngx_slab_pool_t                *shpool;
    ngx_http_redisgate_tree_t      *sh;         /* the zone's context */
    size_t                          sh_size;

    /* what the zone's nodes are: set by its room before zone_add() */
    ngx_rbtree_insert_pt            insert;
    ngx_http_redisgate_zone_cmp_pt  cmp;
    ngx_http_redisgate_zone_set_pt  set;
    ngx_http_redisgate_zone_expired_pt  expired;    /* NULL: never */
    size_t                          queue;      /* the queue link's offset */
    unsigned                        evict:1;    /* full: old nodes go */
    const char                     *what;       /* for the log */
    const char                     *full;       /* what a full zone costs */
};


/* what a rate limit decision tells the client, in RateLimit-* headers */
typedef struct {
    ngx_uint_t                      limit;
    ngx_uint_t                      remaining;
    time_t                          reset;
    time_t                          retry_after;
} ngx_http_redisgate_limit_state_t;


/* what the key store says of a token for an instance */
#define NGX_HTTP_REDISGATE_KEY_OK                  0
#define NGX_HTTP_REDISGATE_KEY_UNKNOWN             1   /* 401 */
#define NGX_HTTP_REDISGATE_KEY_NO_INSTANCE         2   /* 404 */
#define NGX_HTTP_REDISGATE_KEY_ORG_SUSPENDED       3
#define NGX_HTTP_REDISGATE_KEY_INSTANCE_SUSPENDED  4

typedef struct {
    ngx_uint_t                      status;
    ngx_str_t                       key_id;
    ngx_str_t                       organization;
    ngx_uint_t                      scopes;
    time_t                          key_expires;    /* 0: never */
    ngx_str_t                       address;        /* host:port or /path */
    ngx_uint_t                      db;
    ngx_str_t                       user;
    ngx_str_t                       password;
    ngx_uint_t                      rate;
    ngx_uint_t                      burst;
} ngx_http_redisgate_keyinfo_t;


typedef void (*ngx_http_redisgate_pg_handler_pt)(void *data, ngx_int_t rc,
    ngx_http_redisgate_keyinfo_t *ki, const char *error);
typedef void (*ngx_http_redisgate_pg_done_pt)(void *data, ngx_int_t rc);
/* a call's answer: res (libpq's PGresult, freed when this returns) with rc
 * NGX_OK, else the reason in error */
struct pg_result;
typedef void (*ngx_http_redisgate_pg_call_pt)(void *data, ngx_int_t rc,
    struct pg_result *res, const char *error);


/*
 * A backend's health: while down, requests fail fast with the reason
 * instead of queueing; each failed attempt doubles the wait before the
 * next, up to backoff_max.  Redis pools and the key store share it.
 */
typedef struct {
    ngx_msec_t                      backoff_min;
    ngx_msec_t                      backoff_max;
    ngx_msec_t                      backoff;    /* the next wait */
    ngx_msec_t                      down_until;
    const char                     *error;      /* for clients, fixed */
} ngx_http_redisgate_health_t;

#define ngx_http_redisgate_health_usable(h)                                  \
    ((ngx_msec_int_t) (ngx_current_msec - (h)->down_until) >= 0)

void ngx_http_redisgate_health_init(ngx_http_redisgate_health_t *h,
    ngx_msec_t backoff_min, ngx_msec_t backoff_max, const char *error);
void ngx_http_redisgate_health_down(ngx_http_redisgate_health_t *h,
    const char *error);
void ngx_http_redisgate_health_up(ngx_http_redisgate_health_t *h);


/* where one instance's Redis is: redis://, rediss://, unix://, the
 * primary of redis[s]-sentinel://, or redis[s]-cluster:// */
typedef struct {
    ngx_str_t                       url;        /* password masked */
    ngx_str_t                       host;       /* name or address */
    ngx_str_t                       user;
    ngx_str_t                       password;
    ngx_uint_t                      db;
    unsigned                        tls:1;
} ngx_http_redisgate_address_t;


/* one Redis server as seen by one worker: its pool of connections */
struct ngx_http_redisgate_backend_s {
    ngx_http_redisgate_address_t    address;
    ngx_http_redisgate_node_t       node;       /* where links connect */

    ngx_http_redisgate_conn_t      *conns;      /* pool_size slots */
    ngx_uint_t                      pool_size;

    ngx_http_redisgate_health_t     health;

    /* a host name, resolved by nginx's resolver when it has one */
    ngx_str_t                       resolve_name;
    in_port_t                       port;
    time_t                          resolved_until;
    time_t                          resolve_retry;
    ngx_resolver_ctx_t             *resolving;
    ngx_queue_t                     waiting;    /* requests until then */

    ngx_http_redisgate_sentinel_t  *sentinel;   /* names the address */
    ngx_http_redisgate_cluster_t   *cluster;    /* its primaries' pools */
    ngx_uint_t                      refs;       /* clusters that use it */
    ngx_http_redisgate_hub_t       *hub;        /* pub/sub, when listened */
    unsigned                        shared:1;   /* nginx.conf's instances */
    unsigned                        resolved:1; /* node has an address */
    unsigned                        resolve_error:1;
    unsigned                        resolve_starting:1;

    ngx_msec_t                      last_used;  /* for the idle sweep */

    ngx_log_t                      *log;
};


struct ngx_http_redisgate_conn_s {
    ngx_http_redisgate_backend_t   *backend;
    ngx_http_redisgate_link_t       link;
    ngx_event_t                     timer;      /* its ops' deadlines */
    unsigned                        retired:1;  /* closes once idle */
};


typedef struct {
    ngx_str_t                       id;         /* lower-case UUID */
    ngx_str_t                       organization;
    ngx_http_redisgate_backend_t   *backend;
} ngx_http_redisgate_instance_t;


typedef struct {
    u_char                          hash[32];   /* SHA-256 of the token */
    ngx_str_t                       id;
    ngx_str_t                       organization;
    ngx_uint_t                      scopes;
} ngx_http_redisgate_key_t;


typedef struct {
    ngx_array_t                     instances;  /* instance_t, sorted */
    ngx_array_t                     keys;       /* key_t, sorted by hash */
    ngx_array_t                     backends;   /* backend_t * */
    ngx_array_t                     manage_keys;    /* key_t: operators */
    ngx_array_t                     zones;      /* zone_t *: for metrics */

    ngx_msec_t                      connect_timeout;
    ngx_msec_t                      backoff_min;
    ngx_msec_t                      backoff_max;
    ngx_uint_t                      pool_size;
    ngx_msec_t                      idle_timeout;

    ngx_http_redisgate_pg_t        *pg;
    ngx_msec_t                      pg_timeout;
    ngx_flag_t                      pg_token_check;
    ngx_http_redisgate_cache_t     *cache;
    time_t                          cache_ttl;
    time_t                          cache_negative_ttl;
    time_t                          cache_stale;

    ngx_http_redisgate_limit_t     *limit;
    ngx_http_redisgate_usage_t     *usage;

    ngx_http_redisgate_tls_conf_t   tls_conf;   /* redisgate_ssl_* */
    ngx_http_redisgate_tls_t       *tls;        /* NULL: built without */
} ngx_http_redisgate_main_conf_t;


/* a command name (or "name|sub") and whether policy lets it run */
typedef struct {
    ngx_str_t                       name;
    ngx_uint_t                      deny;
} ngx_http_redisgate_rule_t;


typedef struct {
    ngx_uint_t                      skip;       /* segments before the id */
    ngx_msec_t                      timeout;
    ngx_uint_t                      max_commands;
    ngx_msec_t                      sse_heartbeat;
    size_t                          sse_buffer;
    ngx_flag_t                      monitor;    /* redisgate_monitor */

    ngx_array_t                    *deny;       /* of ngx_str_t, raw */
    ngx_array_t                    *allow;      /* of ngx_str_t, raw */
    ngx_array_t                    *rules;      /* rule_t, sorted */
    u_char                         *verdicts;   /* per command table entry */
} ngx_http_redisgate_loc_conf_t;


/* who called: the outcome of resolving a token for an instance */
typedef struct {
    ngx_str_t                       key_id;
    ngx_str_t                       organization;
    ngx_uint_t                      scopes;
    ngx_http_redisgate_backend_t   *backend;
    ngx_uint_t                      rate;       /* the plan's; 0: default */
    ngx_uint_t                      burst;
    const char                     *error;      /* why refused */
    ngx_uint_t                      source;     /* SOURCE_* */
    u_char                          hash[32];   /* the token's SHA-256 */
    time_t                          expires;    /* the key's; 0: never */
} ngx_http_redisgate_auth_t;


/* where a key was found, for $redisgate_cache */
#define NGX_HTTP_REDISGATE_SOURCE_NONE    0
#define NGX_HTTP_REDISGATE_SOURCE_STATIC  1
#define NGX_HTTP_REDISGATE_SOURCE_HIT     2
#define NGX_HTTP_REDISGATE_SOURCE_MISS    3
#define NGX_HTTP_REDISGATE_SOURCE_STALE   4


/* wait.c: a request waiting on what may outlive it (see the file) */
typedef struct {
    ngx_queue_t                     queue;
    ngx_pool_cleanup_t             *cleanup;    /* NULL: over, or left */
} ngx_http_redisgate_wait_t;

#define ngx_http_redisgate_waiting(w)  ((w)->cleanup != NULL)

ngx_int_t ngx_http_redisgate_wait(ngx_pool_t *pool, ngx_queue_t *queue,
    ngx_http_redisgate_wait_t *w);
ngx_int_t ngx_http_redisgate_wait_done(ngx_http_redisgate_wait_t *w);


/* a request waiting for something its backend needs, to try again */
typedef void (*ngx_http_redisgate_retry_pt)(ngx_http_request_t *r);


/* the outcome of an asynchronous resolve: NGX_OK or an HTTP status */
typedef void (*ngx_http_redisgate_resolved_pt)(ngx_http_request_t *r,
    ngx_int_t rc);

/* the outcome of a rate limit that asked its store: NGX_OK or NGX_BUSY */
typedef void (*ngx_http_redisgate_limited_pt)(ngx_http_request_t *r,
    ngx_int_t rc);


/* called for each reply in order, then once with reply == NULL and
 * done == 1; reply == NULL before that means the connection failed */
typedef void (*ngx_http_redisgate_reply_pt)(void *data, redisReply *reply,
    const char *error);

/*
 * The last command's reply in pieces when it is a large bulk string (see
 * transport.h's ngx_http_redisgate_link_bulk_pt); the reply handler then
 * gets &ngx_http_redisgate_link_streamed.  NGX_AGAIN: hold the connection
 * until ngx_http_redisgate_redis_resume(op).  p == NULL and left < 0: the
 * request was too slow to read it and is cut from it (the rest is read
 * and dropped), so that the replies behind it on the connection go on.
 */
typedef ngx_int_t (*ngx_http_redisgate_bulk_pt)(void *data,
    ngx_http_redisgate_op_t *op, u_char *p, size_t n, off_t left);


/* one request's state, from route to reply */

typedef struct {
    ngx_http_request_t             *request;
    ngx_http_redisgate_route_t      route;

    ngx_http_redisgate_cmd_t       *cmds;
    ngx_uint_t                      ncmds;
    u_char                         *map;        /* per command: as object */

    ngx_http_redisgate_auth_t       auth;

    ngx_str_t                      *resp;       /* RESP commands to send */
    ngx_uint_t                      nresp;

    ngx_uint_t                      encoding;   /* ENC_BASE64 */
    ngx_uint_t                      replies;    /* received so far */
    ngx_uint_t                      status;
    const char                     *error;      /* Redis unreachable */
    redisReply                     *queue_error;

    ngx_chain_t                    *out;
    ngx_chain_t                   **last;
    ngx_buf_t                      *out_buf;    /* being filled */
    off_t                           length;

    ngx_http_redisgate_limit_state_t  limit;
    void                           *lease;      /* limit.c's, with a store */
    ngx_http_redisgate_stream_t    *stream;     /* a subscription's */
    ngx_http_redisgate_bulk_t      *bulk;       /* a large reply streamed */

    ngx_msec_t                      redis_start;
    ngx_msec_t                      redis_time;

    unsigned                        resp2:1;
    unsigned                        hash_object:1;
    unsigned                        limited:1;  /* limit is filled */
    unsigned                        rate_refused:1;
    unsigned                        redis_done:1;
} ngx_http_redisgate_ctx_t;


extern ngx_module_t  ngx_http_redisgate_module;


/* redis.c: pools and pipelining over the transport's links */
ngx_int_t ngx_http_redisgate_redis_send(ngx_http_redisgate_backend_t *backend,
    ngx_http_request_t *r, ngx_str_t *cmds, ngx_uint_t n, ngx_msec_t timeout,
    ngx_http_redisgate_reply_pt handler, ngx_http_redisgate_bulk_pt bulk,
    void *data, const char **error);
void ngx_http_redisgate_redis_resume(ngx_http_redisgate_op_t *op);
void ngx_http_redisgate_redis_exit_process(void);
ngx_int_t ngx_http_redisgate_redis_init_backend(
    ngx_http_redisgate_backend_t *backend,
    ngx_http_redisgate_main_conf_t *rmcf, ngx_cycle_t *cycle);
void ngx_http_redisgate_redis_init_conns(
    ngx_http_redisgate_backend_t *backend,
    ngx_http_redisgate_main_conf_t *rmcf);
ngx_uint_t ngx_http_redisgate_redis_busy(ngx_http_redisgate_backend_t *backend);
void ngx_http_redisgate_redis_retire(ngx_http_redisgate_backend_t *backend);
void ngx_http_redisgate_redis_close_backend(
    ngx_http_redisgate_backend_t *backend);

/* backend.c: backends the key store names at run time */
ngx_int_t ngx_http_redisgate_backend_init_process(
    ngx_http_redisgate_main_conf_t *rmcf, ngx_cycle_t *cycle);
void ngx_http_redisgate_backend_exit_process(void);
ngx_http_redisgate_backend_t *ngx_http_redisgate_backend_get(
    ngx_http_redisgate_keyinfo_t *ki, ngx_pool_t *pool, const char **error);
ngx_int_t ngx_http_redisgate_backend_ready(ngx_http_redisgate_backend_t *b,
    ngx_http_request_t *r, ngx_http_redisgate_retry_pt retry,
    const char **error);
ngx_int_t ngx_http_redisgate_backend_send(ngx_http_redisgate_backend_t *b,
    ngx_http_request_t *r, ngx_http_redisgate_cmd_t *cmds, ngx_str_t *resp,
    ngx_uint_t n, ngx_uint_t multi, ngx_msec_t timeout,
    ngx_http_redisgate_reply_pt handler, ngx_http_redisgate_bulk_pt bulk,
    void *data, const char **error);
void ngx_http_redisgate_backend_wake(ngx_http_redisgate_backend_t *b);
void ngx_http_redisgate_backend_move(ngx_http_redisgate_backend_t *b,
    ngx_sockaddr_t *sa, socklen_t socklen);

/* ask.c: one of several nodes asked a question, in turn */

typedef struct ngx_http_redisgate_ask_s  ngx_http_redisgate_ask_t;

/* NGX_OK: the answer is taken; NGX_DECLINED: the next node (logged why) */
typedef ngx_int_t (*ngx_http_redisgate_ask_answer_pt)(
    ngx_http_redisgate_ask_t *ask, redisReply *reply);
/* every node was asked, none answered */
typedef void (*ngx_http_redisgate_ask_over_pt)(ngx_http_redisgate_ask_t *ask);

struct ngx_http_redisgate_ask_s {
    ngx_http_redisgate_node_t      *nodes;
    ngx_uint_t                      nnodes;
    ngx_str_t                       user;       /* AUTH first when set */
    ngx_str_t                       password;
    ngx_str_t                      *argv;       /* the question */
    ngx_uint_t                      argc;
    ngx_http_redisgate_ask_answer_pt  answer;
    ngx_http_redisgate_ask_over_pt    over;
    void                           *data;       /* the owner's */
    ngx_msec_t                      timeout;    /* for an answer */
    ngx_log_t                      *log;

    ngx_http_redisgate_link_t       link;
    ngx_event_t                     deadline;
    ngx_event_t                     step;       /* the next node */
    ngx_http_redisgate_node_t      *node;       /* asked, or answered */
    ngx_uint_t                      next;
    ngx_uint_t                      asked;      /* in this round */
    unsigned                        asking:1;
    unsigned                        answered:1; /* this node, this round */
    unsigned                        auth_failed:1;  /* in this round */
};

ngx_http_redisgate_node_t *ngx_http_redisgate_ask_nodes(ngx_pool_t *pool,
    ngx_str_t *hosts, in_port_t port, ngx_uint_t resolve, const char *what,
    ngx_uint_t *n, const char **error);
void ngx_http_redisgate_ask_init(ngx_http_redisgate_ask_t *ask);
void ngx_http_redisgate_ask_start(ngx_http_redisgate_ask_t *ask);
void ngx_http_redisgate_ask_close(ngx_http_redisgate_ask_t *ask);
ngx_int_t ngx_http_redisgate_ask_send(ngx_http_redisgate_link_t *link,
    ngx_str_t *user, ngx_str_t *password, ngx_str_t *argv, ngx_uint_t argc,
    ngx_http_redisgate_link_reply_pt handler, void *data);

/* cluster.c: the slot map of a Redis Cluster */
ngx_http_redisgate_cluster_t *ngx_http_redisgate_cluster_create(
    ngx_pool_t *pool, ngx_http_redisgate_url_t *u, ngx_uint_t resolve,
    const char **error);
ngx_http_redisgate_cluster_t *ngx_http_redisgate_cluster_create_dynamic(
    ngx_str_t *address, ngx_uint_t db, ngx_log_t *log, const char **error);
void ngx_http_redisgate_cluster_destroy(ngx_http_redisgate_cluster_t *cl);
void ngx_http_redisgate_cluster_init(ngx_http_redisgate_backend_t *b,
    ngx_http_redisgate_main_conf_t *rmcf);
void ngx_http_redisgate_cluster_close(ngx_http_redisgate_backend_t *b);
ngx_int_t ngx_http_redisgate_cluster_ready(ngx_http_redisgate_backend_t *b,
    const char **error);
void ngx_http_redisgate_cluster_stale(ngx_http_redisgate_cluster_t *cl);
ngx_http_redisgate_backend_t *ngx_http_redisgate_cluster_node(
    ngx_http_redisgate_cluster_t *cl, ngx_uint_t slot);
ngx_http_redisgate_backend_t **ngx_http_redisgate_cluster_nodes(
    ngx_http_redisgate_cluster_t *cl, ngx_uint_t *n);
ngx_http_redisgate_backend_t *ngx_http_redisgate_cluster_at(
    ngx_http_redisgate_cluster_t *cl, u_char *addr, size_t len);
void ngx_http_redisgate_cluster_moved(ngx_http_redisgate_cluster_t *cl,
    ngx_uint_t slot, ngx_http_redisgate_backend_t *node);

/* scatter.c: a request's commands to a cluster's nodes, and back */
ngx_int_t ngx_http_redisgate_scatter(ngx_http_redisgate_backend_t *b,
    ngx_http_request_t *r, ngx_http_redisgate_cmd_t *cmds, ngx_str_t *resp,
    ngx_uint_t n, ngx_uint_t multi, ngx_msec_t timeout,
    ngx_http_redisgate_reply_pt handler, void *data, const char **error);

/* pubsub.c and stream.c: subscriptions, fanned out, as Server-Sent Events */

/* one channel (or pattern) a stream listens to */
typedef struct {
    ngx_queue_t                     queue;      /* in its channel's */
    void                           *channel;    /* the hub's; NULL: none */
    ngx_http_redisgate_stream_t    *stream;
    ngx_str_t                       name;       /* in the request */
    unsigned                        active:1;   /* its subscribe line sent */
    unsigned                        monitor:1;  /* MONITOR's, not a channel */
} ngx_http_redisgate_listener_t;

ngx_int_t ngx_http_redisgate_pubsub_listen(ngx_http_redisgate_backend_t *b,
    ngx_http_redisgate_listener_t *l, ngx_str_t *name, ngx_uint_t pattern,
    ngx_msec_t timeout, ngx_log_t *log, const char **error);
ngx_int_t ngx_http_redisgate_pubsub_monitor(ngx_http_redisgate_backend_t *b,
    ngx_http_redisgate_listener_t *l, ngx_log_t *log, const char **error);
void ngx_http_redisgate_pubsub_leave(ngx_http_redisgate_listener_t *l);
void ngx_http_redisgate_pubsub_close(ngx_http_redisgate_backend_t *b);
ngx_uint_t ngx_http_redisgate_pubsub_busy(ngx_http_redisgate_backend_t *b);

/* what a stream is, from its route */
#define NGX_HTTP_REDISGATE_STREAM_SUBSCRIBE   1
#define NGX_HTTP_REDISGATE_STREAM_PSUBSCRIBE  2
#define NGX_HTTP_REDISGATE_STREAM_MONITOR     3

ngx_uint_t ngx_http_redisgate_stream_kind(ngx_http_redisgate_ctx_t *ctx);
ngx_int_t ngx_http_redisgate_stream_start(ngx_http_request_t *r,
    ngx_http_redisgate_ctx_t *ctx);
void ngx_http_redisgate_stream_subscribed(ngx_http_redisgate_listener_t *l);
ngx_int_t ngx_http_redisgate_stream_line(ngx_str_t *line, ngx_str_t *part,
    ngx_uint_t n, ngx_log_t *log);
void ngx_http_redisgate_stream_message(ngx_http_redisgate_listener_t *l,
    ngx_str_t *line);
void ngx_http_redisgate_stream_lost(ngx_http_redisgate_stream_t *s,
    const char *error);

/* recheck.c: keys that streams hold, looked up again when they change */
typedef struct ngx_http_redisgate_watch_s  ngx_http_redisgate_watch_t;

typedef void (*ngx_http_redisgate_revoked_pt)(void *data, const char *error);

typedef struct {
    ngx_queue_t                     queue;      /* in its watch's */
    ngx_http_redisgate_watch_t     *watch;      /* NULL: holds nothing */
    ngx_uint_t                      scope;      /* the one it needs */
    ngx_http_redisgate_revoked_pt   revoked;
    void                           *data;
} ngx_http_redisgate_holder_t;

ngx_int_t ngx_http_redisgate_recheck_hold(ngx_http_redisgate_holder_t *h,
    ngx_http_redisgate_auth_t *auth, u_char *instance, ngx_log_t *log);
void ngx_http_redisgate_recheck_release(ngx_http_redisgate_holder_t *h);

/* sentinel.c: the primary the sentinels name */
ngx_http_redisgate_sentinel_t *ngx_http_redisgate_sentinel_create(
    ngx_pool_t *pool, ngx_http_redisgate_url_t *u, ngx_uint_t resolve,
    const char **error);
ngx_http_redisgate_sentinel_t *ngx_http_redisgate_sentinel_create_dynamic(
    ngx_str_t *address, ngx_log_t *log, const char **error);
void ngx_http_redisgate_sentinel_destroy(ngx_http_redisgate_sentinel_t *s);
ngx_uint_t ngx_http_redisgate_sentinel_same(ngx_http_redisgate_sentinel_t *one,
    ngx_http_redisgate_sentinel_t *two);
void ngx_http_redisgate_sentinel_init(ngx_http_redisgate_backend_t *b,
    ngx_http_redisgate_main_conf_t *rmcf);
void ngx_http_redisgate_sentinel_close(ngx_http_redisgate_backend_t *b);
ngx_int_t ngx_http_redisgate_sentinel_ready(ngx_http_redisgate_backend_t *b,
    const char **error);
void ngx_http_redisgate_sentinel_stale(ngx_http_redisgate_backend_t *b);

/* static.c: instances and keys defined in nginx.conf */
char *ngx_http_redisgate_instance(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_redisgate_key(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
ngx_int_t ngx_http_redisgate_static_init(ngx_conf_t *cf,
    ngx_http_redisgate_main_conf_t *rmcf);
ngx_http_redisgate_backend_t *ngx_http_redisgate_static_backend(
    ngx_conf_t *cf, ngx_http_redisgate_main_conf_t *rmcf, ngx_str_t *url,
    ngx_uint_t share);

/* auth.c: token + instance -> organization, scopes, backend */
void ngx_http_redisgate_auth_exit_process(void);
ngx_int_t ngx_http_redisgate_keyinfo_refused(ngx_http_redisgate_keyinfo_t *ki,
    const char **error);
ngx_int_t ngx_http_redisgate_token_hash(ngx_str_t *token, u_char *hash);
ngx_int_t ngx_http_redisgate_resolve(ngx_http_request_t *r, ngx_str_t *token,
    ngx_str_t *instance, ngx_http_redisgate_auth_t *auth,
    ngx_http_redisgate_resolved_pt done);

/* policy.c: deny lists and scopes */
ngx_int_t ngx_http_redisgate_policy_merge(ngx_conf_t *cf,
    ngx_http_redisgate_loc_conf_t *prev, ngx_http_redisgate_loc_conf_t *conf);
ngx_int_t ngx_http_redisgate_policy_check(ngx_http_redisgate_loc_conf_t *rlcf,
    ngx_http_redisgate_cmd_t *cmd, ngx_uint_t scopes, ngx_str_t *reason,
    ngx_uint_t *map_reply, ngx_uint_t *by_name);
ngx_int_t ngx_http_redisgate_policy_check_db(ngx_http_redisgate_cmd_t *cmd,
    ngx_uint_t db, ngx_str_t *other);

ngx_int_t ngx_http_redisgate_key_hash(ngx_conf_t *cf, ngx_str_t *value,
    u_char *hash);
ngx_int_t ngx_http_redisgate_hex_decode(u_char *dst, u_char *src,
    size_t len);
ngx_int_t ngx_http_redisgate_parse_scopes(ngx_str_t *value,
    ngx_uint_t *scopes);
ngx_http_redisgate_instance_t *ngx_http_redisgate_static_instance(
    ngx_http_redisgate_main_conf_t *rmcf, u_char *id);
ngx_http_redisgate_key_t *ngx_http_redisgate_static_key(
    ngx_http_redisgate_main_conf_t *rmcf, u_char *hash);

/* socket.c: nginx connections around libpq's sockets */
ngx_connection_t *ngx_http_redisgate_socket_wrap(ngx_socket_t fd, void *data,
    ngx_event_handler_pt read, ngx_event_handler_pt write, ngx_log_t *log);
void ngx_http_redisgate_socket_release(ngx_connection_t *c,
    ngx_uint_t closed);

/* zone.c: shared memory zones; all but zone_add() under the zone's mutex */
ngx_int_t ngx_http_redisgate_zone_add(ngx_conf_t *cf,
    ngx_http_redisgate_zone_t *zone, ngx_str_t *name, size_t size);
ngx_rbtree_node_t *ngx_http_redisgate_zone_find(
    ngx_http_redisgate_zone_t *zone, ngx_rbtree_key_t hash, void *key);
ngx_rbtree_node_t *ngx_http_redisgate_zone_insert(
    ngx_http_redisgate_zone_t *zone, ngx_rbtree_key_t hash, void *key,
    size_t size);
void ngx_http_redisgate_zone_touch(ngx_http_redisgate_zone_t *zone,
    ngx_rbtree_node_t *node);
void ngx_http_redisgate_zone_delete(ngx_http_redisgate_zone_t *zone,
    ngx_rbtree_node_t *node);
void ngx_http_redisgate_zone_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel,
    ngx_http_redisgate_node_cmp_pt cmp);

/* cache.c: the shared-memory key cache */
ngx_http_redisgate_cache_t *ngx_http_redisgate_cache_add(ngx_conf_t *cf,
    ngx_str_t *name, size_t size);
ngx_int_t ngx_http_redisgate_cache_get(ngx_http_redisgate_cache_t *cache,
    u_char *hash, u_char *instance, ngx_http_redisgate_keyinfo_t *ki,
    ngx_pool_t *pool);
void ngx_http_redisgate_cache_put(ngx_http_redisgate_cache_t *cache,
    u_char *hash, u_char *instance, ngx_http_redisgate_keyinfo_t *ki,
    time_t ttl, time_t stale, ngx_atomic_uint_t generation);
void ngx_http_redisgate_cache_evict(ngx_http_redisgate_cache_t *cache,
    ngx_str_t *what, ngx_log_t *log);
void ngx_http_redisgate_cache_expire_all(ngx_http_redisgate_cache_t *cache);
void ngx_http_redisgate_cache_count_hit(ngx_http_redisgate_cache_t *cache);
ngx_atomic_uint_t ngx_http_redisgate_cache_generation(
    ngx_http_redisgate_cache_t *cache);
void ngx_http_redisgate_cache_stats(ngx_http_redisgate_cache_t *cache,
    ngx_uint_t *hits, ngx_uint_t *misses, ngx_uint_t *evictions);

/* limit.c: plans' rates, per organization */

/* how long a request waits for the rate limit store before this server
 * counts instead */
#define NGX_HTTP_REDISGATE_LIMIT_STORE_TIMEOUT  1000
ngx_http_redisgate_limit_t *ngx_http_redisgate_limit_add(ngx_conf_t *cf,
    ngx_str_t *name, size_t size, ngx_uint_t rate, ngx_uint_t burst,
    ngx_uint_t nodes);
void ngx_http_redisgate_limit_set_store(ngx_http_redisgate_limit_t *limit,
    ngx_http_redisgate_backend_t *store, ngx_msec_t timeout);
ngx_int_t ngx_http_redisgate_limit_take(ngx_http_redisgate_limit_t *limit,
    ngx_http_request_t *r, ngx_str_t *org, ngx_uint_t rate, ngx_uint_t burst,
    ngx_uint_t cost, ngx_http_redisgate_limit_state_t *state,
    ngx_http_redisgate_limited_pt done);
void ngx_http_redisgate_limit_peek(ngx_http_redisgate_limit_t *limit,
    ngx_str_t *org, ngx_uint_t rate, ngx_uint_t burst,
    ngx_http_redisgate_limit_state_t *state);

/* usage.c: what each organization used, to the key store */
ngx_http_redisgate_usage_t *ngx_http_redisgate_usage_add(ngx_conf_t *cf,
    ngx_str_t *name, size_t size, ngx_msec_t interval);
ngx_int_t ngx_http_redisgate_usage_init_process(
    ngx_http_redisgate_usage_t *usage, ngx_http_redisgate_pg_t *pg,
    ngx_cycle_t *cycle);
void ngx_http_redisgate_usage_exit_process(ngx_http_redisgate_usage_t *usage);
void ngx_http_redisgate_usage_record(ngx_http_redisgate_usage_t *usage,
    ngx_str_t *org, ngx_str_t *instance, ngx_str_t *key_id,
    ngx_uint_t requests, ngx_uint_t commands, off_t bytes_in,
    off_t bytes_out);

/* pg.c: the PostgreSQL key store */
ngx_int_t ngx_http_redisgate_pg_check_conninfo(ngx_conf_t *cf,
    ngx_str_t *conninfo);
ngx_http_redisgate_pg_t *ngx_http_redisgate_pg_create(ngx_conf_t *cf,
    ngx_str_t *conninfo);
void ngx_http_redisgate_pg_set_connections(ngx_http_redisgate_pg_t *pg,
    ngx_uint_t n);
ngx_int_t ngx_http_redisgate_pg_set_query(ngx_conf_t *cf,
    ngx_http_redisgate_pg_t *pg, ngx_str_t *query);
void ngx_http_redisgate_pg_configure(ngx_http_redisgate_pg_t *pg,
    ngx_http_redisgate_main_conf_t *rmcf);
ngx_int_t ngx_http_redisgate_pg_init_process(ngx_http_redisgate_pg_t *pg,
    ngx_cycle_t *cycle);
void ngx_http_redisgate_pg_exit_process(ngx_http_redisgate_pg_t *pg);
ngx_int_t ngx_http_redisgate_pg_write(ngx_http_redisgate_pg_t *pg,
    const char *query, int n, const char **values,
    ngx_http_redisgate_pg_done_pt done, void *data);
ngx_int_t ngx_http_redisgate_pg_call(ngx_http_redisgate_pg_t *pg,
    ngx_pool_t *pool, ngx_log_t *log, const char *query, ngx_uint_t n,
    ngx_str_t *values, ngx_http_redisgate_pg_call_pt handler, void *data,
    const char **error);
ngx_int_t ngx_http_redisgate_pg_lookup(ngx_http_redisgate_pg_t *pg,
    ngx_pool_t *pool, ngx_log_t *log, u_char *hash, u_char *instance,
    ngx_http_redisgate_pg_handler_pt handler, void *data,
    const char **error);

/* variables.c */
ngx_int_t ngx_http_redisgate_add_variables(ngx_conf_t *cf);
ngx_int_t ngx_http_redisgate_redact(ngx_pool_t *pool, ngx_str_t *src,
    ngx_str_t *dst);
ngx_int_t ngx_http_redisgate_redact_handler(ngx_http_request_t *r);

/* handler.c */
void *ngx_http_redisgate_palloc(void *pool, size_t size);
ngx_int_t ngx_http_redisgate_log_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_redisgate_handler(ngx_http_request_t *r);
void ngx_http_redisgate_wait_client(ngx_http_request_t *r);
ngx_int_t ngx_http_redisgate_body_bytes(ngx_http_request_t *r,
    ngx_str_t *body);
ngx_int_t ngx_http_redisgate_add_header(ngx_http_request_t *r, char *name,
    u_char *value, size_t len);
ngx_int_t ngx_http_redisgate_send_header(ngx_http_request_t *r,
    ngx_uint_t status, off_t length, ngx_uint_t raw);

/* bulk.c: a large value streamed to the client */
ngx_int_t ngx_http_redisgate_bulk_piece(void *data,
    ngx_http_redisgate_op_t *op, u_char *p, size_t n, off_t left);
void ngx_http_redisgate_bulk_replied(ngx_http_redisgate_ctx_t *ctx,
    const char *error);
ngx_int_t ngx_http_redisgate_bulk_finish(ngx_http_request_t *r,
    ngx_http_redisgate_ctx_t *ctx);

/* manage.c: the management API (redisgate_manage) */
ngx_int_t ngx_http_redisgate_manage_handler(ngx_http_request_t *r);
char *ngx_http_redisgate_manage(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_redisgate_manage_key(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
void ngx_http_redisgate_resume(ngx_http_request_t *r, ngx_int_t rc);
ngx_int_t ngx_http_redisgate_send_error(ngx_http_request_t *r,
    ngx_uint_t status, const char *fmt, ...);


#endif /* _NGX_HTTP_REDISGATE_H_INCLUDED_ */
