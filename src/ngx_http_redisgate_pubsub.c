
/*
 * Copyright (C) RedisGate authors
 */


/*
 * Pub/sub fan-out: per worker and per backend, one connection in Redis's
 * subscribe mode (a "hub"), shared by every stream of the worker.  A
 * channel (or pattern) is subscribed to when its first listener comes and
 * unsubscribed from when its last leaves; each message is decoded once
 * and handed to each listener (stream.c writes it out).
 *
 * In subscribe mode, replies and messages come in any order: nothing
 * waits on the link, everything comes to on_push and is told apart by its
 * kind ("subscribe", "message", "pmessage"...).
 *
 * Redis lost: the hub connects again (100 ms, doubling to 1 s) and
 * subscribes again to every channel that has listeners; what was
 * published meanwhile is lost (pub/sub is at-most-once).  Not back within
 * the longest redisgate_timeout of its streams: every stream ends with an
 * error line.
 *
 * MONITOR takes a connection of its own (a connection in monitor mode
 * does nothing else), opened for the first monitor stream of the worker
 * and the backend and closed after the last.  Its lines go to the streams
 * when they are of the backend's database.  Lost, it is not restored: its
 * streams end (MONITOR is a debugging aid, not a feed to rely on).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_redisgate.h"


struct ngx_http_redisgate_hub_s {
    ngx_http_redisgate_backend_t   *backend;
    ngx_http_redisgate_link_t       link;
    ngx_http_redisgate_backend_t   *node;       /* a cluster's, held */
    ngx_queue_t                     channels;
    ngx_uint_t                      nchannels;

    /* the channels by name, and the patterns: a message finds its own */
    ngx_rbtree_t                    names[2];
    ngx_rbtree_node_t               sentinels[2];

    /* the channel whose listeners are being told; NULL once it goes */
    void                           *delivering;
    ngx_log_t                      *log;

    /* Redis lost: connecting again until the deadline */
    ngx_event_t                     reconnect;
    ngx_msec_t                      backoff;
    ngx_msec_t                      deadline;
    ngx_msec_t                      timeout;    /* the streams' longest */
    const char                     *error;      /* why it was lost */

    /* MONITOR: its own connection, its own listeners */
    ngx_http_redisgate_link_t       monitor;
    ngx_queue_t                     monitors;
    ngx_uint_t                      nmonitors;
    ngx_uint_t                      oks;        /* +OK awaited, AUTH's too */
};


typedef struct {
    ngx_str_node_t                  sn;         /* in hub->names[pattern] */
    ngx_queue_t                     queue;      /* in the hub's */
    ngx_http_redisgate_hub_t       *hub;
    ngx_str_t                       name;
    ngx_uint_t                      pattern;
    ngx_queue_t                     listeners;
    unsigned                        subscribed:1;   /* Redis said so */
    unsigned                        gone:1;     /* out of the hub's list */
} ngx_http_redisgate_channel_t;


static ngx_http_redisgate_hub_t *ngx_http_redisgate_hub_get(
    ngx_http_redisgate_backend_t *b, ngx_log_t *log);
static ngx_int_t ngx_http_redisgate_hub_connect(ngx_http_redisgate_hub_t *hub);
static ngx_int_t ngx_http_redisgate_hub_login(ngx_http_redisgate_hub_t *hub,
    ngx_http_redisgate_link_t *link, ngx_http_redisgate_backend_t *node);
static ngx_int_t ngx_http_redisgate_hub_send(ngx_http_redisgate_hub_t *hub,
    ngx_http_redisgate_link_t *link, const char *cmd, ngx_str_t *arg,
    ngx_str_t *arg2);
static ngx_http_redisgate_channel_t *ngx_http_redisgate_hub_find(
    ngx_http_redisgate_hub_t *hub, u_char *name, size_t len,
    ngx_uint_t pattern);
static void ngx_http_redisgate_hub_forget(ngx_http_redisgate_hub_t *hub,
    ngx_http_redisgate_channel_t *ch);
static void ngx_http_redisgate_hub_push(ngx_http_redisgate_link_t *link,
    redisReply *reply);
static void ngx_http_redisgate_hub_deliver(ngx_http_redisgate_hub_t *hub,
    ngx_http_redisgate_link_t *link, ngx_queue_t *listeners,
    ngx_http_redisgate_channel_t *ch, ngx_str_t *line);
static void ngx_http_redisgate_hub_closed(ngx_http_redisgate_link_t *link);
static void ngx_http_redisgate_hub_reconnect(ngx_event_t *ev);
static void ngx_http_redisgate_hub_end(ngx_http_redisgate_hub_t *hub,
    const char *error);
static ngx_uint_t ngx_http_redisgate_hub_is(redisReply *r, const char *s);
static void ngx_http_redisgate_monitor_leave(ngx_http_redisgate_listener_t *l);
static void ngx_http_redisgate_monitor_push(ngx_http_redisgate_link_t *link,
    redisReply *reply);
static void ngx_http_redisgate_monitor_closed(ngx_http_redisgate_link_t *link);
static ngx_int_t ngx_http_redisgate_monitor_db(redisReply *reply);


/*
 * listener listens to a channel (a pattern) of backend's Redis: subscribed
 * when new; stream_subscribed() at once when Redis said so already, else
 * when it does.  NGX_ERROR: no connection could be had (*error why).
 */

ngx_int_t
ngx_http_redisgate_pubsub_listen(ngx_http_redisgate_backend_t *b,
    ngx_http_redisgate_listener_t *l, ngx_str_t *name, ngx_uint_t pattern,
    ngx_msec_t timeout, ngx_log_t *log, const char **error)
{
    ngx_http_redisgate_hub_t      *hub;
    ngx_http_redisgate_channel_t  *ch;

    hub = ngx_http_redisgate_hub_get(b, log);
    if (hub == NULL) {
        *error = "out of memory";
        return NGX_ERROR;
    }

    hub->timeout = ngx_max(hub->timeout, timeout);

    if (hub->link.state == NGX_HTTP_REDISGATE_LINK_CLOSED
        && !hub->reconnect.timer_set
        && ngx_http_redisgate_hub_connect(hub) != NGX_OK)
    {
        *error = hub->link.error ? hub->link.error : "out of memory";
        return NGX_ERROR;
    }

    ch = ngx_http_redisgate_hub_find(hub, name->data, name->len, pattern);

    if (ch == NULL) {
        ch = ngx_alloc(sizeof(ngx_http_redisgate_channel_t) + name->len,
                       hub->log);
        if (ch == NULL) {
            *error = "out of memory";
            return NGX_ERROR;
        }

        ngx_memzero(ch, sizeof(ngx_http_redisgate_channel_t));

        ch->hub = hub;
        ch->pattern = pattern;
        ch->name.data = (u_char *) &ch[1];
        ch->name.len = name->len;
        ngx_memcpy(ch->name.data, name->data, name->len);
        ngx_queue_init(&ch->listeners);

        /* while reconnecting: subscribed to with the others, once back */
        if (!hub->reconnect.timer_set
            && ngx_http_redisgate_hub_send(hub, &hub->link,
                                        pattern ? "PSUBSCRIBE" : "SUBSCRIBE",
                                        &ch->name, NULL)
               != NGX_OK)
        {
            ngx_free(ch);
            *error = "out of memory";
            return NGX_ERROR;
        }

        ch->sn.str = ch->name;
        ch->sn.node.key = ngx_crc32_long(ch->name.data, ch->name.len);
        ngx_rbtree_insert(&hub->names[pattern], &ch->sn.node);

        ngx_queue_insert_tail(&hub->channels, &ch->queue);
        hub->nchannels++;
        ngx_http_redisgate_stats_gauge(NGX_HTTP_REDISGATE_STAT_CHANNELS, 1);
    }

    l->channel = ch;
    ngx_queue_insert_tail(&ch->listeners, &l->queue);

    if (ch->subscribed) {
        ngx_http_redisgate_stream_subscribed(l);
    }

    return NGX_OK;
}


/* the listener goes; its channel too when it was the last */

void
ngx_http_redisgate_pubsub_leave(ngx_http_redisgate_listener_t *l)
{
    ngx_http_redisgate_hub_t      *hub;
    ngx_http_redisgate_channel_t  *ch;

    if (l->monitor) {
        ngx_http_redisgate_monitor_leave(l);
        return;
    }

    ch = l->channel;

    if (ch == NULL) {
        return;
    }

    l->channel = NULL;
    ngx_queue_remove(&l->queue);

    if (!ngx_queue_empty(&ch->listeners) || ch->gone) {
        /* others listen; or the hub is closing and frees it */
        return;
    }

    hub = ch->hub;

    ngx_http_redisgate_hub_forget(hub, ch);

    if (hub->nchannels == 0) {
        /* nobody listens: the connection goes, UNSUBSCRIBE with it; the
         * next streams bring their own timeouts */
        ngx_free(ch);
        hub->timeout = 0;

        if (hub->reconnect.timer_set) {
            ngx_del_timer(&hub->reconnect);
        }

        ngx_http_redisgate_link_close(&hub->link,
                                      NGX_HTTP_REDISGATE_FAIL_CLOSED, NULL);
        return;
    }

    if (hub->reconnect.timer_set) {
        /* not subscribed on any connection now */
        ngx_free(ch);
        return;
    }

    (void) ngx_http_redisgate_hub_send(hub, &hub->link,
                                       ch->pattern ? "PUNSUBSCRIBE"
                                                   : "UNSUBSCRIBE",
                                       &ch->name, NULL);
    ngx_free(ch);
}


/*
 * listener hears the backend's MONITOR: stream_subscribed() once Redis
 * said +OK, then stream_message() for each line of the backend's
 * database.  NGX_ERROR: no connection could be had (*error why).
 */

ngx_int_t
ngx_http_redisgate_pubsub_monitor(ngx_http_redisgate_backend_t *b,
    ngx_http_redisgate_listener_t *l, ngx_log_t *log, const char **error)
{
    ngx_http_redisgate_hub_t  *hub;

    hub = ngx_http_redisgate_hub_get(b, log);
    if (hub == NULL) {
        *error = "out of memory";
        return NGX_ERROR;
    }

    if (hub->monitor.state == NGX_HTTP_REDISGATE_LINK_CLOSED) {
        if (ngx_http_redisgate_hub_login(hub, &hub->monitor, b) != NGX_OK) {
            *error = hub->monitor.error ? hub->monitor.error
                                        : "out of memory";
            return NGX_ERROR;
        }

        /* AUTH's and SELECT's, then MONITOR's */
        hub->oks = 1 + (b->address.password.len != 0) + (b->address.db != 0);

        if (ngx_http_redisgate_hub_send(hub, &hub->monitor, "MONITOR", NULL,
                                        NULL)
            != NGX_OK)
        {
            ngx_http_redisgate_link_close(&hub->monitor,
                                          NGX_HTTP_REDISGATE_FAIL_CLOSED,
                                          "out of memory");
            *error = "out of memory";
            return NGX_ERROR;
        }
    }

    l->monitor = 1;
    l->channel = hub;
    ngx_queue_insert_tail(&hub->monitors, &l->queue);
    hub->nmonitors++;

    if (hub->oks == 0) {
        ngx_http_redisgate_stream_subscribed(l);
    }

    return NGX_OK;
}


static void
ngx_http_redisgate_monitor_leave(ngx_http_redisgate_listener_t *l)
{
    ngx_http_redisgate_hub_t  *hub;

    hub = l->channel;

    if (hub == NULL) {
        return;
    }

    l->channel = NULL;
    ngx_queue_remove(&l->queue);

    if (--hub->nmonitors == 0) {
        /* nobody watches: the connection goes */
        ngx_http_redisgate_link_close(&hub->monitor,
                                      NGX_HTTP_REDISGATE_FAIL_CLOSED, NULL);
    }
}


/* +OK (AUTH, SELECT, MONITOR), then one status line per command */

static void
ngx_http_redisgate_monitor_push(ngx_http_redisgate_link_t *link,
    redisReply *reply)
{
    ngx_http_redisgate_hub_t *hub = link->data;

    ngx_str_t   line, part;
    ngx_uint_t  began;

    if (reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, hub->log, 0,
                      "redisgate: Redis at %V refused MONITOR: %*s",
                      &link->node->name, (size_t) reply->len, reply->str);

        ngx_http_redisgate_link_close(link, NGX_HTTP_REDISGATE_FAIL_AUTH,
                                      "Redis refused MONITOR");
        return;
    }

    if (reply->type != REDIS_REPLY_STATUS) {
        return;
    }

    began = 0;

    if (hub->oks) {
        /* AUTH's, SELECT's, then MONITOR's: the streams begin */
        if (--hub->oks) {
            return;
        }

        began = 1;

    } else if (ngx_http_redisgate_monitor_db(reply)
               != (ngx_int_t) hub->backend->address.db)
    {
        /* the instance's database only: other tenants may share Redis */
        return;
    }

    if (!began) {
        part.data = (u_char *) reply->str;
        part.len = reply->len;

        if (ngx_http_redisgate_stream_line(&line, &part, 1, hub->log)
            != NGX_OK)
        {
            return;
        }
    }

    /* a stream may end in there, and the last close the link */
    ngx_http_redisgate_hub_deliver(hub, link, &hub->monitors, NULL,
                                   began ? NULL : &line);

    if (!began) {
        ngx_free(line.data);
    }
}


/* "1700000000.123456 [3 127.0.0.1:50000] \"get\" \"k\"": 3 */

static ngx_int_t
ngx_http_redisgate_monitor_db(redisReply *reply)
{
    u_char  *p, *last, *digits;

    p = (u_char *) reply->str;
    last = p + reply->len;

    p = ngx_strlchr(p, last, '[');
    if (p == NULL) {
        return NGX_ERROR;
    }

    digits = ++p;

    while (p < last && *p >= '0' && *p <= '9') {
        p++;
    }

    if (p == digits || p == last || *p != ' ') {
        return NGX_ERROR;
    }

    return ngx_atoi(digits, p - digits);
}


/* lost (or closed after the last): its streams end, with the reason */

static void
ngx_http_redisgate_monitor_closed(ngx_http_redisgate_link_t *link)
{
    ngx_http_redisgate_hub_t *hub = link->data;

    ngx_queue_t                    *q;
    ngx_http_redisgate_listener_t  *l;

    hub->oks = 0;

    while (!ngx_queue_empty(&hub->monitors)) {
        q = ngx_queue_head(&hub->monitors);
        l = ngx_queue_data(q, ngx_http_redisgate_listener_t, queue);

        ngx_queue_remove(q);
        l->channel = NULL;
        hub->nmonitors--;

        ngx_http_redisgate_stream_lost(l->stream, link->error);
    }
}


/* streams listen to it: the idle sweep leaves the backend alone */

ngx_uint_t
ngx_http_redisgate_pubsub_busy(ngx_http_redisgate_backend_t *b)
{
    return b->hub && (b->hub->nchannels || b->hub->nmonitors);
}


/* the worker is exiting, or the backend goes: its streams end */

void
ngx_http_redisgate_pubsub_close(ngx_http_redisgate_backend_t *b)
{
    ngx_http_redisgate_hub_t  *hub;

    hub = b->hub;

    if (hub == NULL) {
        return;
    }

    if (hub->reconnect.timer_set) {
        ngx_del_timer(&hub->reconnect);
    }

    /* its streams end, and not to be reconnected for */
    hub->deadline = ngx_current_msec;

    ngx_http_redisgate_link_close(&hub->link, NGX_HTTP_REDISGATE_FAIL_CLOSED,
                                  "nginx worker is exiting");
    ngx_http_redisgate_hub_end(hub, "nginx worker is exiting");
    ngx_http_redisgate_link_free(&hub->link);

    /* its streams end in there */
    ngx_http_redisgate_link_close(&hub->monitor, NGX_HTTP_REDISGATE_FAIL_LOST,
                                  "nginx worker is exiting");
    ngx_http_redisgate_link_free(&hub->monitor);

    b->hub = NULL;
    ngx_free(hub);
}


static ngx_http_redisgate_hub_t *
ngx_http_redisgate_hub_get(ngx_http_redisgate_backend_t *b, ngx_log_t *log)
{
    ngx_http_redisgate_hub_t  *hub;

    if (b->hub) {
        return b->hub;
    }

    hub = ngx_calloc(sizeof(ngx_http_redisgate_hub_t), b->log);
    if (hub == NULL) {
        return NULL;
    }

    hub->backend = b;
    hub->log = b->log;
    ngx_queue_init(&hub->channels);
    ngx_rbtree_init(&hub->names[0], &hub->sentinels[0],
                    ngx_str_rbtree_insert_value);
    ngx_rbtree_init(&hub->names[1], &hub->sentinels[1],
                    ngx_str_rbtree_insert_value);

    hub->link.data = hub;
    hub->link.log = b->log;
    hub->link.on_push = ngx_http_redisgate_hub_push;
    hub->link.on_close = ngx_http_redisgate_hub_closed;

    ngx_queue_init(&hub->monitors);
    hub->monitor.data = hub;
    hub->monitor.log = b->log;
    hub->monitor.on_push = ngx_http_redisgate_monitor_push;
    hub->monitor.on_close = ngx_http_redisgate_monitor_closed;

    hub->reconnect.handler = ngx_http_redisgate_hub_reconnect;
    hub->reconnect.data = hub;
    hub->reconnect.log = b->log;
    hub->reconnect.cancelable = 1;

    b->hub = hub;

    return hub;
}


/* to the backend's node (a cluster's: any primary, channels are the whole
 * cluster's) */

static ngx_int_t
ngx_http_redisgate_hub_connect(ngx_http_redisgate_hub_t *hub)
{
    ngx_http_redisgate_backend_t  *b, *node;

    b = hub->backend;
    node = b;

    if (b->cluster) {
        node = ngx_http_redisgate_cluster_node(b->cluster,
                                               NGX_HTTP_REDISGATE_SLOTS);
        if (node == NULL) {
            hub->link.error = "Redis unavailable: no cluster node";
            return NGX_ERROR;
        }
    }

    if (ngx_http_redisgate_hub_login(hub, &hub->link, node) != NGX_OK) {
        return NGX_ERROR;
    }

    if (node != b) {
        /* the idle sweep leaves it alone while the link is to it, even
         * once a new slot map no longer has it */
        node->refs++;
        hub->node = node;
    }

    return NGX_OK;
}


/*
 * link to node, then AUTH when the backend takes a password, and SELECT
 * its database: Redis shows the hub's commands (in MONITOR, CLIENT LIST)
 * as the database's, not database 0's
 */

static ngx_int_t
ngx_http_redisgate_hub_login(ngx_http_redisgate_hub_t *hub,
    ngx_http_redisgate_link_t *link, ngx_http_redisgate_backend_t *node)
{
    u_char                        *p, db[NGX_INT_T_LEN];
    ngx_str_t                      n;
    ngx_http_redisgate_backend_t  *b;

    b = hub->backend;

    if (ngx_http_redisgate_link_connect(link, &node->node, hub->log)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (b->address.password.len
        && ngx_http_redisgate_hub_send(hub, link, "AUTH",
                                       b->address.user.len ? &b->address.user
                                                           : NULL,
                                       &b->address.password)
           != NGX_OK)
    {
        goto failed;
    }

    if (b->address.db) {
        p = ngx_sprintf(db, "%ui", b->address.db);
        n.data = db;
        n.len = p - db;

        if (ngx_http_redisgate_hub_send(hub, link, "SELECT", &n, NULL)
            != NGX_OK)
        {
            goto failed;
        }
    }

    return NGX_OK;

failed:

    ngx_http_redisgate_link_close(link, NGX_HTTP_REDISGATE_FAIL_CLOSED,
                                  "out of memory");
    return NGX_ERROR;
}


/* one command of up to two arguments; its reply comes to on_push */

static ngx_int_t
ngx_http_redisgate_hub_send(ngx_http_redisgate_hub_t *hub,
    ngx_http_redisgate_link_t *link, const char *cmd, ngx_str_t *arg,
    ngx_str_t *arg2)
{
    u_char                    *buf;
    ngx_int_t                  rc;
    ngx_str_t                  argv[3], resp;
    ngx_http_redisgate_cmd_t   c;

    argv[0].data = (u_char *) cmd;
    argv[0].len = ngx_strlen(cmd);
    c.argv = argv;
    c.argc = 1;

    if (arg) {
        argv[c.argc++] = *arg;
    }

    if (arg2) {
        argv[c.argc++] = *arg2;
    }

    resp.len = ngx_http_redisgate_resp_command_len(&c);

    buf = ngx_alloc(resp.len, hub->log);
    if (buf == NULL) {
        return NGX_ERROR;
    }

    resp.data = buf;
    (void) ngx_http_redisgate_resp_command(buf, &c);

    /* the link copies it */
    rc = ngx_http_redisgate_link_send(link, &resp, 1, NULL, NULL);

    ngx_free(buf);

    return rc == NGX_OK ? NGX_OK : NGX_ERROR;
}


static ngx_http_redisgate_channel_t *
ngx_http_redisgate_hub_find(ngx_http_redisgate_hub_t *hub, u_char *name,
    size_t len, ngx_uint_t pattern)
{
    ngx_str_t        n;
    ngx_str_node_t  *sn;

    n.data = name;
    n.len = len;

    sn = ngx_str_rbtree_lookup(&hub->names[pattern], &n,
                               ngx_crc32_long(name, len));

    return sn ? (ngx_http_redisgate_channel_t *) sn : NULL;
}


/* the channel leaves the hub's lists (it is freed by the caller) */

static void
ngx_http_redisgate_hub_forget(ngx_http_redisgate_hub_t *hub,
    ngx_http_redisgate_channel_t *ch)
{
    ngx_rbtree_delete(&hub->names[ch->pattern], &ch->sn.node);
    ngx_queue_remove(&ch->queue);
    hub->nchannels--;
    ngx_http_redisgate_stats_gauge(NGX_HTTP_REDISGATE_STAT_CHANNELS, -1);

    if (hub->delivering == ch) {
        hub->delivering = NULL;
    }
}


/*
 * What Redis says in subscribe mode: +OK (AUTH), an error (AUTH refused),
 * [subscribe, ch, n], [message, ch, payload], [pmessage, pat, ch, payload],
 * [unsubscribe, ch, n].
 */

static void
ngx_http_redisgate_hub_push(ngx_http_redisgate_link_t *link,
    redisReply *reply)
{
    ngx_http_redisgate_hub_t *hub = link->data;

    ngx_str_t                      line, part[4];
    ngx_uint_t                     i, pattern;
    redisReply                    *name;
    ngx_http_redisgate_channel_t  *ch;

    if (reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, hub->log, 0,
                      "redisgate: Redis at %V refused the subscriber "
                      "connection: %*s", &link->node->name,
                      (size_t) reply->len, reply->str);

        ngx_http_redisgate_link_close(link, NGX_HTTP_REDISGATE_FAIL_AUTH,
                                      NULL);
        return;
    }

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 3
        || reply->element[0]->type != REDIS_REPLY_STRING
        || reply->element[1]->type != REDIS_REPLY_STRING)
    {
        /* +OK of AUTH */
        return;
    }

    name = reply->element[1];

    if (ngx_http_redisgate_hub_is(reply->element[0], "subscribe")
        || ngx_http_redisgate_hub_is(reply->element[0], "psubscribe"))
    {
        pattern = (reply->element[0]->str[0] == 'p');

        ch = ngx_http_redisgate_hub_find(hub, (u_char *) name->str,
                                         name->len, pattern);
        if (ch == NULL || ch->subscribed) {
            /* left meanwhile: its UNSUBSCRIBE follows */
            return;
        }

        ch->subscribed = 1;

        if (hub->deadline) {
            ngx_log_error(NGX_LOG_NOTICE, hub->log, 0,
                          "redisgate: the subscriber connection to %V is "
                          "back", &link->node->name);
            hub->deadline = 0;
        }

        ngx_http_redisgate_hub_deliver(hub, link, &ch->listeners, ch, NULL);
        return;
    }

    pattern = ngx_http_redisgate_hub_is(reply->element[0], "pmessage");

    if (!pattern && !ngx_http_redisgate_hub_is(reply->element[0], "message"))
    {
        /* unsubscribe, punsubscribe */
        return;
    }

    if (reply->elements != 3 + pattern
        || reply->element[2]->type != REDIS_REPLY_STRING
        || reply->element[2 + pattern]->type != REDIS_REPLY_STRING)
    {
        return;
    }

    ch = ngx_http_redisgate_hub_find(hub, (u_char *) name->str, name->len,
                                     pattern);
    if (ch == NULL) {
        return;
    }

    /* decoded and made a line once, for every listener */

    for (i = 0; i < reply->elements; i++) {
        part[i].data = (u_char *) reply->element[i]->str;
        part[i].len = reply->element[i]->len;
    }

    if (ngx_http_redisgate_stream_line(&line, part, reply->elements,
                                       hub->log)
        != NGX_OK)
    {
        return;
    }

    ngx_http_redisgate_hub_deliver(hub, link, &ch->listeners, ch, &line);

    ngx_free(line.data);
}


/*
 * Each listener hears it: its subscription confirmed (line NULL), or a
 * message's line.  A stream may end in there (its buffer full) and leave;
 * it stops once the link closed, or ch (when a channel's) went with its
 * last listener.
 */

static void
ngx_http_redisgate_hub_deliver(ngx_http_redisgate_hub_t *hub,
    ngx_http_redisgate_link_t *link, ngx_queue_t *listeners,
    ngx_http_redisgate_channel_t *ch, ngx_str_t *line)
{
    ngx_uint_t                      generation;
    ngx_queue_t                    *q, *next;
    ngx_http_redisgate_listener_t  *l;

    generation = link->generation;
    hub->delivering = ch;

    for (q = ngx_queue_head(listeners);
         q != ngx_queue_sentinel(listeners);
         q = next)
    {
        next = ngx_queue_next(q);
        l = ngx_queue_data(q, ngx_http_redisgate_listener_t, queue);

        if (line) {
            ngx_http_redisgate_stream_message(l, line);

        } else {
            ngx_http_redisgate_stream_subscribed(l);
        }

        if (link->generation != generation || hub->delivering != ch) {
            return;
        }
    }

    hub->delivering = NULL;
}


/*
 * Closed: by us when the last listener left (nothing to do), or lost: the
 * channels stay, unsubscribed, and the hub connects again, from the event
 * loop (this runs inside the link's close).
 */

static void
ngx_http_redisgate_hub_closed(ngx_http_redisgate_link_t *link)
{
    ngx_http_redisgate_hub_t *hub = link->data;

    ngx_queue_t                   *q;
    ngx_msec_int_t                 left;
    ngx_http_redisgate_channel_t  *ch;

    if (hub->node) {
        hub->node->refs--;
        hub->node = NULL;
    }

    if (hub->nchannels == 0) {
        return;
    }

    for (q = ngx_queue_head(&hub->channels);
         q != ngx_queue_sentinel(&hub->channels);
         q = ngx_queue_next(q))
    {
        ch = ngx_queue_data(q, ngx_http_redisgate_channel_t, queue);
        ch->subscribed = 0;
    }

    hub->error = link->error;

    if (!hub->deadline) {
        if (!link->was_ready) {
            /* never had it: no stream waits for what never worked */
            ngx_http_redisgate_hub_end(hub, link->error);
            return;
        }

        hub->deadline = ngx_current_msec + hub->timeout;
        hub->backoff = 100;

        ngx_log_error(NGX_LOG_WARN, hub->log, 0,
                      "redisgate: lost the subscriber connection to %V, "
                      "%ui channels to subscribe to again",
                      &link->node->name, hub->nchannels);

    } else {
        /* again, and not back: wait longer, up to the deadline */
        hub->backoff = ngx_min(hub->backoff * 2, 1000);
    }

    left = (ngx_msec_int_t) (hub->deadline - ngx_current_msec);

    ngx_add_timer(&hub->reconnect,
                  left <= 0 ? 1 : ngx_min(hub->backoff, (ngx_msec_t) left));
}


/* again: the connection, then every channel; past the deadline, the end */

static void
ngx_http_redisgate_hub_reconnect(ngx_event_t *ev)
{
    ngx_http_redisgate_hub_t *hub = ev->data;

    ngx_queue_t                   *q;
    ngx_http_redisgate_channel_t  *ch;

    if ((ngx_msec_int_t) (ngx_current_msec - hub->deadline) >= 0) {
        ngx_log_error(NGX_LOG_ERR, hub->log, 0,
                      "redisgate: the subscriber connection to %V is not "
                      "back in time, ending the streams of its %ui "
                      "channel(s)", &hub->link.node->name, hub->nchannels);

        ngx_http_redisgate_hub_end(hub, hub->error);
        return;
    }

    if (ngx_http_redisgate_hub_connect(hub) != NGX_OK) {
        hub->backoff = ngx_min(hub->backoff * 2, 1000);
        ngx_add_timer(&hub->reconnect,
                      ngx_min(hub->backoff,
                              (ngx_msec_t) (hub->deadline
                                            - ngx_current_msec)));
        return;
    }

    for (q = ngx_queue_head(&hub->channels);
         q != ngx_queue_sentinel(&hub->channels);
         q = ngx_queue_next(q))
    {
        ch = ngx_queue_data(q, ngx_http_redisgate_channel_t, queue);

        if (ngx_http_redisgate_hub_send(hub, &hub->link,
                                        ch->pattern ? "PSUBSCRIBE"
                                                    : "SUBSCRIBE",
                                        &ch->name, NULL)
            != NGX_OK)
        {
            ngx_http_redisgate_link_close(&hub->link,
                                          NGX_HTTP_REDISGATE_FAIL_CLOSED,
                                          "out of memory");
            return;
        }
    }
}


/* every stream of the hub ends, with the reason */

static void
ngx_http_redisgate_hub_end(ngx_http_redisgate_hub_t *hub, const char *error)
{
    ngx_queue_t                    *q;
    ngx_http_redisgate_channel_t   *ch;
    ngx_http_redisgate_listener_t  *l;

    if (hub->reconnect.timer_set) {
        ngx_del_timer(&hub->reconnect);
    }

    while (!ngx_queue_empty(&hub->channels)) {
        q = ngx_queue_head(&hub->channels);
        ch = ngx_queue_data(q, ngx_http_redisgate_channel_t, queue);

        ngx_http_redisgate_hub_forget(hub, ch);
        ch->gone = 1;

        while (!ngx_queue_empty(&ch->listeners)) {
            q = ngx_queue_head(&ch->listeners);
            l = ngx_queue_data(q, ngx_http_redisgate_listener_t, queue);

            ngx_queue_remove(q);
            l->channel = NULL;

            /* it may leave its other channels: they are still listed */
            ngx_http_redisgate_stream_lost(l->stream, error);
        }

        ngx_free(ch);
    }

    hub->deadline = 0;
}


static ngx_uint_t
ngx_http_redisgate_hub_is(redisReply *r, const char *s)
{
    size_t  len;

    len = ngx_strlen(s);

    return r->len == len && ngx_strncasecmp((u_char *) r->str, (u_char *) s,
                                            len) == 0;
}
