
/*
 * Copyright (C) RedisGate authors
 */


/*
 * TLS to Redis: the redisgate_ssl_* directives made into one client SSL
 * context, as proxy_ssl_* are for proxy_pass.  Every rediss:// backend
 * (nginx.conf's and the key store's) uses it.
 *
 * Verification is done after the handshake (transport.c), not by OpenSSL
 * aborting it: the log then says which check failed, and the client gets
 * one clear message.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_redisgate_transport.h"


void
ngx_http_redisgate_tls_conf_init(ngx_http_redisgate_tls_conf_t *conf)
{
    ngx_conf_init_value(conf->verify, 1);
    ngx_conf_init_uint_value(conf->verify_depth, 4);
    ngx_conf_init_value(conf->server_name, 1);
    ngx_conf_init_value(conf->session_reuse, 1);

    if (conf->protocols == 0) {
        conf->protocols = NGX_CONF_BITMASK_SET
#if (NGX_SSL)
                          |NGX_SSL_TLSv1_2|NGX_SSL_TLSv1_3
#endif
                          ;
    }

    if (conf->ciphers.data == NULL) {
        ngx_str_set(&conf->ciphers, "DEFAULT");
    }
}


#if (NGX_SSL)

ngx_http_redisgate_tls_t *
ngx_http_redisgate_tls_create(ngx_conf_t *cf,
    ngx_http_redisgate_tls_conf_t *conf)
{
    ngx_pool_cleanup_t        *cln;
    ngx_http_redisgate_tls_t  *tls;

    tls = ngx_pcalloc(cf->pool, sizeof(ngx_http_redisgate_tls_t));
    if (tls == NULL) {
        return NULL;
    }

    tls->verify = conf->verify;
    tls->server_name = conf->server_name;
    tls->session_reuse = conf->session_reuse;
    tls->name = conf->name;
    tls->ssl.log = cf->log;

    if (ngx_ssl_create(&tls->ssl, conf->protocols, NULL) != NGX_OK) {
        return NULL;
    }

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        ngx_ssl_cleanup_ctx(&tls->ssl);
        return NULL;
    }

    cln->handler = ngx_ssl_cleanup_ctx;
    cln->data = &tls->ssl;

    /*
     * A link's output buffer grows, and moves, while a write waits: more
     * commands are appended behind what SSL_write() is retrying.
     */

    SSL_CTX_set_mode(tls->ssl.ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
                                   |SSL_MODE_ENABLE_PARTIAL_WRITE);

    /*
     * A pooled connection is busy again at once: keeping its record
     * buffers (some 34 kB) saves a large malloc() and free() per request,
     * which nginx's default, for client connections that idle, would pay.
     */

    SSL_CTX_clear_mode(tls->ssl.ctx, SSL_MODE_RELEASE_BUFFERS);

    if (conf->certificate.len) {

        if (conf->certificate_key.len == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "no \"redisgate_ssl_certificate_key\" for "
                               "certificate \"%V\"", &conf->certificate);
            return NULL;
        }

        if (ngx_ssl_certificate(cf, &tls->ssl, &conf->certificate,
                                &conf->certificate_key, conf->passwords)
            != NGX_OK)
        {
            return NULL;
        }

    } else if (conf->certificate_key.len) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"redisgate_ssl_certificate_key\" without "
                           "\"redisgate_ssl_certificate\"");
        return NULL;
    }

    SSL_CTX_set_client_cert_cb(tls->ssl.ctx,
                               ngx_http_redisgate_link_client_cert);

    if (ngx_ssl_ciphers(cf, &tls->ssl, &conf->ciphers, 0) != NGX_OK) {
        return NULL;
    }

    if (conf->trusted_certificate.len) {
        if (ngx_ssl_trusted_certificate(cf, &tls->ssl,
                                        &conf->trusted_certificate,
                                        conf->verify_depth)
            != NGX_OK)
        {
            return NULL;
        }

    } else {
        /* the system's store: managed Redis mostly has public CAs */

        SSL_CTX_set_verify_depth(tls->ssl.ctx, conf->verify_depth);

        if (SSL_CTX_set_default_verify_paths(tls->ssl.ctx) != 1) {
            ngx_ssl_error(NGX_LOG_EMERG, cf->log, 0,
                          "SSL_CTX_set_default_verify_paths() failed");
            return NULL;
        }
    }

    if (ngx_ssl_client_session_cache(cf, &tls->ssl, conf->session_reuse)
        != NGX_OK)
    {
        return NULL;
    }

    return tls;
}


void
ngx_http_redisgate_tls_free_session(ngx_http_redisgate_node_t *node)
{
    if (node->session) {
        ngx_ssl_free_session(node->session);
        node->session = NULL;
    }
}

#else

ngx_http_redisgate_tls_t *
ngx_http_redisgate_tls_create(ngx_conf_t *cf,
    ngx_http_redisgate_tls_conf_t *conf)
{
    return NULL;
}


void
ngx_http_redisgate_tls_free_session(ngx_http_redisgate_node_t *node)
{
}

#endif
