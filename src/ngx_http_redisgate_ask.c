
/*
 * Copyright (C) RedisGate authors
 */


/*
 * Asking one of several nodes a question: the sentinels where the primary
 * is, a cluster's seeds which node serves which slots.  Each node in turn,
 * from the one that answered last, on one link: connect (TLS too), AUTH
 * when there are credentials, the question, its answer or a deadline.
 * The owner takes an answer or declines it (the next node is asked then);
 * when none answered, it hears that once.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_redisgate.h"


static void ngx_http_redisgate_ask_next(ngx_event_t *ev);
static void ngx_http_redisgate_ask_auth_reply(void *data, redisReply *reply,
    const char *error);
static void ngx_http_redisgate_ask_reply(void *data, redisReply *reply,
    const char *error);
static void ngx_http_redisgate_ask_failed(ngx_http_redisgate_ask_t *ask);
static void ngx_http_redisgate_ask_deadline(ngx_event_t *ev);


/*
 * "host[:port][,host[:port]...]" into nodes named "<what> host:port" in
 * the log, their hosts (NUL-terminated) as TLS names.  resolve: host names
 * may be resolved now (nginx.conf); otherwise addresses only (the key
 * store's, at run time).
 */

ngx_http_redisgate_node_t *
ngx_http_redisgate_ask_nodes(ngx_pool_t *pool, ngx_str_t *hosts,
    in_port_t port, ngx_uint_t resolve, const char *what, ngx_uint_t *n,
    const char **error)
{
    u_char                     *p, *last, *comma;
    size_t                      len;
    ngx_url_t                   url;
    ngx_http_redisgate_node_t  *nodes, *node;

    *n = 1;
    last = hosts->data + hosts->len;

    for (p = hosts->data; p < last; p++) {
        if (*p == ',') {
            (*n)++;
        }
    }

    nodes = ngx_pcalloc(pool, *n * sizeof(ngx_http_redisgate_node_t));
    if (nodes == NULL) {
        *error = "out of memory";
        return NULL;
    }

    node = nodes;
    len = ngx_strlen(what);

    for (p = hosts->data; p <= last; p = comma + 1) {
        comma = ngx_strlchr(p, last, ',');

        if (comma == NULL) {
            comma = last;
        }

        ngx_memzero(&url, sizeof(ngx_url_t));

        url.url.data = p;
        url.url.len = comma - p;
        url.default_port = port;
        url.no_resolve = !resolve;

        if (ngx_parse_url(pool, &url) != NGX_OK
            || url.naddrs == 0 || url.family == AF_UNIX)
        {
            *error = resolve ? "invalid Redis URL: a host is not host[:port] "
                               "or not found"
                             : "invalid Redis URL: a host must be given as "
                               "address[:port]";
            return NULL;
        }

        ngx_memcpy(&node->sockaddr, url.addrs[0].sockaddr,
                   url.addrs[0].socklen);
        node->socklen = url.addrs[0].socklen;

        /* "<what> host:port", the default port too */
        node->name.data = ngx_pnalloc(pool, len + 1 + url.host.len
                                            + sizeof(":65535") - 1);
        node->tls_name.data = ngx_pnalloc(pool, url.host.len + 1);

        if (node->name.data == NULL || node->tls_name.data == NULL) {
            *error = "out of memory";
            return NULL;
        }

        node->name.len = ngx_sprintf(node->name.data, "%s %V:%d", what,
                                     &url.host, (int) url.port)
                         - node->name.data;

        node->tls_name.len = url.host.len;
        *ngx_cpymem(node->tls_name.data, url.host.data, url.host.len) = '\0';

        if (url.host.len > 2 && url.host.data[0] == '[') {
            node->tls_name.data++;
            node->tls_name.len -= 2;
            node->tls_name.data[node->tls_name.len] = '\0';
        }

        node++;
    }

    return nodes;
}


/* in each worker: the owner filled nodes, question, handlers, log */

void
ngx_http_redisgate_ask_init(ngx_http_redisgate_ask_t *ask)
{
    ask->link.data = ask;
    ask->link.log = ask->log;

    ask->deadline.handler = ngx_http_redisgate_ask_deadline;
    ask->deadline.data = ask;
    ask->deadline.log = ask->log;
    ask->deadline.cancelable = 1;   /* no reason to delay an exit */

    ask->step.handler = ngx_http_redisgate_ask_next;
    ask->step.data = ask;
    ask->step.log = ask->log;
}


/* a round, unless one is on */

void
ngx_http_redisgate_ask_start(ngx_http_redisgate_ask_t *ask)
{
    if (ask->asking) {
        return;
    }

    ask->asking = 1;
    ask->asked = 0;
    ask->auth_failed = 0;

    ngx_http_redisgate_ask_next(&ask->step);
}


void
ngx_http_redisgate_ask_close(ngx_http_redisgate_ask_t *ask)
{
    ngx_uint_t  i;

    if (ask->deadline.timer_set) {
        ngx_del_timer(&ask->deadline);
    }

    if (ask->step.posted) {
        ngx_delete_posted_event(&ask->step);
    }

    /* what the link's close calls finds nothing to go on with */
    ask->asking = 0;

    ngx_http_redisgate_link_free(&ask->link);

    for (i = 0; i < ask->nnodes; i++) {
        ngx_http_redisgate_tls_free_session(&ask->nodes[i]);
    }
}


/* the next node of the round, until one answers or all were asked */

static void
ngx_http_redisgate_ask_next(ngx_event_t *ev)
{
    ngx_http_redisgate_ask_t *ask = ev->data;

    while (ask->asked < ask->nnodes) {
        ask->node = &ask->nodes[ask->next];
        ask->next = (ask->next + 1) % ask->nnodes;
        ask->asked++;
        ask->answered = 0;

        if (ngx_http_redisgate_link_connect(&ask->link, ask->node, ask->log)
            != NGX_OK)
        {
            /* the transport logged why */
            continue;
        }

        if (ngx_http_redisgate_ask_send(&ask->link, &ask->user,
                                        &ask->password, ask->argv, ask->argc,
                                        ngx_http_redisgate_ask_reply, ask)
            != NGX_OK)
        {
            ngx_http_redisgate_link_close(&ask->link,
                                          NGX_HTTP_REDISGATE_FAIL_CLOSED,
                                          NULL);
            continue;
        }

        ngx_add_timer(&ask->deadline, ask->timeout);

        return;
    }

    ask->asking = 0;

    ask->over(ask);
}


/*
 * [AUTH [user] password,] the command, on a link: queued, sent once it is
 * connected.  A refused AUTH closes the link: the command hears that.
 */

ngx_int_t
ngx_http_redisgate_ask_send(ngx_http_redisgate_link_t *link, ngx_str_t *user,
    ngx_str_t *password, ngx_str_t *argv, ngx_uint_t argc,
    ngx_http_redisgate_link_reply_pt handler, void *data)
{
    u_char                    *buf;
    size_t                     len;
    ngx_int_t                  rc;
    ngx_str_t                  auth[3], cmds[2];
    ngx_uint_t                 i, n;
    ngx_http_redisgate_cmd_t   c[2];

    n = 0;

    if (password->len) {
        ngx_str_set(&auth[0], "AUTH");
        c[0].argv = auth;
        c[0].argc = 1;

        if (user->len) {
            auth[c[0].argc++] = *user;
        }

        auth[c[0].argc++] = *password;
        n++;
    }

    c[n].argv = argv;
    c[n].argc = argc;
    n++;

    len = 0;

    for (i = 0; i < n; i++) {
        len += ngx_http_redisgate_resp_command_len(&c[i]);
    }

    buf = ngx_alloc(len, link->log);
    if (buf == NULL) {
        return NGX_ERROR;
    }

    cmds[0].data = buf;

    for (i = 0; i < n; i++) {
        cmds[i].data = (i == 0) ? buf : cmds[i - 1].data + cmds[i - 1].len;
        cmds[i].len = ngx_http_redisgate_resp_command(cmds[i].data, &c[i])
                      - cmds[i].data;
    }

    /* the link copies them */

    rc = NGX_OK;

    if (n == 2) {
        rc = ngx_http_redisgate_link_send(link, &cmds[0], 1,
                                          ngx_http_redisgate_ask_auth_reply,
                                          link);
    }

    if (rc == NGX_OK) {
        rc = ngx_http_redisgate_link_send(link, &cmds[n - 1], 1, handler,
                                          data);
    }

    ngx_free(buf);

    return rc == NGX_OK ? NGX_OK : NGX_ERROR;
}


static void
ngx_http_redisgate_ask_auth_reply(void *data, redisReply *reply,
    const char *error)
{
    ngx_http_redisgate_link_t *link = data;

    if (reply == NULL || reply->type != REDIS_REPLY_ERROR) {
        return;
    }

    ngx_log_error(NGX_LOG_ERR, link->log, 0,
                  "redisgate: authentication failed at %V: %*s",
                  &link->node->name, (size_t) reply->len, reply->str);

    ngx_http_redisgate_link_close(link, NGX_HTTP_REDISGATE_FAIL_AUTH, NULL);
}


static void
ngx_http_redisgate_ask_reply(void *data, redisReply *reply,
    const char *error)
{
    ngx_http_redisgate_ask_t *ask = data;

    if (ask->deadline.timer_set) {
        ngx_del_timer(&ask->deadline);
    }

    if (reply == NULL) {
        /* the transport logged why, or the deadline did */
        if (ask->link.failure == NGX_HTTP_REDISGATE_FAIL_AUTH) {
            ask->auth_failed = 1;
        }

        ngx_http_redisgate_ask_failed(ask);
        return;
    }

    if (ask->answered || !ask->asking) {
        return;
    }

    if (ask->answer(ask, reply) != NGX_OK) {
        /* the owner logged why */
        ngx_http_redisgate_link_close(&ask->link,
                                      NGX_HTTP_REDISGATE_FAIL_CLOSED, NULL);
        ngx_http_redisgate_ask_failed(ask);
        return;
    }

    ask->answered = 1;
    ask->asking = 0;

    /* the next round starts with the one that answered */
    ask->next = ask->node - ask->nodes;

    ngx_http_redisgate_link_close(&ask->link, NGX_HTTP_REDISGATE_FAIL_CLOSED,
                                  NULL);
}


/* the next node, from the event loop: this may run inside the link's
 * close, which cannot open it again */

static void
ngx_http_redisgate_ask_failed(ngx_http_redisgate_ask_t *ask)
{
    if (ask->answered || !ask->asking) {
        return;
    }

    ask->answered = 1;

    ngx_post_event(&ask->step, &ngx_posted_events);
}


static void
ngx_http_redisgate_ask_deadline(ngx_event_t *ev)
{
    ngx_http_redisgate_ask_t *ask = ev->data;

    ngx_log_error(NGX_LOG_ERR, ev->log, 0,
                  "redisgate: %V did not answer %V in time",
                  &ask->node->name, &ask->argv[0]);

    ngx_http_redisgate_link_close(&ask->link, NGX_HTTP_REDISGATE_FAIL_TIMEOUT,
                                  NULL);
}
