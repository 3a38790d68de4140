
/*
 * Copyright (C) RedisGate authors
 */


/*
 * The decoder of request bodies, ngx_http_redisgate_json_*().
 * Input: byte 0 (bit 0: pipeline; bits 1-7: max_commands, 0 for 1000),
 * bytes 1 and 2 (where to cut the body into up to three chunks), then
 * the body.  Each body is decoded twice: as the handler does (the fast
 * path on the whole body, yajl on the same decoder when it declines) and
 * by yajl alone; any difference in the outcome, the error text, the
 * commands or their bytes is a failure.  Decoded commands then go through
 * resp_command_len/resp_command.
 */


#include <stdint.h>
#include <string.h>

#include "fuzz_alloc.h"


typedef struct {
    ngx_int_t                   rc;
    const char                 *error;
    ngx_http_redisgate_cmd_t   *cmds;
    ngx_uint_t                  n;
    ngx_http_redisgate_json_t  *j;
} fuzz_json_result_t;


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fuzz_json_decode(fuzz_json_result_t *res, ngx_uint_t pipeline,
    ngx_uint_t max, u_char *body, size_t len, size_t cut1, size_t cut2,
    int fast);
static void fuzz_json_compare(fuzz_json_result_t *a, fuzz_json_result_t *b);
static void fuzz_json_stats(void);


/* how often the fast path took a body: a run that never does proves little */
static unsigned long  fuzz_json_taken, fuzz_json_declined;


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char                     *body, *out, *p;
    size_t                      len, cut1, cut2, i, want;
    ngx_uint_t                  pipeline, max, k;
    fuzz_json_result_t          both, yajl;
    volatile u_char             sink;
    static int                  registered;

    if (!registered) {
        atexit(fuzz_json_stats);
        registered = 1;
    }

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

    /* a buffer of its exact size, so ASan sees reads past it */

    body = malloc(len ? len : 1);
    if (body == NULL) {
        return 0;
    }

    memcpy(body, data + 3, len);

    fuzz_json_decode(&both, pipeline, max, body, len, cut1, cut2, 1);
    fuzz_json_decode(&yajl, pipeline, max, body, len, cut1, cut2, 0);

    fuzz_json_compare(&both, &yajl);

    if (both.rc != NGX_OK) {
        FUZZ_CHECK(both.rc == NGX_ERROR);
        FUZZ_CHECK(both.error != NULL);

    } else {
        FUZZ_CHECK(both.n >= 1 && both.n <= max);
        FUZZ_CHECK(pipeline || both.n == 1);

        sink = 0;

        for (k = 0; k < both.n; k++) {
            FUZZ_CHECK(both.cmds[k].argc >= 1);

            for (i = 0; i < both.cmds[k].argc; i++) {
                FUZZ_CHECK(both.cmds[k].argv[i].len <= len);

                for (want = 0; want < both.cmds[k].argv[i].len; want++) {
                    sink ^= both.cmds[k].argv[i].data[want];
                }
            }

            want = ngx_http_redisgate_resp_command_len(&both.cmds[k]);
            out = malloc(want);
            FUZZ_CHECK(out != NULL);

            p = ngx_http_redisgate_resp_command(out, &both.cmds[k]);
            FUZZ_CHECK((size_t) (p - out) == want);
            FUZZ_CHECK(out[0] == '*' && out[want - 2] == '\r'
                       && out[want - 1] == '\n');

            free(out);
        }

        (void) sink;
    }

    ngx_http_redisgate_json_destroy(both.j);
    ngx_http_redisgate_json_destroy(yajl.j);

    free(body);
    fuzz_free_all();

    return 0;
}


/*
 * fast: the handler's way, the fast path on the whole body and, when it
 * declines, yajl on the same decoder; else yajl alone.  yajl gets the
 * body in up to three chunks, each freed and poisoned after feeding (it
 * must keep no pointer into them); the fast path's arguments point into
 * body, which lives until the results are compared.
 */

static void
fuzz_json_decode(fuzz_json_result_t *res, ngx_uint_t pipeline,
    ngx_uint_t max, u_char *body, size_t len, size_t cut1, size_t cut2,
    int fast)
{
    size_t       from[3], to[3], i;
    u_char      *chunk;
    ngx_int_t    rc;

    res->j = ngx_http_redisgate_json_create(pipeline, max, &fuzz_allocator);
    FUZZ_CHECK(res->j != NULL);

    res->cmds = NULL;
    res->n = 0;

    if (fast) {
        rc = ngx_http_redisgate_json_fast(res->j, body, len, &res->cmds,
                                          &res->n);
        FUZZ_CHECK(rc == NGX_OK || rc == NGX_DECLINED);

        if (rc == NGX_OK) {
            fuzz_json_taken++;

            res->rc = NGX_OK;
            res->error = ngx_http_redisgate_json_error(res->j);
            FUZZ_CHECK(res->error == NULL);
            return;
        }

        fuzz_json_declined++;

        /* declining leaves nothing behind for yajl to trip on */
        FUZZ_CHECK(ngx_http_redisgate_json_error(res->j) == NULL);
    }

    from[0] = 0; to[0] = cut1;
    from[1] = cut1; to[1] = cut2;
    from[2] = cut2; to[2] = len;

    rc = NGX_OK;

    for (i = 0; i < 3 && rc == NGX_OK; i++) {
        if (to[i] == from[i]) {
            continue;
        }

        chunk = malloc(to[i] - from[i]);
        FUZZ_CHECK(chunk != NULL);
        memcpy(chunk, body + from[i], to[i] - from[i]);

        rc = ngx_http_redisgate_json_feed(res->j, chunk, to[i] - from[i]);

        memset(chunk, 0xa5, to[i] - from[i]);
        free(chunk);
    }

    if (rc == NGX_OK) {
        rc = ngx_http_redisgate_json_finish(res->j, &res->cmds, &res->n);
    }

    res->rc = rc;
    res->error = ngx_http_redisgate_json_error(res->j);

    if (rc != NGX_OK) {
        res->cmds = NULL;
        res->n = 0;
    }
}


/* the same outcome, error text, commands and bytes, arg by arg */

static void
fuzz_json_compare(fuzz_json_result_t *a, fuzz_json_result_t *b)
{
    ngx_str_t   *x, *y;
    ngx_uint_t   k, i;

    FUZZ_CHECK(a->rc == b->rc);

    if (a->rc != NGX_OK) {
        FUZZ_CHECK(a->error != NULL && b->error != NULL);
        FUZZ_CHECK(strcmp(a->error, b->error) == 0);
        return;
    }

    FUZZ_CHECK(a->n == b->n);

    for (k = 0; k < a->n; k++) {
        FUZZ_CHECK(a->cmds[k].argc == b->cmds[k].argc);

        for (i = 0; i < a->cmds[k].argc; i++) {
            x = &a->cmds[k].argv[i];
            y = &b->cmds[k].argv[i];

            FUZZ_CHECK(x->len == y->len);
            FUZZ_CHECK((x->data == NULL) == (y->data == NULL));
            FUZZ_CHECK(x->len == 0 || memcmp(x->data, y->data, x->len) == 0);
        }
    }
}


static void
fuzz_json_stats(void)
{
    fprintf(stderr, "fuzz_json: fast path took %lu bodies, declined %lu\n",
            fuzz_json_taken, fuzz_json_declined);
}
