
/*
 * Copyright (C) RedisGate authors
 */


/*
 * What a key may run: the gateway's deny-list (operators change it with
 * redisgate_deny and redisgate_allow), blocking commands, then scopes.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_redisgate.h"


static ngx_int_t ngx_http_redisgate_policy_build(ngx_conf_t *cf,
    ngx_array_t *inherited, ngx_http_redisgate_loc_conf_t *conf);
static ngx_int_t ngx_http_redisgate_policy_add(ngx_array_t *rules,
    ngx_str_t *name, ngx_uint_t deny);
static int ngx_libc_cdecl ngx_http_redisgate_rule_cmp(const void *one,
    const void *two);
static ngx_http_redisgate_rule_t *ngx_http_redisgate_rule_find(
    ngx_array_t *rules, u_char *name, size_t len);
static ngx_uint_t ngx_http_redisgate_verdict(ngx_array_t *rules,
    const ngx_http_redisgate_command_t *c, u_char *name, size_t len,
    size_t sub_len);
static ngx_uint_t ngx_http_redisgate_blocks(u_char *name, size_t len,
    ngx_http_redisgate_cmd_t *cmd);


/*
 * What the rules and the lists say of a command whatever its arguments:
 * worked out once per location for every command of the table (a byte
 * each), so that a request's commands are looked up, not reasoned about
 */

#define NGX_HTTP_REDISGATE_VERDICT_DENY   0x10  /* a rule denies it */
#define NGX_HTTP_REDISGATE_VERDICT_RULED  0x20  /* a rule names it */
#define NGX_HTTP_REDISGATE_VERDICT_MAP    0x40  /* a map reply on request */
#define NGX_HTTP_REDISGATE_VERDICT_NEED   0x0f  /* the scope it needs */


/*
 * Transactions and connection state belong to the gateway; streaming
 * commands have no endpoint yet; server-wide commands reach beyond one
 * tenant's data.  (FLUSHALL is not among them: the handler sends it as
 * FLUSHDB, the instance's own database.)
 * Blocking commands are refused by their flag in the command table.
 */

static char  *ngx_http_redisgate_default_deny[] = {
    "multi", "exec", "discard", "watch", "unwatch",
    "select", "auth", "hello", "quit", "reset",
    "client|kill", "client|pause", "client|unpause", "client|reply",
    "client|setname", "client|setinfo", "client|tracking", "client|caching",
    "client|no-evict", "client|no-touch", "client|unblock",
    "subscribe", "psubscribe", "ssubscribe",
    "unsubscribe", "punsubscribe", "sunsubscribe", "monitor",
    "wait", "waitaof",
    "config", "shutdown", "debug", "replicaof", "slaveof", "sync", "psync",
    "replconf", "module", "acl", "cluster", "failover", "readonly",
    "readwrite", "asking", "save", "bgsave", "bgrewriteaof", "swapdb",
    "move", "migrate", "restore-asking", "latency", "memory|doctor",
    "memory|malloc-stats", "memory|purge", "script|kill", "function|kill",
    "pfdebug", "pfselftest", "sentinel",
    NULL
};


/* per-instance commands that destroy data wholesale: scope "admin" */

static ngx_str_t  ngx_http_redisgate_admin_commands[] = {
    ngx_string("flushdb"), ngx_string("flushall"), ngx_string("script|flush"),
    ngx_string("function|flush"), ngx_string("function|delete"),
    ngx_string("function|restore"),
    ngx_null_string
};


/* change data without Redis's "write" flag: scope "write" */

static ngx_str_t  ngx_http_redisgate_write_commands[] = {
    ngx_string("publish"), ngx_string("spublish"),
    ngx_null_string
};


/* replies that are field/value pairs, sent as objects on request */

static ngx_str_t  ngx_http_redisgate_map_commands[] = {
    ngx_string("hgetall"), ngx_string("config|get"),
    ngx_null_string
};


ngx_int_t
ngx_http_redisgate_policy_merge(ngx_conf_t *cf,
    ngx_http_redisgate_loc_conf_t *prev, ngx_http_redisgate_loc_conf_t *conf)
{
    /* the http level is never merged into anything: build it here */

    if (prev->rules == NULL
        && ngx_http_redisgate_policy_build(cf, NULL, prev) != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (conf->deny == NULL && conf->allow == NULL) {
        conf->rules = prev->rules;
        conf->verdicts = prev->verdicts;
        return NGX_OK;
    }

    return ngx_http_redisgate_policy_build(cf, prev->rules, conf);
}


/* inherited rules (or the defaults), then this level's deny, then allow */

static ngx_int_t
ngx_http_redisgate_policy_build(ngx_conf_t *cf, ngx_array_t *inherited,
    ngx_http_redisgate_loc_conf_t *conf)
{
    char                               **name;
    u_char                              *bar;
    ngx_str_t                            s, *names;
    ngx_uint_t                           i;
    ngx_array_t                         *rules;
    const ngx_http_redisgate_command_t  *c;

    rules = ngx_array_create(cf->pool, 64, sizeof(ngx_http_redisgate_rule_t));
    if (rules == NULL) {
        return NGX_ERROR;
    }

    if (inherited) {
        if (ngx_array_push_n(rules, inherited->nelts) == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(rules->elts, inherited->elts,
                   inherited->nelts * sizeof(ngx_http_redisgate_rule_t));

    } else {
        for (name = ngx_http_redisgate_default_deny; *name; name++) {
            s.data = (u_char *) *name;
            s.len = ngx_strlen(*name);

            if (ngx_http_redisgate_policy_add(rules, &s, 1) != NGX_OK) {
                return NGX_ERROR;
            }
        }
    }

    if (conf->deny) {
        names = conf->deny->elts;

        for (i = 0; i < conf->deny->nelts; i++) {
            if (ngx_http_redisgate_policy_add(rules, &names[i], 1) != NGX_OK) {
                return NGX_ERROR;
            }
        }
    }

    if (conf->allow) {
        names = conf->allow->elts;

        for (i = 0; i < conf->allow->nelts; i++) {
            if (ngx_http_redisgate_policy_add(rules, &names[i], 0) != NGX_OK) {
                return NGX_ERROR;
            }
        }
    }

    ngx_qsort(rules->elts, rules->nelts, sizeof(ngx_http_redisgate_rule_t),
              ngx_http_redisgate_rule_cmp);

    conf->rules = rules;

    conf->verdicts = ngx_pnalloc(cf->pool,
                                 ngx_http_redisgate_command_table_size);
    if (conf->verdicts == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < ngx_http_redisgate_command_table_size; i++) {
        c = &ngx_http_redisgate_command_table[i];
        bar = ngx_strlchr(c->name.data, c->name.data + c->name.len, '|');

        conf->verdicts[i] = (u_char) ngx_http_redisgate_verdict(rules, c,
                                            c->name.data, c->name.len,
                                            bar ? c->name.len : 0);
    }

    return NGX_OK;
}


/* a later rule for the same name replaces the earlier one */

static ngx_int_t
ngx_http_redisgate_policy_add(ngx_array_t *rules, ngx_str_t *name,
    ngx_uint_t deny)
{
    ngx_uint_t                  i;
    ngx_http_redisgate_rule_t  *rule;

    rule = rules->elts;

    for (i = 0; i < rules->nelts; i++) {
        if (rule[i].name.len == name->len
            && ngx_strncasecmp(rule[i].name.data, name->data, name->len) == 0)
        {
            rule[i].deny = deny;
            return NGX_OK;
        }
    }

    rule = ngx_array_push(rules);
    if (rule == NULL) {
        return NGX_ERROR;
    }

    rule->name.len = name->len;
    rule->name.data = ngx_pnalloc(rules->pool, name->len);
    if (rule->name.data == NULL) {
        return NGX_ERROR;
    }

    ngx_strlow(rule->name.data, name->data, name->len);
    rule->deny = deny;

    return NGX_OK;
}


static int ngx_libc_cdecl
ngx_http_redisgate_rule_cmp(const void *one, const void *two)
{
    const ngx_http_redisgate_rule_t  *a = one, *b = two;
    ngx_int_t                         rc;

    rc = ngx_memcmp(a->name.data, b->name.data,
                    ngx_min(a->name.len, b->name.len));

    if (rc) {
        return rc;
    }

    return (int) a->name.len - (int) b->name.len;
}


static ngx_http_redisgate_rule_t *
ngx_http_redisgate_rule_find(ngx_array_t *rules, u_char *name, size_t len)
{
    ngx_http_redisgate_rule_t  key;

    key.name.data = name;
    key.name.len = len;

    return bsearch(&key, rules->elts, rules->nelts,
                   sizeof(ngx_http_redisgate_rule_t),
                   ngx_http_redisgate_rule_cmp);
}


static ngx_uint_t
ngx_http_redisgate_in_list(ngx_str_t *list, u_char *name, size_t len)
{
    for ( /* void */ ; list->len; list++) {
        if (list->len == len && ngx_memcmp(list->data, name, len) == 0) {
            return 1;
        }
    }

    return 0;
}


/*
 * NGX_OK: it may run.  NGX_DECLINED: the gateway never runs it (400).
 * NGX_ABORT: the key's scopes do not allow it (403).  reason says why.
 */

ngx_int_t
ngx_http_redisgate_policy_check(ngx_http_redisgate_loc_conf_t *rlcf,
    ngx_http_redisgate_cmd_t *cmd, ngx_uint_t scopes, ngx_str_t *reason,
    ngx_uint_t *map_reply, ngx_uint_t *by_name)
{
    u_char                              *name;
    size_t                               len, sub_len;
    ngx_uint_t                           flags, verdict;
    const ngx_http_redisgate_command_t  *c;

    *map_reply = 0;
    *by_name = 0;

    /* the caller's buffer of NGX_HTTP_REDISGATE_NAME_MAX bytes */
    name = reason->data;

    c = ngx_http_redisgate_command_lookup(name, NGX_HTTP_REDISGATE_NAME_MAX,
                                          cmd, &len, &sub_len);

    flags = c ? c->flags : 0;

    reason->len = len;

    verdict = c ? rlcf->verdicts[c - ngx_http_redisgate_command_table]
                : ngx_http_redisgate_verdict(rlcf->rules, NULL, name, len,
                                             sub_len);

    if (verdict & NGX_HTTP_REDISGATE_VERDICT_DENY) {
        return NGX_DECLINED;
    }

    if (!(verdict & NGX_HTTP_REDISGATE_VERDICT_RULED)
        && (flags & NGX_HTTP_REDISGATE_CMD_BLOCKING)
        && ngx_http_redisgate_blocks(name, len, cmd))
    {
        /* a blocked command would stall every request pipelined behind it */
        return NGX_DECLINED;
    }

    *map_reply = (verdict & NGX_HTTP_REDISGATE_VERDICT_MAP) ? 1 : 0;

    /* admin implies write, write implies read */

    if (scopes & NGX_HTTP_REDISGATE_SCOPE_ADMIN) {
        scopes |= NGX_HTTP_REDISGATE_SCOPE_WRITE;
    }

    if (scopes & NGX_HTTP_REDISGATE_SCOPE_WRITE) {
        scopes |= NGX_HTTP_REDISGATE_SCOPE_READ;
    }

    if ((scopes & verdict & NGX_HTTP_REDISGATE_VERDICT_NEED) == 0) {
        return NGX_ABORT;
    }

    /* the same name gets the same answer, unless its arguments matter */
    *by_name = len && !(flags & (NGX_HTTP_REDISGATE_CMD_CONTAINER
                                 |NGX_HTTP_REDISGATE_CMD_BLOCKING))
               && !(len == 4 && ngx_memcmp(name, "copy", 4) == 0);

    return NGX_OK;
}


/*
 * A command's verdict: DENY or RULED by the rules, MAP, and the scope it
 * needs.  c is its table entry (NULL: a name Redis does not know, or no
 * name, len 0: passed through, as "write").
 */

static ngx_uint_t
ngx_http_redisgate_verdict(ngx_array_t *rules,
    const ngx_http_redisgate_command_t *c, u_char *name, size_t len,
    size_t sub_len)
{
    ngx_uint_t                  flags, verdict;
    ngx_http_redisgate_rule_t  *rule;

    if (len == 0) {
        return NGX_HTTP_REDISGATE_SCOPE_WRITE;
    }

    flags = c ? c->flags : 0;
    verdict = 0;

    rule = ngx_http_redisgate_rule_find(rules, name, len);

    if (rule == NULL && sub_len > 0) {
        /* "client" denies every "client|..." without a rule of its own */
        rule = ngx_http_redisgate_rule_find(rules, name,
                                            ngx_strlchr(name, name + len, '|')
                                            - name);
    }

    if (rule) {
        verdict |= NGX_HTTP_REDISGATE_VERDICT_RULED;

        if (rule->deny) {
            verdict |= NGX_HTTP_REDISGATE_VERDICT_DENY;
        }
    }

    if (ngx_http_redisgate_in_list(ngx_http_redisgate_map_commands,
                                   name, len))
    {
        verdict |= NGX_HTTP_REDISGATE_VERDICT_MAP;
    }

    /*
     * admin: wholesale destruction or server administration;
     * write: Redis's "write" flag, scripts that may write, publishing, and
     * commands Redis does not know (modules); read: the rest (GET, PING,
     * INFO, EVAL_RO...).
     */

    if ((flags & NGX_HTTP_REDISGATE_CMD_ADMIN)
        || ngx_http_redisgate_in_list(ngx_http_redisgate_admin_commands,
                                      name, len))
    {
        verdict |= NGX_HTTP_REDISGATE_SCOPE_ADMIN;

    } else if (c == NULL
               || (flags & NGX_HTTP_REDISGATE_CMD_WRITE)
               || ((flags & NGX_HTTP_REDISGATE_CMD_SCRIPTING)
                   && !(flags & NGX_HTTP_REDISGATE_CMD_READONLY))
               || ngx_http_redisgate_in_list(
                                     ngx_http_redisgate_write_commands,
                                     name, len))
    {
        verdict |= NGX_HTTP_REDISGATE_SCOPE_WRITE;

    } else {
        verdict |= NGX_HTTP_REDISGATE_SCOPE_READ;
    }

    return verdict;
}


/*
 * COPY source destination DB n writes into database n of the same server:
 * another tenant's, unless n is the instance's own.  NGX_OK, or
 * NGX_DECLINED with the database asked for in *other.
 */

ngx_int_t
ngx_http_redisgate_policy_check_db(ngx_http_redisgate_cmd_t *cmd,
    ngx_uint_t db, ngx_str_t *other)
{
    ngx_int_t   n;
    ngx_uint_t  i;

    if (cmd->argc < 5
        || cmd->argv[0].len != 4
        || ngx_strncasecmp(cmd->argv[0].data, (u_char *) "copy", 4) != 0)
    {
        return NGX_OK;
    }

    /* COPY source destination [DB n] [REPLACE], in any order after them */

    for (i = 3; i + 1 < cmd->argc; i++) {
        if (cmd->argv[i].len != 2
            || ngx_strncasecmp(cmd->argv[i].data, (u_char *) "db", 2) != 0)
        {
            continue;
        }

        n = ngx_atoi(cmd->argv[i + 1].data, cmd->argv[i + 1].len);

        if (n == NGX_ERROR || (ngx_uint_t) n != db) {
            /* what Redis would not take is refused all the same */
            *other = cmd->argv[i + 1];
            return NGX_DECLINED;
        }

        i++;
    }

    return NGX_OK;
}


/* XREAD and XREADGROUP block only when given BLOCK */

static ngx_uint_t
ngx_http_redisgate_blocks(u_char *name, size_t len,
    ngx_http_redisgate_cmd_t *cmd)
{
    ngx_uint_t  i;

    if (!(len == 5 && ngx_memcmp(name, "xread", 5) == 0)
        && !(len == 10 && ngx_memcmp(name, "xreadgroup", 10) == 0))
    {
        return 1;
    }

    for (i = 1; i < cmd->argc; i++) {
        if (cmd->argv[i].len == 5
            && ngx_strncasecmp(cmd->argv[i].data, (u_char *) "block", 5) == 0)
        {
            return 1;
        }
    }

    return 0;
}
