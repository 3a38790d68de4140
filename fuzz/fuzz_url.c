
/*
 * Copyright (C) RedisGate authors
 */


/*
 * ngx_http_redisgate_parse_url(), then percent_decode() of the
 * credentials as redisgate_instance does.  Input: the URL, any form,
 * redis-sentinel:// and redis-cluster:// included.
 */


#include <stdint.h>
#include <string.h>

#include "fuzz_alloc.h"


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


/* str lies inside [start, start + n) or is empty */
#define FUZZ_INSIDE(str, start, n)                                           \
    ((str).len == 0                                                          \
     || ((str).data >= (start) && (str).data + (str).len <= (start) + (n)))


static void
fuzz_decode(ngx_str_t *s)
{
    u_char  *dst;
    size_t   n;

    dst = malloc(s->len ? s->len : 1);
    if (dst == NULL) {
        return;
    }

    n = (size_t) -1;

    if (ngx_http_redisgate_percent_decode(dst, &n, s->data, s->len)
        == NGX_OK)
    {
        FUZZ_CHECK(n <= s->len);
    }

    free(dst);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char                    *buf;
    ngx_int_t                  rc;
    ngx_http_redisgate_url_t   u;

    /* a copy of its own, so ASan sees reads past the end */

    buf = malloc(size ? size : 1);
    if (buf == NULL) {
        return 0;
    }

    memcpy(buf, data, size);

    rc = ngx_http_redisgate_parse_url(&u, buf, size);

    FUZZ_CHECK(rc == NGX_OK || rc == NGX_ERROR);

    if (rc == NGX_ERROR) {
        FUZZ_CHECK(u.error != NULL);
        free(buf);
        fuzz_free_all();
        return 0;
    }

    FUZZ_CHECK(u.error == NULL);
    FUZZ_CHECK(u.db <= 0x7fffffff);
    FUZZ_CHECK(FUZZ_INSIDE(u.host, buf, size));
    FUZZ_CHECK(FUZZ_INSIDE(u.path, buf, size));
    FUZZ_CHECK(FUZZ_INSIDE(u.user, buf, size));
    FUZZ_CHECK(FUZZ_INSIDE(u.password, buf, size));

    FUZZ_CHECK(FUZZ_INSIDE(u.name, buf, size));
    FUZZ_CHECK(FUZZ_INSIDE(u.sentinel_user, buf, size));
    FUZZ_CHECK(FUZZ_INSIDE(u.sentinel_password, buf, size));

    if (u.sentinel) {
        FUZZ_CHECK((size > 17 && memcmp(buf, "redis-sentinel://", 17) == 0)
                   || (size > 18
                       && memcmp(buf, "rediss-sentinel://", 18) == 0));
        FUZZ_CHECK(u.tls == (buf[5] == 's'));
        FUZZ_CHECK(!u.unix_socket && u.path.len == 0);

        /* a list of hosts, none empty; then a name */
        FUZZ_CHECK(u.host.len > 0);
        FUZZ_CHECK(u.host.data[0] != ',');
        FUZZ_CHECK(u.host.data[u.host.len - 1] != ',');
        FUZZ_CHECK(memchr(u.host.data, '/', u.host.len) == NULL);
        FUZZ_CHECK(memchr(u.host.data, '@', u.host.len) == NULL);
        FUZZ_CHECK(u.name.len > 0);
        FUZZ_CHECK(memchr(u.name.data, '/', u.name.len) == NULL);
        FUZZ_CHECK(memchr(u.name.data, '?', u.name.len) == NULL);
        FUZZ_CHECK(u.name.data > u.host.data);
        fuzz_decode(&u.sentinel_user);
        fuzz_decode(&u.sentinel_password);

    } else if (u.cluster) {
        FUZZ_CHECK((size > 16 && memcmp(buf, "redis-cluster://", 16) == 0)
                   || (size > 17
                       && memcmp(buf, "rediss-cluster://", 17) == 0));
        FUZZ_CHECK(u.tls == (buf[5] == 's'));
        FUZZ_CHECK(!u.unix_socket && u.path.len == 0 && u.name.len == 0);
        FUZZ_CHECK(u.db == 0);

        /* seeds, none empty */
        FUZZ_CHECK(u.host.len > 0);
        FUZZ_CHECK(u.host.data[0] != ',');
        FUZZ_CHECK(u.host.data[u.host.len - 1] != ',');
        FUZZ_CHECK(memchr(u.host.data, '/', u.host.len) == NULL);
        FUZZ_CHECK(memchr(u.host.data, '@', u.host.len) == NULL);

    } else if (u.unix_socket) {
        FUZZ_CHECK(u.name.len == 0);
        FUZZ_CHECK(size > 7 && memcmp(buf, "unix://", 7) == 0);
        FUZZ_CHECK(u.host.len == 0);
        FUZZ_CHECK(u.path.len > 0 && u.path.data[0] == '/');
        FUZZ_CHECK(memchr(u.path.data, '?', u.path.len) == NULL);

    } else if (u.tls) {
        FUZZ_CHECK(size > 9 && memcmp(buf, "rediss://", 9) == 0);
        FUZZ_CHECK(u.path.len == 0);
        FUZZ_CHECK(u.host.len > 0);
        FUZZ_CHECK(memchr(u.host.data, '/', u.host.len) == NULL);
        FUZZ_CHECK(memchr(u.host.data, '@', u.host.len) == NULL);

    } else {
        FUZZ_CHECK(size > 8 && memcmp(buf, "redis://", 8) == 0);
        FUZZ_CHECK(u.path.len == 0);
        FUZZ_CHECK(u.host.len > 0);
        FUZZ_CHECK(memchr(u.host.data, '/', u.host.len) == NULL);
        FUZZ_CHECK(memchr(u.host.data, '@', u.host.len) == NULL);
    }

    if (!u.has_userinfo) {
        FUZZ_CHECK(u.user.len == 0 && u.password.len == 0);

    } else {
        FUZZ_CHECK(u.user.len == 0
                   || memchr(u.user.data, ':', u.user.len) == NULL);
        fuzz_decode(&u.user);
        fuzz_decode(&u.password);
    }

    free(buf);
    fuzz_free_all();

    return 0;
}
