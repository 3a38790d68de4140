
/*
 * Copyright (C) RedisGate authors
 */


/*
 * The counters behind redisgate_status: in one shared zone, summed over
 * the workers.  The request side counts requests and commands, the
 * transport and the pools count per backend.
 */


#ifndef _NGX_HTTP_REDISGATE_STATS_H_INCLUDED_
#define _NGX_HTTP_REDISGATE_STATS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


typedef struct ngx_http_redisgate_backend_stats_s
    ngx_http_redisgate_backend_stats_t;


#define NGX_HTTP_REDISGATE_STAT_COMMANDS          0
#define NGX_HTTP_REDISGATE_STAT_RATE_LIMITED      1
#define NGX_HTTP_REDISGATE_STAT_KEYSTORE_QUERIES  2
#define NGX_HTTP_REDISGATE_STAT_KEYSTORE_ERRORS   3
#define NGX_HTTP_REDISGATE_STAT_STREAMS           4   /* open, a gauge */
#define NGX_HTTP_REDISGATE_STAT_CHANNELS          5   /* subscribed, gauge */
#define NGX_HTTP_REDISGATE_STAT_STREAM_MESSAGES   6
#define NGX_HTTP_REDISGATE_STAT_STREAM_DROPS      7   /* slow readers */
#define NGX_HTTP_REDISGATE_STAT_KEYSTORE_BATCHES  8   /* round trips */
#define NGX_HTTP_REDISGATE_STAT_COUNTERS          9

#define NGX_HTTP_REDISGATE_STAT_CONNECTIONS       0
#define NGX_HTTP_REDISGATE_STAT_IN_FLIGHT         1
#define NGX_HTTP_REDISGATE_STAT_CONNECTS          2
#define NGX_HTTP_REDISGATE_STAT_CONNECT_FAILURES  3
#define NGX_HTTP_REDISGATE_STAT_TLS_HANDSHAKES    4
#define NGX_HTTP_REDISGATE_STAT_TLS_HANDSHAKE_FAILURES  5
#define NGX_HTTP_REDISGATE_STAT_TLS_SESSION_REUSES      6
#define NGX_HTTP_REDISGATE_STAT_BACKEND_COUNTERS  7

ngx_int_t ngx_http_redisgate_stats_add(ngx_conf_t *cf);
void ngx_http_redisgate_stats_request(ngx_uint_t route, ngx_uint_t status,
    ngx_msec_t ms);
void ngx_http_redisgate_stats_count(ngx_uint_t what, ngx_uint_t n);
void ngx_http_redisgate_stats_gauge(ngx_uint_t what, ngx_int_t n);
ngx_http_redisgate_backend_stats_t *ngx_http_redisgate_stats_backend(
    ngx_str_t *url);
void ngx_http_redisgate_stats_backend_add(
    ngx_http_redisgate_backend_stats_t *bs, ngx_uint_t what, ngx_int_t n);
ngx_int_t ngx_http_redisgate_status_handler(ngx_http_request_t *r);


#endif /* _NGX_HTTP_REDISGATE_STATS_H_INCLUDED_ */
