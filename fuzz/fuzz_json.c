
/*
 * Copyright (C) RedisGate authors
 */


/*
 * The streaming decoder of request bodies, ngx_http_redisgate_json_*().
 * Input: byte 0 (bit 0: pipeline; bits 1-7: max_commands, 0 for 1000),
 * bytes 1 and 2 (where to cut the body into up to three chunks), then
 * the body.  Decoded commands go through resp_command_len/resp_command.
 */


#include <stdint.h>
#include <string.h>

#include "fuzz_alloc.h"


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char                     *body, *out, *p;
    size_t                      len, cut1, cut2, i, want;
    ngx_int_t                   rc;
    ngx_uint_t                  pipeline, max, n, k;
    ngx_http_redisgate_cmd_t   *cmds;
    ngx_http_redisgate_json_t  *j;
    volatile u_char             sink;

    if (size < 3) {
        return 0;
    }

    pipeline = data[0] & 1;
    max = data[0] >> 1;

    if (max == 0) {
        max = 1000;
    }

    len = size - 3;

    cut1 = len ? data[1] % (len + 1) : 0;
    cut2 = len ? data[2] % (len + 1) : 0;

    if (cut2 < cut1) {
        i = cut1; cut1 = cut2; cut2 = i;
    }

    /* each chunk a buffer of its own, so ASan sees reads past it */

    body = malloc(len ? len : 1);
    if (body == NULL) {
        return 0;
    }

    memcpy(body, data + 3, len);

    j = ngx_http_redisgate_json_create(pipeline, max, &fuzz_allocator);
    FUZZ_CHECK(j != NULL);

    rc = NGX_OK;

    {
        size_t   from[3] = { 0, cut1, cut2 };
        size_t   to[3] = { cut1, cut2, len };
        u_char  *chunk;

        for (i = 0; i < 3 && rc == NGX_OK; i++) {
            if (to[i] == from[i]) {
                continue;
            }

            chunk = malloc(to[i] - from[i]);
            FUZZ_CHECK(chunk != NULL);
            memcpy(chunk, body + from[i], to[i] - from[i]);

            rc = ngx_http_redisgate_json_feed(j, chunk, to[i] - from[i]);

            /* the decoder must keep no pointer into a fed buffer */
            memset(chunk, 0xa5, to[i] - from[i]);
            free(chunk);
        }
    }

    if (rc == NGX_OK) {
        rc = ngx_http_redisgate_json_finish(j, &cmds, &n);
    }

    if (rc != NGX_OK) {
        FUZZ_CHECK(rc == NGX_ERROR);
        FUZZ_CHECK(ngx_http_redisgate_json_error(j) != NULL);

    } else {
        FUZZ_CHECK(n >= 1 && n <= max);
        FUZZ_CHECK(pipeline || n == 1);

        sink = 0;

        for (k = 0; k < n; k++) {
            FUZZ_CHECK(cmds[k].argc >= 1);

            for (i = 0; i < cmds[k].argc; i++) {
                FUZZ_CHECK(cmds[k].argv[i].len <= len);

                for (want = 0; want < cmds[k].argv[i].len; want++) {
                    sink ^= cmds[k].argv[i].data[want];
                }
            }

            want = ngx_http_redisgate_resp_command_len(&cmds[k]);
            out = malloc(want);
            FUZZ_CHECK(out != NULL);

            p = ngx_http_redisgate_resp_command(out, &cmds[k]);
            FUZZ_CHECK((size_t) (p - out) == want);
            FUZZ_CHECK(out[0] == '*' && out[want - 2] == '\r'
                       && out[want - 1] == '\n');

            free(out);
        }

        (void) sink;
    }

    ngx_http_redisgate_json_destroy(j);

    free(body);
    fuzz_free_all();

    return 0;
}
