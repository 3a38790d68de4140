
/*
 * Copyright (C) RedisGate authors
 */


/*
 * Who is calling: a token and an instance id become an organization,
 * scopes and a backend.  Tokens are only ever compared by their SHA-256,
 * and only that hash's first digits reach the log.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <openssl/evp.h>

#include "ngx_http_redisgate.h"


/*
 * NGX_OK: auth is filled.  NGX_DECLINED: no such key (401).
 * NGX_ABORT: no such instance for this key's organization (404).
 */

ngx_int_t
ngx_http_redisgate_resolve(ngx_http_request_t *r, ngx_str_t *token,
    ngx_str_t *instance, ngx_http_redisgate_auth_t *auth)
{
    u_char                           hash[32], hex[16];
    unsigned int                     len;
    ngx_http_redisgate_key_t        *key;
    ngx_http_redisgate_instance_t   *inst;
    ngx_http_redisgate_main_conf_t  *rmcf;

    rmcf = ngx_http_get_module_main_conf(r, ngx_http_redisgate_module);

    len = sizeof(hash);

    if (EVP_Digest(token->data, token->len, hash, &len, EVP_sha256(), NULL)
        != 1)
    {
        return NGX_ERROR;
    }

    key = ngx_http_redisgate_static_key(rmcf, hash);

    if (key == NULL) {
        ngx_hex_dump(hex, hash, 4);

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "redisgate: unknown key, sha256 %*s...",
                       (size_t) 8, hex);
        return NGX_DECLINED;
    }

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
        return NGX_ABORT;
    }

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "redisgate: key \"%V\" of organization \"%V\" valid "
                   "for instance %V", &key->id, &key->organization, instance);

    auth->key_id = key->id;
    auth->organization = key->organization;
    auth->scopes = key->scopes;
    auth->backend = inst->backend;

    return NGX_OK;
}
