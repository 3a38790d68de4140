
/*
 * Copyright (C) RedisGate authors
 */


/*
 * Keys: which arguments of a command are keys, and which hash slot of a
 * Redis Cluster each belongs to.  Pure: routing a command to a cluster's
 * node needs both, and so does nothing else.
 *
 * The key positions come from the key specs Redis gives in COMMAND INFO
 * (the generated command table), read the way Redis itself reads them
 * (getKeysUsingKeySpecs() in its db.c); SORT, whose STORE key no spec
 * can find, is parsed here.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_redisgate_commands.h"


static ngx_int_t ngx_http_redisgate_keys_begin(
    const ngx_http_redisgate_key_spec_t *spec, ngx_http_redisgate_cmd_t *cmd);
static ngx_int_t ngx_http_redisgate_keys_number(ngx_str_t *arg);
static ngx_uint_t ngx_http_redisgate_keys_sort(ngx_http_redisgate_cmd_t *cmd,
    ngx_uint_t *keys);
static ngx_uint_t ngx_http_redisgate_keys_is(ngx_str_t *arg,
    const ngx_str_t *word);


/*
 * The indexes in cmd->argv of its keys, into keys (cmd->argc of room), in
 * the order Redis finds them.  NGX_OK, with *n (0 for a keyless command,
 * or arguments too few: Redis says why); NGX_DECLINED when a number of
 * keys is not a number, or a command's keys cannot be found.
 */

ngx_int_t
ngx_http_redisgate_command_keys(const ngx_http_redisgate_command_t *c,
    ngx_http_redisgate_cmd_t *cmd, ngx_uint_t *keys, ngx_uint_t *n)
{
    ngx_int_t                             first, last, step, count, i, argc;
    ngx_uint_t                            s;
    const ngx_http_redisgate_key_spec_t  *spec;

    *n = 0;
    argc = (ngx_int_t) cmd->argc;

    for (s = 0; s < c->nspecs; s++) {
        spec = &ngx_http_redisgate_key_specs[c->spec + s];

        if (spec->begin == NGX_HTTP_REDISGATE_KEYS_UNKNOWN
            || spec->find == NGX_HTTP_REDISGATE_KEYS_UNKNOWN)
        {
            if (c->name.len >= 4 && ngx_strncmp(c->name.data, "sort", 4) == 0)
            {
                /* all of SORT's keys, its first spec's included */
                *n = ngx_http_redisgate_keys_sort(cmd, keys);
                return NGX_OK;
            }

            return NGX_DECLINED;
        }

        first = ngx_http_redisgate_keys_begin(spec, cmd);

        if (first < 0 || first >= argc) {
            /* no keyword, or too few arguments */
            continue;
        }

        if (spec->find == NGX_HTTP_REDISGATE_KEYS_RANGE) {
            step = spec->b;

            if (spec->a >= 0) {
                last = first + spec->a;

            } else if (spec->c == 0) {
                last = argc + spec->a;

            } else {
                /* XREAD ... STREAMS k1 k2 id1 id2: the first half */
                last = first + (argc - first) / spec->c + spec->a;
            }

        } else {
            if (first + spec->a >= argc) {
                continue;
            }

            count = ngx_http_redisgate_keys_number(&cmd->argv[first
                                                              + spec->a]);
            if (count < 0) {
                return NGX_DECLINED;
            }

            step = spec->c;
            first += spec->b;
            last = first + (count - 1) * step;
        }

        if (step <= 0) {
            step = 1;
        }

        for (i = first; i <= last; i += step) {
            if (i >= argc || *n == cmd->argc) {
                /* too few arguments: Redis answers it with the reason */
                break;
            }

            keys[(*n)++] = (ngx_uint_t) i;
        }
    }

    return NGX_OK;
}


/* where a spec's keys begin, or -1 */

static ngx_int_t
ngx_http_redisgate_keys_begin(const ngx_http_redisgate_key_spec_t *spec,
    ngx_http_redisgate_cmd_t *cmd)
{
    ngx_int_t  i, end, argc;

    if (spec->begin == NGX_HTTP_REDISGATE_KEYS_INDEX) {
        return spec->index;
    }

    argc = (ngx_int_t) cmd->argc;

    if (spec->index >= 0) {
        for (i = spec->index; i < argc; i++) {
            if (ngx_http_redisgate_keys_is(&cmd->argv[i], &spec->keyword)) {
                return i + 1;
            }
        }

        return -1;
    }

    /* from the end, backwards, never the command's name */

    end = argc + spec->index;

    for (i = end; i >= 1; i--) {
        if (i < argc
            && ngx_http_redisgate_keys_is(&cmd->argv[i], &spec->keyword))
        {
            return i + 1;
        }
    }

    return -1;
}


/* a number of keys: 0 to what fits, else -1 */

static ngx_int_t
ngx_http_redisgate_keys_number(ngx_str_t *arg)
{
    size_t     i;
    ngx_int_t  n;

    if (arg->len == 0 || arg->len > 9) {
        return -1;
    }

    n = 0;

    for (i = 0; i < arg->len; i++) {
        if (arg->data[i] < '0' || arg->data[i] > '9') {
            return -1;
        }

        n = n * 10 + (arg->data[i] - '0');
    }

    return n;
}


/*
 * SORT key [BY pattern] [LIMIT offset count] [GET pattern ...]
 * [ASC|DESC] [ALPHA] [STORE destination]: the key, and the destination.
 * Patterns name other keys too; Redis Cluster refuses them unless they
 * are in the key's slot, and says so itself.
 */

static ngx_uint_t
ngx_http_redisgate_keys_sort(ngx_http_redisgate_cmd_t *cmd, ngx_uint_t *keys)
{
    ngx_uint_t  i, n;

    static const ngx_str_t  limit = ngx_string("limit");
    static const ngx_str_t  by = ngx_string("by");
    static const ngx_str_t  get = ngx_string("get");
    static const ngx_str_t  store = ngx_string("store");

    if (cmd->argc < 2) {
        return 0;
    }

    keys[0] = 1;
    n = 1;

    if (cmd->argv[0].len != 4) {
        /* SORT_RO has no STORE */
        return n;
    }

    for (i = 2; i < cmd->argc; i++) {

        if (ngx_http_redisgate_keys_is(&cmd->argv[i], &limit)) {
            i += 2;

        } else if (ngx_http_redisgate_keys_is(&cmd->argv[i], &by)
                   || ngx_http_redisgate_keys_is(&cmd->argv[i], &get))
        {
            i += 1;

        } else if (ngx_http_redisgate_keys_is(&cmd->argv[i], &store)
                   && i + 1 < cmd->argc)
        {
            /* the last STORE counts, as in Redis */
            keys[n] = i + 1;
            n = 2;
            i += 1;
        }
    }

    return n;
}


/* an argument is a keyword, in any case; pure: no ngx_strncasecmp() */

static ngx_uint_t
ngx_http_redisgate_keys_is(ngx_str_t *arg, const ngx_str_t *word)
{
    size_t  i;

    if (arg->len != word->len) {
        return 0;
    }

    for (i = 0; i < arg->len; i++) {
        if (ngx_tolower(arg->data[i]) != word->data[i]) {
            return 0;
        }
    }

    return 1;
}


/*
 * CRC16 (XMODEM: polynomial 0x1021, no reflection, initial 0) of the key,
 * or of its hash tag: what is between the first '{' and the first '}' after
 * it, when that is not empty.  Bit by bit: keys are short, and a table of
 * 256 entries would be one more generated file.
 */

ngx_uint_t
ngx_http_redisgate_key_slot(u_char *key, size_t len)
{
    u_char    *p, *last, *open, *close;
    uint16_t   crc;
    ngx_uint_t bit;

    last = key + len;

    open = ngx_strlchr(key, last, '{');

    if (open) {
        close = ngx_strlchr(open + 1, last, '}');

        if (close && close > open + 1) {
            key = open + 1;
            last = close;
        }
    }

    crc = 0;

    for (p = key; p < last; p++) {
        crc ^= (uint16_t) (*p << 8);

        for (bit = 0; bit < 8; bit++) {
            crc = (crc & 0x8000) ? (uint16_t) ((crc << 1) ^ 0x1021)
                                 : (uint16_t) (crc << 1);
        }
    }

    return crc & (NGX_HTTP_REDISGATE_SLOTS - 1);
}


/*
 * SCAN over a cluster's primaries: the client's cursor is the node's
 * cursor times NGX_HTTP_REDISGATE_SCAN_NODES plus the node's index, so
 * that 0 starts at the first node.  NGX_ERROR: not a cursor (or too big).
 */

ngx_int_t
ngx_http_redisgate_scan_cursor_parse(u_char *s, size_t len, uint64_t *inner,
    ngx_uint_t *node)
{
    size_t    i;
    uint64_t  cursor;

    if (len == 0 || len > NGX_INT64_LEN) {
        return NGX_ERROR;
    }

    cursor = 0;

    for (i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9'
            || cursor > (UINT64_MAX - (uint64_t) (s[i] - '0')) / 10)
        {
            return NGX_ERROR;
        }

        cursor = cursor * 10 + (s[i] - '0');
    }

    *node = (ngx_uint_t) (cursor % NGX_HTTP_REDISGATE_SCAN_NODES);
    *inner = cursor / NGX_HTTP_REDISGATE_SCAN_NODES;

    return NGX_OK;
}


/*
 * The cursor for the client after node (of nodes) answered with the
 * cursor s: the same node further on, the next node from its start, or
 * 0 at the end.  Into buf (NGX_INT64_LEN bytes): its length, 0 when s is
 * not a cursor or too big to carry the node.
 */

size_t
ngx_http_redisgate_scan_cursor_next(u_char *buf, u_char *s, size_t len,
    ngx_uint_t node, ngx_uint_t nodes)
{
    size_t    i;
    u_char   *p;
    uint64_t  inner, cursor;

    if (len == 0 || len > NGX_INT64_LEN
        || node >= NGX_HTTP_REDISGATE_SCAN_NODES)
    {
        return 0;
    }

    inner = 0;

    for (i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9'
            || inner > (UINT64_MAX - (uint64_t) (s[i] - '0')) / 10)
        {
            return 0;
        }

        inner = inner * 10 + (s[i] - '0');
    }

    if (inner == 0) {
        /* this node is done: the next, or the end */
        cursor = (node + 1 < nodes) ? node + 1 : 0;

    } else if (inner > (UINT64_MAX - node) / NGX_HTTP_REDISGATE_SCAN_NODES) {
        return 0;

    } else {
        cursor = inner * NGX_HTTP_REDISGATE_SCAN_NODES + node;
    }

    /* digits, last first: no nginx function here */

    p = buf + NGX_INT64_LEN;

    do {
        *--p = (u_char) ('0' + cursor % 10);
        cursor /= 10;
    } while (cursor);

    len = buf + NGX_INT64_LEN - p;
    ngx_memmove(buf, p, len);

    return len;
}
