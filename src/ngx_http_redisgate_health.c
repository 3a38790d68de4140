
/*
 * Copyright (C) RedisGate authors
 */


/*
 * A backend's health, for the Redis pools and the key store alike: after a
 * failed attempt, requests are refused at once with the reason (a fixed
 * message) until the backoff has passed, and each failure in a row doubles
 * the backoff, up to redisgate_reconnect_backoff's maximum.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_redisgate.h"


void
ngx_http_redisgate_health_init(ngx_http_redisgate_health_t *h,
    ngx_msec_t backoff_min, ngx_msec_t backoff_max, const char *error)
{
    h->backoff_min = backoff_min;
    h->backoff_max = backoff_max;
    h->backoff = backoff_min;
    h->down_until = ngx_current_msec;
    h->error = error ? error : "Redis unavailable";
}


void
ngx_http_redisgate_health_down(ngx_http_redisgate_health_t *h,
    const char *error)
{
    h->error = error;
    h->down_until = ngx_current_msec + h->backoff;
    h->backoff = ngx_min(h->backoff * 2, h->backoff_max);
}


void
ngx_http_redisgate_health_up(ngx_http_redisgate_health_t *h)
{
    h->backoff = h->backoff_min;
    h->down_until = ngx_current_msec;
}
