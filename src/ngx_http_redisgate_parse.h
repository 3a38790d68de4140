
/*
 * Copyright (C) RedisGate authors
 */


/*
 * The pure parts of RedisGate: routes, request bodies, reply encoding,
 * redisgate_instance URLs.
 * They use nginx's types and macros but call no nginx function and take
 * their memory from an allocator, so they build outside nginx too (tests,
 * fuzzers).
 */


#ifndef _NGX_HTTP_REDISGATE_PARSE_H_INCLUDED_
#define _NGX_HTTP_REDISGATE_PARSE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#include <hiredis/hiredis.h>


typedef struct {
    void                 *(*alloc)(void *data, size_t size);
    void                   *data;
} ngx_http_redisgate_alloc_t;


typedef struct {
    ngx_str_t              *argv;
    ngx_uint_t              argc;
} ngx_http_redisgate_cmd_t;


#define NGX_HTTP_REDISGATE_ROUTE_NONE      0   /* /redis/{id}, no body */
#define NGX_HTTP_REDISGATE_ROUTE_JSON      1   /* /redis/{id} + body */
#define NGX_HTTP_REDISGATE_ROUTE_PIPELINE  2
#define NGX_HTTP_REDISGATE_ROUTE_MULTI     3
#define NGX_HTTP_REDISGATE_ROUTE_PATH      4   /* /redis/{id}/cmd/arg... */

#define NGX_HTTP_REDISGATE_UUID_LEN        36


typedef struct {
    ngx_uint_t              kind;
    u_char                  instance[NGX_HTTP_REDISGATE_UUID_LEN];

    /* path style: path segments, then the body's slot, then query pairs */
    ngx_http_redisgate_cmd_t  cmd;
    ngx_uint_t              body_slot;      /* index of the body argument */
    unsigned                has_body_slot:1;

    ngx_str_t               token;          /* from ?_token= */
    const char             *error;          /* why NGX_ABORT */
} ngx_http_redisgate_route_t;


/*
 * path is the raw (still percent-encoded) path after the location prefix:
 * "{id}", "{id}/pipeline", "{id}/get/key"...  Returns NGX_OK, NGX_DECLINED
 * when the instance id is not a UUID, NGX_ABORT with rt->error on bad
 * input, NGX_ERROR when out of memory.
 */
ngx_int_t ngx_http_redisgate_parse_route(ngx_http_redisgate_route_t *rt,
    u_char *path, size_t len, u_char *query, size_t query_len,
    ngx_uint_t body, ngx_http_redisgate_alloc_t *a);

/* a UUID in any case into dst[36], in lower case; NGX_ERROR if not one */
ngx_int_t ngx_http_redisgate_parse_uuid(u_char *dst, u_char *p, size_t len);

/* decodes %XX in place semantics into dst; NGX_ERROR on malformed input */
ngx_int_t ngx_http_redisgate_percent_decode(u_char *dst, size_t *dst_len,
    u_char *src, size_t len);


typedef struct {
    ngx_str_t               host;           /* "host[:port]", redis[s]://; */
                                            /* "h[:p],h[:p]...", sentinels */
                                            /* or a cluster's seeds */
    ngx_str_t               path;           /* the socket, unix:// */
    ngx_str_t               user;           /* still percent-encoded */
    ngx_str_t               password;       /* still percent-encoded */
    ngx_str_t               name;           /* the sentinels' primary */
    ngx_str_t               sentinel_user;  /* still percent-encoded */
    ngx_str_t               sentinel_password;
    ngx_uint_t              db;
    unsigned                unix_socket:1;
    unsigned                tls:1;          /* rediss://, rediss-sentinel */
    unsigned                sentinel:1;     /* redis[s]-sentinel:// */
    unsigned                cluster:1;      /* redis[s]-cluster:// */
    unsigned                has_userinfo:1;
    const char             *error;          /* why NGX_ERROR */
} ngx_http_redisgate_url_t;

/* a redisgate_instance URL into parts pointing into it; NGX_ERROR + error */
ngx_int_t ngx_http_redisgate_parse_url(ngx_http_redisgate_url_t *u,
    u_char *url, size_t len);


typedef struct ngx_http_redisgate_json_s  ngx_http_redisgate_json_t;

/* a streaming decoder of ["CMD",...] or [["CMD",...],...] bodies */
ngx_http_redisgate_json_t *ngx_http_redisgate_json_create(
    ngx_uint_t pipeline, ngx_uint_t max_commands,
    ngx_http_redisgate_alloc_t *a);
/*
 * the whole body at once, without yajl: NGX_DECLINED when it is not of the
 * common shape (then feed it to the same decoder); arguments point into data
 */
ngx_int_t ngx_http_redisgate_json_fast(ngx_http_redisgate_json_t *j,
    u_char *data, size_t len, ngx_http_redisgate_cmd_t **cmds,
    ngx_uint_t *n);
ngx_int_t ngx_http_redisgate_json_feed(ngx_http_redisgate_json_t *j,
    u_char *data, size_t len);
ngx_int_t ngx_http_redisgate_json_finish(ngx_http_redisgate_json_t *j,
    ngx_http_redisgate_cmd_t **cmds, ngx_uint_t *n);
const char *ngx_http_redisgate_json_error(ngx_http_redisgate_json_t *j);
void ngx_http_redisgate_json_destroy(ngx_http_redisgate_json_t *j);


#define NGX_HTTP_REDISGATE_ENC_BASE64      0x01
#define NGX_HTTP_REDISGATE_ENC_MAP         0x02  /* top array as object */

/* JSON of a reply: sizes first, then writes exactly that many bytes */
size_t ngx_http_redisgate_json_value_len(redisReply *reply, ngx_uint_t flags);
u_char *ngx_http_redisgate_json_value(u_char *p, redisReply *reply,
    ngx_uint_t flags);
size_t ngx_http_redisgate_json_string_len(u_char *s, size_t n,
    ngx_uint_t base64);
u_char *ngx_http_redisgate_json_string(u_char *p, u_char *s, size_t n,
    ngx_uint_t base64);

/*
 * the end of the run from s of bytes a JSON string holds as they are:
 * printable ASCII but '"' and '\\' (16 at a time with SSE2)
 */
u_char *ngx_http_redisgate_json_plain(u_char *s, u_char *last);

/* RESP2 bytes of a reply, and of a command to send */

/*
 * A string encoded piece by piece as it arrives (a large reply streamed):
 * the same bytes as ngx_http_redisgate_json_string() between the quotes.
 * Each call encodes from *s towards last into p..end and returns the new
 * p; *s says how far it read.  It stops short of last when fewer than
 * NGX_HTTP_REDISGATE_PIECE_ROOM bytes are left in p..end: call again with
 * more room.  Bytes that may start a character the next piece finishes
 * are kept in enc; final: this is the last piece, and everything is
 * written.
 */

#define NGX_HTTP_REDISGATE_PIECE_ROOM      8

typedef struct {
    u_char                  carry[4];   /* bytes of the last piece */
    size_t                  ncarry;
    ngx_uint_t              base64;
    ngx_uint_t              skip;       /* of an invalid sequence */
} ngx_http_redisgate_piece_t;

u_char *ngx_http_redisgate_json_piece(ngx_http_redisgate_piece_t *enc,
    u_char *p, u_char *end, u_char **s, u_char *last, ngx_uint_t final);

size_t ngx_http_redisgate_resp_reply_len(redisReply *reply);
u_char *ngx_http_redisgate_resp_reply(u_char *p, redisReply *reply);
size_t ngx_http_redisgate_resp_command_len(ngx_http_redisgate_cmd_t *cmd);
u_char *ngx_http_redisgate_resp_command(u_char *p,
    ngx_http_redisgate_cmd_t *cmd);


#endif /* _NGX_HTTP_REDISGATE_PARSE_H_INCLUDED_ */
