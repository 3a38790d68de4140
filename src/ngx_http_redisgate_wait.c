
/*
 * Copyright (C) RedisGate authors
 */


/*
 * A request waiting on something that may outlive it: a host name being
 * resolved, a key-store lookup, Redis replies.  The wait is in the waited-on
 * thing's queue, and the request pool's cleanup takes it out when the
 * client leaves first, so that the answer finds nobody instead of a freed
 * request.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_redisgate.h"


static void ngx_http_redisgate_wait_cleanup(void *data);


/* queue may be NULL: a wait that nothing lists, only forgets its request */

ngx_int_t
ngx_http_redisgate_wait(ngx_pool_t *pool, ngx_queue_t *queue,
    ngx_http_redisgate_wait_t *w)
{
    ngx_pool_cleanup_t  *cln;

    cln = ngx_pool_cleanup_add(pool, 0);
    if (cln == NULL) {
        return NGX_ERROR;
    }

    cln->handler = ngx_http_redisgate_wait_cleanup;
    cln->data = w;

    w->cleanup = cln;

    if (queue) {
        ngx_queue_insert_tail(queue, &w->queue);

    } else {
        ngx_queue_init(&w->queue);
    }

    return NGX_OK;
}


/*
 * The wait is over: it leaves the queue.  NGX_OK: its request is still
 * there to be told; NGX_DECLINED: it left.
 */

ngx_int_t
ngx_http_redisgate_wait_done(ngx_http_redisgate_wait_t *w)
{
    if (w->cleanup == NULL) {
        return NGX_DECLINED;
    }

    ngx_queue_remove(&w->queue);

    w->cleanup->handler = NULL;
    w->cleanup = NULL;

    return NGX_OK;
}


static void
ngx_http_redisgate_wait_cleanup(void *data)
{
    ngx_http_redisgate_wait_t  *w = data;

    ngx_queue_remove(&w->queue);

    /* w may be in the pool being destroyed: only a wait that outlives it
     * (ngx_alloc'ed) reads this afterwards */
    w->cleanup = NULL;
}
