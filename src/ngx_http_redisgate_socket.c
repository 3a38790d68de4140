
/*
 * Copyright (C) RedisGate authors
 */


/*
 * nginx connections around sockets that hiredis and libpq own: they open
 * and close the descriptors, nginx only watches them.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_redisgate.h"


ngx_connection_t *
ngx_http_redisgate_socket_wrap(ngx_socket_t fd, void *data,
    ngx_event_handler_pt read, ngx_event_handler_pt write, ngx_log_t *log)
{
    ngx_connection_t  *c;

    c = ngx_get_connection(fd, log);
    if (c == NULL) {
        return NULL;
    }

    c->data = data;
    c->read->handler = read;
    c->write->handler = write;
    c->read->log = log;
    c->write->log = log;

    return c;
}


/*
 * Forgets the connection without closing its socket.  closed: the owner
 * closed it already (or is about to), so epoll has dropped it by itself.
 */

void
ngx_http_redisgate_socket_release(ngx_connection_t *c, ngx_uint_t closed)
{
    ngx_uint_t  flags;

    flags = closed ? NGX_CLOSE_EVENT : 0;

    if (c->read->active) {
        (void) ngx_del_event(c->read, NGX_READ_EVENT, flags);
    }

    if (c->write->active) {
        (void) ngx_del_event(c->write, NGX_WRITE_EVENT, flags);
    }

    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }

    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }

    ngx_free_connection(c);

    /* tells the event loop that events still queued for it are stale */
    c->fd = (ngx_socket_t) -1;
}
