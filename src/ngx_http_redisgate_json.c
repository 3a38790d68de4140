
/*
 * Copyright (C) RedisGate authors
 */


/*
 * Request bodies: ["CMD", "arg", 1, true] for one command,
 * [["CMD", ...], ...] for /pipeline and /multi-exec.  Decoded as the body
 * arrives, with yajl's event parser, so no tree of the body is ever built.
 *
 * A body whole in memory first goes through ngx_http_redisgate_json_fast(),
 * which takes only the common shape and gives up on anything else, so that
 * yajl stays the one judge of what is valid and of every error message.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include <yajl/yajl_parse.h>

#include "ngx_http_redisgate_parse.h"


struct ngx_http_redisgate_json_s {
    yajl_handle                  handle;
    yajl_alloc_funcs             yajl_funcs;
    ngx_http_redisgate_alloc_t  *alloc;

    ngx_uint_t                   pipeline;
    ngx_uint_t                   max_commands;
    ngx_uint_t                   depth;
    ngx_uint_t                   closed;

    ngx_http_redisgate_cmd_t    *cmds;
    ngx_uint_t                   ncmds;
    ngx_uint_t                   cmds_cap;

    ngx_str_t                   *argv;
    ngx_uint_t                   argc;
    ngx_uint_t                   argv_cap;

    const char                  *error;

    /* arguments are copied into chunks, not allocated one by one */
    u_char                      *chunk;
    u_char                      *chunk_end;
};


static int ngx_http_redisgate_json_null(void *ctx);
static int ngx_http_redisgate_json_boolean(void *ctx, int value);
static int ngx_http_redisgate_json_number(void *ctx, const char *s,
    size_t len);
static int ngx_http_redisgate_json_string_arg(void *ctx,
    const unsigned char *s, size_t len);
static int ngx_http_redisgate_json_start_map(void *ctx);
static int ngx_http_redisgate_json_map_key(void *ctx, const unsigned char *s,
    size_t len);
static int ngx_http_redisgate_json_start_array(void *ctx);
static int ngx_http_redisgate_json_end_array(void *ctx);
static int ngx_http_redisgate_json_arg(ngx_http_redisgate_json_t *j,
    const u_char *s, size_t len, ngx_uint_t is_string);
static void *ngx_http_redisgate_json_alloc(ngx_http_redisgate_json_t *j,
    size_t size, size_t align);
static void *ngx_http_redisgate_json_yajl_malloc(void *ctx, size_t size);
static void *ngx_http_redisgate_json_yajl_realloc(void *ctx, void *old,
    size_t size);
static void ngx_http_redisgate_json_yajl_free(void *ctx, void *p);
static void *ngx_http_redisgate_json_room(ngx_http_redisgate_json_t *j,
    void *old, ngx_uint_t n, ngx_uint_t *cap, size_t size);
static ngx_int_t ngx_http_redisgate_json_yajl(ngx_http_redisgate_json_t *j);
static ngx_inline u_char *ngx_http_redisgate_json_skip(u_char *p,
    u_char *last);
static ngx_inline u_char ngx_http_redisgate_json_next(u_char **pp,
    u_char *last);
static u_char *ngx_http_redisgate_json_fast_number(u_char *p, u_char *last);


static yajl_callbacks  ngx_http_redisgate_json_callbacks = {
    ngx_http_redisgate_json_null,
    ngx_http_redisgate_json_boolean,
    NULL,
    NULL,
    ngx_http_redisgate_json_number,
    ngx_http_redisgate_json_string_arg,
    ngx_http_redisgate_json_start_map,
    ngx_http_redisgate_json_map_key,
    NULL,
    ngx_http_redisgate_json_start_array,
    ngx_http_redisgate_json_end_array
};


ngx_http_redisgate_json_t *
ngx_http_redisgate_json_create(ngx_uint_t pipeline, ngx_uint_t max_commands,
    ngx_http_redisgate_alloc_t *a)
{
    ngx_http_redisgate_json_t  *j;

    j = a->alloc(a->data, sizeof(ngx_http_redisgate_json_t));
    if (j == NULL) {
        return NULL;
    }

    ngx_memzero(j, sizeof(ngx_http_redisgate_json_t));

    j->alloc = a;
    j->pipeline = pipeline;
    j->max_commands = max_commands;

    /* yajl's own memory from the allocator (the request's pool) too */
    j->yajl_funcs.malloc = ngx_http_redisgate_json_yajl_malloc;
    j->yajl_funcs.realloc = ngx_http_redisgate_json_yajl_realloc;
    j->yajl_funcs.free = ngx_http_redisgate_json_yajl_free;
    j->yajl_funcs.ctx = j;

    /* yajl's handle only when a body needs it: most take the fast path */

    return j;
}


static ngx_int_t
ngx_http_redisgate_json_yajl(ngx_http_redisgate_json_t *j)
{
    if (j->handle) {
        return NGX_OK;
    }

    j->handle = yajl_alloc(&ngx_http_redisgate_json_callbacks, &j->yajl_funcs,
                           j);
    if (j->handle == NULL) {
        j->error = "out of memory";
        return NGX_ERROR;
    }

    /* values are bytes for Redis, not necessarily text */
    yajl_config(j->handle, yajl_dont_validate_strings, 1);

    return NGX_OK;
}


void
ngx_http_redisgate_json_destroy(ngx_http_redisgate_json_t *j)
{
    if (j->handle) {
        yajl_free(j->handle);
        j->handle = NULL;
    }
}


ngx_int_t
ngx_http_redisgate_json_feed(ngx_http_redisgate_json_t *j, u_char *data,
    size_t len)
{
    yajl_status  rc;

    if (ngx_http_redisgate_json_yajl(j) != NGX_OK) {
        return NGX_ERROR;
    }

    rc = yajl_parse(j->handle, data, len);

    if (rc == yajl_status_ok) {
        return NGX_OK;
    }

    if (j->error == NULL) {
        j->error = "invalid JSON in the request body";
    }

    return NGX_ERROR;
}


ngx_int_t
ngx_http_redisgate_json_finish(ngx_http_redisgate_json_t *j,
    ngx_http_redisgate_cmd_t **cmds, ngx_uint_t *n)
{
    if (ngx_http_redisgate_json_yajl(j) != NGX_OK) {
        return NGX_ERROR;
    }

    if (yajl_complete_parse(j->handle) != yajl_status_ok || !j->closed) {
        if (j->error == NULL) {
            j->error = "invalid JSON in the request body";
        }

        return NGX_ERROR;
    }

    *cmds = j->cmds;
    *n = j->ncmds;

    return NGX_OK;
}


const char *
ngx_http_redisgate_json_error(ngx_http_redisgate_json_t *j)
{
    return j->error;
}


/*
 * The common body without yajl, whole in one buffer: arrays only where
 * commands and their list are, strings with no backslash, numbers, true
 * and false, the four white space characters of JSON.  On anything else
 * it gives up (NGX_DECLINED, j as it was created), be it an error or only
 * rarer, so that yajl decides what is valid and words every error; what
 * it takes it decodes as the callbacks would, the fuzzer comparing them.
 * Arguments point into data, which must live as long as the commands.
 */

ngx_int_t
ngx_http_redisgate_json_fast(ngx_http_redisgate_json_t *j, u_char *data,
    size_t len, ngx_http_redisgate_cmd_t **cmds, ngx_uint_t *n)
{
    u_char                     c, *p, *last, *start, *end;
    ngx_str_t                 *args, *arg;
    ngx_uint_t                 nargs, args_cap, first, ncmds, cmds_cap;
    ngx_http_redisgate_cmd_t  *cmd, *list;

    /* the state in locals: j stays as created when the body is declined */

    args = NULL;
    nargs = 0;
    args_cap = 0;

    list = NULL;
    ncmds = 0;
    cmds_cap = 0;

    p = data;
    last = data + len;

    p = ngx_http_redisgate_json_skip(p, last);

    if (j->pipeline) {
        if (p == last || *p != '[') {
            goto declined;
        }

        p = ngx_http_redisgate_json_skip(p + 1, last);
    }

    for ( ;; ) {

        /* one command; "[]" falls to yajl for its "empty command" */

        if (p == last || *p != '[') {
            goto declined;
        }

        p = ngx_http_redisgate_json_skip(p + 1, last);

        /*
         * The arguments of all commands in one array, each command's
         * argv a slice of it: when the array grows, the slices of earlier
         * commands stay valid in the old copy, which nothing frees.
         */

        first = nargs;

        for ( ;; ) {
            if (p == last) {
                goto declined;
            }

            if (*p == '"') {
                start = ++p;

                /*
                 * To the closing quote: an escape or a control character
                 * (an error) is yajl's.  Bytes from 0x80 are taken as they
                 * are, as yajl takes them without its UTF-8 check.
                 */

                for ( ;; ) {
                    p = ngx_http_redisgate_json_plain(p, last);

                    if (p == last || *p < 0x80) {
                        break;
                    }

                    do {
                        p++;
                    } while (p < last && *p >= 0x80);
                }

                if (p == last || *p != '"') {
                    goto declined;
                }

                end = p++;

            } else if (nargs == first) {
                /* a command name that is not a string: yajl's error */
                goto declined;

            } else {
                /* the token's own text, as yajl passes it to the callbacks */

                start = p;

                if (last - p >= 4 && ngx_strncmp(p, "true", 4) == 0) {
                    p += 4;

                } else if (last - p >= 5 && ngx_strncmp(p, "false", 5) == 0) {
                    p += 5;

                } else {
                    p = ngx_http_redisgate_json_fast_number(p, last);
                    if (p == NULL) {
                        goto declined;
                    }
                }

                end = p;
            }

            args = ngx_http_redisgate_json_room(j, args, nargs, &args_cap,
                                                sizeof(ngx_str_t));
            if (args == NULL) {
                goto declined;
            }

            /* an empty string as the callbacks leave it: no data */

            arg = &args[nargs++];
            arg->len = end - start;
            arg->data = arg->len ? start : NULL;

            /* "truex", "01", "1a" and the like end here too */

            c = ngx_http_redisgate_json_next(&p, last);

            if (c == ']') {
                break;
            }

            if (c != ',') {
                goto declined;
            }
        }

        if (ncmds == j->max_commands) {
            goto declined;
        }

        list = ngx_http_redisgate_json_room(j, list, ncmds, &cmds_cap,
                                            sizeof(ngx_http_redisgate_cmd_t));
        if (list == NULL) {
            goto declined;
        }

        cmd = &list[ncmds++];
        cmd->argv = args + first;
        cmd->argc = nargs - first;

        if (!j->pipeline) {
            break;
        }

        c = ngx_http_redisgate_json_next(&p, last);

        if (c == ']') {
            break;
        }

        if (c != ',') {
            goto declined;
        }
    }

    /* white space only after the body, as yajl allows */

    if (ngx_http_redisgate_json_skip(p, last) != last) {
        goto declined;
    }

    j->cmds = list;
    j->ncmds = ncmds;
    j->closed = 1;

    *cmds = list;
    *n = ncmds;

    return NGX_OK;

declined:

    /* what was allocated stays in the pool; an "out of memory" is yajl's */

    j->error = NULL;

    return NGX_DECLINED;
}


static ngx_inline u_char *
ngx_http_redisgate_json_skip(u_char *p, u_char *last)
{
    /* JSON's white space; yajl takes \v and \f too, left to it */

    while (p < last
           && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
    {
        p++;
    }

    return p;
}


/*
 * After a value: past white space and a ',' or a ']' (and white space
 * after a ','), returning which; 0, p unmoved, for anything else
 */

static ngx_inline u_char
ngx_http_redisgate_json_next(u_char **pp, u_char *last)
{
    u_char  *p;

    p = ngx_http_redisgate_json_skip(*pp, last);

    if (p == last) {
        return 0;
    }

    if (*p == ',') {
        *pp = ngx_http_redisgate_json_skip(p + 1, last);
        return ',';
    }

    if (*p == ']') {
        *pp = p + 1;
        return ']';
    }

    return 0;
}


/* -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?, yajl's number; NULL if not */

static u_char *
ngx_http_redisgate_json_fast_number(u_char *p, u_char *last)
{
    if (*p == '-') {
        p++;
    }

    if (p == last) {
        return NULL;
    }

    if (*p == '0') {
        p++;

    } else if (*p >= '1' && *p <= '9') {
        do {
            p++;
        } while (p < last && *p >= '0' && *p <= '9');

    } else {
        return NULL;
    }

    if (p < last && *p == '.') {
        p++;

        if (p == last || *p < '0' || *p > '9') {
            return NULL;
        }

        do {
            p++;
        } while (p < last && *p >= '0' && *p <= '9');
    }

    if (p < last && (*p == 'e' || *p == 'E')) {
        p++;

        if (p < last && (*p == '+' || *p == '-')) {
            p++;
        }

        if (p == last || *p < '0' || *p > '9') {
            return NULL;
        }

        do {
            p++;
        } while (p < last && *p >= '0' && *p <= '9');
    }

    return p;
}


static int
ngx_http_redisgate_json_null(void *ctx)
{
    ngx_http_redisgate_json_t *j = ctx;

    j->error = "null is not a valid argument";
    return 0;
}


static int
ngx_http_redisgate_json_boolean(void *ctx, int value)
{
    ngx_http_redisgate_json_t *j = ctx;

    if (value) {
        return ngx_http_redisgate_json_arg(j, (u_char *) "true", 4, 0);
    }

    return ngx_http_redisgate_json_arg(j, (u_char *) "false", 5, 0);
}


static int
ngx_http_redisgate_json_number(void *ctx, const char *s, size_t len)
{
    /* the token text exactly as sent: 1.5, 1e+21, 100 */
    return ngx_http_redisgate_json_arg(ctx, (const u_char *) s, len, 0);
}


static int
ngx_http_redisgate_json_string_arg(void *ctx, const unsigned char *s,
    size_t len)
{
    return ngx_http_redisgate_json_arg(ctx, s, len, 1);
}


static int
ngx_http_redisgate_json_start_map(void *ctx)
{
    ngx_http_redisgate_json_t *j = ctx;

    j->error = "JSON objects are not valid arguments";
    return 0;
}


static int
ngx_http_redisgate_json_map_key(void *ctx, const unsigned char *s, size_t len)
{
    ngx_http_redisgate_json_t *j = ctx;

    j->error = "JSON objects are not valid arguments";
    return 0;
}


static int
ngx_http_redisgate_json_start_array(void *ctx)
{
    ngx_http_redisgate_json_t *j = ctx;

    j->depth++;

    if (j->depth == 1 + j->pipeline) {
        j->argc = 0;
        return 1;
    }

    if (j->depth > 1 + j->pipeline) {
        j->error = "nested arrays are not valid arguments";
        return 0;
    }

    return 1;
}


static int
ngx_http_redisgate_json_end_array(void *ctx)
{
    ngx_http_redisgate_json_t *j = ctx;

    ngx_http_redisgate_cmd_t  *cmd;

    if (j->depth == 1 + j->pipeline) {
        if (j->argc == 0) {
            j->error = "empty command";
            return 0;
        }

        if (j->ncmds == j->max_commands) {
            j->error = "too many commands in one request";
            return 0;
        }

        j->cmds = ngx_http_redisgate_json_room(j, j->cmds, j->ncmds,
                                               &j->cmds_cap,
                                               sizeof(ngx_http_redisgate_cmd_t));
        if (j->cmds == NULL) {
            return 0;
        }

        cmd = &j->cmds[j->ncmds++];
        cmd->argv = j->argv;
        cmd->argc = j->argc;

        j->argv = NULL;
        j->argc = 0;
        j->argv_cap = 0;
    }

    if (--j->depth == 0) {
        if (j->ncmds == 0) {
            j->error = "empty pipeline";
            return 0;
        }

        j->closed = 1;
    }

    return 1;
}


static int
ngx_http_redisgate_json_arg(ngx_http_redisgate_json_t *j, const u_char *s,
    size_t len, ngx_uint_t is_string)
{
    u_char     *data;
    ngx_str_t  *arg;

    if (j->depth != 1 + j->pipeline) {
        if (j->depth == 0) {
            j->error = "the request body must be a JSON array";

        } else {
            j->error = "each command must be a JSON array";
        }

        return 0;
    }

    if (j->argc == 0 && !is_string) {
        j->error = "the command name must be a string";
        return 0;
    }

    j->argv = ngx_http_redisgate_json_room(j, j->argv, j->argc, &j->argv_cap,
                                           sizeof(ngx_str_t));
    if (j->argv == NULL) {
        return 0;
    }

    /* yajl's buffers are gone after this callback: keep a copy */

    data = NULL;

    if (len) {
        data = ngx_http_redisgate_json_alloc(j, len, 1);
        if (data == NULL) {
            return 0;
        }

        ngx_memcpy(data, s, len);
    }

    arg = &j->argv[j->argc++];
    arg->data = data;
    arg->len = len;

    return 1;
}


/*
 * An array of n items with room for one more: old itself while it has
 * some, else a copy twice its capacity (the old one stays in the pool)
 */

static void *
ngx_http_redisgate_json_room(ngx_http_redisgate_json_t *j, void *old,
    ngx_uint_t n, ngx_uint_t *cap, size_t size)
{
    void        *p;
    ngx_uint_t   want;

    if (n < *cap) {
        return old;
    }

    want = *cap ? *cap * 2 : 8;

    p = ngx_http_redisgate_json_alloc(j, want * size, sizeof(void *));
    if (p == NULL) {
        return NULL;
    }

    if (n) {
        ngx_memcpy(p, old, n * size);
    }

    *cap = want;

    return p;
}


/*
 * yajl's allocations (its handle, lexer, stacks): from the allocator,
 * never freed one by one.  A block's size is kept before it, for realloc,
 * which yajl uses to double its buffers: what they outgrow stays in the
 * pool until the request ends, twice their size at most.
 */

#define NGX_HTTP_REDISGATE_JSON_YAJL_HEAD  16

static void *
ngx_http_redisgate_json_yajl_malloc(void *ctx, size_t size)
{
    ngx_http_redisgate_json_t *j = ctx;

    u_char  *p;

    p = j->alloc->alloc(j->alloc->data,
                        NGX_HTTP_REDISGATE_JSON_YAJL_HEAD + size);
    if (p == NULL) {
        return NULL;
    }

    ngx_memcpy(p, &size, sizeof(size_t));

    return p + NGX_HTTP_REDISGATE_JSON_YAJL_HEAD;
}


static void *
ngx_http_redisgate_json_yajl_realloc(void *ctx, void *old, size_t size)
{
    u_char  *p;
    size_t   was;

    if (old == NULL) {
        return ngx_http_redisgate_json_yajl_malloc(ctx, size);
    }

    ngx_memcpy(&was, (u_char *) old - NGX_HTTP_REDISGATE_JSON_YAJL_HEAD,
               sizeof(size_t));

    if (size <= was) {
        return old;
    }

    p = ngx_http_redisgate_json_yajl_malloc(ctx, size);
    if (p == NULL) {
        return NULL;
    }

    ngx_memcpy(p, old, was);

    return p;
}


static void
ngx_http_redisgate_json_yajl_free(void *ctx, void *p)
{
    /* the allocator's owner frees it all at once */
}


#define NGX_HTTP_REDISGATE_JSON_CHUNK  4096


static void *
ngx_http_redisgate_json_alloc(ngx_http_redisgate_json_t *j, size_t size,
    size_t align)
{
    u_char  *p;
    size_t   want;

    p = ngx_align_ptr(j->chunk, align);

    if (j->chunk == NULL || p + size > j->chunk_end) {
        want = ngx_max(size, NGX_HTTP_REDISGATE_JSON_CHUNK);

        p = j->alloc->alloc(j->alloc->data, want);
        if (p == NULL) {
            j->error = "out of memory";
            return NULL;
        }

        if (size >= NGX_HTTP_REDISGATE_JSON_CHUNK) {
            /* a large value has a block of its own; the chunk stays */
            return p;
        }

        j->chunk_end = p + want;
    }

    j->chunk = p + size;

    return p;
}
