
/*
 * Copyright (C) RedisGate authors
 */


/*
 * A request's commands on a Redis Cluster: each to the primary that serves
 * its keys' slot, and the replies back to the handler in the order of the
 * commands, as one Redis would have given them.
 *
 * A command is sent as one or more parts.  Most commands are one part, to
 * the node of their first key's slot (Redis itself answers CROSSSLOT when
 * their keys are in several).  MGET, MSET, DEL, UNLINK, EXISTS and TOUCH
 * whose keys are in several slots are split, one part per slot, and their
 * replies merged into the one reply the command has on one Redis.  A few
 * keyless commands go to every primary (DBSIZE sums, KEYS concatenates,
 * FLUSHDB, SCRIPT and FUNCTION loads and flushes); SCAN goes to one
 * primary at a time, its cursor carrying which; the rest go to any node.
 *
 * The parts of a request are grouped per node, one send (redis.c) per
 * node, all at once.  A reply that comes before its command's turn is
 * held (taken from hiredis, which would free it) until the replies before
 * it are given.  MOVED updates the slot map and sends that part again to
 * the new primary; ASK sends it once to the node named, after ASKING;
 * TRYAGAIN, CLUSTERDOWN and LOADING send it again after a short wait, a
 * few times, then the request fails.  A transaction (/multi-exec) is one
 * slot's, sent whole to its node, and sent again whole when a command in
 * it was redirected: its connection never stays inside MULTI.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_redisgate.h"


/* redirections and waits for one part before it fails */
#define NGX_HTTP_REDISGATE_SCATTER_REDIRECTS  5
#define NGX_HTTP_REDISGATE_SCATTER_RETRIES    5
#define NGX_HTTP_REDISGATE_SCATTER_WAIT       100     /* ms, doubling */


/* how the replies of a command's parts become its reply */
#define NGX_HTTP_REDISGATE_MERGE_NONE    0   /* one part: its reply */
#define NGX_HTTP_REDISGATE_MERGE_ARRAY   1   /* MGET: back in key order */
#define NGX_HTTP_REDISGATE_MERGE_OK      2   /* MSET, FLUSHDB: all OK */
#define NGX_HTTP_REDISGATE_MERGE_SUM     3   /* DEL, DBSIZE: the sum */
#define NGX_HTTP_REDISGATE_MERGE_CONCAT  4   /* KEYS: one after another */
#define NGX_HTTP_REDISGATE_MERGE_FIRST   5   /* SCRIPT LOAD: the first */
#define NGX_HTTP_REDISGATE_MERGE_AND     6   /* SCRIPT EXISTS: on all */
#define NGX_HTTP_REDISGATE_MERGE_SCAN    7   /* SCAN: the cursor's node */


/* a key of a split command: its slot, its place among the keys */
typedef struct {
    ngx_uint_t                      key;
    ngx_uint_t                      slot;
} ngx_http_redisgate_keyed_t;


typedef struct {
    ngx_uint_t                      command;
    ngx_uint_t                      slot;       /* SLOTS: any node */
    ngx_http_redisgate_backend_t   *node;       /* set: this node only */
    ngx_str_t                       resp;
    redisReply                     *reply;      /* held for the merge */
    ngx_http_redisgate_keyed_t     *keys;       /* MGET: where its go */
    ngx_uint_t                      nkeys;
    ngx_uint_t                      redirects;
    unsigned                        asking:1;   /* ASKING first, at node */
    unsigned                        again:1;    /* sent after the wait */
} ngx_http_redisgate_part_t;


typedef struct {
    ngx_uint_t                      first;      /* its parts */
    ngx_uint_t                      nparts;
    ngx_uint_t                      left;       /* replies to come */
    ngx_uint_t                      merge;
    ngx_uint_t                      nkeys;      /* MGET: the reply's size */
    ngx_uint_t                      scan;       /* SCAN: the node's index */
    redisReply                     *reply;      /* held until its turn */
    unsigned                        ready:1;
} ngx_http_redisgate_command_state_t;


typedef struct {
    ngx_http_request_t             *request;
    ngx_http_redisgate_backend_t   *backend;
    ngx_http_redisgate_cluster_t   *cluster;
    ngx_http_redisgate_cmd_t       *cmds;
    ngx_uint_t                      n;

    ngx_http_redisgate_part_t      *parts;
    ngx_uint_t                      nparts;
    ngx_uint_t                      parts_size;
    ngx_http_redisgate_command_state_t  *commands;

    ngx_http_redisgate_reply_pt     handler;
    void                           *data;
    ngx_msec_t                      timeout;

    ngx_uint_t                      next;       /* the next to hand over */
    ngx_uint_t                      sends;      /* not over yet */
    ngx_uint_t                      retries;
    ngx_event_t                     wait;       /* TRYAGAIN and the like */

    /* a transaction: MULTI, its commands, EXEC, as one block */
    ngx_str_t                      *block;
    ngx_uint_t                      nblock;
    ngx_uint_t                      block_slot;
    ngx_http_redisgate_backend_t   *block_node; /* an ASK's, once */
    ngx_str_t                      *asking;     /* ASKING, then the block */
    redisReply                    **held;       /* its replies */
    redisReply                     *redirect;   /* the first MOVED or ASK */

    const char                     *error;      /* while starting */

    unsigned                        failed:1;
    unsigned                        multi:1;
    unsigned                        starting:1; /* the handler waits */
} ngx_http_redisgate_scatter_t;


/* one send: some parts (or a transaction) to one node */
typedef struct {
    ngx_http_redisgate_scatter_t   *sc;
    ngx_uint_t                     *parts;
    ngx_uint_t                      got;
    ngx_uint_t                      skip;       /* ASKING's reply */
} ngx_http_redisgate_send_t;


static ngx_int_t ngx_http_redisgate_scatter_started(
    ngx_http_redisgate_scatter_t *sc, ngx_int_t rc, const char **error);
static ngx_int_t ngx_http_redisgate_scatter_plan(
    ngx_http_redisgate_scatter_t *sc, const char **error);
static ngx_int_t ngx_http_redisgate_scatter_split(
    ngx_http_redisgate_scatter_t *sc, ngx_uint_t i, ngx_uint_t *keys,
    ngx_uint_t nkeys, ngx_uint_t pairs);
static int ngx_libc_cdecl ngx_http_redisgate_scatter_by_slot(
    const void *one, const void *two);
static ngx_int_t ngx_http_redisgate_scatter_every(
    ngx_http_redisgate_scatter_t *sc, ngx_uint_t i, ngx_str_t *resp);
static ngx_int_t ngx_http_redisgate_scatter_scan(
    ngx_http_redisgate_scatter_t *sc, ngx_uint_t i);
static const char *ngx_http_redisgate_scatter_not_in_multi(
    ngx_http_redisgate_scatter_t *sc, u_char *name, size_t len);
static ngx_http_redisgate_part_t *ngx_http_redisgate_scatter_part(
    ngx_http_redisgate_scatter_t *sc, ngx_uint_t i, ngx_uint_t slot);
static ngx_int_t ngx_http_redisgate_scatter_format(
    ngx_http_redisgate_scatter_t *sc, ngx_http_redisgate_part_t *p,
    ngx_str_t *argv, ngx_uint_t argc);
static ngx_uint_t ngx_http_redisgate_scatter_merge_of(u_char *name,
    size_t len, ngx_uint_t *every);
static ngx_int_t ngx_http_redisgate_scatter_go(
    ngx_http_redisgate_scatter_t *sc, ngx_uint_t *which, ngx_uint_t n);
static ngx_int_t ngx_http_redisgate_scatter_to(
    ngx_http_redisgate_scatter_t *sc, ngx_http_redisgate_backend_t *node,
    ngx_str_t *resp, ngx_uint_t n, ngx_http_redisgate_send_t *send);
static void ngx_http_redisgate_scatter_reply(void *data, redisReply *reply,
    const char *error);
static ngx_int_t ngx_http_redisgate_scatter_redirected(
    ngx_http_redisgate_scatter_t *sc, ngx_http_redisgate_part_t *p,
    redisReply *reply);
static void ngx_http_redisgate_scatter_done(ngx_http_redisgate_scatter_t *sc,
    ngx_http_redisgate_part_t *p, redisReply *reply);
static void ngx_http_redisgate_scatter_hand_over(
    ngx_http_redisgate_scatter_t *sc);
static void ngx_http_redisgate_scatter_fail(ngx_http_redisgate_scatter_t *sc,
    const char *error);
static void ngx_http_redisgate_scatter_finish(
    ngx_http_redisgate_scatter_t *sc);
static void ngx_http_redisgate_scatter_wait(ngx_http_redisgate_scatter_t *sc);
static void ngx_http_redisgate_scatter_waited(ngx_event_t *ev);
static void ngx_http_redisgate_scatter_cleanup(void *data);
static ngx_int_t ngx_http_redisgate_scatter_multi(
    ngx_http_redisgate_scatter_t *sc);
static void ngx_http_redisgate_scatter_multi_reply(void *data,
    redisReply *reply, const char *error);
static redisReply *ngx_http_redisgate_scatter_merge(
    ngx_http_redisgate_scatter_t *sc, ngx_http_redisgate_command_state_t *c);
static ngx_int_t ngx_http_redisgate_scatter_cursor(
    ngx_http_redisgate_scatter_t *sc, ngx_http_redisgate_command_state_t *c,
    redisReply *reply);
static redisReply *ngx_http_redisgate_scatter_take(redisReply *reply);
static ngx_uint_t ngx_http_redisgate_scatter_is(redisReply *reply,
    char *prefix);


/*
 * As redis_send(), for a cluster backend: handler gets each command's
 * reply in order, then (NULL, NULL).  NGX_ABORT: a transaction spans
 * slots, *error is Redis's own text for it (400).
 */

ngx_int_t
ngx_http_redisgate_scatter(ngx_http_redisgate_backend_t *b,
    ngx_http_request_t *r, ngx_http_redisgate_cmd_t *cmds, ngx_str_t *resp,
    ngx_uint_t n, ngx_uint_t multi, ngx_msec_t timeout,
    ngx_http_redisgate_reply_pt handler, void *data, const char **error)
{
    ngx_int_t                      rc;
    ngx_uint_t                     i, *all;
    ngx_pool_cleanup_t            *cln;
    ngx_http_redisgate_scatter_t  *sc;

    sc = ngx_pcalloc(r->pool, sizeof(ngx_http_redisgate_scatter_t));
    cln = ngx_pool_cleanup_add(r->pool, 0);

    if (sc == NULL || cln == NULL) {
        *error = "out of memory";
        return NGX_DECLINED;
    }

    sc->request = r;
    sc->backend = b;
    sc->cluster = b->cluster;
    sc->cmds = cmds;
    sc->n = n;
    sc->handler = handler;
    sc->data = data;
    sc->timeout = timeout;
    sc->multi = multi;

    sc->wait.handler = ngx_http_redisgate_scatter_waited;
    sc->wait.data = sc;
    sc->wait.log = r->connection->log;

    cln->handler = ngx_http_redisgate_scatter_cleanup;
    cln->data = sc;

    if (multi) {
        sc->block = resp;
        sc->nblock = n + 2;

        rc = ngx_http_redisgate_scatter_plan(sc, error);
        if (rc != NGX_OK) {
            return rc;
        }

        sc->starting = 1;
        rc = ngx_http_redisgate_scatter_multi(sc);

        return ngx_http_redisgate_scatter_started(sc, rc, error);
    }

    sc->commands = ngx_pcalloc(r->pool,
                       n * sizeof(ngx_http_redisgate_command_state_t));
    sc->parts = ngx_palloc(r->pool, n * sizeof(ngx_http_redisgate_part_t));

    if (sc->commands == NULL || sc->parts == NULL) {
        *error = "out of memory";
        return NGX_DECLINED;
    }

    sc->parts_size = n;

    rc = ngx_http_redisgate_scatter_plan(sc, error);
    if (rc != NGX_OK) {
        return rc;
    }

    for (i = 0; i < sc->nparts; i++) {
        if (sc->parts[i].resp.len == 0) {
            sc->parts[i].resp = resp[sc->parts[i].command];
        }
    }

    all = ngx_palloc(r->pool, sc->nparts * sizeof(ngx_uint_t));
    if (all == NULL) {
        *error = "out of memory";
        return NGX_DECLINED;
    }

    for (i = 0; i < sc->nparts; i++) {
        all[i] = i;
    }

    sc->starting = 1;
    rc = ngx_http_redisgate_scatter_go(sc, all, sc->nparts);

    return ngx_http_redisgate_scatter_started(sc, rc, error);
}


/*
 * The first sends are out.  Nothing out (the nodes are down): the caller
 * answers, the handler has heard nothing.  Some out: the handler hears of
 * a failure now, and of the end when the sends are over.
 */

static ngx_int_t
ngx_http_redisgate_scatter_started(ngx_http_redisgate_scatter_t *sc,
    ngx_int_t rc, const char **error)
{
    sc->starting = 0;

    if (rc != NGX_OK && sc->sends == 0) {
        *error = "out of memory";
        return NGX_ERROR;
    }

    if (rc != NGX_OK && !sc->failed) {
        sc->failed = 1;
        sc->error = "out of memory";
    }

    if (sc->sends == 0) {
        *error = sc->error;
        return NGX_DECLINED;
    }

    if (sc->failed) {
        sc->handler(sc->data, NULL, sc->error);
    }

    return NGX_OK;
}


/*
 * Each command into parts.  For a transaction, only the slot its keys
 * share; NGX_ABORT when they do not.
 */

static ngx_int_t
ngx_http_redisgate_scatter_plan(ngx_http_redisgate_scatter_t *sc,
    const char **error)
{
    u_char                               name[NGX_HTTP_REDISGATE_NAME_MAX];
    size_t                               len, sub_len;
    ngx_int_t                            rc;
    ngx_uint_t                           i, k, nkeys, slot, s, merge, every;
    ngx_uint_t                          *keys, max;
    ngx_http_redisgate_cmd_t            *cmd;
    const ngx_http_redisgate_command_t  *c;

    max = 0;

    for (i = 0; i < sc->n; i++) {
        max = ngx_max(max, sc->cmds[i].argc);
    }

    keys = ngx_palloc(sc->request->pool, max * sizeof(ngx_uint_t));
    if (keys == NULL) {
        *error = "out of memory";
        return NGX_DECLINED;
    }

    sc->block_slot = NGX_HTTP_REDISGATE_SLOTS;

    for (i = 0; i < sc->n; i++) {
        cmd = &sc->cmds[i];

        c = ngx_http_redisgate_command_lookup(name,
                                              NGX_HTTP_REDISGATE_NAME_MAX,
                                              cmd, &len, &sub_len);
        nkeys = 0;

        if (c) {
            rc = ngx_http_redisgate_command_keys(c, cmd, keys, &nkeys);

            if (rc != NGX_OK) {
                /* not a number of keys: any node says why */
                nkeys = 0;
            }
        }

        slot = nkeys ? ngx_http_redisgate_key_slot(cmd->argv[keys[0]].data,
                                                   cmd->argv[keys[0]].len)
                     : NGX_HTTP_REDISGATE_SLOTS;

        every = 0;

        if (sc->multi) {
            if (c && (ngx_http_redisgate_scatter_merge_of(name, len, &every)
                      == NGX_HTTP_REDISGATE_MERGE_SCAN
                      || every))
            {
                /* one node runs a transaction: these need them all */
                *error = ngx_http_redisgate_scatter_not_in_multi(sc, name,
                                                                 len);
                return NGX_ABORT;
            }

            for (k = 0; k < nkeys; k++) {
                s = ngx_http_redisgate_key_slot(cmd->argv[keys[k]].data,
                                                cmd->argv[keys[k]].len);

                if (sc->block_slot == NGX_HTTP_REDISGATE_SLOTS) {
                    sc->block_slot = s;

                } else if (s != sc->block_slot) {
                    *error = "CROSSSLOT Keys in request don't hash to the "
                             "same slot";
                    return NGX_ABORT;
                }
            }

            continue;
        }

        every = 0;
        merge = c ? ngx_http_redisgate_scatter_merge_of(name, len, &every)
                  : NGX_HTTP_REDISGATE_MERGE_NONE;

        if (merge == NGX_HTTP_REDISGATE_MERGE_SCAN) {
            rc = ngx_http_redisgate_scatter_scan(sc, i);

            if (rc == NGX_DECLINED) {
                /* not a cursor: any node says so, as it is */
                merge = NGX_HTTP_REDISGATE_MERGE_NONE;
                rc = (ngx_http_redisgate_scatter_part(sc, i,
                                                 NGX_HTTP_REDISGATE_SLOTS)
                      == NULL) ? NGX_ERROR : NGX_OK;
            }

        } else if (every) {
            rc = ngx_http_redisgate_scatter_every(sc, i, NULL);

        } else if (merge != NGX_HTTP_REDISGATE_MERGE_NONE && nkeys > 1) {
            for (k = 1; k < nkeys; k++) {
                if (ngx_http_redisgate_key_slot(cmd->argv[keys[k]].data,
                                                cmd->argv[keys[k]].len)
                    != slot)
                {
                    break;
                }
            }

            if (k == nkeys) {
                /* one slot: as it is */
                merge = NGX_HTTP_REDISGATE_MERGE_NONE;
                rc = (ngx_http_redisgate_scatter_part(sc, i, slot) == NULL)
                     ? NGX_ERROR : NGX_OK;

            } else {
                rc = ngx_http_redisgate_scatter_split(sc, i, keys, nkeys,
                                  merge == NGX_HTTP_REDISGATE_MERGE_OK);
            }

        } else {
            merge = NGX_HTTP_REDISGATE_MERGE_NONE;
            rc = (ngx_http_redisgate_scatter_part(sc, i, slot) == NULL)
                 ? NGX_ERROR : NGX_OK;
        }

        if (rc != NGX_OK) {
            *error = "out of memory";
            return NGX_DECLINED;
        }

        sc->commands[i].merge = merge;
        sc->commands[i].left = sc->commands[i].nparts;

        if (merge == NGX_HTTP_REDISGATE_MERGE_ARRAY) {
            sc->commands[i].nkeys = nkeys;
        }
    }

    return NGX_OK;
}


/* the 400 for a command of every primary inside a transaction */

static const char *
ngx_http_redisgate_scatter_not_in_multi(ngx_http_redisgate_scatter_t *sc,
    u_char *name, size_t len)
{
    u_char  *text, *p;

    text = ngx_pnalloc(sc->request->pool, len + 128);
    if (text == NULL) {
        return "ERR a command of every cluster node in a transaction";
    }

    p = ngx_sprintf(text, "ERR '%*s' runs on every primary of the cluster, "
                    "not inside a transaction", len, name);
    *p = '\0';

    return (const char *) text;
}


/* a part of command i, at the end of the parts */

static ngx_http_redisgate_part_t *
ngx_http_redisgate_scatter_part(ngx_http_redisgate_scatter_t *sc,
    ngx_uint_t i, ngx_uint_t slot)
{
    ngx_http_redisgate_part_t           *p, *parts;
    ngx_http_redisgate_command_state_t  *c;

    if (sc->nparts == sc->parts_size) {
        /* split commands: twice the room (one part per command fits) */

        parts = ngx_palloc(sc->request->pool,
                           2 * sc->parts_size
                           * sizeof(ngx_http_redisgate_part_t));
        if (parts == NULL) {
            return NULL;
        }

        ngx_memcpy(parts, sc->parts,
                   sc->nparts * sizeof(ngx_http_redisgate_part_t));

        sc->parts = parts;
        sc->parts_size *= 2;
    }

    c = &sc->commands[i];

    if (c->nparts == 0) {
        c->first = sc->nparts;
    }

    c->nparts++;

    p = &sc->parts[sc->nparts++];
    ngx_memzero(p, sizeof(ngx_http_redisgate_part_t));

    p->command = i;
    p->slot = slot;

    return p;
}


/*
 * MGET, DEL... (pairs == 0) or MSET (pairs == 1) with keys in several
 * slots: one part per slot, each the command with that slot's keys, in
 * their order.  The keys sorted by slot: linear in the keys, whatever the
 * number of slots.
 */

static ngx_int_t
ngx_http_redisgate_scatter_split(ngx_http_redisgate_scatter_t *sc,
    ngx_uint_t i, ngx_uint_t *keys, ngx_uint_t nkeys, ngx_uint_t pairs)
{
    ngx_str_t                  *argv;
    ngx_uint_t                  k, j, end, argc, slot;
    ngx_http_redisgate_cmd_t   *cmd;
    ngx_http_redisgate_part_t  *p;
    ngx_http_redisgate_keyed_t *sorted;

    cmd = &sc->cmds[i];

    sorted = ngx_palloc(sc->request->pool,
                        nkeys * sizeof(ngx_http_redisgate_keyed_t));
    argv = ngx_palloc(sc->request->pool,
                      (1 + nkeys * (pairs + 1)) * sizeof(ngx_str_t));

    if (sorted == NULL || argv == NULL) {
        return NGX_ERROR;
    }

    for (k = 0; k < nkeys; k++) {
        sorted[k].slot = ngx_http_redisgate_key_slot(cmd->argv[keys[k]].data,
                                                     cmd->argv[keys[k]].len);
        sorted[k].key = k;
    }

    /* by slot, then by place: each part's keys in the command's order */
    ngx_qsort(sorted, nkeys, sizeof(ngx_http_redisgate_keyed_t),
              ngx_http_redisgate_scatter_by_slot);

    for (k = 0; k < nkeys; k = end) {
        slot = sorted[k].slot;

        for (end = k + 1; end < nkeys && sorted[end].slot == slot; end++) {
            /* void */
        }

        p = ngx_http_redisgate_scatter_part(sc, i, slot);
        if (p == NULL) {
            return NGX_ERROR;
        }

        /* the keys' places, for MGET's merge: the sorted run itself */
        p->keys = &sorted[k];
        p->nkeys = end - k;

        /* one array for every part's arguments: formatted at once */
        argv[0] = cmd->argv[0];
        argc = 1;

        for (j = k; j < end; j++) {
            argv[argc++] = cmd->argv[keys[sorted[j].key]];

            if (pairs && keys[sorted[j].key] + 1 < cmd->argc) {
                argv[argc++] = cmd->argv[keys[sorted[j].key] + 1];
            }
        }

        if (ngx_http_redisgate_scatter_format(sc, p, argv, argc) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static int ngx_libc_cdecl
ngx_http_redisgate_scatter_by_slot(const void *one, const void *two)
{
    const ngx_http_redisgate_keyed_t  *a = one, *b = two;

    if (a->slot != b->slot) {
        return a->slot < b->slot ? -1 : 1;
    }

    return a->key < b->key ? -1 : (a->key > b->key);
}


/* a keyless command for every primary (resp: another command than i's) */

static ngx_int_t
ngx_http_redisgate_scatter_every(ngx_http_redisgate_scatter_t *sc,
    ngx_uint_t i, ngx_str_t *resp)
{
    ngx_uint_t                      k, n;
    ngx_http_redisgate_part_t      *p;
    ngx_http_redisgate_backend_t  **nodes;

    nodes = ngx_http_redisgate_cluster_nodes(sc->cluster, &n);

    for (k = 0; k < n; k++) {
        p = ngx_http_redisgate_scatter_part(sc, i, NGX_HTTP_REDISGATE_SLOTS);
        if (p == NULL) {
            return NGX_ERROR;
        }

        p->node = nodes[k];

        if (resp) {
            p->resp = *resp;
        }
    }

    return NGX_OK;
}


/*
 * SCAN cursor [...]: the cursor is the node's cursor times 1024 plus the
 * node's index among the primaries (in the order of their addresses);
 * SCAN 0 starts at the first, and a node's 0 moves to the next.
 * NGX_DECLINED: not a cursor.
 */

static ngx_int_t
ngx_http_redisgate_scatter_scan(ngx_http_redisgate_scatter_t *sc,
    ngx_uint_t i)
{
    u_char                          buf[NGX_INT64_LEN];
    uint64_t                        inner;
    ngx_str_t                      *argv;
    ngx_uint_t                      n, node;
    ngx_http_redisgate_cmd_t       *cmd;
    ngx_http_redisgate_part_t      *part;
    ngx_http_redisgate_backend_t  **nodes;

    cmd = &sc->cmds[i];
    nodes = ngx_http_redisgate_cluster_nodes(sc->cluster, &n);

    if (cmd->argc < 2 || n > NGX_HTTP_REDISGATE_SCAN_NODES
        || ngx_http_redisgate_scan_cursor_parse(cmd->argv[1].data,
                                                cmd->argv[1].len, &inner,
                                                &node)
           != NGX_OK)
    {
        return NGX_DECLINED;
    }

    if (node >= n) {
        /* a cursor from before the cluster shrank: the last node again */
        node = n - 1;
        inner = 0;
    }

    part = ngx_http_redisgate_scatter_part(sc, i, NGX_HTTP_REDISGATE_SLOTS);
    if (part == NULL) {
        return NGX_ERROR;
    }

    part->node = nodes[node];
    sc->commands[i].scan = node;

    argv = ngx_palloc(sc->request->pool, cmd->argc * sizeof(ngx_str_t));
    if (argv == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(argv, cmd->argv, cmd->argc * sizeof(ngx_str_t));

    argv[1].data = buf;
    argv[1].len = ngx_sprintf(buf, "%uL", inner) - buf;

    return ngx_http_redisgate_scatter_format(sc, part, argv, cmd->argc);
}


static ngx_int_t
ngx_http_redisgate_scatter_format(ngx_http_redisgate_scatter_t *sc,
    ngx_http_redisgate_part_t *p, ngx_str_t *argv, ngx_uint_t argc)
{
    u_char                    *data;
    ngx_http_redisgate_cmd_t   cmd;

    cmd.argv = argv;
    cmd.argc = argc;

    data = ngx_pnalloc(sc->request->pool,
                       ngx_http_redisgate_resp_command_len(&cmd));
    if (data == NULL) {
        return NGX_ERROR;
    }

    p->resp.data = data;
    p->resp.len = ngx_http_redisgate_resp_command(data, &cmd) - data;

    return NGX_OK;
}


/* what a command's parts merge into, and whether it goes to every node */

static ngx_uint_t
ngx_http_redisgate_scatter_merge_of(u_char *name, size_t len,
    ngx_uint_t *every)
{
    ngx_uint_t  i;

    static const struct {
        ngx_str_t   name;
        ngx_uint_t  merge;
        ngx_uint_t  every;
    }  merges[] = {
        { ngx_string("mget"), NGX_HTTP_REDISGATE_MERGE_ARRAY, 0 },
        { ngx_string("mset"), NGX_HTTP_REDISGATE_MERGE_OK, 0 },
        { ngx_string("del"), NGX_HTTP_REDISGATE_MERGE_SUM, 0 },
        { ngx_string("unlink"), NGX_HTTP_REDISGATE_MERGE_SUM, 0 },
        { ngx_string("exists"), NGX_HTTP_REDISGATE_MERGE_SUM, 0 },
        { ngx_string("touch"), NGX_HTTP_REDISGATE_MERGE_SUM, 0 },
        { ngx_string("scan"), NGX_HTTP_REDISGATE_MERGE_SCAN, 0 },
        { ngx_string("dbsize"), NGX_HTTP_REDISGATE_MERGE_SUM, 1 },
        { ngx_string("keys"), NGX_HTTP_REDISGATE_MERGE_CONCAT, 1 },
        { ngx_string("flushdb"), NGX_HTTP_REDISGATE_MERGE_OK, 1 },
        { ngx_string("script|load"), NGX_HTTP_REDISGATE_MERGE_FIRST, 1 },
        { ngx_string("script|flush"), NGX_HTTP_REDISGATE_MERGE_OK, 1 },
        { ngx_string("script|exists"), NGX_HTTP_REDISGATE_MERGE_AND, 1 },
        { ngx_string("function|load"), NGX_HTTP_REDISGATE_MERGE_FIRST, 1 },
        { ngx_string("function|flush"), NGX_HTTP_REDISGATE_MERGE_OK, 1 },
        { ngx_string("function|delete"), NGX_HTTP_REDISGATE_MERGE_OK, 1 },
        { ngx_null_string, 0, 0 }
    };

    for (i = 0; merges[i].name.len; i++) {
        if (merges[i].name.len == len
            && ngx_strncmp(merges[i].name.data, name, len) == 0)
        {
            *every = merges[i].every;
            return merges[i].merge;
        }
    }

    *every = 0;

    return NGX_HTTP_REDISGATE_MERGE_NONE;
}


/* these parts, one send per node */

static ngx_int_t
ngx_http_redisgate_scatter_go(ngx_http_redisgate_scatter_t *sc,
    ngx_uint_t *which, ngx_uint_t n)
{
    ngx_str_t                      *resp, asking[2];
    ngx_uint_t                      i, j, k, *group;
    ngx_http_redisgate_part_t      *p;
    ngx_http_redisgate_send_t      *send;
    ngx_http_redisgate_backend_t  **nodes, *node;

    nodes = ngx_palloc(sc->request->pool,
                       n * sizeof(ngx_http_redisgate_backend_t *));
    group = ngx_palloc(sc->request->pool, n * sizeof(ngx_uint_t));

    if (nodes == NULL || group == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < n; i++) {
        p = &sc->parts[which[i]];
        nodes[i] = p->node ? p->node
                           : ngx_http_redisgate_cluster_node(sc->cluster,
                                                             p->slot);

        if (nodes[i] == NULL) {
            /* a map with no primary in it */
            ngx_http_redisgate_scatter_fail(sc, "Redis unavailable: no "
                                            "cluster node serves the keys");
            return NGX_OK;
        }
    }

    for (i = 0; i < n; i++) {
        node = nodes[i];

        if (node == NULL) {
            /* sent with another part of its node's */
            continue;
        }

        p = &sc->parts[which[i]];

        send = ngx_pcalloc(sc->request->pool,
                           sizeof(ngx_http_redisgate_send_t));
        if (send == NULL) {
            return NGX_ERROR;
        }

        send->sc = sc;

        if (p->asking) {
            /* once, on its own: ASKING holds for the next command only */
            p->asking = 0;
            nodes[i] = NULL;

            ngx_str_set(&asking[0], "*1\r\n$6\r\nASKING\r\n");
            asking[1] = p->resp;

            /* which may be the caller's, on its stack */
            send->parts = ngx_palloc(sc->request->pool, sizeof(ngx_uint_t));
            if (send->parts == NULL) {
                return NGX_ERROR;
            }

            send->parts[0] = which[i];
            send->skip = 1;

            if (ngx_http_redisgate_scatter_to(sc, node, asking, 2, send)
                != NGX_OK)
            {
                return NGX_ERROR;
            }

            continue;
        }

        /* this node's parts, in their order */

        k = 0;

        for (j = i; j < n; j++) {
            if (nodes[j] == node && !sc->parts[which[j]].asking) {
                group[k++] = which[j];
                nodes[j] = NULL;
            }
        }

        resp = ngx_palloc(sc->request->pool, k * sizeof(ngx_str_t));
        send->parts = ngx_palloc(sc->request->pool, k * sizeof(ngx_uint_t));

        if (resp == NULL || send->parts == NULL) {
            return NGX_ERROR;
        }

        for (j = 0; j < k; j++) {
            send->parts[j] = group[j];
            resp[j] = sc->parts[group[j]].resp;
        }

        if (ngx_http_redisgate_scatter_to(sc, node, resp, k, send) != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/* one send; a node that cannot take it fails the request (handler told) */

static ngx_int_t
ngx_http_redisgate_scatter_to(ngx_http_redisgate_scatter_t *sc,
    ngx_http_redisgate_backend_t *node, ngx_str_t *resp, ngx_uint_t n,
    ngx_http_redisgate_send_t *send)
{
    ngx_int_t    rc;
    const char  *error;

    node->last_used = ngx_current_msec;

    rc = ngx_http_redisgate_redis_send(node, sc->request, resp, n,
                                       sc->timeout,
                                       sc->multi
                                       ? ngx_http_redisgate_scatter_multi_reply
                                       : ngx_http_redisgate_scatter_reply,
                                       NULL, send, &error);

    if (rc == NGX_OK) {
        sc->sends++;
        return NGX_OK;
    }

    if (rc == NGX_DECLINED) {
        /* down: the map may be out of date too */
        ngx_http_redisgate_cluster_stale(sc->cluster);
        ngx_http_redisgate_scatter_fail(sc, error);
        return NGX_OK;
    }

    return NGX_ERROR;
}


static void
ngx_http_redisgate_scatter_reply(void *data, redisReply *reply,
    const char *error)
{
    ngx_http_redisgate_send_t *send = data;

    ngx_http_redisgate_part_t     *p;
    ngx_http_redisgate_scatter_t  *sc;

    sc = send->sc;

    if (reply == NULL && error == NULL) {
        /* the send is over */
        sc->sends--;
        ngx_http_redisgate_scatter_finish(sc);
        return;
    }

    if (send->skip) {
        /* ASKING's +OK; an error would come again with the command */
        send->skip--;
        return;
    }

    p = &sc->parts[send->parts[send->got++]];

    if (reply == NULL) {
        ngx_http_redisgate_cluster_stale(sc->cluster);
        ngx_http_redisgate_scatter_fail(sc, error);
        return;
    }

    if (sc->failed) {
        return;
    }

    if (reply->type == REDIS_REPLY_ERROR
        && ngx_http_redisgate_scatter_redirected(sc, p, reply) == NGX_OK)
    {
        return;
    }

    ngx_http_redisgate_scatter_done(sc, p, reply);
}


/*
 * MOVED, ASK, TRYAGAIN, CLUSTERDOWN, LOADING: the part goes again, or
 * past its tries the request fails (NGX_OK: taken care of).  NGX_DECLINED:
 * the reply is the part's (another error; a redirection past its tries,
 * or to nowhere).
 */

static ngx_int_t
ngx_http_redisgate_scatter_redirected(ngx_http_redisgate_scatter_t *sc,
    ngx_http_redisgate_part_t *p, redisReply *reply)
{
    u_char                        *s, *last, *space;
    ngx_int_t                      slot;
    ngx_uint_t                     moved, which;
    ngx_http_redisgate_backend_t  *node, *fixed;

    moved = ngx_http_redisgate_scatter_is(reply, "MOVED ");

    if (moved || ngx_http_redisgate_scatter_is(reply, "ASK ")) {

        if (p->redirects++ >= NGX_HTTP_REDISGATE_SCATTER_REDIRECTS) {
            return NGX_DECLINED;
        }

        /* "MOVED 3999 127.0.0.1:6381" */

        s = (u_char *) reply->str + (moved ? 6 : 4);
        last = (u_char *) reply->str + reply->len;

        space = ngx_strlchr(s, last, ' ');
        if (space == NULL) {
            return NGX_DECLINED;
        }

        slot = ngx_atoi(s, space - s);

        node = ngx_http_redisgate_cluster_at(sc->cluster, space + 1,
                                             last - space - 1);
        if (node == NULL || slot < 0 || slot >= NGX_HTTP_REDISGATE_SLOTS) {
            return NGX_DECLINED;
        }

        fixed = p->node;

        if (moved) {
            /* the map says so from now on */
            ngx_http_redisgate_cluster_moved(sc->cluster, slot, node);

            if (fixed) {
                fixed = node;

            } else {
                p->slot = slot;
            }

        } else {
            /* this once: the slot stays where the map says */
            p->node = node;
            p->asking = 1;
        }

        which = p - sc->parts;

        if (ngx_http_redisgate_scatter_go(sc, &which, 1) != NGX_OK) {
            ngx_http_redisgate_scatter_fail(sc, "out of memory");
        }

        p->node = fixed;

        return NGX_OK;
    }

    if (ngx_http_redisgate_scatter_is(reply, "TRYAGAIN")
        || ngx_http_redisgate_scatter_is(reply, "CLUSTERDOWN")
        || ngx_http_redisgate_scatter_is(reply, "LOADING"))
    {
        if (sc->retries >= NGX_HTTP_REDISGATE_SCATTER_RETRIES) {
            ngx_log_error(NGX_LOG_ERR, sc->request->connection->log, 0,
                          "redisgate: %V still answers \"%*s\" after %ui "
                          "tries", &sc->backend->address.url,
                          (size_t) reply->len, reply->str, sc->retries);

            ngx_http_redisgate_scatter_fail(sc, "Redis unavailable: the "
                                            "cluster is down or resharding");
            return NGX_OK;
        }

        p->again = 1;
        ngx_http_redisgate_cluster_stale(sc->cluster);
        ngx_http_redisgate_scatter_wait(sc);

        return NGX_OK;
    }

    return NGX_DECLINED;
}


/* a part's final reply: its command's, or one to merge */

static void
ngx_http_redisgate_scatter_done(ngx_http_redisgate_scatter_t *sc,
    ngx_http_redisgate_part_t *p, redisReply *reply)
{
    ngx_http_redisgate_command_state_t  *c;

    c = &sc->commands[p->command];

    if (c->merge == NGX_HTTP_REDISGATE_MERGE_NONE) {

        if (p->command == sc->next) {
            /* its turn: no copy */
            sc->next++;
            sc->handler(sc->data, reply, NULL);
            ngx_http_redisgate_scatter_hand_over(sc);
            return;
        }

        c->reply = ngx_http_redisgate_scatter_take(reply);
        if (c->reply == NULL) {
            ngx_http_redisgate_scatter_fail(sc, "out of memory");
            return;
        }

        c->ready = 1;
        return;
    }

    p->reply = ngx_http_redisgate_scatter_take(reply);
    if (p->reply == NULL) {
        ngx_http_redisgate_scatter_fail(sc, "out of memory");
        return;
    }

    if (--c->left) {
        return;
    }

    c->reply = ngx_http_redisgate_scatter_merge(sc, c);
    if (c->reply == NULL) {
        ngx_http_redisgate_scatter_fail(sc, "out of memory");
        return;
    }

    c->ready = 1;

    ngx_http_redisgate_scatter_hand_over(sc);
}


/* the replies whose turn it is, in order */

static void
ngx_http_redisgate_scatter_hand_over(ngx_http_redisgate_scatter_t *sc)
{
    redisReply                          *reply;
    ngx_http_redisgate_command_state_t  *c;

    while (sc->next < sc->n && !sc->failed) {
        c = &sc->commands[sc->next];

        if (!c->ready) {
            return;
        }

        reply = c->reply;
        c->reply = NULL;
        sc->next++;

        sc->handler(sc->data, reply, NULL);

        freeReplyObject(reply);
    }
}


/* the handler hears it once; the replies still to come are dropped */

static void
ngx_http_redisgate_scatter_fail(ngx_http_redisgate_scatter_t *sc,
    const char *error)
{
    if (sc->failed) {
        return;
    }

    sc->failed = 1;

    if (sc->starting) {
        /* the caller is told when the first sends are out */
        sc->error = error;
        return;
    }

    sc->handler(sc->data, NULL, error);
}


/* over when nothing is out, nothing waits: the handler's last call */

static void
ngx_http_redisgate_scatter_finish(ngx_http_redisgate_scatter_t *sc)
{
    if (sc->sends || sc->wait.timer_set) {
        return;
    }

    if (!sc->failed && sc->next < sc->n) {
        /* cannot be: every part was answered or failed */
        ngx_log_error(NGX_LOG_ALERT, sc->request->connection->log, 0,
                      "redisgate: %ui of %ui replies from %V",
                      sc->next, sc->n, &sc->backend->address.url);
        ngx_http_redisgate_scatter_fail(sc, "Redis unavailable");
    }

    /* the request may be finalized in it: sc is gone after */
    sc->handler(sc->data, NULL, NULL);
}


/* TRYAGAIN and the like: a short wait, doubling, then again */

static void
ngx_http_redisgate_scatter_wait(ngx_http_redisgate_scatter_t *sc)
{
    if (sc->wait.timer_set) {
        return;
    }

    ngx_add_timer(&sc->wait, NGX_HTTP_REDISGATE_SCATTER_WAIT << sc->retries);

    sc->retries++;
}


static void
ngx_http_redisgate_scatter_waited(ngx_event_t *ev)
{
    ngx_http_redisgate_scatter_t *sc = ev->data;

    ngx_uint_t   i, n, *which;

    if (sc->multi) {
        /* the whole transaction again */
        if (ngx_http_redisgate_scatter_multi(sc) != NGX_OK) {
            ngx_http_redisgate_scatter_fail(sc, "out of memory");
        }

        ngx_http_redisgate_scatter_finish(sc);
        return;
    }

    which = ngx_palloc(sc->request->pool, sc->nparts * sizeof(ngx_uint_t));

    if (which == NULL) {
        ngx_http_redisgate_scatter_fail(sc, "out of memory");
        ngx_http_redisgate_scatter_finish(sc);
        return;
    }

    n = 0;

    for (i = 0; i < sc->nparts; i++) {
        if (sc->parts[i].again) {
            sc->parts[i].again = 0;
            which[n++] = i;
        }
    }

    if (!sc->failed
        && ngx_http_redisgate_scatter_go(sc, which, n) != NGX_OK)
    {
        ngx_http_redisgate_scatter_fail(sc, "out of memory");
    }

    ngx_http_redisgate_scatter_finish(sc);
}


/* the request is over (or gone): what is held, and the wait */

static void
ngx_http_redisgate_scatter_cleanup(void *data)
{
    ngx_http_redisgate_scatter_t *sc = data;

    ngx_uint_t  i;

    if (sc->wait.timer_set) {
        ngx_del_timer(&sc->wait);
    }

    for (i = 0; sc->commands && i < sc->n; i++) {
        if (sc->commands[i].reply) {
            freeReplyObject(sc->commands[i].reply);
        }
    }

    for (i = 0; i < sc->nparts; i++) {
        if (sc->parts[i].reply) {
            freeReplyObject(sc->parts[i].reply);
        }
    }

    for (i = 0; sc->held && i < sc->nblock; i++) {
        if (sc->held[i]) {
            freeReplyObject(sc->held[i]);
        }
    }
}


/*
 * MULTI ... EXEC to the node of the slot its keys share.  Its replies are
 * held until EXEC's: a redirect in it sends it all again, elsewhere.
 */

static ngx_int_t
ngx_http_redisgate_scatter_multi(ngx_http_redisgate_scatter_t *sc)
{
    ngx_http_redisgate_send_t     *send;
    ngx_http_redisgate_backend_t  *node;

    if (sc->held == NULL) {
        sc->held = ngx_pcalloc(sc->request->pool,
                               sc->nblock * sizeof(redisReply *));
        if (sc->held == NULL) {
            return NGX_ERROR;
        }
    }

    send = ngx_pcalloc(sc->request->pool, sizeof(ngx_http_redisgate_send_t));
    if (send == NULL) {
        return NGX_ERROR;
    }

    send->sc = sc;

    node = sc->block_node;

    if (node == NULL) {
        node = ngx_http_redisgate_cluster_node(sc->cluster, sc->block_slot);

        if (node == NULL) {
            return NGX_ERROR;
        }

        return ngx_http_redisgate_scatter_to(sc, node, sc->block, sc->nblock,
                                             send);
    }

    /* an ASK: this once, to the node it named, ASKING first */

    sc->block_node = NULL;

    if (sc->asking == NULL) {
        sc->asking = ngx_palloc(sc->request->pool,
                                (sc->nblock + 1) * sizeof(ngx_str_t));
        if (sc->asking == NULL) {
            return NGX_ERROR;
        }

        ngx_str_set(&sc->asking[0], "*1\r\n$6\r\nASKING\r\n");
        ngx_memcpy(&sc->asking[1], sc->block,
                   sc->nblock * sizeof(ngx_str_t));
    }

    send->skip = 1;

    return ngx_http_redisgate_scatter_to(sc, node, sc->asking,
                                         sc->nblock + 1, send);
}


static void
ngx_http_redisgate_scatter_multi_reply(void *data, redisReply *reply,
    const char *error)
{
    ngx_http_redisgate_send_t *send = data;

    u_char                        *s, *last, *space;
    ngx_int_t                      slot;
    ngx_uint_t                     i, moved, ask;
    redisReply                    *r;
    ngx_http_redisgate_scatter_t  *sc;
    ngx_http_redisgate_backend_t  *node;

    sc = send->sc;

    if (reply == NULL && error == NULL) {
        sc->sends--;

        if (sc->failed) {
            ngx_http_redisgate_scatter_finish(sc);
            return;
        }

        r = sc->redirect;

        if (r && sc->retries < NGX_HTTP_REDISGATE_SCATTER_RETRIES) {
            /*
             * MOVED: the map first, then again; ASK: again at once, to
             * the node named, after ASKING (which holds through MULTI);
             * TRYAGAIN and the like: after a short wait
             */

            moved = ngx_http_redisgate_scatter_is(r, "MOVED ");
            ask = ngx_http_redisgate_scatter_is(r, "ASK ");
            node = NULL;

            if (moved || ask) {
                s = (u_char *) r->str + (moved ? 6 : 4);
                last = (u_char *) r->str + r->len;
                space = ngx_strlchr(s, last, ' ');

                if (space) {
                    slot = ngx_atoi(s, space - s);
                    node = ngx_http_redisgate_cluster_at(sc->cluster,
                                                 space + 1, last - space - 1);

                    if (node == NULL || slot < 0
                        || slot >= NGX_HTTP_REDISGATE_SLOTS)
                    {
                        node = NULL;

                    } else if (moved) {
                        ngx_http_redisgate_cluster_moved(sc->cluster, slot,
                                                         node);
                    }
                }
            }

            for (i = 0; i < sc->nblock; i++) {
                if (sc->held[i]) {
                    freeReplyObject(sc->held[i]);
                    sc->held[i] = NULL;
                }
            }

            sc->redirect = NULL;
            ngx_http_redisgate_cluster_stale(sc->cluster);

            if (ask && node) {
                sc->retries++;
                sc->block_node = node;

                if (ngx_http_redisgate_scatter_multi(sc) != NGX_OK) {
                    ngx_http_redisgate_scatter_fail(sc, "out of memory");
                }

                ngx_http_redisgate_scatter_finish(sc);
                return;
            }

            ngx_http_redisgate_scatter_wait(sc);
            return;
        }

        if (r) {
            /* redirected or told to wait, past its tries */
            ngx_log_error(NGX_LOG_ERR, sc->request->connection->log, 0,
                          "redisgate: %V still answers \"%*s\" to a "
                          "transaction after %ui tries",
                          &sc->backend->address.url, (size_t) r->len,
                          r->str, sc->retries);

            ngx_http_redisgate_scatter_fail(sc, "Redis unavailable: the "
                                            "cluster is down or resharding");
        }

        /* the replies, in order, then the last call */

        for (i = 0; i < sc->nblock; i++) {
            r = sc->held[i];
            sc->held[i] = NULL;

            if (r && !sc->failed) {
                sc->handler(sc->data, r, NULL);
            }

            if (r) {
                freeReplyObject(r);
            }
        }

        sc->next = sc->n;

        ngx_http_redisgate_scatter_finish(sc);
        return;
    }

    if (send->skip) {
        /* ASKING's +OK */
        send->skip--;
        return;
    }

    if (reply == NULL) {
        ngx_http_redisgate_cluster_stale(sc->cluster);
        ngx_http_redisgate_scatter_fail(sc, error);
        return;
    }

    if (sc->failed || send->got >= sc->nblock) {
        return;
    }

    r = ngx_http_redisgate_scatter_take(reply);
    if (r == NULL) {
        ngx_http_redisgate_scatter_fail(sc, "out of memory");
        return;
    }

    sc->held[send->got++] = r;

    if (r->type == REDIS_REPLY_ERROR && sc->redirect == NULL
        && (ngx_http_redisgate_scatter_is(r, "MOVED ")
            || ngx_http_redisgate_scatter_is(r, "ASK ")
            || ngx_http_redisgate_scatter_is(r, "TRYAGAIN")
            || ngx_http_redisgate_scatter_is(r, "CLUSTERDOWN")
            || ngx_http_redisgate_scatter_is(r, "LOADING")))
    {
        sc->redirect = r;
    }
}


/* the parts' replies as the command's own, on one Redis */

static redisReply *
ngx_http_redisgate_scatter_merge(ngx_http_redisgate_scatter_t *sc,
    ngx_http_redisgate_command_state_t *c)
{
    size_t                      n;
    ngx_uint_t                  i, j, k;
    long long                   sum;
    redisReply                 *m, *r;
    ngx_http_redisgate_part_t  *p;

    /* an error of any part is the command's */

    for (i = 0; i < c->nparts; i++) {
        p = &sc->parts[c->first + i];

        if (p->reply->type == REDIS_REPLY_ERROR) {
            m = p->reply;
            p->reply = NULL;
            return m;
        }
    }

    p = &sc->parts[c->first];

    switch (c->merge) {

    case NGX_HTTP_REDISGATE_MERGE_SCAN:
        if (ngx_http_redisgate_scatter_cursor(sc, c, p->reply) != NGX_OK) {
            return NULL;
        }

        /* fall through */

    case NGX_HTTP_REDISGATE_MERGE_OK:
    case NGX_HTTP_REDISGATE_MERGE_FIRST:
        m = p->reply;
        p->reply = NULL;
        return m;

    case NGX_HTTP_REDISGATE_MERGE_SUM:
        sum = 0;

        for (i = 0; i < c->nparts; i++) {
            sum += sc->parts[c->first + i].reply->integer;
        }

        m = p->reply;
        p->reply = NULL;

        m->type = REDIS_REPLY_INTEGER;
        m->integer = sum;
        return m;

    case NGX_HTTP_REDISGATE_MERGE_AND:
        m = p->reply;

        for (i = 1; i < c->nparts; i++) {
            r = sc->parts[c->first + i].reply;

            for (j = 0; j < m->elements && j < r->elements; j++) {
                if (r->element[j]->integer == 0) {
                    m->element[j]->integer = 0;
                }
            }
        }

        p->reply = NULL;
        return m;

    default: /* ARRAY, CONCAT */
        n = 0;

        for (i = 0; i < c->nparts; i++) {
            n += sc->parts[c->first + i].reply->elements;
        }

        if (c->merge == NGX_HTTP_REDISGATE_MERGE_ARRAY && n != c->nkeys) {
            ngx_log_error(NGX_LOG_ERR, sc->request->connection->log, 0,
                          "redisgate: MGET parts from %V gave %uz values "
                          "for %ui keys", &sc->backend->address.url, n,
                          c->nkeys);
            return NULL;
        }

        m = calloc(1, sizeof(redisReply));
        if (m == NULL) {
            return NULL;
        }

        m->type = REDIS_REPLY_ARRAY;
        m->element = calloc(n ? n : 1, sizeof(redisReply *));

        if (m->element == NULL) {
            free(m);
            return NULL;
        }

        m->elements = n;
        k = 0;

        for (i = 0; i < c->nparts; i++) {
            p = &sc->parts[c->first + i];
            r = p->reply;

            for (j = 0; j < r->elements; j++) {
                if (c->merge == NGX_HTTP_REDISGATE_MERGE_ARRAY) {
                    m->element[p->keys[j].key] = r->element[j];

                } else {
                    m->element[k++] = r->element[j];
                }
            }

            /* moved: the part keeps none */
            r->elements = 0;
        }

        return m;
    }
}


/* SCAN's reply: the node's cursor into one that carries the node */

static ngx_int_t
ngx_http_redisgate_scatter_cursor(ngx_http_redisgate_scatter_t *sc,
    ngx_http_redisgate_command_state_t *c, redisReply *reply)
{
    u_char      buf[NGX_INT64_LEN];
    size_t      len;
    ngx_uint_t  n;
    redisReply *e;

    (void) ngx_http_redisgate_cluster_nodes(sc->cluster, &n);

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2
        || reply->element[0]->type != REDIS_REPLY_STRING)
    {
        return NGX_OK;
    }

    e = reply->element[0];

    len = ngx_http_redisgate_scan_cursor_next(buf, (u_char *) e->str, e->len,
                                              c->scan, n);
    if (len == 0) {
        ngx_log_error(NGX_LOG_ERR, sc->request->connection->log, 0,
                      "redisgate: a SCAN cursor \"%*s\" of %V that cannot "
                      "carry its node", (size_t) e->len, e->str,
                      &sc->backend->address.url);
        return NGX_ERROR;
    }

    free(e->str);

    e->str = malloc(len + 1);
    if (e->str == NULL) {
        e->len = 0;
        return NGX_ERROR;
    }

    ngx_memcpy(e->str, buf, len);
    e->str[len] = '\0';
    e->len = len;

    return NGX_OK;
}


/*
 * A reply kept past its handler: the link frees its own once the handler
 * returns, so it is copied, into hiredis' own layout (a string and an
 * element array of their own, malloc()ed), which freeReplyObject() frees
 * and the merges below move parts of.
 */

static redisReply *
ngx_http_redisgate_scatter_take(redisReply *reply)
{
    size_t       i;
    redisReply  *r;

    r = calloc(1, sizeof(redisReply));
    if (r == NULL) {
        return NULL;
    }

    r->type = reply->type;
    r->integer = reply->integer;

    switch (reply->type) {

    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
        r->str = malloc(reply->len + 1);
        if (r->str == NULL) {
            free(r);
            return NULL;
        }

        ngx_memcpy(r->str, reply->str, reply->len);
        r->str[reply->len] = '\0';
        r->len = reply->len;
        break;

    case REDIS_REPLY_ARRAY:
        if (reply->elements == 0) {
            break;
        }

        r->element = calloc(reply->elements, sizeof(redisReply *));
        if (r->element == NULL) {
            free(r);
            return NULL;
        }

        r->elements = reply->elements;

        for (i = 0; i < reply->elements; i++) {
            r->element[i] = ngx_http_redisgate_scatter_take(reply->element[i]);

            if (r->element[i] == NULL) {
                freeReplyObject(r);
                return NULL;
            }
        }

        break;
    }

    return r;
}


static ngx_uint_t
ngx_http_redisgate_scatter_is(redisReply *reply, char *prefix)
{
    size_t  len;

    len = ngx_strlen(prefix);

    return reply->type == REDIS_REPLY_ERROR && reply->len >= len
           && ngx_strncmp(reply->str, prefix, len) == 0;
}
