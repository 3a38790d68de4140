
/*
 * Copyright (C) RedisGate authors
 */


/*
 * ngx_http_redisgate_command_keys(), _key_slot() and the SCAN cursors of
 * a cluster.  Input: a command as NUL-separated arguments, the first one
 * its name (as a client sends it), the entry found as the policy finds it
 * ("name|sub" first); the whole input again as a node's SCAN cursor.
 */


#include <stdint.h>
#include <string.h>

#include "fuzz_alloc.h"
#include "ngx_http_redisgate_commands.h"


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
static void fuzz_cursor(u_char *in, size_t size);


#define FUZZ_ARGS  64


static const ngx_http_redisgate_command_t *
fuzz_find(ngx_http_redisgate_cmd_t *cmd)
{
    u_char                               name[NGX_INT_T_LEN * 8];
    size_t                               n;
    const ngx_http_redisgate_command_t  *c;

    n = ngx_http_redisgate_command_name(name, sizeof(name), cmd, 0);
    c = n ? ngx_http_redisgate_command_find(name, n) : NULL;

    if (c && (c->flags & NGX_HTTP_REDISGATE_CMD_CONTAINER)) {
        n = ngx_http_redisgate_command_name(name, sizeof(name), cmd, 1);
        c = n ? ngx_http_redisgate_command_find(name, n) : NULL;
    }

    return c;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char                              *in, *p, *last, *nul;
    ngx_int_t                            rc;
    ngx_str_t                            argv[FUZZ_ARGS];
    ngx_uint_t                           keys[FUZZ_ARGS], n, i, slot;
    ngx_http_redisgate_cmd_t             cmd;
    const ngx_http_redisgate_command_t  *c;

    /* the CRC16 of Redis Cluster: its check value, and a hash tag */

    FUZZ_CHECK(ngx_http_redisgate_key_slot((u_char *) "123456789", 9)
               == (0x31c3 & (NGX_HTTP_REDISGATE_SLOTS - 1)));
    FUZZ_CHECK(ngx_http_redisgate_key_slot((u_char *) "a{123456789}b", 13)
               == ngx_http_redisgate_key_slot((u_char *) "123456789", 9));

    in = malloc(size ? size : 1);
    FUZZ_CHECK(in != NULL);
    memcpy(in, data, size);

    cmd.argv = argv;
    cmd.argc = 0;

    p = in;
    last = in + size;

    while (cmd.argc < FUZZ_ARGS) {
        nul = memchr(p, '\0', last - p);

        argv[cmd.argc].data = p;
        argv[cmd.argc].len = (nul ? nul : last) - p;
        cmd.argc++;

        if (nul == NULL) {
            break;
        }

        p = nul + 1;
    }

    c = fuzz_find(&cmd);

    if (c) {
        rc = ngx_http_redisgate_command_keys(c, &cmd, keys, &n);

        FUZZ_CHECK(rc == NGX_OK || rc == NGX_DECLINED);

        if (rc == NGX_OK) {
            FUZZ_CHECK(n <= cmd.argc);

            for (i = 0; i < n; i++) {
                /* never the command's name, never past the arguments */
                FUZZ_CHECK(keys[i] >= 1 && keys[i] < cmd.argc);

                slot = ngx_http_redisgate_key_slot(argv[keys[i]].data,
                                                   argv[keys[i]].len);
                FUZZ_CHECK(slot < NGX_HTTP_REDISGATE_SLOTS);
            }
        }
    }

    /* a key and its hash tag alone hash alike */

    slot = ngx_http_redisgate_key_slot(in, size);
    FUZZ_CHECK(slot < NGX_HTTP_REDISGATE_SLOTS);

    p = memchr(in, '{', size);

    if (p) {
        nul = memchr(p + 1, '}', last - p - 1);

        if (nul && nul > p + 1) {
            FUZZ_CHECK(slot == ngx_http_redisgate_key_slot(p + 1,
                                                           nul - p - 1));
        }
    }

    /* SCAN cursors: the input as a node's cursor, carried and back */

    fuzz_cursor(in, size);

    free(in);
    fuzz_free_all();

    return 0;
}


static void
fuzz_cursor(u_char *in, size_t size)
{
    u_char      buf[NGX_INT64_LEN];
    size_t      len, n;
    uint64_t    inner, back;
    ngx_uint_t  node, nodes, at;

    nodes = size ? (in[0] % NGX_HTTP_REDISGATE_SCAN_NODES) + 1 : 1;
    node = size > 1 ? in[1] % nodes : 0;

    len = ngx_http_redisgate_scan_cursor_next(buf, in, size, node, nodes);

    FUZZ_CHECK(len <= NGX_INT64_LEN);

    if (len == 0) {
        return;
    }

    FUZZ_CHECK(ngx_http_redisgate_scan_cursor_parse(buf, len, &back, &at)
               == NGX_OK);

    /* the node's own cursor, as a number */
    inner = 0;
    for (n = 0; n < size; n++) {
        inner = inner * 10 + (in[n] - '0');
    }

    if (inner) {
        /* the same node, further on */
        FUZZ_CHECK(at == node && back == inner);

    } else if (node + 1 < nodes) {
        /* the next node, from its start */
        FUZZ_CHECK(at == node + 1 && back == 0);

    } else {
        /* the end */
        FUZZ_CHECK(len == 1 && buf[0] == '0');
    }

}
