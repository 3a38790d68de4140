
/*
 * Copyright (C) RedisGate authors
 */


/*
 * RedisGate: Redis over HTTP, in the Upstash REST format, served inside
 * nginx's event loop.  This file is the module's face: directives,
 * configuration and process hooks.  The work is in src/.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_redisgate.h"


static ngx_int_t ngx_http_redisgate_preconfiguration(ngx_conf_t *cf);
static ngx_int_t ngx_http_redisgate_postconfiguration(ngx_conf_t *cf);
static void *ngx_http_redisgate_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_redisgate_init_main_conf(ngx_conf_t *cf, void *conf);
static void *ngx_http_redisgate_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_redisgate_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_redisgate(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_redisgate_status(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_redisgate_command_list(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_redisgate_backoff(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_redisgate_pg(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_redisgate_pg_query(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_redisgate_cache(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_redisgate_limit(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_redisgate_usage(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_redisgate_zone(ngx_conf_t *cf, ngx_str_t *value,
    ngx_str_t *name, ssize_t *size);
#if (NGX_SSL)
static char *ngx_http_redisgate_ssl_password_file(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
#endif
static ngx_int_t ngx_http_redisgate_init_process(ngx_cycle_t *cycle);
static void ngx_http_redisgate_exit_process(ngx_cycle_t *cycle);


extern time_t  ngx_http_redisgate_worker_start;


static ngx_conf_num_bounds_t  ngx_http_redisgate_pool_size_bounds = {
    ngx_conf_check_num_bounds, 1, 64
};


#if (NGX_SSL)

static ngx_conf_bitmask_t  ngx_http_redisgate_ssl_protocols[] = {
    { ngx_string("SSLv2"), NGX_SSL_SSLv2 },
    { ngx_string("SSLv3"), NGX_SSL_SSLv3 },
    { ngx_string("TLSv1"), NGX_SSL_TLSv1 },
    { ngx_string("TLSv1.1"), NGX_SSL_TLSv1_1 },
    { ngx_string("TLSv1.2"), NGX_SSL_TLSv1_2 },
    { ngx_string("TLSv1.3"), NGX_SSL_TLSv1_3 },
    { ngx_null_string, 0 }
};

#define ngx_http_redisgate_tls_offset(field)                                 \
    (offsetof(ngx_http_redisgate_main_conf_t, tls_conf)                      \
     + offsetof(ngx_http_redisgate_tls_conf_t, field))

#endif


static ngx_command_t  ngx_http_redisgate_commands[] = {

    { ngx_string("redisgate"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_redisgate,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("redisgate_status"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_redisgate_status,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("redisgate_manage"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_redisgate_manage,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("redisgate_manage_key"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE12,
      ngx_http_redisgate_manage_key,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("redisgate_instance"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE23,
      ngx_http_redisgate_instance,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("redisgate_key"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_redisgate_key,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("redisgate_connect_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_redisgate_main_conf_t, connect_timeout),
      NULL },

    { ngx_string("redisgate_reconnect_backoff"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE2,
      ngx_http_redisgate_backoff,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("redisgate_pool_size"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_redisgate_main_conf_t, pool_size),
      &ngx_http_redisgate_pool_size_bounds },

    { ngx_string("redisgate_idle_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_redisgate_main_conf_t, idle_timeout),
      NULL },

    { ngx_string("redisgate_pg"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE12,
      ngx_http_redisgate_pg,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("redisgate_pg_query"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_redisgate_pg_query,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("redisgate_pg_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_redisgate_main_conf_t, pg_timeout),
      NULL },

    { ngx_string("redisgate_pg_token_check"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_redisgate_main_conf_t, pg_token_check),
      NULL },

    { ngx_string("redisgate_cache"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_redisgate_cache,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("redisgate_limit"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_redisgate_limit,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("redisgate_usage"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE12,
      ngx_http_redisgate_usage,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

#if (NGX_SSL)

    { ngx_string("redisgate_ssl_trusted_certificate"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      ngx_http_redisgate_tls_offset(trusted_certificate),
      NULL },

    { ngx_string("redisgate_ssl_verify"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      ngx_http_redisgate_tls_offset(verify),
      NULL },

    { ngx_string("redisgate_ssl_verify_depth"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      ngx_http_redisgate_tls_offset(verify_depth),
      NULL },

    { ngx_string("redisgate_ssl_server_name"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      ngx_http_redisgate_tls_offset(server_name),
      NULL },

    { ngx_string("redisgate_ssl_name"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      ngx_http_redisgate_tls_offset(name),
      NULL },

    { ngx_string("redisgate_ssl_certificate"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      ngx_http_redisgate_tls_offset(certificate),
      NULL },

    { ngx_string("redisgate_ssl_certificate_key"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      ngx_http_redisgate_tls_offset(certificate_key),
      NULL },

    { ngx_string("redisgate_ssl_password_file"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_redisgate_ssl_password_file,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("redisgate_ssl_protocols"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_conf_set_bitmask_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      ngx_http_redisgate_tls_offset(protocols),
      &ngx_http_redisgate_ssl_protocols },

    { ngx_string("redisgate_ssl_ciphers"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      ngx_http_redisgate_tls_offset(ciphers),
      NULL },

    { ngx_string("redisgate_ssl_session_reuse"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      ngx_http_redisgate_tls_offset(session_reuse),
      NULL },

#endif

    { ngx_string("redisgate_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_redisgate_loc_conf_t, timeout),
      NULL },

    { ngx_string("redisgate_sse_heartbeat"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_redisgate_loc_conf_t, sse_heartbeat),
      NULL },

    { ngx_string("redisgate_sse_buffer"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_redisgate_loc_conf_t, sse_buffer),
      NULL },

    { ngx_string("redisgate_monitor"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_redisgate_loc_conf_t, monitor),
      NULL },

    { ngx_string("redisgate_max_commands"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_redisgate_loc_conf_t, max_commands),
      NULL },

    { ngx_string("redisgate_deny"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_redisgate_command_list,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_redisgate_loc_conf_t, deny),
      NULL },

    { ngx_string("redisgate_allow"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_redisgate_command_list,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_redisgate_loc_conf_t, allow),
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_redisgate_module_ctx = {
    ngx_http_redisgate_preconfiguration,   /* preconfiguration */
    ngx_http_redisgate_postconfiguration,  /* postconfiguration */

    ngx_http_redisgate_create_main_conf,   /* create main configuration */
    ngx_http_redisgate_init_main_conf,     /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_redisgate_create_loc_conf,    /* create location configuration */
    ngx_http_redisgate_merge_loc_conf      /* merge location configuration */
};


ngx_module_t  ngx_http_redisgate_module = {
    NGX_MODULE_V1,
    &ngx_http_redisgate_module_ctx,        /* module context */
    ngx_http_redisgate_commands,           /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_redisgate_init_process,       /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_redisgate_exit_process,       /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_int_t
ngx_http_redisgate_preconfiguration(ngx_conf_t *cf)
{
    return ngx_http_redisgate_add_variables(cf);
}


static ngx_int_t
ngx_http_redisgate_postconfiguration(ngx_conf_t *cf)
{
    ngx_http_handler_pt        *h;
    ngx_http_core_main_conf_t  *cmcf;

    if (ngx_http_redisgate_stats_add(cf) != NGX_OK) {
        return NGX_ERROR;
    }

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_LOG_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_redisgate_log_handler;

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_POST_READ_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_redisgate_redact_handler;

    return NGX_OK;
}


static void *
ngx_http_redisgate_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_redisgate_main_conf_t  *rmcf;

    rmcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_redisgate_main_conf_t));
    if (rmcf == NULL) {
        return NULL;
    }

    if (ngx_array_init(&rmcf->instances, cf->pool, 4,
                       sizeof(ngx_http_redisgate_instance_t))
        != NGX_OK
        || ngx_array_init(&rmcf->keys, cf->pool, 4,
                          sizeof(ngx_http_redisgate_key_t))
           != NGX_OK
        || ngx_array_init(&rmcf->backends, cf->pool, 4,
                          sizeof(ngx_http_redisgate_backend_t *))
           != NGX_OK
        || ngx_array_init(&rmcf->manage_keys, cf->pool, 1,
                          sizeof(ngx_http_redisgate_key_t))
           != NGX_OK
        || ngx_array_init(&rmcf->zones, cf->pool, 3,
                          sizeof(ngx_http_redisgate_zone_t *))
           != NGX_OK)
    {
        return NULL;
    }

    rmcf->connect_timeout = NGX_CONF_UNSET_MSEC;
    rmcf->backoff_min = NGX_CONF_UNSET_MSEC;
    rmcf->backoff_max = NGX_CONF_UNSET_MSEC;
    rmcf->pool_size = NGX_CONF_UNSET_UINT;
    rmcf->idle_timeout = NGX_CONF_UNSET_MSEC;
    rmcf->pg_timeout = NGX_CONF_UNSET_MSEC;
    rmcf->pg_token_check = NGX_CONF_UNSET;

    rmcf->tls_conf.verify = NGX_CONF_UNSET;
    rmcf->tls_conf.verify_depth = NGX_CONF_UNSET_UINT;
    rmcf->tls_conf.server_name = NGX_CONF_UNSET;
    rmcf->tls_conf.session_reuse = NGX_CONF_UNSET;

    return rmcf;
}


static char *
ngx_http_redisgate_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_redisgate_main_conf_t  *rmcf = conf;

    ngx_conf_init_msec_value(rmcf->connect_timeout, 3000);
    ngx_conf_init_msec_value(rmcf->backoff_min, 100);
    ngx_conf_init_msec_value(rmcf->backoff_max, 1000);
    ngx_conf_init_uint_value(rmcf->pool_size, 2);
    ngx_conf_init_msec_value(rmcf->idle_timeout, 60000);

    if (rmcf->idle_timeout < 2000) {
        /* workers remember a key's backend for a second: it must outlive */
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"redisgate_idle_timeout\" must be at least 2s");
        return NGX_CONF_ERROR;
    }
    ngx_conf_init_msec_value(rmcf->pg_timeout, 5000);
    ngx_conf_init_value(rmcf->pg_token_check, 1);

    if (rmcf->usage && rmcf->pg == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"redisgate_usage\" needs \"redisgate_pg\": "
                           "usage is written to the key store");
        return NGX_CONF_ERROR;
    }

    if (rmcf->pg) {
        ngx_http_redisgate_pg_configure(rmcf->pg, rmcf);
    }

    if (ngx_http_redisgate_static_init(cf, rmcf) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    ngx_http_redisgate_tls_conf_init(&rmcf->tls_conf);

#if (NGX_SSL)

    /*
     * One client context for every rediss:// backend, made even when
     * nginx.conf names none: the key store may.
     */

    rmcf->tls = ngx_http_redisgate_tls_create(cf, &rmcf->tls_conf);
    if (rmcf->tls == NULL) {
        return NGX_CONF_ERROR;
    }

#endif

    return NGX_CONF_OK;
}


static void *
ngx_http_redisgate_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_redisgate_loc_conf_t  *rlcf;

    rlcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_redisgate_loc_conf_t));
    if (rlcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     rlcf->skip = 0;
     *     rlcf->deny = NULL;
     *     rlcf->allow = NULL;
     *     rlcf->rules = NULL;
     */

    rlcf->timeout = NGX_CONF_UNSET_MSEC;
    rlcf->max_commands = NGX_CONF_UNSET_UINT;
    rlcf->sse_heartbeat = NGX_CONF_UNSET_MSEC;
    rlcf->sse_buffer = NGX_CONF_UNSET_SIZE;
    rlcf->monitor = NGX_CONF_UNSET;

    return rlcf;
}


static char *
ngx_http_redisgate_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_redisgate_loc_conf_t  *prev = parent;
    ngx_http_redisgate_loc_conf_t  *conf = child;

    ngx_conf_merge_msec_value(conf->timeout, prev->timeout, 5000);
    ngx_conf_merge_uint_value(conf->max_commands, prev->max_commands, 10000);
    ngx_conf_merge_msec_value(conf->sse_heartbeat, prev->sse_heartbeat,
                              15000);
    ngx_conf_merge_size_value(conf->sse_buffer, prev->sse_buffer,
                              1024 * 1024);
    ngx_conf_merge_value(conf->monitor, prev->monitor, 0);

    if (ngx_http_redisgate_policy_merge(cf, prev, conf) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_redisgate(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_redisgate_loc_conf_t  *rlcf = conf;

    u_char                    *p, *last;
    ngx_http_core_loc_conf_t  *clcf;

    if (rlcf->skip) {
        return "is duplicate";
    }

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    clcf->handler = ngx_http_redisgate_handler;

    /*
     * The instance id follows the location's prefix: "/redis/" is one
     * path segment to skip.  Regular expression locations count one.
     */

    rlcf->skip = 0;

    p = clcf->name.data;
    last = p + clcf->name.len;

#if (NGX_PCRE)
    if (clcf->regex) {
        last = p;
    }
#endif

    while (p < last) {
        while (p < last && *p == '/') {
            p++;
        }

        if (p == last) {
            break;
        }

        rlcf->skip++;

        while (p < last && *p != '/') {
            p++;
        }
    }

    if (rlcf->skip == 0) {
        rlcf->skip = 1;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_redisgate_status(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_redisgate_status_handler;

    return NGX_CONF_OK;
}


/* redisgate_deny and redisgate_allow: names, or "name|subcommand" */

static char *
ngx_http_redisgate_command_list(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    char  *p = conf;

    ngx_str_t     *value, *name;
    ngx_uint_t     i;
    ngx_array_t  **list;

    list = (ngx_array_t **) (p + cmd->offset);

    if (*list == NULL) {
        *list = ngx_array_create(cf->pool, 4, sizeof(ngx_str_t));
        if (*list == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {
        if (value[i].len == 0 || value[i].len >= NGX_HTTP_REDISGATE_NAME_MAX) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid command name \"%V\"", &value[i]);
            return NGX_CONF_ERROR;
        }

        name = ngx_array_push(*list);
        if (name == NULL) {
            return NGX_CONF_ERROR;
        }

        *name = value[i];
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_redisgate_backoff(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_redisgate_main_conf_t  *rmcf = conf;

    ngx_str_t  *value;

    if (rmcf->backoff_min != NGX_CONF_UNSET_MSEC) {
        return "is duplicate";
    }

    value = cf->args->elts;

    rmcf->backoff_min = ngx_parse_time(&value[1], 0);
    rmcf->backoff_max = ngx_parse_time(&value[2], 0);

    if (rmcf->backoff_min == (ngx_msec_t) NGX_ERROR
        || rmcf->backoff_max == (ngx_msec_t) NGX_ERROR
        || rmcf->backoff_min == 0
        || rmcf->backoff_max < rmcf->backoff_min)
    {
        return "takes a minimum and a maximum time, 0 < min <= max";
    }

    return NGX_CONF_OK;
}


/* redisgate_pg <conninfo> [connections=N]; */

static char *
ngx_http_redisgate_pg(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_redisgate_main_conf_t  *rmcf = conf;

    ngx_int_t   n;
    ngx_str_t  *value;

    if (rmcf->pg) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_http_redisgate_pg_check_conninfo(cf, &value[1]) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    rmcf->pg = ngx_http_redisgate_pg_create(cf, &value[1]);
    if (rmcf->pg == NULL) {
        return NGX_CONF_ERROR;
    }

    if (cf->args->nelts == 3) {
        if (ngx_strncmp(value[2].data, "connections=", 12) != 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"%V\"", &value[2]);
            return NGX_CONF_ERROR;
        }

        n = ngx_atoi(value[2].data + 12, value[2].len - 12);
        if (n < 1 || n > 64) {
            return "takes connections=1..64";
        }

        ngx_http_redisgate_pg_set_connections(rmcf->pg, n);
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_redisgate_pg_query(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_redisgate_main_conf_t  *rmcf = conf;

    ngx_str_t  *value;

    if (rmcf->pg == NULL) {
        return "needs redisgate_pg before it";
    }

    value = cf->args->elts;

    if (ngx_http_redisgate_pg_set_query(cf, rmcf->pg, &value[1]) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* redisgate_cache zone=name:size [ttl=] [negative_ttl=] [stale=]; */

static char *
ngx_http_redisgate_cache(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_redisgate_main_conf_t  *rmcf = conf;

    time_t      *t;
    ssize_t      size;
    ngx_str_t   *value, name, s;
    ngx_uint_t   i;

    if (rmcf->cache) {
        return "is duplicate";
    }

    value = cf->args->elts;

    ngx_str_null(&name);
    size = 0;

    rmcf->cache_ttl = 60;
    rmcf->cache_negative_ttl = 5;
    rmcf->cache_stale = 300;

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "zone=", 5) == 0) {
            if (ngx_http_redisgate_zone(cf, &value[i], &name, &size)
                != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "ttl=", 4) == 0) {
            t = &rmcf->cache_ttl;
            s.data = value[i].data + 4;

        } else if (ngx_strncmp(value[i].data, "negative_ttl=", 13) == 0) {
            t = &rmcf->cache_negative_ttl;
            s.data = value[i].data + 13;

        } else if (ngx_strncmp(value[i].data, "stale=", 6) == 0) {
            t = &rmcf->cache_stale;
            s.data = value[i].data + 6;

        } else {
            goto invalid;
        }

        s.len = value[i].data + value[i].len - s.data;

        *t = ngx_parse_time(&s, 1);
        if (*t == (time_t) NGX_ERROR) {
            goto invalid;
        }
    }

    if (name.len == 0) {
        return "needs zone=name:size";
    }

    rmcf->cache = ngx_http_redisgate_cache_add(cf, &name, size);
    if (rmcf->cache == NULL) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\"", &value[i]);

    return NGX_CONF_ERROR;
}


/*
 * redisgate_limit zone=name:size [rate=100r/s] [burst=200] [nodes=1]
 *                 [store=url];
 * rate and burst are for organizations without a plan (static keys).
 */

static char *
ngx_http_redisgate_limit(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_redisgate_main_conf_t  *rmcf = conf;

    u_char      *p;
    size_t       len;
    ssize_t      size;
    ngx_int_t    rate, burst, nodes;
    ngx_str_t   *value, name, store;
    ngx_uint_t   i;

    ngx_http_redisgate_backend_t  *backend;

    if (rmcf->limit) {
        return "is duplicate";
    }

    value = cf->args->elts;

    ngx_str_null(&name);
    ngx_str_null(&store);
    size = 0;
    rate = 100;
    burst = NGX_ERROR;
    nodes = 1;

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "zone=", 5) == 0) {
            if (ngx_http_redisgate_zone(cf, &value[i], &name, &size)
                != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "rate=", 5) == 0) {
            len = value[i].len;
            p = value[i].data + len - 3;

            if (len < 9 || ngx_strncmp(p, "r/s", 3) != 0) {
                goto invalid;
            }

            rate = ngx_atoi(value[i].data + 5, len - 8);
            if (rate <= 0) {
                goto invalid;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "burst=", 6) == 0) {
            burst = ngx_atoi(value[i].data + 6, value[i].len - 6);
            if (burst <= 0) {
                goto invalid;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "nodes=", 6) == 0) {
            nodes = ngx_atoi(value[i].data + 6, value[i].len - 6);
            if (nodes <= 0) {
                goto invalid;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "store=", 6) == 0) {
            store.data = value[i].data + 6;
            store.len = value[i].len - 6;

            if (store.len == 0) {
                goto invalid;
            }

            continue;
        }

        goto invalid;
    }

    if (name.len == 0) {
        return "needs zone=name:size";
    }

    if (burst == NGX_ERROR) {
        burst = rate;
    }

    rmcf->limit = ngx_http_redisgate_limit_add(cf, &name, size, rate, burst,
                                               nodes);
    if (rmcf->limit == NULL) {
        return NGX_CONF_ERROR;
    }

    if (store.len) {
        /* any Redis URL: the buckets of every server that names it */
        backend = ngx_http_redisgate_static_backend(cf, rmcf, &store, 0);
        if (backend == NULL) {
            return NGX_CONF_ERROR;
        }

        ngx_http_redisgate_limit_set_store(rmcf->limit, backend,
                                   NGX_HTTP_REDISGATE_LIMIT_STORE_TIMEOUT);
    }

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\"", &value[i]);

    return NGX_CONF_ERROR;
}


/* redisgate_usage zone=name:size [interval=10s]; */

static char *
ngx_http_redisgate_usage(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_redisgate_main_conf_t  *rmcf = conf;

    ssize_t      size;
    ngx_str_t   *value, name, s;
    ngx_msec_t   interval;
    ngx_uint_t   i;

    if (rmcf->usage) {
        return "is duplicate";
    }

    value = cf->args->elts;

    ngx_str_null(&name);
    size = 0;
    interval = 10000;

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "zone=", 5) == 0) {
            if (ngx_http_redisgate_zone(cf, &value[i], &name, &size)
                != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "interval=", 9) == 0) {
            s.data = value[i].data + 9;
            s.len = value[i].len - 9;

            interval = ngx_parse_time(&s, 0);
            if (interval == (ngx_msec_t) NGX_ERROR || interval == 0) {
                goto invalid;
            }

            continue;
        }

        goto invalid;
    }

    if (name.len == 0) {
        return "needs zone=name:size";
    }

    rmcf->usage = ngx_http_redisgate_usage_add(cf, &name, size, interval);
    if (rmcf->usage == NULL) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\"", &value[i]);

    return NGX_CONF_ERROR;
}


/* "zone=name:size", as limit_req_zone takes it */

static ngx_int_t
ngx_http_redisgate_zone(ngx_conf_t *cf, ngx_str_t *value, ngx_str_t *name,
    ssize_t *size)
{
    u_char     *p;
    ngx_str_t   s;

    name->data = value->data + 5;

    p = (u_char *) ngx_strchr(name->data, ':');
    if (p == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid zone size \"%V\"", value);
        return NGX_ERROR;
    }

    name->len = p - name->data;

    s.data = p + 1;
    s.len = value->data + value->len - s.data;

    *size = ngx_parse_size(&s);

    if (*size == NGX_ERROR || *size < (ssize_t) (8 * ngx_pagesize)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "zone \"%V\" is too small", value);
        return NGX_ERROR;
    }

    return NGX_OK;
}


#if (NGX_SSL)

static char *
ngx_http_redisgate_ssl_password_file(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_redisgate_main_conf_t  *rmcf = conf;

    ngx_str_t  *value;

    if (rmcf->tls_conf.passwords != NULL) {
        return "is duplicate";
    }

    value = cf->args->elts;

    rmcf->tls_conf.passwords = ngx_ssl_read_password_file(cf, &value[1]);
    if (rmcf->tls_conf.passwords == NULL) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}

#endif


static ngx_int_t
ngx_http_redisgate_init_process(ngx_cycle_t *cycle)
{
    ngx_uint_t                        i;
    ngx_http_redisgate_backend_t    **bp;
    ngx_http_redisgate_main_conf_t   *rmcf;

    rmcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_redisgate_module);
    if (rmcf == NULL) {
        return NGX_OK;
    }

    ngx_http_redisgate_worker_start = ngx_time();

    if (ngx_http_redisgate_backend_init_process(rmcf, cycle) != NGX_OK) {
        return NGX_ERROR;
    }

    if (rmcf->pg
        && ngx_http_redisgate_pg_init_process(rmcf->pg, cycle) != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (rmcf->usage
        && ngx_http_redisgate_usage_init_process(rmcf->usage, rmcf->pg, cycle)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    bp = rmcf->backends.elts;

    for (i = 0; i < rmcf->backends.nelts; i++) {
        if (ngx_http_redisgate_redis_init_backend(bp[i], rmcf, cycle)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static void
ngx_http_redisgate_exit_process(ngx_cycle_t *cycle)
{
    ngx_uint_t                        i;
    ngx_http_redisgate_backend_t    **bp;
    ngx_http_redisgate_main_conf_t   *rmcf;

    rmcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_redisgate_module);
    if (rmcf == NULL) {
        return;
    }

    bp = rmcf->backends.elts;

    for (i = 0; i < rmcf->backends.nelts; i++) {
        ngx_http_redisgate_redis_close_backend(bp[i]);
    }

    ngx_http_redisgate_backend_exit_process();

    if (rmcf->usage) {
        ngx_http_redisgate_usage_exit_process(rmcf->usage);
    }

    if (rmcf->pg) {
        ngx_http_redisgate_pg_exit_process(rmcf->pg);
    }

    ngx_http_redisgate_auth_exit_process();

    /* the ops and reply blocks the closed connections gave back */
    ngx_http_redisgate_redis_exit_process();
    ngx_http_redisgate_link_exit_process();
}
