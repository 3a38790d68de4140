
/*
 * Copyright (C) RedisGate authors
 */


#ifndef _NGX_HTTP_REDISGATE_H_INCLUDED_
#define _NGX_HTTP_REDISGATE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <hiredis/hiredis.h>
#include <hiredis/async.h>

#include "ngx_http_redisgate_commands.h"
#include "ngx_http_redisgate_parse.h"


#define NGX_HTTP_REDISGATE_SCOPE_READ    0x01
#define NGX_HTTP_REDISGATE_SCOPE_WRITE   0x02
#define NGX_HTTP_REDISGATE_SCOPE_ADMIN   0x04

/* longest "command|subcommand" name the policy looks up */
#define NGX_HTTP_REDISGATE_NAME_MAX      64


typedef struct ngx_http_redisgate_backend_s  ngx_http_redisgate_backend_t;
typedef struct ngx_http_redisgate_conn_s     ngx_http_redisgate_conn_t;
typedef struct ngx_http_redisgate_op_s       ngx_http_redisgate_op_t;


/* where one instance's Redis is, parsed from redis:// or unix:// */
typedef struct {
    ngx_str_t                       url;        /* password masked */
    ngx_str_t                       host;       /* numeric address */
    in_port_t                       port;
    ngx_str_t                       path;       /* unix socket */
    ngx_str_t                       user;
    ngx_str_t                       password;
    ngx_uint_t                      db;
} ngx_http_redisgate_address_t;


/* one Redis server as seen by one worker: its pool of connections */
struct ngx_http_redisgate_backend_s {
    ngx_http_redisgate_address_t    address;

    ngx_http_redisgate_conn_t      *conns;      /* pool_size slots */
    ngx_uint_t                      pool_size;
    ngx_msec_t                      connect_timeout;
    ngx_msec_t                      backoff_min;
    ngx_msec_t                      backoff_max;

    ngx_msec_t                      backoff;    /* current reconnect delay */
    ngx_msec_t                      down_until; /* fail fast until then */
    u_char                          error[128]; /* why it is down */

    ngx_log_t                      *log;
};


struct ngx_http_redisgate_conn_s {
    ngx_http_redisgate_backend_t   *backend;
    redisAsyncContext              *ac;
    ngx_connection_t               *connection;
    ngx_event_t                     connect_timer;
    ngx_uint_t                      pending;    /* replies awaited */
    const char                     *drop_reason;
    unsigned                        connected:1;
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

    ngx_msec_t                      connect_timeout;
    ngx_msec_t                      backoff_min;
    ngx_msec_t                      backoff_max;
    ngx_uint_t                      pool_size;
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

    ngx_array_t                    *deny;       /* of ngx_str_t, raw */
    ngx_array_t                    *allow;      /* of ngx_str_t, raw */
    ngx_array_t                    *rules;      /* rule_t, sorted */
} ngx_http_redisgate_loc_conf_t;


/* who called: the outcome of resolving a token for an instance */
typedef struct {
    ngx_str_t                       key_id;
    ngx_str_t                       organization;
    ngx_uint_t                      scopes;
    ngx_http_redisgate_backend_t   *backend;
} ngx_http_redisgate_auth_t;


/* called for each reply in order, then once with reply == NULL and
 * done == 1; reply == NULL before that means the connection failed */
typedef void (*ngx_http_redisgate_reply_pt)(void *data, redisReply *reply,
    const char *error);


extern ngx_module_t  ngx_http_redisgate_module;


/* redis.c: pools, pipelining, the hiredis adapter */
ngx_int_t ngx_http_redisgate_redis_send(ngx_http_redisgate_backend_t *backend,
    ngx_http_request_t *r, ngx_str_t *cmds, ngx_uint_t n, ngx_msec_t timeout,
    ngx_http_redisgate_reply_pt handler, void *data, const char **error);
ngx_int_t ngx_http_redisgate_redis_init_backend(
    ngx_http_redisgate_backend_t *backend, ngx_pool_t *pool);
void ngx_http_redisgate_redis_close_backend(
    ngx_http_redisgate_backend_t *backend);

/* static.c: instances and keys defined in nginx.conf */
char *ngx_http_redisgate_instance(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_redisgate_key(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
ngx_int_t ngx_http_redisgate_static_init(ngx_conf_t *cf,
    ngx_http_redisgate_main_conf_t *rmcf);

/* auth.c: token + instance -> organization, scopes, backend */
ngx_int_t ngx_http_redisgate_resolve(ngx_http_request_t *r, ngx_str_t *token,
    ngx_str_t *instance, ngx_http_redisgate_auth_t *auth);

/* policy.c: deny lists and scopes */
ngx_int_t ngx_http_redisgate_policy_merge(ngx_conf_t *cf,
    ngx_http_redisgate_loc_conf_t *prev, ngx_http_redisgate_loc_conf_t *conf);
ngx_int_t ngx_http_redisgate_policy_check(ngx_http_redisgate_loc_conf_t *rlcf,
    ngx_http_redisgate_cmd_t *cmd, ngx_uint_t scopes, ngx_str_t *reason,
    ngx_uint_t *map_reply);

ngx_http_redisgate_instance_t *ngx_http_redisgate_static_instance(
    ngx_http_redisgate_main_conf_t *rmcf, u_char *id);
ngx_http_redisgate_key_t *ngx_http_redisgate_static_key(
    ngx_http_redisgate_main_conf_t *rmcf, u_char *hash);

/* handler.c */
void *ngx_http_redisgate_palloc(void *pool, size_t size);
ngx_int_t ngx_http_redisgate_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_redisgate_send_error(ngx_http_request_t *r,
    ngx_uint_t status, const char *fmt, ...);


#endif /* _NGX_HTTP_REDISGATE_H_INCLUDED_ */
