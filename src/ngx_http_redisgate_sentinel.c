
/*
 * Copyright (C) RedisGate authors
 */


/*
 * A backend whose primary the sentinels name (redis-sentinel:// URLs).
 *
 * Per worker and per backend: when a request first needs the primary, the
 * sentinels are asked in turn (SENTINEL get-master-addr-by-name) until one
 * answers; the backend's node takes that address, and the requests that
 * waited go on.  The sentinel that answered is then watched: a connection
 * subscribed to +switch-master moves the backend at once when a failover
 * ends.  Each new connection to the primary asks ROLE first (redis.c), and
 * a replica where the primary was, a lost connection or a READONLY reply
 * mark the answer stale: the next request asks again, while the old
 * answer serves.
 *
 * The answer moves the backend through backend.c, which retires the
 * connections to the old primary; Sentinel itself closes the clients of a
 * primary it demotes.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_redisgate.h"


/* the default port of a sentinel with none in the URL */
#define NGX_HTTP_REDISGATE_SENTINEL_PORT  26379


struct ngx_http_redisgate_sentinel_s {
    ngx_http_redisgate_backend_t   *backend;
    ngx_str_t                       name;       /* the primary's */

    /* SENTINEL get-master-addr-by-name <name>, to the sentinels */
    ngx_http_redisgate_ask_t        ask;
    ngx_str_t                       question[3];

    ngx_http_redisgate_link_t       watch;      /* +switch-master */

    time_t                          retry;      /* none knew: not before */

    /* the primary's address as text: the TLS name when none is set */
    u_char                          primary[NGX_SOCKADDR_STRLEN];

    /* "redis://address (primary of redis-sentinel://...)", for the log */
    ngx_str_t                       label;
    size_t                          label_size;

    ngx_pool_t                     *pool;       /* its own, when dynamic */

    unsigned                        known:1;    /* the node has it */
    unsigned                        stale:1;    /* ask again */
    unsigned                        subscribed:1;  /* watch is on */
};


static ngx_int_t ngx_http_redisgate_sentinel_answer(
    ngx_http_redisgate_ask_t *ask, redisReply *reply);
static void ngx_http_redisgate_sentinel_over(ngx_http_redisgate_ask_t *ask);
static ngx_int_t ngx_http_redisgate_sentinel_move(
    ngx_http_redisgate_sentinel_t *s, u_char *ip, size_t ip_len,
    u_char *port, size_t port_len);
static void ngx_http_redisgate_sentinel_watch(
    ngx_http_redisgate_sentinel_t *s, ngx_http_redisgate_node_t *node);
static void ngx_http_redisgate_sentinel_watching(void *data,
    redisReply *reply, const char *error);
static void ngx_http_redisgate_sentinel_switch(
    ngx_http_redisgate_link_t *link, redisReply *reply);
static void ngx_http_redisgate_sentinel_watch_closed(
    ngx_http_redisgate_link_t *link);
static ngx_int_t ngx_http_redisgate_sentinel_decode(ngx_pool_t *pool,
    ngx_str_t *raw, ngx_str_t *s);


/*
 * The sentinels of a parsed redis-sentinel:// URL.  resolve: host names
 * may be resolved now (nginx.conf, as nginx does for upstream servers);
 * otherwise only addresses are taken (the key store's, at run time).
 */

ngx_http_redisgate_sentinel_t *
ngx_http_redisgate_sentinel_create(ngx_pool_t *pool,
    ngx_http_redisgate_url_t *u, ngx_uint_t resolve, const char **error)
{
    ngx_http_redisgate_ask_t       *ask;
    ngx_http_redisgate_sentinel_t  *s;

    s = ngx_pcalloc(pool, sizeof(ngx_http_redisgate_sentinel_t));
    if (s == NULL) {
        *error = "out of memory";
        return NULL;
    }

    ask = &s->ask;

    s->name.data = ngx_pstrdup(pool, &u->name);
    if (s->name.data == NULL) {
        *error = "out of memory";
        return NULL;
    }

    s->name.len = u->name.len;

    if (ngx_http_redisgate_sentinel_decode(pool, &u->sentinel_user,
                                           &ask->user)
        != NGX_OK
        || ngx_http_redisgate_sentinel_decode(pool, &u->sentinel_password,
                                              &ask->password)
           != NGX_OK)
    {
        *error = "invalid Redis URL: bad percent-encoding in the sentinels' "
                 "credentials";
        return NULL;
    }

    ask->nodes = ngx_http_redisgate_ask_nodes(pool, &u->host,
                                     NGX_HTTP_REDISGATE_SENTINEL_PORT,
                                     resolve, "sentinel", &ask->nnodes,
                                     error);
    if (ask->nodes == NULL) {
        return NULL;
    }

    ngx_str_set(&s->question[0], "SENTINEL");
    ngx_str_set(&s->question[1], "get-master-addr-by-name");
    s->question[2] = s->name;

    ask->argv = s->question;
    ask->argc = 3;
    ask->answer = ngx_http_redisgate_sentinel_answer;
    ask->over = ngx_http_redisgate_sentinel_over;
    ask->data = s;

    return s;
}


/* a dynamic backend's sentinel, with a pool of its own (freed with it) */

ngx_http_redisgate_sentinel_t *
ngx_http_redisgate_sentinel_create_dynamic(ngx_str_t *address,
    ngx_log_t *log, const char **error)
{
    ngx_pool_t                     *pool;
    ngx_http_redisgate_url_t        u;
    ngx_http_redisgate_sentinel_t  *s;

    if (ngx_http_redisgate_parse_url(&u, address->data, address->len)
        != NGX_OK)
    {
        *error = u.error;
        return NULL;
    }

    if (u.has_userinfo || u.db) {
        /* there is one place for those: the key store's columns */
        *error = "the instance's sentinel address carries credentials or a "
                 "database: the key store has columns for them";
        return NULL;
    }

    pool = ngx_create_pool(1024, log);
    if (pool == NULL) {
        *error = "out of memory";
        return NULL;
    }

    s = ngx_http_redisgate_sentinel_create(pool, &u, 0, error);

    if (s == NULL) {
        ngx_destroy_pool(pool);
        return NULL;
    }

    s->pool = pool;

    return s;
}


/* the same sentinels' credentials: nginx.conf's URLs are equal otherwise */

ngx_uint_t
ngx_http_redisgate_sentinel_same(ngx_http_redisgate_sentinel_t *one,
    ngx_http_redisgate_sentinel_t *two)
{
    ngx_str_t  *u1, *u2, *p1, *p2;

    u1 = &one->ask.user;
    u2 = &two->ask.user;
    p1 = &one->ask.password;
    p2 = &two->ask.password;

    return u1->len == u2->len && p1->len == p2->len
           && ngx_memcmp(u1->data, u2->data, u1->len) == 0
           && ngx_memcmp(p1->data, p2->data, p1->len) == 0;
}


static ngx_int_t
ngx_http_redisgate_sentinel_decode(ngx_pool_t *pool, ngx_str_t *raw,
    ngx_str_t *s)
{
    if (raw->len == 0) {
        ngx_str_null(s);
        return NGX_OK;
    }

    s->data = ngx_pnalloc(pool, raw->len);
    if (s->data == NULL) {
        return NGX_ERROR;
    }

    return ngx_http_redisgate_percent_decode(s->data, &s->len, raw->data,
                                             raw->len);
}


/* in each worker, with the backend's pool */

void
ngx_http_redisgate_sentinel_init(ngx_http_redisgate_backend_t *b,
    ngx_http_redisgate_main_conf_t *rmcf)
{
    ngx_uint_t                      i;
    ngx_http_redisgate_sentinel_t  *s;

    s = b->sentinel;

    s->backend = b;

    for (i = 0; i < s->ask.nnodes; i++) {
        s->ask.nodes[i].connect_timeout = rmcf->connect_timeout;
#if (NGX_SSL)
        if (b->address.tls) {
            s->ask.nodes[i].tls = rmcf->tls;
        }
#endif
    }

    s->ask.log = b->log;
    s->ask.timeout = rmcf->connect_timeout;
    ngx_http_redisgate_ask_init(&s->ask);

    s->watch.data = s;
    s->watch.log = b->log;
    s->watch.on_push = ngx_http_redisgate_sentinel_switch;
    s->watch.on_close = ngx_http_redisgate_sentinel_watch_closed;

    s->label_size = sizeof("rediss:// (primary of )") - 1
                    + NGX_SOCKADDR_STRLEN + b->address.url.len;
    s->label.data = ngx_alloc(s->label_size, b->log);

    /* no address until a sentinel gives one */
    b->resolved = 0;
}


void
ngx_http_redisgate_sentinel_close(ngx_http_redisgate_backend_t *b)
{
    ngx_http_redisgate_sentinel_t  *s;

    s = b->sentinel;

    if (s == NULL || s->backend == NULL) {
        return;
    }

    ngx_http_redisgate_ask_close(&s->ask);
    ngx_http_redisgate_link_free(&s->watch);

    if (s->label.data) {
        ngx_free(s->label.data);
    }

    s->backend = NULL;

    /* closed once: a dynamic sentinel's memory goes with its pool */
    b->sentinel = NULL;

    ngx_http_redisgate_sentinel_destroy(s);
}


/* a dynamic backend's: its pool; nginx.conf's live in the cycle's */

void
ngx_http_redisgate_sentinel_destroy(ngx_http_redisgate_sentinel_t *s)
{
    if (s->pool) {
        ngx_destroy_pool(s->pool);
    }
}


/*
 * As backend_ready(): NGX_OK when the primary is known (asked again in
 * the background when stale), NGX_AGAIN while the sentinels are asked,
 * NGX_DECLINED with *error when none knew it lately.
 */

ngx_int_t
ngx_http_redisgate_sentinel_ready(ngx_http_redisgate_backend_t *b,
    const char **error)
{
    ngx_http_redisgate_sentinel_t  *s;

    s = b->sentinel;

    if (s->known) {
        if (s->stale && s->retry <= ngx_time()) {
            ngx_http_redisgate_ask_start(&s->ask);
        }

        return NGX_OK;
    }

    if (!s->ask.asking && s->retry > ngx_time()) {
        *error = ngx_http_redisgate_link_strerror(
                                          NGX_HTTP_REDISGATE_FAIL_NO_PRIMARY);
        return NGX_DECLINED;
    }

    ngx_http_redisgate_ask_start(&s->ask);

    if (s->ask.asking) {
        return NGX_AGAIN;
    }

    /* no sentinel could even be connected to */
    *error = ngx_http_redisgate_link_strerror(
                                          NGX_HTTP_REDISGATE_FAIL_NO_PRIMARY);
    return NGX_DECLINED;
}


/* the answer may be out of date: the next request asks again */

void
ngx_http_redisgate_sentinel_stale(ngx_http_redisgate_backend_t *b)
{
    if (b->sentinel && b->sentinel->backend) {
        b->sentinel->stale = 1;
    }
}


/* NGX_OK: the primary's address; NGX_DECLINED: ask the next sentinel */

static ngx_int_t
ngx_http_redisgate_sentinel_answer(ngx_http_redisgate_ask_t *ask,
    redisReply *reply)
{
    ngx_http_redisgate_sentinel_t *s = ask->data;

    redisReply  *ip, *port;

    if (reply->type == REDIS_REPLY_NIL) {
        ngx_log_error(NGX_LOG_ERR, ask->log, 0,
                      "redisgate: %V does not know a primary named \"%V\"",
                      &ask->node->name, &s->name);
        return NGX_DECLINED;
    }

    if (reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, ask->log, 0,
                      "redisgate: %V refused to name the primary: %*s",
                      &ask->node->name, (size_t) reply->len, reply->str);
        return NGX_DECLINED;
    }

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2
        || reply->element[0]->type != REDIS_REPLY_STRING
        || reply->element[1]->type != REDIS_REPLY_STRING)
    {
        ngx_log_error(NGX_LOG_ERR, ask->log, 0,
                      "redisgate: %V answered get-master-addr-by-name with "
                      "no address", &ask->node->name);
        return NGX_DECLINED;
    }

    ip = reply->element[0];
    port = reply->element[1];

    if (ngx_http_redisgate_sentinel_move(s, (u_char *) ip->str, ip->len,
                                         (u_char *) port->str, port->len)
        != NGX_OK)
    {
        ngx_log_error(NGX_LOG_ERR, ask->log, 0,
                      "redisgate: %V named a primary at \"%*s\", which is "
                      "not an address", &ask->node->name, (size_t) ip->len,
                      ip->str);
        return NGX_DECLINED;
    }

    s->stale = 0;

    if (s->watch.state == NGX_HTTP_REDISGATE_LINK_CLOSED) {
        ngx_http_redisgate_sentinel_watch(s, ask->node);
    }

    ngx_http_redisgate_backend_wake(s->backend);

    return NGX_OK;
}


/* every sentinel was asked, none answered */

static void
ngx_http_redisgate_sentinel_over(ngx_http_redisgate_ask_t *ask)
{
    ngx_http_redisgate_sentinel_t *s = ask->data;

    ngx_log_error(NGX_LOG_ERR, ask->log, 0,
                  "redisgate: no sentinel of %V named the primary \"%V\"%s",
                  &s->backend->address.url, &s->name,
                  s->known ? ", the last answer stays" : "");

    /* a second without asking: requests fail fast, or use the last answer */
    s->retry = ngx_time() + 1;

    ngx_http_redisgate_backend_wake(s->backend);
}


/* the backend's node to the address a sentinel gave */

static ngx_int_t
ngx_http_redisgate_sentinel_move(ngx_http_redisgate_sentinel_t *s,
    u_char *ip, size_t ip_len, u_char *port, size_t port_len)
{
    u_char                        *p;
    ngx_int_t                      n;
    ngx_sockaddr_t                 sa;
    socklen_t                      socklen;
    in_addr_t                      inaddr;
    ngx_http_redisgate_backend_t  *b;

    b = s->backend;

    n = ngx_atoi(port, port_len);

    if (n < 1 || n > 65535 || ip_len == 0 || ip_len >= NGX_INET6_ADDRSTRLEN)
    {
        return NGX_ERROR;
    }

    ngx_memzero(&sa, sizeof(ngx_sockaddr_t));

    inaddr = ngx_inet_addr(ip, ip_len);

    if (inaddr != INADDR_NONE) {
        sa.sockaddr_in.sin_family = AF_INET;
        sa.sockaddr_in.sin_addr.s_addr = inaddr;
        socklen = sizeof(struct sockaddr_in);

#if (NGX_HAVE_INET6)
    } else if (ngx_inet6_addr(ip, ip_len,
                              sa.sockaddr_in6.sin6_addr.s6_addr)
               == NGX_OK)
    {
        sa.sockaddr_in6.sin6_family = AF_INET6;
        socklen = sizeof(struct sockaddr_in6);
#endif

    } else {
        return NGX_ERROR;
    }

    ngx_inet_set_port(&sa.sockaddr, (in_port_t) n);

    /* the TLS name of a primary known by its address only */
    p = ngx_cpymem(s->primary, ip, ip_len);
    *p = '\0';

#if (NGX_SSL)
    if (b->address.tls && b->node.tls && b->node.tls->name.len == 0) {
        b->node.tls_name.data = s->primary;
        b->node.tls_name.len = ip_len;
    }
#endif

    if (s->label.data) {
        p = ngx_snprintf(s->label.data, s->label_size,
                         "%s://%*s:%i (primary of %V)",
                         b->address.tls ? "rediss" : "redis", ip_len, ip, n,
                         &b->address.url);
        s->label.len = p - s->label.data;
        b->node.name = s->label;
    }

    ngx_http_redisgate_backend_move(b, &sa, socklen);

    s->known = 1;
    s->retry = 0;

    return NGX_OK;
}


/* SUBSCRIBE +switch-master on the sentinel that answered */

static void
ngx_http_redisgate_sentinel_watch(ngx_http_redisgate_sentinel_t *s,
    ngx_http_redisgate_node_t *node)
{
    ngx_str_t  argv[2];

    if (ngx_http_redisgate_link_connect(&s->watch, node, s->backend->log)
        != NGX_OK)
    {
        /* the next stale answer tries again */
        return;
    }

    ngx_str_set(&argv[0], "SUBSCRIBE");
    ngx_str_set(&argv[1], "+switch-master");

    if (ngx_http_redisgate_ask_send(&s->watch, &s->ask.user,
                                    &s->ask.password, argv, 2,
                                    ngx_http_redisgate_sentinel_watching, s)
        != NGX_OK)
    {
        ngx_http_redisgate_link_close(&s->watch,
                                      NGX_HTTP_REDISGATE_FAIL_CLOSED, NULL);
    }
}


static void
ngx_http_redisgate_sentinel_watching(void *data, redisReply *reply,
    const char *error)
{
    ngx_http_redisgate_sentinel_t *s = data;

    if (reply == NULL) {
        return;
    }

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 3) {
        ngx_log_error(NGX_LOG_ERR, s->backend->log, 0,
                      "redisgate: %V refused SUBSCRIBE +switch-master, "
                      "failovers are found when connections break",
                      &s->watch.node->name);

        ngx_http_redisgate_link_close(&s->watch,
                                      NGX_HTTP_REDISGATE_FAIL_CLOSED, NULL);
        return;
    }

    s->subscribed = 1;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, s->backend->log, 0,
                   "redisgate: watching %V for +switch-master",
                   &s->watch.node->name);
}


/* "message" "+switch-master" "<name> <old ip> <old port> <ip> <port>" */

static void
ngx_http_redisgate_sentinel_switch(ngx_http_redisgate_link_t *link,
    redisReply *reply)
{
    ngx_http_redisgate_sentinel_t *s = link->data;

    u_char      *p, *last, *word[5];
    size_t       len[5];
    ngx_uint_t   n;
    redisReply  *payload;

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 3
        || reply->element[2]->type != REDIS_REPLY_STRING)
    {
        return;
    }

    payload = reply->element[2];

    p = (u_char *) payload->str;
    last = p + payload->len;

    for (n = 0; n < 5 && p < last; n++) {
        word[n] = p;

        while (p < last && *p != ' ') {
            p++;
        }

        len[n] = p - word[n];

        if (p < last) {
            p++;
        }
    }

    if (n != 5 || len[0] != s->name.len
        || ngx_strncmp(word[0], s->name.data, len[0]) != 0)
    {
        /* another primary the sentinels watch */
        return;
    }

    ngx_log_error(NGX_LOG_NOTICE, s->backend->log, 0,
                  "redisgate: %V says the primary \"%V\" moved to %*s:%*s",
                  &link->node->name, &s->name, len[3], word[3], len[4],
                  word[4]);

    if (ngx_http_redisgate_sentinel_move(s, word[3], len[3], word[4], len[4])
        != NGX_OK)
    {
        s->stale = 1;
        return;
    }

    s->stale = 0;
}


/* unwatched, a failover may go unseen: ask again at the next request */

static void
ngx_http_redisgate_sentinel_watch_closed(ngx_http_redisgate_link_t *link)
{
    ngx_http_redisgate_sentinel_t *s = link->data;

    s->stale = 1;

    if (!s->subscribed) {
        /* refused (ACL, credentials): not asked again at every request */
        s->retry = ngx_time() + 1;
    }

    s->subscribed = 0;
}
