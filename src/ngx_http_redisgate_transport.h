
/*
 * Copyright (C) RedisGate authors
 */


/*
 * The transport: one connection to one Redis node, owned by nginx (an
 * ngx_connection_t from ngx_event_connect_peer, plain TCP, a unix socket
 * or TLS through ngx_ssl), with hiredis kept as the protocol library only
 * (its redisReader parses replies).
 *
 * The interface knows nothing of HTTP: "send these formatted commands to
 * this node, call me per reply".  Many commands may be in flight on a link
 * (pipelining); replies come back in the order the commands were sent.
 */


#ifndef _NGX_HTTP_REDISGATE_TRANSPORT_H_INCLUDED_
#define _NGX_HTTP_REDISGATE_TRANSPORT_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <ngx_event_connect.h>

#include <hiredis/hiredis.h>


#include "ngx_http_redisgate_stats.h"


typedef struct ngx_http_redisgate_link_s  ngx_http_redisgate_link_t;
typedef struct ngx_http_redisgate_tls_s   ngx_http_redisgate_tls_t;


/* how to reach a node; the owner fills it, links only read it */
typedef struct {
    ngx_str_t                       name;       /* its URL, for the log */
    ngx_sockaddr_t                  sockaddr;
    socklen_t                       socklen;
    ngx_msec_t                      connect_timeout;  /* TLS included */

    ngx_http_redisgate_tls_t       *tls;        /* NULL: plain */
    ngx_str_t                       tls_name;   /* SNI, verification */
    void                           *session;    /* TLS session to resume */

    ngx_http_redisgate_backend_stats_t  *stats;
} ngx_http_redisgate_node_t;


/* link states */
#define NGX_HTTP_REDISGATE_LINK_CLOSED      0
#define NGX_HTTP_REDISGATE_LINK_CONNECTING  1   /* TCP, then TLS */
#define NGX_HTTP_REDISGATE_LINK_READY       2
#define NGX_HTTP_REDISGATE_LINK_CLOSING     3   /* failing what waited */


/* why a link failed, with the fixed message a client is given */
#define NGX_HTTP_REDISGATE_FAIL_NONE        0
#define NGX_HTTP_REDISGATE_FAIL_CONNECT     1
#define NGX_HTTP_REDISGATE_FAIL_TIMEOUT     2
#define NGX_HTTP_REDISGATE_FAIL_HANDSHAKE   3
#define NGX_HTTP_REDISGATE_FAIL_VERIFY      4
#define NGX_HTTP_REDISGATE_FAIL_LOST        5
#define NGX_HTTP_REDISGATE_FAIL_PROTOCOL    6
#define NGX_HTTP_REDISGATE_FAIL_AUTH        7   /* the owner's verdict */
#define NGX_HTTP_REDISGATE_FAIL_CLOSED      8   /* the owner closed it */
#define NGX_HTTP_REDISGATE_FAIL_ROLE        9   /* a replica, not primary */
#define NGX_HTTP_REDISGATE_FAIL_NO_PRIMARY  10  /* no sentinel knew it */
#define NGX_HTTP_REDISGATE_FAIL_NO_MAP      11  /* no seed gave the slots */


/*
 * Called once per command sent, in order: with its reply (freed when the
 * call returns), or with reply == NULL and why when the link failed first.
 */
typedef void (*ngx_http_redisgate_link_reply_pt)(void *data,
    redisReply *reply, const char *error);

/*
 * A bulk string reply of NGX_HTTP_REDISGATE_LINK_BULK_MIN bytes or more,
 * to a command queued with a bulk handler, is never whole in memory: it is
 * handed over in pieces as they are read.  First p == NULL and left its
 * length, then its bytes in order, left counting those still to come.
 * NGX_AGAIN: taken, but the link reads no more (its other replies wait)
 * until ngx_http_redisgate_link_resume().  Then the reply handler is
 * called with &ngx_http_redisgate_link_streamed; or, when the link fails
 * first, with NULL and why, as for any reply.
 */
typedef ngx_int_t (*ngx_http_redisgate_link_bulk_pt)(void *data, u_char *p,
    size_t n, off_t left);

#define NGX_HTTP_REDISGATE_LINK_BULK_MIN    (64 * 1024)

extern redisReply  ngx_http_redisgate_link_streamed;


/* the owner hears that a link became ready, or closed */
typedef void (*ngx_http_redisgate_link_event_pt)(
    ngx_http_redisgate_link_t *link);

/* a reply with none awaited: a message in subscribe mode */
typedef void (*ngx_http_redisgate_link_push_pt)(
    ngx_http_redisgate_link_t *link, redisReply *reply);


typedef struct {
    ngx_http_redisgate_link_reply_pt  handler;
    ngx_http_redisgate_link_bulk_pt   bulk;     /* NULL: replies whole */
    void                             *data;
} ngx_http_redisgate_link_wait_t;


struct ngx_http_redisgate_link_s {
    ngx_http_redisgate_node_t      *node;
    ngx_peer_connection_t           peer;
    ngx_event_t                     timer;      /* connect and handshake */
    redisReader                    *reader;

    /* formatted commands not written yet */
    u_char                         *out;
    size_t                          out_pos;
    size_t                          out_last;
    size_t                          out_size;

    /* one entry per reply awaited, a ring */
    ngx_http_redisgate_link_wait_t *waits;
    ngx_uint_t                      wait_head;
    ngx_uint_t                      nwaits;
    ngx_uint_t                      wait_size;

    /* the large bulk reply being handed over, and what is left of it
     * (its bytes and CRLF) */
    ngx_http_redisgate_link_wait_t  bulk;
    off_t                           bulk_left;

    ngx_uint_t                      state;
    ngx_uint_t                      generation; /* bumped at each close */
    ngx_uint_t                      failure;    /* FAIL_* of the last close */
    const char                     *error;      /* for clients */

    ngx_http_redisgate_link_event_pt  on_ready;
    ngx_http_redisgate_link_event_pt  on_close;
    ngx_http_redisgate_link_push_pt   on_push;  /* NULL: a protocol error */
    void                           *data;       /* the owner's */
    ngx_log_t                      *log;

    unsigned                        paused:1;   /* by a bulk handler */
    unsigned                        was_ready:1;
    unsigned                        replied:1;  /* a reply came on it */
    unsigned                        cert_requested:1;  /* and none set */
};


/* NGX_OK: connecting (on_ready or on_close follows); NGX_ERROR: failed,
 * link->failure and link->error say why, and the log has the detail */
ngx_int_t ngx_http_redisgate_link_connect(ngx_http_redisgate_link_t *link,
    ngx_http_redisgate_node_t *node, ngx_log_t *log);

/* n formatted commands, one reply each, all queued or none (NGX_ERROR);
 * handler NULL: their replies go to on_push (a link in subscribe mode,
 * where messages and replies come in any order) */
ngx_int_t ngx_http_redisgate_link_send(ngx_http_redisgate_link_t *link,
    ngx_str_t *cmds, ngx_uint_t n, ngx_http_redisgate_link_reply_pt handler,
    void *data);

/* the same, the last command's reply in pieces when it is a large bulk */
ngx_int_t ngx_http_redisgate_link_send_bulk(ngx_http_redisgate_link_t *link,
    ngx_str_t *cmds, ngx_uint_t n, ngx_http_redisgate_link_reply_pt handler,
    ngx_http_redisgate_link_bulk_pt bulk, void *data);

/* reads again after a bulk handler said NGX_AGAIN */
void ngx_http_redisgate_link_resume(ngx_http_redisgate_link_t *link);

/* closes it; each reply awaited is called with error */
void ngx_http_redisgate_link_close(ngx_http_redisgate_link_t *link,
    ngx_uint_t failure, const char *error);

/* the buffers a closed link keeps for its next connection */
void ngx_http_redisgate_link_free(ngx_http_redisgate_link_t *link);

/* a reply a link gave (for hiredis' freeObject too); blocks at exit */
void ngx_http_redisgate_link_free_reply(void *reply);
void ngx_http_redisgate_link_exit_process(void);

/* the fixed message clients get for a FAIL_* */
const char *ngx_http_redisgate_link_strerror(ngx_uint_t failure);


/* replies awaited, the large one being handed over included */
#define ngx_http_redisgate_link_pending(link)                                 \
    ((link)->nwaits + ((link)->bulk_left != 0))

/* the i-th reply awaited (0: the next to come) other than link->bulk */
#define ngx_http_redisgate_link_awaited(link, i)                              \
    (&(link)->waits[((link)->wait_head + (i)) & ((link)->wait_size - 1)])


/* tls.c: redisgate_ssl_* into one client SSL context */

typedef struct {
    ngx_flag_t                      verify;
    ngx_uint_t                      verify_depth;
    ngx_flag_t                      server_name;
    ngx_str_t                       name;
    ngx_str_t                       trusted_certificate;
    ngx_str_t                       certificate;
    ngx_str_t                       certificate_key;
    ngx_array_t                    *passwords;
    ngx_uint_t                      protocols;
    ngx_str_t                       ciphers;
    ngx_flag_t                      session_reuse;
} ngx_http_redisgate_tls_conf_t;


#if (NGX_SSL)

struct ngx_http_redisgate_tls_s {
    ngx_ssl_t                       ssl;
    ngx_flag_t                      verify;
    ngx_flag_t                      server_name;
    ngx_flag_t                      session_reuse;
    ngx_str_t                       name;       /* instead of the URL's */
};

#endif


void ngx_http_redisgate_tls_conf_init(ngx_http_redisgate_tls_conf_t *conf);
ngx_http_redisgate_tls_t *ngx_http_redisgate_tls_create(ngx_conf_t *cf,
    ngx_http_redisgate_tls_conf_t *conf);
void ngx_http_redisgate_tls_free_session(ngx_http_redisgate_node_t *node);
#if (NGX_SSL)
/* OpenSSL's client_cert_cb: the server asked for a certificate, none set */
int ngx_http_redisgate_link_client_cert(ngx_ssl_conn_t *ssl_conn,
    X509 **x509, EVP_PKEY **pkey);
#endif


#endif /* _NGX_HTTP_REDISGATE_TRANSPORT_H_INCLUDED_ */
