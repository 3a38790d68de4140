
/*
 * Copyright (C) RedisGate authors
 */


/*
 * Who is calling: a token and an instance id become an organization,
 * scopes and a backend.  Two sources answer: the keys and instances of
 * nginx.conf first, then the PostgreSQL key store through the shared
 * cache.  Tokens are only ever compared by their SHA-256, and only that
 * hash's first digits reach the log.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <openssl/evp.h>

#include "ngx_http_redisgate.h"


typedef struct {
    ngx_http_request_t              *request;
    ngx_http_redisgate_auth_t       *auth;
    ngx_http_redisgate_resolved_pt   done;
    u_char                           hash[32];
    u_char                           instance[NGX_HTTP_REDISGATE_UUID_LEN];
    ngx_http_redisgate_keyinfo_t     stale;
    unsigned                         has_stale:1;
} ngx_http_redisgate_resolve_t;


/*
 * In front of the shared cache, each worker remembers what it resolved in
 * the last second: no lock, no copy out of shared memory, no backend
 * lookup.  An entry is good while the shared cache has seen no
 * announcement since it was made (its generation), so a revocation
 * reaches it as fast as the shared cache.
 */

#define NGX_HTTP_REDISGATE_FRONT_SLOTS  1024
#define NGX_HTTP_REDISGATE_FRONT_TTL    1000
#define NGX_HTTP_REDISGATE_FRONT_ID     64

typedef struct {
    u_char                           hash[32];
    u_char                           instance[NGX_HTTP_REDISGATE_UUID_LEN];
    ngx_atomic_uint_t                generation;
    ngx_msec_t                       until;
    ngx_uint_t                       scopes;
    ngx_uint_t                       rate;
    ngx_uint_t                       burst;
    time_t                           expires;
    ngx_http_redisgate_backend_t    *backend;
    size_t                           key_id_len;
    size_t                           org_len;
    u_char                           key_id[NGX_HTTP_REDISGATE_FRONT_ID];
    u_char                           org[NGX_HTTP_REDISGATE_FRONT_ID];
} ngx_http_redisgate_front_t;


static ngx_int_t ngx_http_redisgate_front_get(ngx_http_request_t *r,
    ngx_http_redisgate_cache_t *cache, u_char *hash, u_char *instance,
    ngx_http_redisgate_auth_t *auth);
static void ngx_http_redisgate_front_put(ngx_http_redisgate_cache_t *cache,
    u_char *hash, u_char *instance, ngx_atomic_uint_t generation,
    ngx_http_redisgate_auth_t *auth);
static ngx_uint_t ngx_http_redisgate_token_shaped(ngx_str_t *token);


/*
 * OpenSSL 3 looks SHA-256 up (under locks) on every EVP_sha256() use:
 * once per worker is enough, and so is one digest context
 */
static const EVP_MD  *ngx_http_redisgate_sha256_md;
static EVP_MD_CTX    *ngx_http_redisgate_sha256_ctx;

static ngx_http_redisgate_front_t  *ngx_http_redisgate_front;
static ngx_int_t ngx_http_redisgate_resolve_static(ngx_http_request_t *r,
    ngx_http_redisgate_key_t *key, ngx_str_t *instance,
    ngx_http_redisgate_auth_t *auth);
static void ngx_http_redisgate_resolve_looked_up(void *data, ngx_int_t rc,
    ngx_http_redisgate_keyinfo_t *ki, const char *error);
static ngx_int_t ngx_http_redisgate_resolve_apply(ngx_http_request_t *r,
    ngx_http_redisgate_keyinfo_t *ki, ngx_http_redisgate_auth_t *auth);


/*
 * NGX_OK: auth is filled.  NGX_AGAIN: done(r, rc) is called later with
 * one of these outcomes.  An HTTP status: refused, auth->error says why.
 */

ngx_int_t
ngx_http_redisgate_resolve(ngx_http_request_t *r, ngx_str_t *token,
    ngx_str_t *instance, ngx_http_redisgate_auth_t *auth,
    ngx_http_redisgate_resolved_pt done)
{
    u_char                           hash[32], hex[8];
    ngx_int_t                        rc;
    const char                      *error;
    ngx_atomic_uint_t                generation;
    ngx_http_redisgate_key_t        *key;
    ngx_http_redisgate_resolve_t    *rs;
    ngx_http_redisgate_main_conf_t  *rmcf;

    rmcf = ngx_http_get_module_main_conf(r, ngx_http_redisgate_module);

    if (ngx_http_redisgate_token_hash(token, hash) != NGX_OK) {
        auth->error = "could not hash the API key";
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* a stream watches its key by it (recheck.c) */
    ngx_memcpy(auth->hash, hash, 32);

    key = ngx_http_redisgate_static_key(rmcf, hash);

    if (key) {
        return ngx_http_redisgate_resolve_static(r, key, instance, auth);
    }

    ngx_hex_dump(hex, hash, 4);

    if (rmcf->pg == NULL) {
        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "redisgate: unknown key, sha256 %*s...",
                       (size_t) 8, hex);

        auth->error = "Unauthorized: invalid API key";
        return NGX_HTTP_UNAUTHORIZED;
    }

    if (rmcf->pg_token_check && !ngx_http_redisgate_token_shaped(token)) {
        /* random garbage never costs the key store a query */
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "redisgate: not a key store token");

        auth->error = "Unauthorized: invalid API key";
        return NGX_HTTP_UNAUTHORIZED;
    }

    rs = ngx_pcalloc(r->pool, sizeof(ngx_http_redisgate_resolve_t));
    if (rs == NULL) {
        auth->error = "out of memory";
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rs->request = r;
    rs->auth = auth;
    rs->done = done;
    ngx_memcpy(rs->hash, hash, 32);
    ngx_memcpy(rs->instance, instance->data, NGX_HTTP_REDISGATE_UUID_LEN);

    if (rmcf->cache) {
        if (ngx_http_redisgate_front_get(r, rmcf->cache, hash, instance->data,
                                         auth)
            == NGX_OK)
        {
            ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                           "redisgate: key cache hit, sha256 %*s...",
                           (size_t) 8, hex);
            return NGX_OK;
        }

        generation = ngx_http_redisgate_cache_generation(rmcf->cache);

        rc = ngx_http_redisgate_cache_get(rmcf->cache, hash, instance->data,
                                          &rs->stale, r->pool);

        if (rc == NGX_OK) {
            ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                           "redisgate: key cache hit, sha256 %*s...",
                           (size_t) 8, hex);
            auth->source = NGX_HTTP_REDISGATE_SOURCE_HIT;

            rc = ngx_http_redisgate_resolve_apply(r, &rs->stale, auth);

            if (rc == NGX_OK) {
                ngx_http_redisgate_front_put(rmcf->cache, hash,
                                             instance->data, generation,
                                             auth);
            }

            return rc;
        }

        /* past its TTL: good only while the key store is unreachable */
        rs->has_stale = (rc == NGX_AGAIN);
    }

    rc = ngx_http_redisgate_pg_lookup(rmcf->pg, r->pool, r->connection->log,
                                      hash, instance->data,
                                      ngx_http_redisgate_resolve_looked_up,
                                      rs, &error);

    if (rc == NGX_AGAIN) {
        return NGX_AGAIN;
    }

    if (rs->has_stale) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "redisgate: %s, using a stale cached key", error);
        auth->source = NGX_HTTP_REDISGATE_SOURCE_STALE;
        return ngx_http_redisgate_resolve_apply(r, &rs->stale, auth);
    }

    auth->error = error;

    return NGX_HTTP_INTERNAL_SERVER_ERROR;
}


/* what valgrind would count as lost once nginx unloads the module */

void
ngx_http_redisgate_auth_exit_process(void)
{
    if (ngx_http_redisgate_front) {
        ngx_free(ngx_http_redisgate_front);
        ngx_http_redisgate_front = NULL;
    }

    if (ngx_http_redisgate_sha256_ctx) {
        EVP_MD_CTX_free(ngx_http_redisgate_sha256_ctx);
        ngx_http_redisgate_sha256_ctx = NULL;
    }

#if (OPENSSL_VERSION_NUMBER >= 0x30000000L)
    if (ngx_http_redisgate_sha256_md) {
        EVP_MD_free((EVP_MD *) ngx_http_redisgate_sha256_md);
    }
#endif

    ngx_http_redisgate_sha256_md = NULL;
}


/* the SHA-256 of a token: keys are known by it only */

ngx_int_t
ngx_http_redisgate_token_hash(ngx_str_t *token, u_char *hash)
{
    unsigned int  len;

    if (ngx_http_redisgate_sha256_ctx == NULL) {
#if (OPENSSL_VERSION_NUMBER >= 0x30000000L)
        ngx_http_redisgate_sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
#else
        ngx_http_redisgate_sha256_md = EVP_sha256();
#endif
        ngx_http_redisgate_sha256_ctx = EVP_MD_CTX_new();

        if (ngx_http_redisgate_sha256_md == NULL
            || ngx_http_redisgate_sha256_ctx == NULL)
        {
            return NGX_ERROR;
        }
    }

    len = 32;

    if (EVP_DigestInit_ex(ngx_http_redisgate_sha256_ctx,
                          ngx_http_redisgate_sha256_md, NULL) != 1
        || EVP_DigestUpdate(ngx_http_redisgate_sha256_ctx, token->data,
                            token->len) != 1
        || EVP_DigestFinal_ex(ngx_http_redisgate_sha256_ctx, hash, &len) != 1)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_redisgate_front_get(ngx_http_request_t *r,
    ngx_http_redisgate_cache_t *cache, u_char *hash, u_char *instance,
    ngx_http_redisgate_auth_t *auth)
{
    u_char                      *p;
    ngx_http_redisgate_front_t  *f;

    if (ngx_http_redisgate_front == NULL) {
        return NGX_DECLINED;
    }

    f = &ngx_http_redisgate_front[(hash[0] | hash[1] << 8)
                                  % NGX_HTTP_REDISGATE_FRONT_SLOTS];

    if ((ngx_msec_int_t) (f->until - ngx_current_msec) <= 0
        || (f->expires && f->expires <= ngx_time())
        || f->generation != ngx_http_redisgate_cache_generation(cache)
        || ngx_memcmp(f->hash, hash, 32) != 0
        || ngx_memcmp(f->instance, instance, NGX_HTTP_REDISGATE_UUID_LEN)
           != 0)
    {
        return NGX_DECLINED;
    }

    /* the slot may be filled again before this request is logged */

    p = ngx_pnalloc(r->pool, f->key_id_len + f->org_len);
    if (p == NULL) {
        return NGX_DECLINED;
    }

    auth->key_id.data = p;
    auth->key_id.len = f->key_id_len;
    p = ngx_cpymem(p, f->key_id, f->key_id_len);

    auth->organization.data = p;
    auth->organization.len = f->org_len;
    ngx_memcpy(p, f->org, f->org_len);

    auth->scopes = f->scopes;
    auth->rate = f->rate;
    auth->burst = f->burst;
    auth->expires = f->expires;
    auth->backend = f->backend;
    auth->source = NGX_HTTP_REDISGATE_SOURCE_HIT;

    /* in use: the idle sweep leaves it alone */
    f->backend->last_used = ngx_current_msec;

    ngx_http_redisgate_cache_count_hit(cache);

    return NGX_OK;
}


static void
ngx_http_redisgate_front_put(ngx_http_redisgate_cache_t *cache, u_char *hash,
    u_char *instance, ngx_atomic_uint_t generation,
    ngx_http_redisgate_auth_t *auth)
{
    ngx_http_redisgate_front_t  *f;

    if (auth->key_id.len > NGX_HTTP_REDISGATE_FRONT_ID
        || auth->organization.len > NGX_HTTP_REDISGATE_FRONT_ID)
    {
        return;
    }

    if (ngx_http_redisgate_front == NULL) {
        ngx_http_redisgate_front = ngx_calloc(NGX_HTTP_REDISGATE_FRONT_SLOTS
                                       * sizeof(ngx_http_redisgate_front_t),
                                       ngx_cycle->log);
        if (ngx_http_redisgate_front == NULL) {
            return;
        }
    }

    f = &ngx_http_redisgate_front[(hash[0] | hash[1] << 8)
                                  % NGX_HTTP_REDISGATE_FRONT_SLOTS];

    ngx_memcpy(f->hash, hash, 32);
    ngx_memcpy(f->instance, instance, NGX_HTTP_REDISGATE_UUID_LEN);

    /* taken before the shared cache was read: an announcement since voids it */
    f->generation = generation;
    f->until = ngx_current_msec + NGX_HTTP_REDISGATE_FRONT_TTL;

    f->scopes = auth->scopes;
    f->rate = auth->rate;
    f->burst = auth->burst;
    f->expires = auth->expires;
    f->backend = auth->backend;

    f->key_id_len = auth->key_id.len;
    ngx_memcpy(f->key_id, auth->key_id.data, auth->key_id.len);

    f->org_len = auth->organization.len;
    ngx_memcpy(f->org, auth->organization.data, auth->organization.len);
}


/* what tools/redisgate-admin makes: "rg_" and 64 lower-case hex digits */

static ngx_uint_t
ngx_http_redisgate_token_shaped(ngx_str_t *token)
{
    u_char      c;
    ngx_uint_t  i;

    if (token->len != 3 + 64 || ngx_strncmp(token->data, "rg_", 3) != 0) {
        return 0;
    }

    for (i = 3; i < token->len; i++) {
        c = token->data[i];

        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
            return 0;
        }
    }

    return 1;
}


static ngx_int_t
ngx_http_redisgate_resolve_static(ngx_http_request_t *r,
    ngx_http_redisgate_key_t *key, ngx_str_t *instance,
    ngx_http_redisgate_auth_t *auth)
{
    ngx_http_redisgate_instance_t   *inst;
    ngx_http_redisgate_main_conf_t  *rmcf;

    rmcf = ngx_http_get_module_main_conf(r, ngx_http_redisgate_module);

    inst = ngx_http_redisgate_static_instance(rmcf, instance->data);

    if (inst == NULL
        || inst->organization.len != key->organization.len
        || ngx_memcmp(inst->organization.data, key->organization.data,
                      key->organization.len)
           != 0)
    {
        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "redisgate: key \"%V\" may not use instance %V",
                       &key->id, instance);

        auth->error = "instance not found";
        return NGX_HTTP_NOT_FOUND;
    }

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "redisgate: key \"%V\" of organization \"%V\" valid "
                   "for instance %V", &key->id, &key->organization, instance);

    auth->key_id = key->id;
    auth->organization = key->organization;
    auth->scopes = key->scopes;
    auth->backend = inst->backend;
    auth->source = NGX_HTTP_REDISGATE_SOURCE_STATIC;

    return NGX_OK;
}


/*
 * What the key store's answer says of a key: NGX_OK, it lets in (now);
 * else the status to refuse with, and *error the text.  Requests and the
 * streams' rechecks (recheck.c) judge alike.
 */

ngx_int_t
ngx_http_redisgate_keyinfo_refused(ngx_http_redisgate_keyinfo_t *ki,
    const char **error)
{
    switch (ki->status) {

    case NGX_HTTP_REDISGATE_KEY_OK:
        break;

    case NGX_HTTP_REDISGATE_KEY_NO_INSTANCE:
        *error = "instance not found";
        return NGX_HTTP_NOT_FOUND;

    case NGX_HTTP_REDISGATE_KEY_ORG_SUSPENDED:
        *error = "Forbidden: the organization is suspended";
        return NGX_HTTP_FORBIDDEN;

    case NGX_HTTP_REDISGATE_KEY_INSTANCE_SUSPENDED:
        *error = "Forbidden: the instance is suspended";
        return NGX_HTTP_FORBIDDEN;

    default: /* NGX_HTTP_REDISGATE_KEY_UNKNOWN */
        *error = "Unauthorized: invalid API key";
        return NGX_HTTP_UNAUTHORIZED;
    }

    if (ki->key_expires && ki->key_expires <= ngx_time()) {
        *error = "Unauthorized: invalid API key";
        return NGX_HTTP_UNAUTHORIZED;
    }

    return NGX_OK;
}


static void
ngx_http_redisgate_resolve_looked_up(void *data, ngx_int_t rc,
    ngx_http_redisgate_keyinfo_t *ki, const char *error)
{
    ngx_http_redisgate_resolve_t *rs = data;

    ngx_http_request_t  *r;

    r = rs->request;

    if (rc == NGX_OK) {
        rs->auth->source = NGX_HTTP_REDISGATE_SOURCE_MISS;
        rc = ngx_http_redisgate_resolve_apply(r, ki, rs->auth);

    } else if (rs->has_stale) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "redisgate: %s, using a stale cached key", error);
        rs->auth->source = NGX_HTTP_REDISGATE_SOURCE_STALE;
        rc = ngx_http_redisgate_resolve_apply(r, &rs->stale, rs->auth);

    } else {
        rs->auth->error = error;
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rs->done(r, rc);
}


static ngx_int_t
ngx_http_redisgate_resolve_apply(ngx_http_request_t *r,
    ngx_http_redisgate_keyinfo_t *ki, ngx_http_redisgate_auth_t *auth)
{
    ngx_int_t    rc;
    const char  *error;

    rc = ngx_http_redisgate_keyinfo_refused(ki, &auth->error);
    if (rc != NGX_OK) {
        return rc;
    }

    auth->backend = ngx_http_redisgate_backend_get(ki, r->pool, &error);

    if (auth->backend == NULL) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "redisgate: key \"%V\": %s", &ki->key_id, error);
        auth->error = error;
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "redisgate: key \"%V\" of organization \"%V\" valid "
                   "for %V", &ki->key_id, &ki->organization,
                   &auth->backend->address.url);

    if (auth->source == NGX_HTTP_REDISGATE_SOURCE_MISS) {
        /* the key store's strings live only as long as its answer */
        auth->key_id.data = ngx_pstrdup(r->pool, &ki->key_id);
        auth->key_id.len = ki->key_id.len;
        auth->organization.data = ngx_pstrdup(r->pool, &ki->organization);
        auth->organization.len = ki->organization.len;

        if (auth->key_id.data == NULL || auth->organization.data == NULL) {
            auth->error = "out of memory";
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

    } else {
        /* copied out of the cache into the request's pool already */
        auth->key_id = ki->key_id;
        auth->organization = ki->organization;
    }

    auth->scopes = ki->scopes;
    auth->rate = ki->rate;
    auth->burst = ki->burst;
    auth->expires = ki->key_expires;

    return NGX_OK;
}
