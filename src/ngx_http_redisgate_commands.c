
/*
 * Copyright (C) RedisGate authors
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_redisgate_commands.h"
#include "ngx_http_redisgate_parse.h"


static ngx_str_t  ngx_http_redisgate_lua_shebang = ngx_string("#!lua");
static ngx_str_t  ngx_http_redisgate_key_locking =
    ngx_string("allow-key-locking");


const ngx_http_redisgate_command_t *
ngx_http_redisgate_command_find(u_char *name, size_t len)
{
    ngx_int_t                            rc;
    ngx_uint_t                           lo, hi, mid;
    const ngx_http_redisgate_command_t  *c;

    lo = 0;
    hi = ngx_http_redisgate_command_table_size;

    while (lo < hi) {
        mid = lo + (hi - lo) / 2;
        c = &ngx_http_redisgate_command_table[mid];

        rc = ngx_memcmp(name, c->name.data, ngx_min(len, c->name.len));

        if (rc == 0) {
            if (len == c->name.len) {
                return c;
            }

            rc = (len < c->name.len) ? -1 : 1;
        }

        if (rc < 0) {
            hi = mid;

        } else {
            lo = mid + 1;
        }
    }

    return NULL;
}


/*
 * The table's entry for a command: "client|kill" for a command with
 * subcommands, else its name; NULL when Redis knows no such command.
 * name (NGX_HTTP_REDISGATE_NAME_MAX bytes) gets the name looked up, *len
 * its length, *sub_len the length with the subcommand (0 without one).
 */

const ngx_http_redisgate_command_t *
ngx_http_redisgate_command_lookup(u_char *name, size_t size,
    ngx_http_redisgate_cmd_t *cmd, size_t *len, size_t *sub_len)
{
    size_t                               n;
    const ngx_http_redisgate_command_t  *c;

    *sub_len = 0;
    *len = ngx_http_redisgate_command_name(name, size, cmd, 0);

    c = *len ? ngx_http_redisgate_command_find(name, *len) : NULL;

    if (c && (c->flags & NGX_HTTP_REDISGATE_CMD_CONTAINER)) {
        n = ngx_http_redisgate_command_name(name, size, cmd, 1);

        if (n > *len) {
            c = ngx_http_redisgate_command_find(name, n);
            *len = n;
            *sub_len = n;
        }
    }

    return c;
}


/*
 * "get", or "client|kill" when the command has subcommands: lower case,
 * into buf; 0 when it does not fit (then it is no command Redis knows).
 */

size_t
ngx_http_redisgate_command_name(u_char *buf, size_t size,
    ngx_http_redisgate_cmd_t *cmd, ngx_uint_t with_sub)
{
    size_t      n, i;
    ngx_str_t  *name, *sub;

    name = &cmd->argv[0];

    if (name->len > size) {
        return 0;
    }

    for (i = 0; i < name->len; i++) {
        buf[i] = ngx_tolower(name->data[i]);
    }

    n = name->len;

    if (!with_sub || cmd->argc < 2) {
        return n;
    }

    sub = &cmd->argv[1];

    if (n + 1 + sub->len > size) {
        return 0;
    }

    buf[n++] = '|';

    for (i = 0; i < sub->len; i++) {
        buf[n++] = ngx_tolower(sub->data[i]);
    }

    return n;
}


/*
 * @upstash/ratelimit marks its scripts "#!lua flags=allow-key-locking",
 * a flag plain Redis refuses: drop it from the shebang line, keeping the
 * other flags.  script is an argument of EVAL, EVAL_RO or SCRIPT LOAD.
 */

ngx_int_t
ngx_http_redisgate_command_fix_script(ngx_str_t *script,
    ngx_http_redisgate_alloc_t *a)
{
    u_char     *p, *eol, *last, *flag, *q, *dst;
    size_t      n;

    if (script->len < ngx_http_redisgate_lua_shebang.len
        || ngx_memcmp(script->data, ngx_http_redisgate_lua_shebang.data,
                      ngx_http_redisgate_lua_shebang.len)
           != 0)
    {
        return NGX_OK;
    }

    last = script->data + script->len;

    eol = ngx_strlchr(script->data, last, '\n');
    if (eol == NULL) {
        eol = last;
    }

    n = ngx_http_redisgate_key_locking.len;

    for (flag = script->data; flag + n <= eol; flag++) {
        if (ngx_memcmp(flag, ngx_http_redisgate_key_locking.data, n) == 0
            && (flag + n == eol || flag[n] == ',' || flag[n] == ' '
                || flag[n] == '\r')
            && (flag[-1] == ',' || flag[-1] == '='))
        {
            break;
        }
    }

    if (flag + n > eol) {
        return NGX_OK;
    }

    dst = a->alloc(a->data, script->len);
    if (dst == NULL) {
        return NGX_ERROR;
    }

    /* "flags=a,allow-key-locking,b": drop the flag and one comma */

    q = flag + n;

    if (q < eol && *q == ',') {
        q++;

    } else if (flag[-1] == ',') {
        flag--;
    }

    p = ngx_cpymem(dst, script->data, flag - script->data);

    /* "flags=" left empty reads as no flags, which Redis accepts */

    p = ngx_cpymem(p, q, last - q);

    script->data = dst;
    script->len = p - dst;

    return NGX_OK;
}
