
/*
 * Copyright (C) RedisGate authors
 */


/*
 * ngx_http_redisgate_command_find(), _command_name(), _command_fix_script().
 * Input: a flag byte (bit 0: prepend "#!lua flags=allow-key-locking",
 * bit 1: with_sub, bits 2-7: where to cut name and subcommand), then
 * bytes used as a command name and as a script.
 */


#include <stdint.h>
#include <string.h>

#include "fuzz_alloc.h"
#include "ngx_http_redisgate_commands.h"


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


static const char  fuzz_prefix[] = "#!lua flags=allow-key-locking";


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char                              *in, *s, *eol, *oeol;
    u_char                               name[64];
    size_t                               len, cut, n, i, plen;
    ngx_str_t                            argv[2], script;
    ngx_int_t                            rc;
    ngx_uint_t                           flag, with_sub;
    ngx_http_redisgate_cmd_t             cmd;
    const ngx_http_redisgate_command_t  *c;

    if (size < 1) {
        return 0;
    }

    flag = data[0] & 1;
    with_sub = (data[0] >> 1) & 1;

    len = size - 1;
    in = malloc(len ? len : 1);
    FUZZ_CHECK(in != NULL);
    memcpy(in, data + 1, len);

    /* command_find(): what it finds has exactly that name */

    c = ngx_http_redisgate_command_find(in, len);
    if (c) {
        FUZZ_CHECK(c->name.len == len && memcmp(c->name.data, in, len) == 0);
    }

    /* command_name(): into 64 bytes, lower case, findable when found */

    cut = len ? (size_t) (data[0] >> 2) % (len + 1) : 0;

    argv[0].data = in;
    argv[0].len = cut;
    argv[1].data = in + cut;
    argv[1].len = len - cut;

    cmd.argv = argv;
    cmd.argc = 2;

    n = ngx_http_redisgate_command_name(name, sizeof(name), &cmd, with_sub);

    FUZZ_CHECK(n <= sizeof(name));

    if (n) {
        FUZZ_CHECK(n == (with_sub ? len + 1 : cut));

        for (i = 0; i < n; i++) {
            FUZZ_CHECK(!(name[i] >= 'A' && name[i] <= 'Z'));
        }

        (void) ngx_http_redisgate_command_find(name, n);
    }

    cmd.argc = 1;
    n = ngx_http_redisgate_command_name(name, sizeof(name), &cmd, 1);
    FUZZ_CHECK(n == (cut > sizeof(name) ? 0 : cut));

    /* fix_script(): never longer; "#!lua" stays on the first line */

    plen = flag ? sizeof(fuzz_prefix) - 1 : 0;

    s = malloc(plen + len + 1);
    FUZZ_CHECK(s != NULL);
    memcpy(s, fuzz_prefix, plen);
    memcpy(s + plen, in, len);

    script.data = s;
    script.len = plen + len;

    rc = ngx_http_redisgate_command_fix_script(&script, &fuzz_allocator);

    FUZZ_CHECK(rc == NGX_OK);
    FUZZ_CHECK(script.len <= plen + len);

    if (script.data != s) {
        /* changed: the flag was on the shebang line and is gone from it */
        FUZZ_CHECK(script.len < plen + len);
        FUZZ_CHECK(script.len >= 5 && memcmp(script.data, "#!lua", 5) == 0);
        FUZZ_CHECK(plen + len - script.len
                   >= sizeof("allow-key-locking") - 1);

        /* everything after the first line is kept as it was */

        oeol = memchr(s, '\n', plen + len);
        eol = memchr(script.data, '\n', script.len);

        FUZZ_CHECK((oeol == NULL) == (eol == NULL));

        if (oeol) {
            FUZZ_CHECK((size_t) (s + plen + len - oeol)
                       == (size_t) (script.data + script.len - eol));
            FUZZ_CHECK(memcmp(oeol, eol, s + plen + len - oeol) == 0);
        }

    } else {
        FUZZ_CHECK(script.len == plen + len);
    }

    if (flag && len == 0) {
        /* exactly the prefix: the flag goes, "flags=" stays */
        FUZZ_CHECK(script.len == sizeof("#!lua flags=") - 1
                   && memcmp(script.data, "#!lua flags=", script.len) == 0);
    }

    free(s);
    free(in);
    fuzz_free_all();

    return 0;
}
