
/*
 * Copyright (C) RedisGate authors
 */


/*
 * The reply encoders: ngx_http_redisgate_json_value_len/_json_value with
 * every flag, _json_string_len/_json_string, _resp_reply_len/_resp_reply.
 * Input: a redisReply tree, read node by node from the bytes (a type
 * byte, then a length byte and the string, 8 integer bytes, or an element
 * count), at most 8 deep and 512 nodes; then what is left is also encoded
 * as one JSON string, escaped and base64.
 */


#define _GNU_SOURCE  /* memmem() */

#include <stdint.h>
#include <string.h>

#include "fuzz_alloc.h"


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


#define FUZZ_MAX_DEPTH  8
#define FUZZ_MAX_NODES  512


typedef struct {
    const uint8_t  *p;
    const uint8_t  *last;
    ngx_uint_t      nodes;
} fuzz_input_t;


static int
fuzz_byte(fuzz_input_t *in)
{
    return in->p < in->last ? *in->p++ : 0;
}


static redisReply *
fuzz_reply(fuzz_input_t *in, ngx_uint_t depth)
{
    size_t       i, n;
    uint64_t     u;
    redisReply  *r;

    r = calloc(1, sizeof(redisReply));
    FUZZ_CHECK(r != NULL);

    in->nodes++;

    switch (fuzz_byte(in) % 6) {

    case 0:
        r->type = REDIS_REPLY_STRING;
        break;

    case 1:
        r->type = REDIS_REPLY_STATUS;
        break;

    case 2:
        r->type = REDIS_REPLY_ERROR;
        break;

    case 3:
        r->type = REDIS_REPLY_INTEGER;

        u = 0;
        for (i = 0; i < 8; i++) {
            u = u << 8 | (uint64_t) fuzz_byte(in);
        }

        r->integer = (long long) u;

        return r;

    case 4:
        r->type = REDIS_REPLY_NIL;
        return r;

    default:
        r->type = REDIS_REPLY_ARRAY;

        n = fuzz_byte(in) % 9;

        if (depth >= FUZZ_MAX_DEPTH || in->nodes + n > FUZZ_MAX_NODES) {
            n = 0;
        }

        r->elements = n;

        if (n) {
            r->element = calloc(n, sizeof(redisReply *));
            FUZZ_CHECK(r->element != NULL);

            for (i = 0; i < n; i++) {
                r->element[i] = fuzz_reply(in, depth + 1);
            }
        }

        return r;
    }

    /* a string: exactly its bytes, not terminated, so ASan sees overreads */

    n = fuzz_byte(in);

    if (n > (size_t) (in->last - in->p)) {
        n = in->last - in->p;
    }

    r->len = n;
    r->str = malloc(n ? n : 1);
    FUZZ_CHECK(r->str != NULL);
    memcpy(r->str, in->p, n);
    in->p += n;

    return r;
}


static void
fuzz_free_reply(redisReply *r)
{
    size_t  i;

    for (i = 0; i < r->elements; i++) {
        fuzz_free_reply(r->element[i]);
    }

    free(r->element);
    free(r->str);
    free(r);
}


/* well-formed UTF-8 (RFC 3629) with no raw control character */

static int
fuzz_utf8_text(const u_char *p, size_t n)
{
    size_t    i, k, len;
    uint32_t  c, min;

    for (i = 0; i < n; ) {
        c = p[i];

        if (c < 0x80) {
            if (c < 0x20) {
                return 0;
            }

            i++;
            continue;
        }

        if (c >= 0xc2 && c <= 0xdf) {
            len = 2; c &= 0x1f; min = 0x80;

        } else if (c >= 0xe0 && c <= 0xef) {
            len = 3; c &= 0x0f; min = 0x800;

        } else if (c >= 0xf0 && c <= 0xf4) {
            len = 4; c &= 0x07; min = 0x10000;

        } else {
            return 0;
        }

        if (n - i < len) {
            return 0;
        }

        for (k = 1; k < len; k++) {
            if ((p[i + k] & 0xc0) != 0x80) {
                return 0;
            }

            c = c << 6 | (p[i + k] & 0x3f);
        }

        if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)) {
            return 0;
        }

        i += len;
    }

    return 1;
}


static void
fuzz_json_value(redisReply *r)
{
    u_char      *out, *p;
    size_t       len;
    ngx_uint_t   f;

    for (f = 0; f < 4; f++) {
        len = ngx_http_redisgate_json_value_len(r, f);

        out = malloc(len ? len : 1);
        FUZZ_CHECK(out != NULL);

        p = ngx_http_redisgate_json_value(out, r, f);

        FUZZ_CHECK((size_t) (p - out) == len);
        FUZZ_CHECK(fuzz_utf8_text(out, len));

        free(out);
    }

    len = ngx_http_redisgate_resp_reply_len(r);

    out = malloc(len ? len : 1);
    FUZZ_CHECK(out != NULL);

    p = ngx_http_redisgate_resp_reply(out, r);

    FUZZ_CHECK((size_t) (p - out) == len);
    FUZZ_CHECK(len >= 3 && out[len - 2] == '\r' && out[len - 1] == '\n');

    free(out);
}


static int
fuzz_b64(u_char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}


static void
fuzz_json_string(u_char *s, size_t n)
{
    u_char  *out, *p, *dec, *d, *q;
    size_t   len, i;
    int      v[4], k;

    /* base64: decodes back to the input */

    len = ngx_http_redisgate_json_string_len(s, n, 1);
    out = malloc(len);
    FUZZ_CHECK(out != NULL);

    p = ngx_http_redisgate_json_string(out, s, n, 1);
    FUZZ_CHECK((size_t) (p - out) == len);
    FUZZ_CHECK(len >= 2 && out[0] == '"' && out[len - 1] == '"');
    FUZZ_CHECK((len - 2) % 4 == 0);

    dec = malloc(len);
    FUZZ_CHECK(dec != NULL);
    d = dec;

    for (i = 1; i + 4 < len + 1 - 1; i += 4) {
        for (k = 0; k < 4; k++) {
            v[k] = out[i + k] == '=' ? 0 : fuzz_b64(out[i + k]);
            FUZZ_CHECK(v[k] >= 0);
        }

        *d++ = (u_char) (v[0] << 2 | v[1] >> 4);

        if (out[i + 2] != '=') {
            *d++ = (u_char) (v[1] << 4 | v[2] >> 2);
        }

        if (out[i + 3] != '=') {
            *d++ = (u_char) (v[2] << 6 | v[3]);
        }
    }

    FUZZ_CHECK((size_t) (d - dec) == n && memcmp(dec, s, n) == 0);

    free(dec);
    free(out);

    /* escaped: valid UTF-8, and the input itself when it was valid */

    len = ngx_http_redisgate_json_string_len(s, n, 0);
    out = malloc(len);
    FUZZ_CHECK(out != NULL);

    p = ngx_http_redisgate_json_string(out, s, n, 0);
    FUZZ_CHECK((size_t) (p - out) == len);
    FUZZ_CHECK(len >= 2 && out[0] == '"' && out[len - 1] == '"');
    FUZZ_CHECK(fuzz_utf8_text(out, len));

    dec = malloc(len);
    FUZZ_CHECK(dec != NULL);
    d = dec;

    for (q = out + 1; q < out + len - 1; q++) {
        FUZZ_CHECK(*q != '"');

        if (*q != '\\') {
            *d++ = *q;
            continue;
        }

        q++;
        FUZZ_CHECK(q < out + len - 1);

        switch (*q) {
        case '"': case '\\': *d++ = *q; break;
        case 'n': *d++ = '\n'; break;
        case 'r': *d++ = '\r'; break;
        case 't': *d++ = '\t'; break;
        case 'u':
            FUZZ_CHECK(out + len - 1 - q > 4);
            FUZZ_CHECK(q[1] == '0' && q[2] == '0');
            k = (q[3] - '0') << 4;
            k |= (q[4] >= 'a') ? q[4] - 'a' + 10 : q[4] - '0';
            FUZZ_CHECK(k < 0x20);
            *d++ = (u_char) k;
            q += 4;
            break;
        default:
            FUZZ_CHECK(0);
        }
    }

    /* a valid input (controls and all) comes back byte for byte */

    {
        u_char  *t;
        int      valid;

        t = malloc(n ? n : 1);
        FUZZ_CHECK(t != NULL);

        for (i = 0; i < n; i++) {
            t[i] = (s[i] < 0x20) ? 'x' : s[i];
        }

        valid = fuzz_utf8_text(t, n);
        free(t);

        if (valid) {
            FUZZ_CHECK((size_t) (d - dec) == n && memcmp(dec, s, n) == 0);

        } else {
            FUZZ_CHECK(memmem(out, len, "\xef\xbf\xbd", 3) != NULL);
        }
    }

    free(dec);
    free(out);
}


/*
 * Piece by piece, cut where the input says, into output buffers of sizes
 * it says too (down to NGX_HTTP_REDISGATE_PIECE_ROOM): the same bytes as
 * the whole string at once, between its quotes.
 */

static void
fuzz_json_pieces(u_char *s, size_t n, ngx_uint_t base64)
{
    u_char                      *whole, *out, *p, *end, *in, *last, *cut;
    size_t                       len, room, step;
    uint32_t                     x;
    ngx_uint_t                   final;
    ngx_http_redisgate_piece_t   enc;

    len = ngx_http_redisgate_json_string_len(s, n, base64);
    whole = malloc(len);
    FUZZ_CHECK(whole != NULL);
    p = ngx_http_redisgate_json_string(whole, s, n, base64);
    FUZZ_CHECK((size_t) (p - whole) == len);

    /* the output may be a little longer only if something is wrong */
    out = malloc(len + 64);
    FUZZ_CHECK(out != NULL);

    memset(&enc, 0, sizeof(enc));
    enc.base64 = base64;

    x = 2166136261u ^ (uint32_t) n;
    in = s;
    last = s + n;
    p = out;

    do {
        x = x * 16777619u ^ (in < last ? *in : 0x5a);
        step = (x >> 8) % 23;                    /* 0 to 22 bytes */
        cut = (size_t) (last - in) > step ? in + step : last;
        final = (cut == last);

        for ( ;; ) {
            x = x * 16777619u ^ 0x3c;
            room = NGX_HTTP_REDISGATE_PIECE_ROOM + (x >> 8) % 17;
            end = p + room;
            FUZZ_CHECK(end <= out + len + 64);

            p = ngx_http_redisgate_json_piece(&enc, p, end, &in, cut, final);

            if (in == cut && (!final || enc.ncarry == 0)) {
                break;
            }

            /* only a lack of room stops it short */
            FUZZ_CHECK(end - p < NGX_HTTP_REDISGATE_PIECE_ROOM);
        }

    } while (!final);

    FUZZ_CHECK(enc.ncarry == 0);
    FUZZ_CHECK((size_t) (p - out) == len - 2);
    FUZZ_CHECK(memcmp(out, whole + 1, len - 2) == 0);

    free(out);
    free(whole);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char        *s;
    redisReply    *r;
    fuzz_input_t   in;

    in.p = data;
    in.last = data + size;
    in.nodes = 0;

    r = fuzz_reply(&in, 0);

    fuzz_json_value(r);
    fuzz_free_reply(r);

    s = malloc(size ? size : 1);
    FUZZ_CHECK(s != NULL);
    memcpy(s, data, size);

    fuzz_json_string(s, size);
    fuzz_json_pieces(s, size, 0);
    fuzz_json_pieces(s, size, 1);

    free(s);
    fuzz_free_all();

    return 0;
}
