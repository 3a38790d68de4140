
/*
 * Copyright (C) RedisGate authors
 */


/*
 * The management API (docs/manage.md, ../shared/spec/MANAGEMENT.md), in a
 * location of redisgate_manage.  This side only says who calls and hands
 * the request on: the key store answers it, in one transaction with its
 * audit row (redisgate.manage_request() in sql/schema.sql), over the
 * module's own non-blocking PostgreSQL connections.
 *
 *     Authorization: Bearer <token>      only (no ?_token=, no cookie)
 *       an operator key of nginx.conf    redisgate_manage_key sha256:...
 *       else a key of the key store      redisgate.manage_lookup(): 401
 *                                        unknown, 403 without "manage"
 *     the body                           at most 64 kB, else 413
 *     the answer                         the key store's status and JSON,
 *                                        Cache-Control: no-store, and
 *                                        Allow for a 405; for a manager's
 *                                        GET /v1/organization, its rate
 *                                        limit's live state (RateLimit-*)
 *
 * The token is hashed at once and never logged; only the key's id is.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <libpq-fe.h>

#include "ngx_http_redisgate.h"


#define NGX_HTTP_REDISGATE_MANAGE_BODY  65536


/*
 * Not the module's request context (ngx_http_set_ctx): the log phase reads
 * that one as a data request's.  The key store's answers get it as data.
 */

typedef struct {
    ngx_http_request_t             *request;
    u_char                          hash_hex[64];
    ngx_str_t                       kind;       /* "key" or "operator" */
    ngx_str_t                       actor;      /* a key id, an operator id */
    ngx_str_t                       org;        /* a key's organization */
    ngx_uint_t                      rate;       /* its plan's */
    ngx_uint_t                      burst;
    ngx_str_t                       path;       /* after the location */
} ngx_http_redisgate_manage_ctx_t;


static void ngx_http_redisgate_manage_body(ngx_http_request_t *r);
static ngx_int_t ngx_http_redisgate_manage_start(ngx_http_request_t *r);
static void ngx_http_redisgate_manage_caller(void *data, ngx_int_t rc,
    PGresult *res, const char *error);
static ngx_int_t ngx_http_redisgate_manage_ask(
    ngx_http_redisgate_manage_ctx_t *ctx, const char *sql, ngx_uint_t n,
    ngx_str_t *values, ngx_http_redisgate_pg_call_pt handler);
static ngx_int_t ngx_http_redisgate_manage_call(
    ngx_http_redisgate_manage_ctx_t *ctx);
static void ngx_http_redisgate_manage_answered(void *data, ngx_int_t rc,
    PGresult *res, const char *error);
static ngx_int_t ngx_http_redisgate_manage_value(ngx_pool_t *pool,
    PGresult *res, int col, ngx_str_t *v);
static ngx_int_t ngx_http_redisgate_manage_rate(
    ngx_http_redisgate_manage_ctx_t *ctx);
static ngx_int_t ngx_http_redisgate_manage_send(ngx_http_request_t *r,
    ngx_uint_t status, ngx_str_t *json, ngx_str_t *allow);
static ngx_int_t ngx_http_redisgate_manage_error(ngx_http_request_t *r,
    ngx_uint_t status, const char *text);


static const char  ngx_http_redisgate_manage_lookup_sql[] =
    "SELECT key_id, organization_id, manager, requests_per_second, burst "
    "FROM redisgate.manage_lookup($1)";

static const char  ngx_http_redisgate_manage_request_sql[] =
    "SELECT status, response, allow "
    "FROM redisgate.manage_request($1, $2, $3::uuid, $4, $5, $6, $7, $8)";


ngx_int_t
ngx_http_redisgate_manage_handler(ngx_http_request_t *r)
{
    ngx_int_t  rc;

    if (r->headers_in.content_length_n > NGX_HTTP_REDISGATE_MANAGE_BODY) {
        if (ngx_http_discard_request_body(r) != NGX_OK) {
            r->keepalive = 0;
        }

        return ngx_http_redisgate_manage_error(r,
                                  NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                  "Request Entity Too Large: a body of at "
                                  "most 64 kB");
    }

    rc = ngx_http_read_client_request_body(r, ngx_http_redisgate_manage_body);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static void
ngx_http_redisgate_manage_body(ngx_http_request_t *r)
{
    ngx_int_t  rc;

    rc = ngx_http_redisgate_manage_start(r);

    if (rc != NGX_DONE) {
        ngx_http_finalize_request(r, rc);
    }
}


/* who calls: an operator of nginx.conf, else the key store is asked */

static ngx_int_t
ngx_http_redisgate_manage_start(ngx_http_request_t *r)
{
    u_char                           *p, hash[32];
    ngx_str_t                         token, value;
    ngx_uint_t                        i;
    ngx_http_redisgate_key_t         *op;
    ngx_http_redisgate_manage_ctx_t  *ctx;
    ngx_http_redisgate_main_conf_t   *rmcf;

    rmcf = ngx_http_get_module_main_conf(r, ngx_http_redisgate_module);

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_redisgate_manage_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->request = r;

    /* Bearer only: no token in a URL (access logs) or a cookie (CSRF) */

    if (r->headers_in.authorization == NULL
        || r->headers_in.authorization->value.len <= sizeof("Bearer ") - 1
        || ngx_strncasecmp(r->headers_in.authorization->value.data,
                           (u_char *) "Bearer ", sizeof("Bearer ") - 1)
           != 0)
    {
        return ngx_http_redisgate_manage_error(r, NGX_HTTP_UNAUTHORIZED,
                                  "Unauthorized: an API key with the scope "
                                  "manage is needed, as Authorization: "
                                  "Bearer <token>");
    }

    p = r->headers_in.authorization->value.data + sizeof("Bearer ") - 1;
    token.data = p;
    token.len = r->headers_in.authorization->value.len
                - (sizeof("Bearer ") - 1);

    if (ngx_http_redisgate_token_hash(&token, hash) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    op = rmcf->manage_keys.elts;

    for (i = 0; i < rmcf->manage_keys.nelts; i++) {
        if (ngx_memcmp(op[i].hash, hash, 32) == 0) {
            ngx_str_set(&ctx->kind, "operator");
            ctx->actor = op[i].id;
            return ngx_http_redisgate_manage_call(ctx);
        }
    }

    if (rmcf->pg == NULL) {
        return ngx_http_redisgate_manage_error(r, NGX_HTTP_UNAUTHORIZED,
                                  "Unauthorized: invalid API key");
    }

    ngx_hex_dump(ctx->hash_hex, hash, 32);

    value.data = ctx->hash_hex;
    value.len = 64;

    return ngx_http_redisgate_manage_ask(ctx,
                                         ngx_http_redisgate_manage_lookup_sql,
                                         1, &value,
                                         ngx_http_redisgate_manage_caller);
}


/* a statement to the key store, the request waiting for its answer */

static ngx_int_t
ngx_http_redisgate_manage_ask(ngx_http_redisgate_manage_ctx_t *ctx,
    const char *sql, ngx_uint_t n, ngx_str_t *values,
    ngx_http_redisgate_pg_call_pt handler)
{
    ngx_int_t                        rc;
    const char                      *error;
    ngx_http_request_t              *r;
    ngx_http_redisgate_main_conf_t  *rmcf;

    r = ctx->request;
    rmcf = ngx_http_get_module_main_conf(r, ngx_http_redisgate_module);

    rc = ngx_http_redisgate_pg_call(rmcf->pg, r->pool, r->connection->log,
                                    sql, n, values, handler, ctx, &error);

    if (rc == NGX_AGAIN) {
        ngx_http_redisgate_wait_client(r);
        return NGX_DONE;
    }

    return ngx_http_redisgate_manage_error(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                           error);
}


/* the key store said who the key is */

static void
ngx_http_redisgate_manage_caller(void *data, ngx_int_t rc, PGresult *res,
    const char *error)
{
    ngx_http_redisgate_manage_ctx_t *ctx = data;

    ngx_http_request_t  *r;

    r = ctx->request;

    if (rc != NGX_OK) {
        rc = ngx_http_redisgate_manage_error(r,
                                  NGX_HTTP_INTERNAL_SERVER_ERROR, error);
        goto done;
    }

    if (PQntuples(res) == 0 || PQnfields(res) < 5) {
        rc = ngx_http_redisgate_manage_error(r, NGX_HTTP_UNAUTHORIZED,
                                  "Unauthorized: invalid API key");
        goto done;
    }

    if (PQgetvalue(res, 0, 2)[0] != 't') {
        rc = ngx_http_redisgate_manage_error(r, NGX_HTTP_FORBIDDEN,
                                  "Forbidden: this API key may not manage "
                                  "(it needs the scope manage, in an active "
                                  "organization)");
        goto done;
    }

    if (ngx_http_redisgate_manage_value(r->pool, res, 0, &ctx->actor)
        == NGX_ERROR
        || ngx_http_redisgate_manage_value(r->pool, res, 1, &ctx->org)
           == NGX_ERROR)
    {
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
        goto done;
    }

    ctx->rate = ngx_atoi((u_char *) PQgetvalue(res, 0, 3),
                         PQgetlength(res, 0, 3));
    ctx->burst = ngx_atoi((u_char *) PQgetvalue(res, 0, 4),
                          PQgetlength(res, 0, 4));

    ngx_str_set(&ctx->kind, "key");

    rc = ngx_http_redisgate_manage_call(ctx);

done:

    ngx_http_redisgate_resume(r, rc);
}


/* the request, to redisgate.manage_request() */

static ngx_int_t
ngx_http_redisgate_manage_call(ngx_http_redisgate_manage_ctx_t *ctx)
{
    ngx_str_t                         values[8], body;
    ngx_http_request_t               *r;
    ngx_http_core_loc_conf_t         *clcf;
    ngx_http_redisgate_main_conf_t   *rmcf;

    r = ctx->request;
    rmcf = ngx_http_get_module_main_conf(r, ngx_http_redisgate_module);
    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    if (rmcf->pg == NULL) {
        return ngx_http_redisgate_manage_error(r,
                                  NGX_HTTP_INTERNAL_SERVER_ERROR,
                                  "the management API needs the key store "
                                  "(redisgate_pg)");
    }

    if (ngx_http_redisgate_body_bytes(r, &body) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (body.len > NGX_HTTP_REDISGATE_MANAGE_BODY) {
        /* a chunked body says its size only once it is read */
        return ngx_http_redisgate_manage_error(r,
                                  NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                  "Request Entity Too Large: a body of at "
                                  "most 64 kB");
    }

    values[0] = ctx->kind;
    values[1] = ctx->actor;
    values[2] = ctx->org;               /* no data for an operator: NULL */
    values[3] = r->connection->addr_text;
    values[4] = r->method_name;

    /* the path after the location's prefix: "v1/keys/..." */
    values[5] = r->uri;

#if (NGX_PCRE)
    if (clcf->regex == NULL)
#endif
    {
        if (r->uri.len >= clcf->name.len
            && ngx_strncmp(r->uri.data, clcf->name.data, clcf->name.len)
               == 0)
        {
            values[5].data += clcf->name.len;
            values[5].len -= clcf->name.len;
        }
    }

    ctx->path = values[5];

    values[6] = r->args;

    if (values[6].data == NULL) {
        ngx_str_set(&values[6], "");
    }

    values[7] = body;

    if (values[7].data == NULL) {
        ngx_str_set(&values[7], "");
    }

    return ngx_http_redisgate_manage_ask(ctx,
                                         ngx_http_redisgate_manage_request_sql,
                                         8, values,
                                         ngx_http_redisgate_manage_answered);
}


static void
ngx_http_redisgate_manage_answered(void *data, ngx_int_t rc, PGresult *res,
    const char *error)
{
    ngx_http_redisgate_manage_ctx_t *ctx = data;

    ngx_int_t            status, has_json, has_allow;
    ngx_str_t            json, allow;
    ngx_http_request_t  *r;

    r = ctx->request;

    if (rc != NGX_OK) {
        rc = ngx_http_redisgate_manage_error(r,
                                  NGX_HTTP_INTERNAL_SERVER_ERROR, error);
        goto done;
    }

    if (PQntuples(res) != 1 || PQnfields(res) < 3) {
        rc = ngx_http_redisgate_manage_error(r,
                                  NGX_HTTP_INTERNAL_SERVER_ERROR,
                                  "key store call failed");
        goto done;
    }

    status = ngx_atoi((u_char *) PQgetvalue(res, 0, 0),
                      PQgetlength(res, 0, 0));

    if (status < 200 || status > 599) {
        rc = ngx_http_redisgate_manage_error(r,
                                  NGX_HTTP_INTERNAL_SERVER_ERROR,
                                  "key store call failed");
        goto done;
    }

    /* a 204 has no body; only a 405 an Allow */
    has_json = ngx_http_redisgate_manage_value(r->pool, res, 1, &json);
    has_allow = ngx_http_redisgate_manage_value(r->pool, res, 2, &allow);

    if (has_json == NGX_ERROR || has_allow == NGX_ERROR) {
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
        goto done;
    }

    if (status == NGX_HTTP_OK && ctx->org.len
        && ngx_http_redisgate_manage_rate(ctx) != NGX_OK)
    {
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
        goto done;
    }

    rc = ngx_http_redisgate_manage_send(r, (ngx_uint_t) status,
                                        has_json == NGX_OK ? &json : NULL,
                                        has_allow == NGX_OK ? &allow : NULL);

done:

    ngx_http_redisgate_resume(r, rc);
}


/*
 * A value of the key store's answer, copied: the answer lives only while
 * its handler runs.  NGX_DECLINED: SQL NULL.
 */

static ngx_int_t
ngx_http_redisgate_manage_value(ngx_pool_t *pool, PGresult *res, int col,
    ngx_str_t *v)
{
    if (PQgetisnull(res, 0, col)) {
        ngx_str_null(v);
        return NGX_DECLINED;
    }

    v->len = PQgetlength(res, 0, col);
    v->data = ngx_pnalloc(pool, v->len + 1);
    if (v->data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(v->data, PQgetvalue(res, 0, col), v->len);

    return NGX_OK;
}


/*
 * A manager's GET /v1/organization: what its plan's bucket holds now, in
 * the headers the data API answers with (RateLimit-Limit, -Remaining,
 * -Reset), taking nothing from it; none without redisgate_limit
 */

static ngx_int_t
ngx_http_redisgate_manage_rate(ngx_http_redisgate_manage_ctx_t *ctx)
{
    u_char                            *p;
    ngx_http_request_t                *r;
    ngx_http_redisgate_limit_state_t   state;
    ngx_http_redisgate_main_conf_t    *rmcf;

    r = ctx->request;
    rmcf = ngx_http_get_module_main_conf(r, ngx_http_redisgate_module);

    if (rmcf->limit == NULL
        || ctx->path.len != sizeof("v1/organization") - 1
        || ngx_strncmp(ctx->path.data, "v1/organization",
                       sizeof("v1/organization") - 1) != 0
        || r->method != NGX_HTTP_GET
        || ctx->rate == (ngx_uint_t) NGX_ERROR
        || ctx->burst == (ngx_uint_t) NGX_ERROR)
    {
        return NGX_OK;
    }

    ngx_http_redisgate_limit_peek(rmcf->limit, &ctx->org, ctx->rate,
                                  ctx->burst, &state);

    p = ngx_pnalloc(r->pool, 3 * NGX_INT_T_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    if (ngx_http_redisgate_add_header(r, "RateLimit-Limit", p,
                            ngx_sprintf(p, "%ui", state.limit) - p)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    p += NGX_INT_T_LEN;

    if (ngx_http_redisgate_add_header(r, "RateLimit-Remaining", p,
                            ngx_sprintf(p, "%ui", state.remaining) - p)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    p += NGX_INT_T_LEN;

    return ngx_http_redisgate_add_header(r, "RateLimit-Reset", p,
                            ngx_sprintf(p, "%T", state.reset) - p);
}


/* the answer: JSON (or none), never cached, Allow for a 405 */

static ngx_int_t
ngx_http_redisgate_manage_send(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *json, ngx_str_t *allow)
{
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    r->headers_out.status = status;
    r->headers_out.content_length_n = json ? (off_t) json->len : 0;

    if (json) {
        ngx_str_set(&r->headers_out.content_type, "application/json");
        r->headers_out.content_type_len = r->headers_out.content_type.len;
    }

    if (ngx_http_redisgate_add_header(r, "Cache-Control",
                                         (u_char *) "no-store", 8)
        != NGX_OK
        || (allow
            && ngx_http_redisgate_add_header(r, "Allow", allow->data,
                                                allow->len)
               != NGX_OK))
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (json == NULL || r->method == NGX_HTTP_HEAD) {
        r->header_only = 1;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->pos = json->data;
    b->last = json->data + json->len;
    b->memory = 1;
    b->last_buf = (r == r->main);
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


static ngx_int_t
ngx_http_redisgate_manage_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *text)
{
    u_char     *p;
    size_t      len;
    ngx_str_t   json;

    len = ngx_strlen(text);

    json.len = sizeof("{\"error\":}") - 1
               + ngx_http_redisgate_json_string_len((u_char *) text, len, 0);
    json.data = ngx_pnalloc(r->pool, json.len);
    if (json.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_cpymem(json.data, "{\"error\":", sizeof("{\"error\":") - 1);
    p = ngx_http_redisgate_json_string(p, (u_char *) text, len, 0);
    *p = '}';

    return ngx_http_redisgate_manage_send(r, status, &json, NULL);
}


/* redisgate_manage_key sha256:<hex> [id=<name>] */

char *
ngx_http_redisgate_manage_key(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_redisgate_main_conf_t  *rmcf = conf;

    ngx_str_t                 *value;
    ngx_http_redisgate_key_t  *key;

    value = cf->args->elts;

    key = ngx_array_push(&rmcf->manage_keys);
    if (key == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(key, sizeof(ngx_http_redisgate_key_t));

    if (ngx_http_redisgate_key_hash(cf, &value[1], key->hash) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    /* in the audit log: its id, by default the hash's first digits */
    key->id.data = value[1].data + 7;
    key->id.len = 8;

    if (cf->args->nelts == 3) {
        if (ngx_strncmp(value[2].data, "id=", 3) != 0 || value[2].len == 3)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"%V\"", &value[2]);
            return NGX_CONF_ERROR;
        }

        key->id.data = value[2].data + 3;
        key->id.len = value[2].len - 3;
    }

    return NGX_CONF_OK;
}


/* redisgate_manage: this location serves the management API */

char *
ngx_http_redisgate_manage(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_redisgate_manage_handler;

    return NGX_CONF_OK;
}
