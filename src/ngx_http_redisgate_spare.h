
/*
 * Copyright (C) RedisGate authors
 */


/*
 * Items of one kind a worker keeps for reuse, as nginx's upstream
 * keepalive module keeps its items: allocated when first needed, then
 * given back to a free list and taken from it, max of them kept at most.
 * While an item is on the list, its first bytes link it to the next.
 */


#ifndef _NGX_HTTP_REDISGATE_SPARE_H_INCLUDED_
#define _NGX_HTTP_REDISGATE_SPARE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


typedef struct ngx_http_redisgate_spare_s  ngx_http_redisgate_spare_t;

struct ngx_http_redisgate_spare_s {
    ngx_http_redisgate_spare_t     *next;
};


typedef struct {
    ngx_http_redisgate_spare_t     *free;
    ngx_uint_t                      nfree;
    ngx_uint_t                      max;
} ngx_http_redisgate_spares_t;


#define ngx_http_redisgate_spares(max)  { NULL, 0, max }


/* a kept item, its bytes as they were left, or NULL: allocate one */

static ngx_inline void *
ngx_http_redisgate_spare_get(ngx_http_redisgate_spares_t *s)
{
    ngx_http_redisgate_spare_t  *item;

    item = s->free;

    if (item) {
        s->free = item->next;
        s->nfree--;
    }

    return item;
}


/* NGX_OK: kept; NGX_DECLINED: max are kept already, free it */

static ngx_inline ngx_int_t
ngx_http_redisgate_spare_put(ngx_http_redisgate_spares_t *s, void *p)
{
    ngx_http_redisgate_spare_t  *item;

    if (s->nfree >= s->max) {
        return NGX_DECLINED;
    }

    item = p;
    item->next = s->free;
    s->free = item;
    s->nfree++;

    return NGX_OK;
}


/* at exit (a dynamic module's statics go with it): all kept are freed */

static ngx_inline void
ngx_http_redisgate_spare_drain(ngx_http_redisgate_spares_t *s)
{
    ngx_http_redisgate_spare_t  *item;

    while (s->free) {
        item = s->free;
        s->free = item->next;
        ngx_free(item);
    }

    s->nfree = 0;
}


#endif /* _NGX_HTTP_REDISGATE_SPARE_H_INCLUDED_ */
