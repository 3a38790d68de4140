
/*
 * Copyright (C) RedisGate authors
 */


/*
 * Replies out: RESP (as parsed by hiredis) to JSON, with strings either
 * escaped into valid UTF-8 (invalid bytes become U+FFFD) or base64; and
 * back to RESP2 bytes for Upstash-Response-Format: resp2.  Every encoder
 * comes as a pair: one that counts bytes and one that writes them, so a
 * reply of any size is written into one buffer allocated once.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_redisgate_parse.h"

/* NGX_HTTP_REDISGATE_NO_SIMD: the portable code, as the fuzzer tests it */
#if (defined __SSE2__ && (defined __GNUC__ || defined __clang__)           \
     && !defined NGX_HTTP_REDISGATE_NO_SIMD)
#define NGX_HTTP_REDISGATE_SSE2  1
#include <emmintrin.h>
#else
#define NGX_HTTP_REDISGATE_SSE2  0
#endif

/*
 * AVX2 for base64, chosen at run time (nginx and its modules are built for
 * the baseline x86-64, which has none): GCC and clang compile a function
 * for a wider target than the file's when it says so.
 */
#if (NGX_HTTP_REDISGATE_SSE2 && defined __x86_64__                          \
     && (defined __clang__ || __GNUC__ > 4                                    \
         || (__GNUC__ == 4 && __GNUC_MINOR__ >= 9)))
#define NGX_HTTP_REDISGATE_AVX2  1
#include <immintrin.h>
#else
#define NGX_HTTP_REDISGATE_AVX2  0
#endif


static u_char *ngx_http_redisgate_json_escape(ngx_http_redisgate_piece_t *enc,
    u_char *p, u_char *end, u_char **sp, u_char *last, ngx_uint_t final);
static u_char *ngx_http_redisgate_base64(u_char *p, u_char *end, u_char **sp,
    u_char *last, ngx_uint_t final);
#if (NGX_HTTP_REDISGATE_AVX2)
static size_t ngx_http_redisgate_base64_avx2(u_char *p, u_char *s, size_t n)
    __attribute__((target("avx2")));
#endif
static size_t ngx_http_redisgate_utf8_seq(u_char *p, u_char *last);
static ngx_uint_t ngx_http_redisgate_utf8_lead(u_char c, u_char *lo,
    u_char *hi);
static size_t ngx_http_redisgate_number_len(long long n);
static size_t ngx_http_redisgate_digits(unsigned long long u);
static u_char *ngx_http_redisgate_number(u_char *p, long long n);


static u_char  ngx_http_redisgate_base64_table[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static u_char  ngx_http_redisgate_hex_digits[] = "0123456789abcdef";


/*
 * What JSON makes of an ASCII byte in a string: PLAIN as it is, SHORT as a
 * backslash and a letter, HEX as \u00XX; bytes from 0x80 start UTF-8
 */

#define NGX_HTTP_REDISGATE_JSON_PLAIN  0
#define NGX_HTTP_REDISGATE_JSON_SHORT  1
#define NGX_HTTP_REDISGATE_JSON_HEX    2
#define NGX_HTTP_REDISGATE_JSON_UTF8   3

static u_char  ngx_http_redisgate_json_class[256] = {
    2, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 2, 2, 1, 2, 2,   /* \t \n \r */
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,   /* " */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,   /* \ */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3
};

#if !(NGX_HTTP_REDISGATE_SSE2)

/* a byte c in every byte of a 64-bit word */
#define ngx_http_redisgate_bytes(c)  (0x0101010101010101ULL * (c))

/* the high bit of every byte of x that is zero, and maybe of those above */
#define ngx_http_redisgate_zero_bytes(x)                                      \
    (((x) - ngx_http_redisgate_bytes(0x01)) & ~(x))

#endif

/* 8 bytes read as a big-endian number: the first is the highest */
#if (NGX_HAVE_LITTLE_ENDIAN && (defined __GNUC__ || defined __clang__)       \
     && !defined NGX_HTTP_REDISGATE_NO_SIMD)
#define ngx_http_redisgate_be64(x)  __builtin_bswap64(x)
#elif (NGX_HAVE_LITTLE_ENDIAN)
#define ngx_http_redisgate_be64(x)                                            \
    (((x) >> 56) | (((x) >> 40) & 0xff00) | (((x) >> 24) & 0xff0000)          \
     | (((x) >> 8) & 0xff000000) | (((x) & 0xff000000) << 8)                  \
     | (((x) & 0xff0000) << 24) | (((x) & 0xff00) << 40) | ((x) << 56))
#else
#define ngx_http_redisgate_be64(x)  (x)
#endif

/* two base64 digits for each 12 bits, made on first use */
static u_char  ngx_http_redisgate_base64_pairs[4096][2];
static ngx_uint_t  ngx_http_redisgate_base64_ready;
#if (NGX_HTTP_REDISGATE_AVX2)
static ngx_uint_t  ngx_http_redisgate_base64_wide;
#endif


size_t
ngx_http_redisgate_json_value_len(redisReply *reply, ngx_uint_t flags)
{
    size_t  len, i;

    switch (reply->type) {

    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
        return ngx_http_redisgate_json_string_len((u_char *) reply->str,
                                 reply->len,
                                 flags & NGX_HTTP_REDISGATE_ENC_BASE64);

    case REDIS_REPLY_ERROR:
        return ngx_http_redisgate_json_string_len((u_char *) reply->str,
                                                  reply->len, 0);

    case REDIS_REPLY_INTEGER:
        return ngx_http_redisgate_number_len(reply->integer);

    case REDIS_REPLY_ARRAY:
        if ((flags & NGX_HTTP_REDISGATE_ENC_MAP) && reply->elements % 2 == 0) {
            /* {"k":v,...}: keys are strings as Redis sends them */
            len = 2;

            for (i = 0; i < reply->elements; i += 2) {
                len += (i ? 1 : 0) + 1
                       + ngx_http_redisgate_json_value_len(reply->element[i],
                                 flags & ~NGX_HTTP_REDISGATE_ENC_MAP)
                       + ngx_http_redisgate_json_value_len(
                                 reply->element[i + 1],
                                 flags & ~NGX_HTTP_REDISGATE_ENC_MAP);
            }

            return len;
        }

        len = 2;

        for (i = 0; i < reply->elements; i++) {
            len += (i ? 1 : 0)
                   + ngx_http_redisgate_json_value_len(reply->element[i],
                                     flags & ~NGX_HTTP_REDISGATE_ENC_MAP);
        }

        return len;

    default: /* REDIS_REPLY_NIL */
        return sizeof("null") - 1;
    }
}


u_char *
ngx_http_redisgate_json_value(u_char *p, redisReply *reply, ngx_uint_t flags)
{
    size_t  i;

    switch (reply->type) {

    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
        return ngx_http_redisgate_json_string(p, (u_char *) reply->str,
                                  reply->len,
                                  flags & NGX_HTTP_REDISGATE_ENC_BASE64);

    case REDIS_REPLY_ERROR:
        /* error texts are never encoded: clients match on them */
        return ngx_http_redisgate_json_string(p, (u_char *) reply->str,
                                              reply->len, 0);

    case REDIS_REPLY_INTEGER:
        return ngx_http_redisgate_number(p, reply->integer);

    case REDIS_REPLY_ARRAY:
        if ((flags & NGX_HTTP_REDISGATE_ENC_MAP) && reply->elements % 2 == 0) {
            flags &= ~NGX_HTTP_REDISGATE_ENC_MAP;

            *p++ = '{';

            for (i = 0; i < reply->elements; i += 2) {
                if (i) {
                    *p++ = ',';
                }

                p = ngx_http_redisgate_json_value(p, reply->element[i],
                                                  flags);
                *p++ = ':';
                p = ngx_http_redisgate_json_value(p, reply->element[i + 1],
                                                  flags);
            }

            *p++ = '}';

            return p;
        }

        flags &= ~NGX_HTTP_REDISGATE_ENC_MAP;

        *p++ = '[';

        for (i = 0; i < reply->elements; i++) {
            if (i) {
                *p++ = ',';
            }

            p = ngx_http_redisgate_json_value(p, reply->element[i], flags);
        }

        *p++ = ']';

        return p;

    default: /* REDIS_REPLY_NIL */
        return ngx_cpymem(p, "null", sizeof("null") - 1);
    }
}


size_t
ngx_http_redisgate_json_string_len(u_char *s, size_t n, ngx_uint_t base64)
{
    u_char  *last, *plain;
    size_t   len, seq;

    if (base64) {
        return 2 + (n + 2) / 3 * 4;
    }

    len = 2;
    last = s + n;

    while (s < last) {

        plain = ngx_http_redisgate_json_plain(s, last);
        len += plain - s;
        s = plain;

        if (s == last) {
            break;
        }

        switch (ngx_http_redisgate_json_class[*s]) {

        case NGX_HTTP_REDISGATE_JSON_SHORT:
            len += 2;
            s++;
            continue;

        case NGX_HTTP_REDISGATE_JSON_HEX:
            len += 6;
            s++;
            continue;
        }

        seq = ngx_http_redisgate_utf8_seq(s, last);

        if (seq) {
            len += seq;
            s += seq;
            continue;
        }

        /* U+FFFD for the maximal invalid subpart */

        len += 3;
        s++;

        while (s < last && (*s & 0xc0) == 0x80) {
            s++;
        }
    }

    return len;
}


u_char *
ngx_http_redisgate_json_string(u_char *p, u_char *s, size_t n,
    ngx_uint_t base64)
{
    ngx_http_redisgate_piece_t  enc;

    /* the caller counted the bytes: no end to watch */

    ngx_memzero(&enc, sizeof(ngx_http_redisgate_piece_t));
    enc.base64 = base64;

    *p++ = '"';

    p = base64 ? ngx_http_redisgate_base64(p, NULL, &s, s + n, 1)
               : ngx_http_redisgate_json_escape(&enc, p, NULL, &s, s + n, 1);

    *p++ = '"';

    return p;
}


u_char *
ngx_http_redisgate_json_piece(ngx_http_redisgate_piece_t *enc, u_char *p,
    u_char *end, u_char **s, u_char *last, ngx_uint_t final)
{
    u_char      *t, tmp[sizeof(enc->carry) + 4];
    size_t       k, m, used;
    ngx_uint_t   all;

    if (end - p < NGX_HTTP_REDISGATE_PIECE_ROOM) {
        return p;
    }

    /*
     * The bytes kept from the last piece first, with the few of this one
     * that may finish them (a character is 4 bytes at most, a base64
     * group 3)
     */

    if (enc->ncarry) {
        k = enc->ncarry;
        m = ngx_min(4, (size_t) (last - *s));

        ngx_memcpy(tmp, enc->carry, k);
        ngx_memcpy(tmp + k, *s, m);

        t = tmp;
        all = final && (size_t) (last - *s) == m;

        p = enc->base64
            ? ngx_http_redisgate_base64(p, end, &t, tmp + k + m, all)
            : ngx_http_redisgate_json_escape(enc, p, end, &t, tmp + k + m,
                                             all);

        used = t - tmp;

        if (used < k) {
            if (end - p < NGX_HTTP_REDISGATE_PIECE_ROOM) {
                /* out of room: what is left of them, next time */
                enc->ncarry = k - used;
                ngx_memmove(enc->carry, t, enc->ncarry);

                return p;
            }

            /* this piece was too short to finish them: all of it kept */
            enc->ncarry = k + m - used;
            ngx_memmove(enc->carry, t, enc->ncarry);
            *s += m;

            return p;
        }

        enc->ncarry = 0;
        *s += used - k;
    }

    p = enc->base64 ? ngx_http_redisgate_base64(p, end, s, last, final)
                    : ngx_http_redisgate_json_escape(enc, p, end, s, last,
                                                     final);

    if (!final && *s < last && end - p >= NGX_HTTP_REDISGATE_PIECE_ROOM) {
        /* it stopped at what the next piece finishes: at most 3 bytes */
        enc->ncarry = last - *s;
        ngx_memcpy(enc->carry, *s, enc->ncarry);
        *s = last;
    }

    return p;
}


/*
 * Escapes from *sp towards last: until end - p is too small for the
 * longest thing one byte may become (end NULL: no end), and, unless
 * final, not into a character that last cuts.
 */

static u_char *
ngx_http_redisgate_json_escape(ngx_http_redisgate_piece_t *enc, u_char *p,
    u_char *end, u_char **sp, u_char *last, ngx_uint_t final)
{
    u_char  *s, *plain, lo, hi;
    size_t   seq, n, i;

    s = *sp;

    while (s < last) {

        if (end && end - p < NGX_HTTP_REDISGATE_PIECE_ROOM) {
            break;
        }

        if (enc->skip) {
            /* the rest of an invalid sequence: its U+FFFD is written */
            if ((*s & 0xc0) == 0x80) {
                s++;
                continue;
            }

            enc->skip = 0;
        }

        /* a run that leaves room for what may follow it (6 bytes) */
        n = end ? (size_t) (end - p) - NGX_HTTP_REDISGATE_PIECE_ROOM + 1
                : (size_t) (last - s);

        plain = ngx_http_redisgate_json_plain(s,
                                        (size_t) (last - s) > n ? s + n
                                                                : last);
        p = ngx_cpymem(p, s, plain - s);
        s = plain;

        if (s == last
            || ngx_http_redisgate_json_class[*s]
               == NGX_HTTP_REDISGATE_JSON_PLAIN)
        {
            /* the end, or the run reached its limit: the loop checks */
            continue;
        }

        switch (ngx_http_redisgate_json_class[*s]) {

        case NGX_HTTP_REDISGATE_JSON_SHORT:
            *p++ = '\\';

            switch (*s) {
            case '\n':
                *p++ = 'n';
                break;
            case '\r':
                *p++ = 'r';
                break;
            case '\t':
                *p++ = 't';
                break;
            default:
                *p++ = *s;
            }

            s++;
            continue;

        case NGX_HTTP_REDISGATE_JSON_HEX:
            p = ngx_cpymem(p, "\\u00", 4);
            *p++ = ngx_http_redisgate_hex_digits[*s >> 4];
            *p++ = ngx_http_redisgate_hex_digits[*s & 0x0f];
            s++;
            continue;
        }

        seq = ngx_http_redisgate_utf8_seq(s, last);

        if (seq) {
            p = ngx_cpymem(p, s, seq);
            s += seq;
            continue;
        }

        if (!final) {
            /* a good start that last cuts: the next piece finishes it */
            n = ngx_http_redisgate_utf8_lead(*s, &lo, &hi);

            if (n && (size_t) (last - s) < n
                && (last - s < 2 || (s[1] >= lo && s[1] <= hi)))
            {
                for (i = 2; i < (size_t) (last - s); i++) {
                    if ((s[i] & 0xc0) != 0x80) {
                        break;
                    }
                }

                if (i >= (size_t) (last - s)) {
                    break;
                }
            }
        }

        /* U+FFFD for the maximal invalid subpart */

        *p++ = 0xef;
        *p++ = 0xbf;
        *p++ = 0xbd;
        s++;
        enc->skip = 1;
    }

    *sp = s;

    return p;
}


/*
 * The end of the run from s of bytes JSON takes as they are (printable
 * ASCII but '"' and '\\'), many at a time: long values are mostly such
 * runs.  With SSE2 (every x86-64), 16 bytes by signed comparison: a byte
 * from 0x80 is negative, so "less than 0x20" finds it too.  Elsewhere 8,
 * as a word: the tests may flag a byte wrongly only above one that fails,
 * so a word that passes is all plain.
 */

u_char *
ngx_http_redisgate_json_plain(u_char *s, u_char *last)
{
#if (NGX_HTTP_REDISGATE_SSE2)
    int        mask;
    __m128i    v, space, quote, backslash;

    space = _mm_set1_epi8(0x20);
    quote = _mm_set1_epi8('"');
    backslash = _mm_set1_epi8('\\');

    while (last - s >= 16) {
        v = _mm_loadu_si128((__m128i *) s);

        mask = _mm_movemask_epi8(
                   _mm_or_si128(_mm_cmplt_epi8(v, space),
                                _mm_or_si128(_mm_cmpeq_epi8(v, quote),
                                             _mm_cmpeq_epi8(v, backslash))));

        if (mask) {
            return s + __builtin_ctz(mask);
        }

        s += 16;
    }

#else
    uint64_t   x, q, b;

    while (last - s >= 8) {
        ngx_memcpy(&x, s, 8);

        q = x ^ ngx_http_redisgate_bytes('"');
        b = x ^ ngx_http_redisgate_bytes('\\');

        if (((x | ((x - ngx_http_redisgate_bytes(0x20)) & ~x)
              | ngx_http_redisgate_zero_bytes(q)
              | ngx_http_redisgate_zero_bytes(b))
             & ngx_http_redisgate_bytes(0x80))
            != 0)
        {
            break;
        }

        s += 8;
    }
#endif

    for ( /* void */ ; s < last; s++) {
        if (ngx_http_redisgate_json_class[*s]
            != NGX_HTTP_REDISGATE_JSON_PLAIN)
        {
            break;
        }
    }

    return s;
}


/*
 * RFC 4648 base64: 3 bytes, two table reads of 12 bits.  Whole groups
 * while end - p has room (end NULL: no end); the padded rest if final.
 */

static u_char *
ngx_http_redisgate_base64(u_char *p, u_char *end, u_char **sp, u_char *last,
    ngx_uint_t final)
{
    u_char      *s, *t, out[8];
    size_t       n;
    uint32_t     v;
    uint64_t     x;
    ngx_uint_t   i;

    if (!ngx_http_redisgate_base64_ready) {
        t = ngx_http_redisgate_base64_table;

        for (i = 0; i < 4096; i++) {
            ngx_http_redisgate_base64_pairs[i][0] = t[i >> 6];
            ngx_http_redisgate_base64_pairs[i][1] = t[i & 0x3f];
        }

#if (NGX_HTTP_REDISGATE_AVX2)
        ngx_http_redisgate_base64_wide = __builtin_cpu_supports("avx2");
#endif

        ngx_http_redisgate_base64_ready = 1;
    }

    s = *sp;
    n = last - s;

    if (end && (size_t) (end - p) / 4 < n / 3) {
        n = (end - p) / 4 * 3;
        final = 0;
    }

#if (NGX_HTTP_REDISGATE_AVX2)
    if (ngx_http_redisgate_base64_wide) {
        i = ngx_http_redisgate_base64_avx2(p, s, n);

        p += i / 3 * 4;
        s += i;
        n -= i;
    }
#endif

    /* 6 bytes into 8: one load (of 8), four table reads, one store */

    while (n >= 8) {
        ngx_memcpy(&x, s, 8);
        x = ngx_http_redisgate_be64(x);

        ngx_memcpy(&out[0], ngx_http_redisgate_base64_pairs[x >> 52], 2);
        ngx_memcpy(&out[2],
                   ngx_http_redisgate_base64_pairs[(x >> 40) & 0xfff], 2);
        ngx_memcpy(&out[4],
                   ngx_http_redisgate_base64_pairs[(x >> 28) & 0xfff], 2);
        ngx_memcpy(&out[6],
                   ngx_http_redisgate_base64_pairs[(x >> 16) & 0xfff], 2);

        p = ngx_cpymem(p, out, 8);

        s += 6;
        n -= 6;
    }

    while (n > 2) {
        v = ((uint32_t) s[0] << 16) | ((uint32_t) s[1] << 8) | s[2];

        p = ngx_cpymem(p, ngx_http_redisgate_base64_pairs[v >> 12], 2);
        p = ngx_cpymem(p, ngx_http_redisgate_base64_pairs[v & 0xfff], 2);

        s += 3;
        n -= 3;
    }

    if (n && final && (end == NULL || end - p >= 4)) {
        t = ngx_http_redisgate_base64_table;

        *p++ = t[s[0] >> 2];

        if (n == 1) {
            *p++ = t[(s[0] & 3) << 4];
            *p++ = '=';

        } else {
            *p++ = t[((s[0] & 3) << 4) | (s[1] >> 4)];
            *p++ = t[(s[1] & 0x0f) << 2];
        }

        *p++ = '=';
        s += n;
    }

    *sp = s;

    return p;
}


#if (NGX_HTTP_REDISGATE_AVX2)

/*
 * 24 bytes into 32 digits a step, the way Muła and Lemire describe it
 * ("Faster Base64 Encoding and Decoding Using AVX2 Instructions", 2018).
 * Each 128-bit lane takes 12 bytes, four groups of three; a shuffle puts
 * each group's bytes b0 b1 b2 into a 32-bit word as b1 b0 b2 b1, so that
 * two multiplications on 16-bit halves move its four 6-bit indices into
 * the word's four bytes; a 16-entry shuffle then adds to each index what
 * takes it to its digit (65 for 0-25, 71 for 26-51, -4 for the digits,
 * -19 for '+', -16 for '/').  Each lane reads 16 bytes: the loop stops
 * while 28 are left.  Returns the bytes it encoded, a multiple of 3.
 */

static size_t
ngx_http_redisgate_base64_avx2(u_char *p, u_char *s, size_t n)
{
    size_t   done;
    __m256i  v, spread, hi_mask, hi_mul, lo_mask, lo_mul, offsets, k;

    spread = _mm256_setr_epi8(1, 0, 2, 1, 4, 3, 5, 4,
                              7, 6, 8, 7, 10, 9, 11, 10,
                              1, 0, 2, 1, 4, 3, 5, 4,
                              7, 6, 8, 7, 10, 9, 11, 10);

    /* the first and third index of a word, and what shifts them home */
    hi_mask = _mm256_set1_epi32(0x0fc0fc00);
    hi_mul = _mm256_set1_epi32(0x04000040);

    /* the second and the fourth */
    lo_mask = _mm256_set1_epi32(0x003f03f0);
    lo_mul = _mm256_set1_epi32(0x01000010);

    offsets = _mm256_setr_epi8(71, -4, -4, -4, -4, -4, -4, -4,
                               -4, -4, -4, -19, -16, 65, 0, 0,
                               71, -4, -4, -4, -4, -4, -4, -4,
                               -4, -4, -4, -19, -16, 65, 0, 0);

    done = 0;

    while (n - done >= 28) {
        v = _mm256_inserti128_si256(
                _mm256_castsi128_si256(
                    _mm_loadu_si128((__m128i *) (s + done))),
                _mm_loadu_si128((__m128i *) (s + done + 12)), 1);

        v = _mm256_shuffle_epi8(v, spread);

        v = _mm256_or_si256(
                _mm256_mulhi_epu16(_mm256_and_si256(v, hi_mask), hi_mul),
                _mm256_mullo_epi16(_mm256_and_si256(v, lo_mask), lo_mul));

        /* 0 for 26-51, 1-12 for 52-63, 13 for 0-25: the offset's entry */
        k = _mm256_or_si256(
                _mm256_subs_epu8(v, _mm256_set1_epi8(51)),
                _mm256_and_si256(_mm256_cmpgt_epi8(_mm256_set1_epi8(26), v),
                                 _mm256_set1_epi8(13)));

        v = _mm256_add_epi8(v, _mm256_shuffle_epi8(offsets, k));

        _mm256_storeu_si256((__m256i *) p, v);

        p += 32;
        done += 24;
    }

    return done;
}

#endif


/*
 * The length of the well-formed UTF-8 sequence at p (RFC 3629: no
 * overlong forms, no surrogates, nothing above U+10FFFF), or 0.
 */

static size_t
ngx_http_redisgate_utf8_seq(u_char *p, u_char *last)
{
    u_char  lo, hi;
    size_t  n, i;

    n = ngx_http_redisgate_utf8_lead(p[0], &lo, &hi);

    if (n == 0 || (size_t) (last - p) < n) {
        return 0;
    }

    if (p[1] < lo || p[1] > hi) {
        return 0;
    }

    for (i = 2; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80) {
            return 0;
        }
    }

    return n;
}


/* the length a lead byte c announces (0: none), and its second byte's range */

static ngx_uint_t
ngx_http_redisgate_utf8_lead(u_char c, u_char *lo, u_char *hi)
{
    *lo = 0x80;
    *hi = 0xbf;

    if (c >= 0xc2 && c <= 0xdf) {
        return 2;
    }

    if (c >= 0xe0 && c <= 0xef) {
        if (c == 0xe0) {
            *lo = 0xa0;

        } else if (c == 0xed) {
            *hi = 0x9f;
        }

        return 3;
    }

    if (c >= 0xf0 && c <= 0xf4) {
        if (c == 0xf0) {
            *lo = 0x90;

        } else if (c == 0xf4) {
            *hi = 0x8f;
        }

        return 4;
    }

    return 0;
}


static size_t
ngx_http_redisgate_number_len(long long n)
{
    if (n < 0) {
        /* the magnitude as unsigned: LLONG_MIN has no positive twin */
        return 1 + ngx_http_redisgate_digits(0ULL - (unsigned long long) n);
    }

    return ngx_http_redisgate_digits((unsigned long long) n);
}


static size_t
ngx_http_redisgate_digits(unsigned long long u)
{
    size_t  len;

    len = 1;

    while (u >= 10) {
        u /= 10;
        len++;
    }

    return len;
}


static u_char *
ngx_http_redisgate_number(u_char *p, long long n)
{
    u_char              *q;
    size_t               len;
    unsigned long long   u;

    if (n < 0) {
        *p++ = '-';
        u = 0ULL - (unsigned long long) n;

    } else {
        u = (unsigned long long) n;
    }

    len = ngx_http_redisgate_digits(u);
    q = p + len;

    do {
        *--q = (u_char) ('0' + u % 10);
        u /= 10;
    } while (u);

    return p + len;
}


size_t
ngx_http_redisgate_resp_reply_len(redisReply *reply)
{
    size_t  len, i;

    switch (reply->type) {

    case REDIS_REPLY_STRING:
        return 1 + ngx_http_redisgate_number_len(reply->len) + 2
               + reply->len + 2;

    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
        return 1 + reply->len + 2;

    case REDIS_REPLY_INTEGER:
        return 1 + ngx_http_redisgate_number_len(reply->integer) + 2;

    case REDIS_REPLY_ARRAY:
        len = 1 + ngx_http_redisgate_number_len(reply->elements) + 2;

        for (i = 0; i < reply->elements; i++) {
            len += ngx_http_redisgate_resp_reply_len(reply->element[i]);
        }

        return len;

    default: /* REDIS_REPLY_NIL */
        return sizeof("$-1\r\n") - 1;
    }
}


u_char *
ngx_http_redisgate_resp_reply(u_char *p, redisReply *reply)
{
    size_t  i;

    switch (reply->type) {

    case REDIS_REPLY_STRING:
        *p++ = '$';
        p = ngx_http_redisgate_number(p, (long long) reply->len);
        *p++ = '\r';
        *p++ = '\n';
        p = ngx_cpymem(p, reply->str, reply->len);
        break;

    case REDIS_REPLY_STATUS:
        *p++ = '+';
        p = ngx_cpymem(p, reply->str, reply->len);
        break;

    case REDIS_REPLY_ERROR:
        *p++ = '-';
        p = ngx_cpymem(p, reply->str, reply->len);
        break;

    case REDIS_REPLY_INTEGER:
        *p++ = ':';
        p = ngx_http_redisgate_number(p, reply->integer);
        break;

    case REDIS_REPLY_ARRAY:
        *p++ = '*';
        p = ngx_http_redisgate_number(p, (long long) reply->elements);
        *p++ = '\r';
        *p++ = '\n';

        for (i = 0; i < reply->elements; i++) {
            p = ngx_http_redisgate_resp_reply(p, reply->element[i]);
        }

        return p;

    default: /* REDIS_REPLY_NIL */
        return ngx_cpymem(p, "$-1\r\n", sizeof("$-1\r\n") - 1);
    }

    *p++ = '\r';
    *p++ = '\n';

    return p;
}


size_t
ngx_http_redisgate_resp_command_len(ngx_http_redisgate_cmd_t *cmd)
{
    size_t      len;
    ngx_uint_t  i;

    len = 1 + ngx_http_redisgate_number_len(cmd->argc) + 2;

    for (i = 0; i < cmd->argc; i++) {
        len += 1 + ngx_http_redisgate_number_len(cmd->argv[i].len) + 2
               + cmd->argv[i].len + 2;
    }

    return len;
}


u_char *
ngx_http_redisgate_resp_command(u_char *p, ngx_http_redisgate_cmd_t *cmd)
{
    ngx_uint_t  i;

    *p++ = '*';
    p = ngx_http_redisgate_number(p, (long long) cmd->argc);
    *p++ = '\r';
    *p++ = '\n';

    for (i = 0; i < cmd->argc; i++) {
        *p++ = '$';
        p = ngx_http_redisgate_number(p, (long long) cmd->argv[i].len);
        *p++ = '\r';
        *p++ = '\n';

        /* an empty argument may have no data at all */
        if (cmd->argv[i].len) {
            p = ngx_cpymem(p, cmd->argv[i].data, cmd->argv[i].len);
        }
        *p++ = '\r';
        *p++ = '\n';
    }

    return p;
}
