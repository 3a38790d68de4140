
/*
 * Copyright (C) RedisGate authors
 */


/*
 * ngx_http_redisgate_parse_route(), _percent_decode(), _parse_uuid().
 * Input: one flag byte (bit 0: the request has a body), then the path,
 * then '?' and the query.
 */


#include <stdint.h>
#include <string.h>

#include "fuzz_alloc.h"


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


static ngx_uint_t
fuzz_slots(u_char *path, size_t len, u_char *query, size_t query_len)
{
    size_t      i;
    ngx_uint_t  max;

    /* an upper bound of what parse_route() allocates */

    max = 4;

    for (i = 0; i < len; i++) {
        if (path[i] == '/') {
            max++;
        }
    }

    for (i = 0; i < query_len; i++) {
        if (query[i] == '&') {
            max += 2;
        }
    }

    return max;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char                      *buf, *path, *query, *q, *dst;
    size_t                       len, query_len, n, i, j;
    ngx_int_t                    rc;
    ngx_uint_t                   body;
    u_char                       uuid[NGX_HTTP_REDISGATE_UUID_LEN];
    ngx_http_redisgate_route_t   rt;

    if (size < 1) {
        return 0;
    }

    body = data[0] & 1;

    /* a copy of its own, so ASan sees reads past the end */

    len = size - 1;
    buf = malloc(len ? len : 1);
    if (buf == NULL) {
        return 0;
    }

    memcpy(buf, data + 1, len);

    path = buf;
    q = memchr(buf, '?', len);

    if (q) {
        query = q + 1;
        query_len = buf + len - query;
        len = q - buf;

    } else {
        query = buf + len;
        query_len = 0;
    }

    memset(&rt, 0, sizeof(rt));

    rc = ngx_http_redisgate_parse_route(&rt, path, len, query, query_len,
                                        body, &fuzz_allocator);

    FUZZ_CHECK(rc == NGX_OK || rc == NGX_DECLINED || rc == NGX_ABORT);

    if (rc == NGX_ABORT) {
        FUZZ_CHECK(rt.error != NULL);
    }

    if (rc == NGX_OK || rc == NGX_ABORT) {
        for (i = 0; i < NGX_HTTP_REDISGATE_UUID_LEN; i++) {
            if (i == 8 || i == 13 || i == 18 || i == 23) {
                FUZZ_CHECK(rt.instance[i] == '-');

            } else {
                FUZZ_CHECK((rt.instance[i] >= '0' && rt.instance[i] <= '9')
                           || (rt.instance[i] >= 'a'
                               && rt.instance[i] <= 'f'));
            }
        }
    }

    if (rc == NGX_OK && rt.kind == NGX_HTTP_REDISGATE_ROUTE_PATH) {
        FUZZ_CHECK(rt.cmd.argc
                   <= fuzz_slots(path, len, query, query_len));
        FUZZ_CHECK(rt.has_body_slot == body);

        if (body) {
            FUZZ_CHECK(rt.body_slot < rt.cmd.argc);
        }

        for (i = 0; i < rt.cmd.argc; i++) {
            /* touch every byte of every argument */
            volatile u_char  sink = 0;

            for (j = 0; j < rt.cmd.argv[i].len; j++) {
                sink ^= rt.cmd.argv[i].data[j];
            }

            (void) sink;
        }

    } else if (rc == NGX_OK) {
        FUZZ_CHECK(rt.kind <= NGX_HTTP_REDISGATE_ROUTE_MULTI);
    }

    if (rc == NGX_OK && rt.token.len) {
        /* every route takes ?_token= */
        FUZZ_CHECK(rt.token.data >= query
                   && rt.token.data + rt.token.len <= query + query_len);
    }

    /* percent_decode() on the whole input: never longer */

    dst = malloc(size);
    if (dst) {
        n = (size_t) -1;

        if (ngx_http_redisgate_percent_decode(dst, &n, (u_char *) data, size)
            == NGX_OK)
        {
            FUZZ_CHECK(n <= size);
        }

        free(dst);
    }

    /* parse_uuid(): lower case, dst untouched on an error */

    memset(uuid, 'x', sizeof(uuid));

    if (ngx_http_redisgate_parse_uuid(uuid, buf, size - 1) == NGX_OK) {
        FUZZ_CHECK(size - 1 == NGX_HTTP_REDISGATE_UUID_LEN);

        for (i = 0; i < NGX_HTTP_REDISGATE_UUID_LEN; i++) {
            FUZZ_CHECK(!(uuid[i] >= 'A' && uuid[i] <= 'Z'));
        }

    } else {
        for (i = 0; i < NGX_HTTP_REDISGATE_UUID_LEN; i++) {
            FUZZ_CHECK(uuid[i] == 'x');
        }
    }

    free(buf);
    fuzz_free_all();

    return 0;
}
