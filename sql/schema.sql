-- RedisGate key store: plans, organizations, Redis instances and API keys,
-- in the schema "redisgate", with the functions that manage them and the one
-- the nginx module calls on a cache miss (redisgate.lookup_many, the batched
-- form of redisgate.lookup).  Also the usage the module counts
-- (usage_minutes, written with redisgate.record_usage; see docs/usage.md).
--
-- Apply it with psql, as often as you like (it is idempotent, and it takes a
-- lock so two applies do not race):
--
--     psql -X -v ON_ERROR_STOP=1 -d "$CONNINFO" -f sql/schema.sql
--     tools/redisgate-admin schema apply
--
-- Needs PostgreSQL 13 or later and no extension (gen_random_uuid(), sha256()).
--
-- Tokens: 'rg_' followed by 64 lower-case hex digits (two random UUIDs,
-- 244 random bits).  create_key and rotate_key return a token exactly once;
-- the database keeps only the lower-case hex SHA-256 of its UTF-8 bytes
-- (printf %s "$TOKEN" | sha256sum) and its first 10 characters, to tell keys
-- apart in listings.
--
-- Cache invalidation: every change that can alter what lookup() returns sends
-- a notification on the channel "redisgate", with one of these payloads:
--
--     key:<token_sha256>     a key was revoked, rotated, deleted, or its
--                            expiry, scopes or organization changed
--     instance:<uuid>        an instance was updated, suspended, resumed or
--                            deleted
--     organization:<uuid>    an organization was suspended or resumed, or its
--                            plan changed
--     all                    a plan's limits changed, or a table was truncated
--
-- The notifications come from triggers on the tables, so the management
-- functions below send them, and so do direct UPDATE/DELETE statements.
-- They are sent when the transaction commits, once per distinct payload, and
-- only for real changes (suspending a suspended organization sends nothing).
-- Creating things sends nothing: new ids and tokens are random, so no cache
-- can hold anything about them yet.
--
-- Privileges: every function here is revoked from PUBLIC.  lookup(),
-- lookup_many(), mark_keys_used() and record_usage() are SECURITY DEFINER,
-- so the module's role needs only:
--
--     GRANT USAGE ON SCHEMA redisgate TO gateway;
--     GRANT EXECUTE ON FUNCTION redisgate.lookup(text, uuid),
--                               redisgate.lookup_many(text[], uuid[]),
--                               redisgate.mark_keys_used(uuid[]),
--                               redisgate.record_usage(text[], text[],
--                                   bigint[], bigint[], bigint[], bigint[],
--                                   bigint[]) TO gateway;
--
-- and, for the management API, the two SECURITY DEFINER functions it
-- calls (which check who asks; see the end of this file):
--
--     GRANT EXECUTE ON FUNCTION redisgate.manage_lookup(text),
--                               redisgate.manage_request(text, text, uuid,
--                                   text, text, text, text, text) TO gateway;
--
-- Changing a function's result type later needs a DROP FUNCTION first
-- (CREATE OR REPLACE cannot do it).

begin;

set local client_min_messages = warning;

do $$
begin
    -- one apply at a time (an arbitrary key of this schema's own)
    perform pg_advisory_xact_lock(7235441051620012901);
end
$$;

create schema if not exists redisgate;

comment on schema redisgate is
    'RedisGate: plans, organizations, Redis instances and API keys';


-- ---------------------------------------------------------------------------
-- Helpers that the tables use
-- ---------------------------------------------------------------------------

create or replace function redisgate.hosts_problem(
    hosts text, default_port integer, what text)
returns text
language plpgsql immutable parallel safe
as $$
declare
    host text;
begin
    if hosts = '' then
        return format('the address lists no %s', what);
    end if;
    if position('@' in hosts) > 0 then
        return 'the credentials are the instance''s columns, not part of '
               'the address';
    end if;
    foreach host in array string_to_array(hosts, ',') loop
        if host !~ '^([0-9.]+|\[[0-9A-Fa-f:.]+\])(:[0-9]+)?$' then
            return format('%s "%s" is not address[:port] (IPv4, or '
                          'IPv6 in brackets)', what, host);
        end if;
        if host !~ ':[0-9]+$' then
            host := host || ':' || default_port;
        end if;
        if redisgate.redis_address_problem(host) is not null then
            return format('%s "%s": %s', what, host,
                          redisgate.redis_address_problem(host));
        end if;
    end loop;
    return null;
end
$$;

comment on function redisgate.hosts_problem(text, integer, text) is
    'Why a list of sentinels or cluster seeds is malformed, or NULL.';

create or replace function redisgate.sentinel_address_problem(
    hosts text, name text, db text, query text)
returns text
language plpgsql immutable parallel safe
as $$
declare
    problem text;
    param text;
begin
    problem := redisgate.hosts_problem(hosts, 26379, 'sentinel');
    if problem is not null then
        return problem;
    end if;
    if name = '' then
        return 'a sentinel address ends with the primary''s name: '
               'redis-sentinel://address:port,.../name';
    end if;
    if db is not null then
        return 'the database is the instance''s column, not part of the '
               'sentinel address';
    end if;
    if query is not null then
        foreach param in array string_to_array(substr(query, 2), '&') loop
            if param !~ '^sentinel_(user|password)=' then
                return 'a sentinel address takes only '
                       '?sentinel_user=...&sentinel_password=...';
            end if;
        end loop;
    end if;
    return null;
end
$$;

comment on function redisgate.sentinel_address_problem(text, text, text, text) is
    'Why the parts of a redis-sentinel:// address are malformed, or NULL.';

create or replace function redisgate.redis_address_problem(address text)
returns text
language plpgsql immutable parallel safe
as $$
declare
    m text[];
    port integer;
begin
    if address is null or address = '' then
        return 'it is empty';
    end if;
    if address ~ '[[:space:][:cntrl:]]' then
        return 'it contains white space or control characters';
    end if;

    -- the primary that sentinels name: redis-sentinel:// or
    -- rediss-sentinel:// (TLS), sentinels given by address (the module does
    -- not resolve names at run time), the primary's name, and the
    -- sentinels' own credentials if any; the primary's credentials and
    -- database are the instance's columns
    m := regexp_match(address, '^rediss?-sentinel://([^/]*)/([^/?]*)(/[^?]*)?([?].*)?$');
    if m is not null then
        return redisgate.sentinel_address_problem(m[1], m[2], m[3], m[4]);
    end if;
    if address ~ '^rediss?-sentinel:' then
        return 'expected redis-sentinel://address[:port][,address[:port]...]/name';
    end if;

    -- a Redis Cluster: seed nodes by address (port 6379 by default), the
    -- credentials the instance's columns, database 0 only
    m := regexp_match(address, '^rediss?-cluster://([^/?]*)$');
    if m is not null then
        return redisgate.hosts_problem(m[1], 6379, 'seed');
    end if;
    if address ~ '^rediss?-cluster:' then
        return 'expected redis-cluster://address[:port][,address[:port]...]';
    end if;

    -- TLS: rediss:// before host:port or [IPv6]:port, checked as those are
    -- below (a unix socket takes no TLS)
    if left(address, 9) = 'rediss://' then
        address := substr(address, 10);
        if address = '' or left(address, 1) = '/' then
            return 'rediss:// takes host:port or [IPv6 address]:port';
        end if;
    end if;

    -- a unix socket: an absolute path to the socket file
    if left(address, 1) = '/' then
        if octet_length(address) > 107 then
            return 'a unix socket path is at most 107 bytes long';
        end if;
        if right(address, 1) = '/' then
            return 'a unix socket path names the socket file, not a directory';
        end if;
        return null;
    end if;

    if left(address, 1) = '[' then
        m := regexp_match(address, '^\[([0-9A-Fa-f:.]+)\]:([0-9]+)$');
        if m is null then
            return 'expected [IPv6 address]:port';
        end if;
        begin
            if family(m[1]::inet) <> 6 then
                return 'only an IPv6 address goes in brackets';
            end if;
        exception when invalid_text_representation then
            return format('"%s" is not an IPv6 address', m[1]);
        end;
    else
        m := regexp_match(address, '^([^:/\[\]]+):([0-9]+)$');
        if m is null then
            return 'expected host:port, [IPv6 address]:port (either after '
                   'rediss:// for TLS) or an absolute unix socket path';
        end if;
        if m[1] ~ '^[0-9.]+$' then
            if m[1] !~ ('^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])'
                        '(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}$')
            then
                return format('"%s" is not an IPv4 address', m[1]);
            end if;
        elsif length(m[1]) > 253
              or m[1] !~ ('^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?'
                          '(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*$')
        then
            return format('"%s" is not a valid host name', m[1]);
        end if;
    end if;

    if m[2] !~ '^[1-9][0-9]{0,4}$' then
        return 'the port must be a number from 1 to 65535';
    end if;
    port := m[2]::integer;
    if port > 65535 then
        return 'the port must be a number from 1 to 65535';
    end if;
    return null;
end
$$;

comment on function redisgate.redis_address_problem(text) is
    'Why a Redis address is malformed, or NULL when it is fine. Accepted: '
    'host:port, IPv4:port, [IPv6]:port, the same after rediss:// (TLS), '
    'an absolute unix socket path, redis[s]-sentinel://address[:port],'
    '.../name[?sentinel_user=...&sentinel_password=...], or '
    'redis[s]-cluster://address[:port],....';

create or replace function redisgate.token_hash(token text)
returns text
language sql immutable strict parallel safe
as $$
    select encode(sha256(convert_to(token, 'UTF8')), 'hex')
$$;

comment on function redisgate.token_hash(text) is
    'Lower-case hex SHA-256 of a token''s UTF-8 bytes: what api_keys stores '
    'and what lookup() takes.';


-- ---------------------------------------------------------------------------
-- Tables
-- ---------------------------------------------------------------------------

create table if not exists redisgate.plans (
    id                  text primary key
                        check (id ~ '^[a-z0-9][a-z0-9_.-]{0,62}$'),
    requests_per_second integer not null check (requests_per_second > 0),
    burst               integer not null check (burst > 0),
    created_at          timestamptz not null default now()
);

comment on table redisgate.plans is
    'Rate limits: a token bucket per organization, refilled at '
    'requests_per_second, holding at most burst requests';

insert into redisgate.plans (id, requests_per_second, burst)
values ('free', 10, 20),
       ('pro', 1000, 2000),
       ('unlimited', 1000000, 1000000)
on conflict do nothing;

create table if not exists redisgate.organizations (
    id         uuid primary key default gen_random_uuid(),
    name       text not null unique check (btrim(name) <> ''),
    plan_id    text not null references redisgate.plans (id),
    status     text not null default 'active'
               check (status in ('active', 'suspended')),
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

comment on table redisgate.organizations is
    'Tenants: they own instances and keys, and have a plan';

create table if not exists redisgate.instances (
    id              uuid primary key default gen_random_uuid(),
    organization_id uuid not null references redisgate.organizations (id),
    name            text not null check (btrim(name) <> ''),
    redis_address   text not null
                    check (redisgate.redis_address_problem(redis_address)
                           is null),
    redis_db        integer not null default 0 check (redis_db >= 0),
    redis_user      text check (redis_user <> ''),
    redis_password  text check (redis_password <> ''),
    status          text not null default 'active'
                    check (status in ('active', 'suspended')),
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now(),
    deleted_at      timestamptz,
    check (redis_user is null or redis_password is not null)
);

comment on table redisgate.instances is
    'Redis databases served at /redis/<id>; deleted_at marks a soft delete';
comment on column redisgate.instances.redis_address is
    'host:port, IPv4:port, [IPv6]:port, or an absolute unix socket path';
comment on column redisgate.instances.redis_user is
    'Redis ACL user (AUTH user password); NULL: AUTH password, or no AUTH';

create unique index if not exists instances_organization_name
    on redisgate.instances (organization_id, name)
    where deleted_at is null;

create table if not exists redisgate.api_keys (
    id              uuid primary key default gen_random_uuid(),
    organization_id uuid not null references redisgate.organizations (id),
    name            text not null check (btrim(name) <> ''),
    display_prefix  text not null,
    token_sha256    text not null unique
                    check (token_sha256 ~ '^[0-9a-f]{64}$'),
    scopes          text[] not null default '{read,write}'
                    constraint api_keys_scopes_check
                    check (scopes <@ array['read', 'write', 'admin', 'manage']
                           and cardinality(scopes) > 0),
    created_at      timestamptz not null default now(),
    expires_at      timestamptz check (isfinite(expires_at)),
    revoked_at      timestamptz,
    last_used_at    timestamptz,
    rotated_from    uuid references redisgate.api_keys (id)
                    on delete set null
);

comment on table redisgate.api_keys is
    'API keys: only the SHA-256 of each token is stored';
comment on column redisgate.api_keys.token_sha256 is
    'lower-case hex SHA-256 of the token''s UTF-8 bytes';
comment on column redisgate.api_keys.display_prefix is
    'the first 10 characters of the token, to tell keys apart';

create index if not exists api_keys_organization_id
    on redisgate.api_keys (organization_id);

-- a key store from before the scope "manage" (the management API's) takes
-- it too: the scopes check, as it is above
alter table redisgate.api_keys drop constraint if exists api_keys_scopes_check;
alter table redisgate.api_keys add constraint api_keys_scopes_check
    check (scopes <@ array['read', 'write', 'admin', 'manage']
           and cardinality(scopes) > 0);
create index if not exists instances_organization_id
    on redisgate.instances (organization_id);


-- ---------------------------------------------------------------------------
-- Notifications for the module's cache (see the top of this file)
-- ---------------------------------------------------------------------------

create or replace function redisgate.notify_key_change()
returns trigger
language plpgsql
as $$
begin
    if tg_op = 'DELETE' then
        perform pg_notify('redisgate', 'key:' || old.token_sha256);
    elsif (old.organization_id, old.token_sha256, old.scopes,
           old.expires_at, old.revoked_at)
          is distinct from
          (new.organization_id, new.token_sha256, new.scopes,
           new.expires_at, new.revoked_at)
    then
        perform pg_notify('redisgate', 'key:' || old.token_sha256);
        if new.token_sha256 <> old.token_sha256 then
            perform pg_notify('redisgate', 'key:' || new.token_sha256);
        end if;
    end if;
    return null;
end
$$;

create or replace function redisgate.notify_instance_change()
returns trigger
language plpgsql
as $$
begin
    if tg_op = 'DELETE' then
        perform pg_notify('redisgate', 'instance:' || old.id);
    elsif (old.id, old.organization_id, old.redis_address, old.redis_db,
           old.redis_user, old.redis_password, old.status, old.deleted_at)
          is distinct from
          (new.id, new.organization_id, new.redis_address, new.redis_db,
           new.redis_user, new.redis_password, new.status, new.deleted_at)
    then
        perform pg_notify('redisgate', 'instance:' || old.id);
        if new.id <> old.id then
            perform pg_notify('redisgate', 'instance:' || new.id);
        end if;
    end if;
    return null;
end
$$;

create or replace function redisgate.notify_organization_change()
returns trigger
language plpgsql
as $$
begin
    if tg_op = 'DELETE' then
        perform pg_notify('redisgate', 'organization:' || old.id);
    elsif (old.id, old.plan_id, old.status)
          is distinct from (new.id, new.plan_id, new.status)
    then
        perform pg_notify('redisgate', 'organization:' || old.id);
        if new.id <> old.id then
            perform pg_notify('redisgate', 'organization:' || new.id);
        end if;
    end if;
    return null;
end
$$;

create or replace function redisgate.notify_plan_change()
returns trigger
language plpgsql
as $$
begin
    if tg_op = 'DELETE'
       or (old.id, old.requests_per_second, old.burst)
          is distinct from (new.id, new.requests_per_second, new.burst)
    then
        perform pg_notify('redisgate', 'all');
    end if;
    return null;
end
$$;

create or replace function redisgate.notify_all()
returns trigger
language plpgsql
as $$
begin
    perform pg_notify('redisgate', 'all');
    return null;
end
$$;

drop trigger if exists notify on redisgate.api_keys;
create trigger notify after update or delete on redisgate.api_keys
    for each row execute function redisgate.notify_key_change();
drop trigger if exists notify on redisgate.instances;
create trigger notify after update or delete on redisgate.instances
    for each row execute function redisgate.notify_instance_change();
drop trigger if exists notify on redisgate.organizations;
create trigger notify after update or delete on redisgate.organizations
    for each row execute function redisgate.notify_organization_change();
drop trigger if exists notify on redisgate.plans;
create trigger notify after update or delete on redisgate.plans
    for each row execute function redisgate.notify_plan_change();

drop trigger if exists notify_truncate on redisgate.api_keys;
create trigger notify_truncate after truncate on redisgate.api_keys
    for each statement execute function redisgate.notify_all();
drop trigger if exists notify_truncate on redisgate.instances;
create trigger notify_truncate after truncate on redisgate.instances
    for each statement execute function redisgate.notify_all();
drop trigger if exists notify_truncate on redisgate.organizations;
create trigger notify_truncate after truncate on redisgate.organizations
    for each statement execute function redisgate.notify_all();
drop trigger if exists notify_truncate on redisgate.plans;
create trigger notify_truncate after truncate on redisgate.plans
    for each statement execute function redisgate.notify_all();


-- ---------------------------------------------------------------------------
-- What the module calls
-- ---------------------------------------------------------------------------

-- Lookups for many (token hash, instance) pairs in one statement: the
-- module sends the lookups of one event-loop turn together (up to 64), so
-- that a burst of cache misses costs one round trip and one scan, not one
-- each.  The pairs are the arrays' elements at the same position; "pair"
-- is that position (from 1), and a pair without a live key (unknown,
-- revoked or expired) has no row.  lookup() below is this for one pair.
-- PL/pgSQL with a generic plan, not SQL: a SECURITY DEFINER function is
-- never inlined, and an SQL one is planned again on every call, which
-- cost more than the lookups of a batch (about 450 us, against 35 us for
-- a call of one pair and 220 us for 64 with a plan kept); PL/pgSQL keeps
-- its plan for the session (the module's connections are long-lived), and
-- left to choose it would plan again for each new batch size.  The plan
-- is made again when ANALYZE changes the tables' statistics.  Every name
-- in the query is qualified: the output columns are variables here.
create or replace function redisgate.lookup_many(token_sha256 text[],
                                                 instance_id uuid[])
returns table (
    key_id              text,
    organization_id     text,
    scopes              text,
    expires_at          bigint,
    organization_status text,
    instance_status     text,
    redis_address       text,
    redis_db            integer,
    redis_user          text,
    redis_password      text,
    requests_per_second integer,
    burst               integer,
    pair                bigint
)
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    return query
    select k.id::text,
           o.id::text,
           array_to_string(k.scopes, ','),
           coalesce(floor(extract(epoch from k.expires_at))::bigint, 0),
           o.status,
           i.status,
           i.redis_address,
           i.redis_db,
           i.redis_user,
           i.redis_password,
           p.requests_per_second,
           p.burst,
           q.n
      from unnest(lookup_many.token_sha256, lookup_many.instance_id)
           with ordinality as q(hash, instance, n)
      join redisgate.api_keys k on k.token_sha256 = lower(q.hash)
      join redisgate.organizations o on o.id = k.organization_id
      join redisgate.plans p on p.id = o.plan_id
      left join redisgate.instances i
             on i.id = q.instance
            and i.organization_id = k.organization_id
            and i.deleted_at is null
     where k.revoked_at is null
       and (k.expires_at is null or k.expires_at > now());
end
$$;

comment on function redisgate.lookup_many(text[], uuid[]) is
    'lookup() for many pairs at once: token_sha256[n] with instance_id[n], '
    'its row with pair = n (from 1); no row for a pair without a live key. '
    'The module''s default query, up to 64 pairs a call.';

create or replace function redisgate.lookup(token_sha256 text,
                                            instance_id uuid)
returns table (
    key_id              text,
    organization_id     text,
    scopes              text,
    expires_at          bigint,
    organization_status text,
    instance_status     text,
    redis_address       text,
    redis_db            integer,
    redis_user          text,
    redis_password      text,
    requests_per_second integer,
    burst               integer
)
language sql stable security definer
set search_path = pg_catalog, pg_temp
as $$
    -- lookup_many() of one pair: one join for both, so that they agree
    select m.key_id, m.organization_id, m.scopes, m.expires_at,
           m.organization_status, m.instance_status, m.redis_address,
           m.redis_db, m.redis_user, m.redis_password,
           m.requests_per_second, m.burst
      from redisgate.lookup_many(array[$1], array[$2]) m
$$;

comment on function redisgate.lookup(text, uuid) is
    'The module''s query: the live key with this token hash, its '
    'organization and plan, and the instance when it exists and belongs to '
    'the key''s organization (else NULL instance columns). No row: unknown, '
    'revoked or expired key. expires_at: epoch seconds, 0 for never.';

create or replace function redisgate.mark_keys_used(key_ids uuid[])
returns integer
language sql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
    -- rows are locked in id order, so that concurrent calls (several nginx
    -- hosts) cannot deadlock; last_used_at never moves backwards.  The
    -- notify trigger ignores last_used_at: no cache is evicted.
    with locked as (
        select k.id
          from redisgate.api_keys k
         where k.id = any ($1)
           and (k.last_used_at is null or k.last_used_at < now())
         order by k.id
           for no key update
    ), touched as (
        update redisgate.api_keys k
           set last_used_at = greatest(k.last_used_at, now())
          from locked
         where k.id = locked.id
        returning 1
    )
    select count(*)::integer from touched
$$;

comment on function redisgate.mark_keys_used(uuid[]) is
    'Sets last_used_at of these keys to greatest(last_used_at, now()); for '
    'the module to call now and then, in batches. Unknown ids are ignored. '
    'Sends no notification (evicts no cache). Returns the rows touched.';


-- ---------------------------------------------------------------------------
-- Internal checks shared by the management functions
-- ---------------------------------------------------------------------------

create or replace function redisgate.require_organization(org uuid)
returns uuid
language plpgsql stable
as $$
begin
    perform 1 from redisgate.organizations o where o.id = org;
    if not found then
        raise exception 'unknown organization %', coalesce(org::text, 'NULL')
            using errcode = 'no_data_found';
    end if;
    return org;
end
$$;

comment on function redisgate.require_organization(uuid) is
    'Returns the id, or raises "unknown organization".';

create or replace function redisgate.organization_id(ref text)
returns uuid
language plpgsql stable
as $$
declare
    result uuid;
begin
    if ref ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
    then
        select o.id into result
          from redisgate.organizations o where o.id = ref::uuid;
    end if;
    if result is null then
        select o.id into result
          from redisgate.organizations o where o.name = ref;
    end if;
    if result is null then
        raise exception 'unknown organization "%"', coalesce(ref, 'NULL')
            using errcode = 'no_data_found';
    end if;
    return result;
end
$$;

comment on function redisgate.organization_id(text) is
    'An organization''s id from its id or its name; raises when unknown.';

create or replace function redisgate.require_plan(plan text)
returns text
language plpgsql stable
as $$
begin
    perform 1 from redisgate.plans p where p.id = plan;
    if not found then
        raise exception 'unknown plan "%"', coalesce(plan, 'NULL')
            using errcode = 'no_data_found',
                  hint = 'redisgate.list_plans() shows the plans';
    end if;
    return plan;
end
$$;

comment on function redisgate.require_plan(text) is
    'Returns the plan id, or raises "unknown plan".';

create or replace function redisgate.check_redis_address(address text)
returns text
language plpgsql immutable
as $$
declare
    problem text := redisgate.redis_address_problem(address);
begin
    if problem is not null then
        raise exception 'malformed redis_address "%": %',
                        coalesce(address, 'NULL'), problem
            using errcode = 'invalid_parameter_value',
                  hint = 'use host:port, [IPv6]:port, rediss://host:port '
                         '(TLS) or /path/to/redis.sock';
    end if;
    return address;
end
$$;

comment on function redisgate.check_redis_address(text) is
    'Returns the address, or raises "malformed redis_address".';

create or replace function redisgate.normalize_scopes(scopes text[])
returns text[]
language plpgsql immutable
as $$
declare
    s text;
    wanted text[] := '{}';
begin
    if scopes is null or cardinality(scopes) = 0 then
        raise exception 'a key needs at least one scope (read, write, admin, manage)'
            using errcode = 'invalid_parameter_value';
    end if;
    foreach s in array scopes loop
        if s is null
           or lower(btrim(s)) not in ('read', 'write', 'admin', 'manage')
        then
            raise exception 'unknown scope "%": scopes are read, write, admin and manage',
                            coalesce(s, 'NULL')
                using errcode = 'invalid_parameter_value';
        end if;
        wanted := wanted || lower(btrim(s));
    end loop;
    -- canonical order, no duplicates
    return array(select v from unnest(array['read', 'write', 'admin', 'manage'])
                               with ordinality as t(v, n)
                  where v = any (wanted) order by n);
end
$$;

comment on function redisgate.normalize_scopes(text[]) is
    'Scopes in canonical order (read, write, admin, manage) without '
    'duplicates; '
    'raises on an empty list or an unknown scope.';

create or replace function redisgate.new_token()
returns text
language sql volatile
as $$
    select 'rg_' || replace(gen_random_uuid()::text, '-', '')
                 || replace(gen_random_uuid()::text, '-', '')
$$;

comment on function redisgate.new_token() is
    'A new token: rg_ and 64 hex digits from two random UUIDs (244 random '
    'bits).';

create or replace function redisgate.require_name(what text, name text)
returns text
language plpgsql immutable
as $$
begin
    if name is null or btrim(name) = '' then
        raise exception '% name must not be empty', what
            using errcode = 'invalid_parameter_value';
    end if;
    return btrim(name);
end
$$;

comment on function redisgate.require_name(text, text) is
    'The name without surrounding white space; raises when it is empty.';


-- ---------------------------------------------------------------------------
-- Plans and organizations
-- ---------------------------------------------------------------------------

create or replace function redisgate.create_plan(id text,
                                                 requests_per_second integer,
                                                 burst integer)
returns text
language plpgsql
as $$
begin
    if create_plan.id is null
       or create_plan.id !~ '^[a-z0-9][a-z0-9_.-]{0,62}$' then
        raise exception 'bad plan id "%": use up to 63 lower-case letters, '
                        'digits, "_", "-" and "."', coalesce(create_plan.id, 'NULL')
            using errcode = 'invalid_parameter_value';
    end if;
    if create_plan.requests_per_second is null
       or create_plan.requests_per_second < 1 then
        raise exception 'requests_per_second must be 1 or more'
            using errcode = 'invalid_parameter_value';
    end if;
    if create_plan.burst is null or create_plan.burst < 1 then
        raise exception 'burst must be 1 or more'
            using errcode = 'invalid_parameter_value';
    end if;

    insert into redisgate.plans as p (id, requests_per_second, burst)
    values (create_plan.id, create_plan.requests_per_second, create_plan.burst)
    on conflict on constraint plans_pkey do update
       set requests_per_second = excluded.requests_per_second,
           burst = excluded.burst
     where (p.requests_per_second, p.burst)
           is distinct from (excluded.requests_per_second, excluded.burst);

    return create_plan.id;
end
$$;

comment on function redisgate.create_plan(text, integer, integer) is
    'Creates a plan or changes its limits (notifies "all" when they change). '
    'Returns the plan id.';

create or replace function redisgate.create_organization(
    name text, plan_id text default 'free')
returns uuid
language plpgsql
as $$
declare
    org_name text := redisgate.require_name('organization', create_organization.name);
    result uuid;
begin
    perform redisgate.require_plan(create_organization.plan_id);
    perform 1 from redisgate.organizations o where o.name = org_name;
    if found then
        raise exception 'organization "%" already exists', org_name
            using errcode = 'unique_violation';
    end if;
    insert into redisgate.organizations (name, plan_id)
    values (org_name, create_organization.plan_id)
    returning organizations.id into result;
    return result;
end
$$;

comment on function redisgate.create_organization(text, text) is
    'Creates an organization on a plan (default free). Returns its id.';

create or replace function redisgate.set_organization_status(
    organization_id uuid, status text)
returns void
language plpgsql
as $$
begin
    perform redisgate.require_organization(set_organization_status.organization_id);
    if set_organization_status.status is null
       or set_organization_status.status not in ('active', 'suspended') then
        raise exception 'bad organization status "%": active or suspended',
                        coalesce(set_organization_status.status, 'NULL')
            using errcode = 'invalid_parameter_value';
    end if;
    update redisgate.organizations o
       set status = set_organization_status.status, updated_at = now()
     where o.id = set_organization_status.organization_id
       and o.status <> set_organization_status.status;
end
$$;

comment on function redisgate.set_organization_status(uuid, text) is
    'Sets an organization''s status (active or suspended); notifies '
    '"organization:<id>" when it changes.';

create or replace function redisgate.suspend_organization(organization_id uuid)
returns void
language sql
as $$
    select redisgate.set_organization_status($1, 'suspended')
$$;

comment on function redisgate.suspend_organization(uuid) is
    'Suspends an organization: its keys get 403 until it is resumed. '
    'Notifies "organization:<id>".';

create or replace function redisgate.resume_organization(organization_id uuid)
returns void
language sql
as $$
    select redisgate.set_organization_status($1, 'active')
$$;

comment on function redisgate.resume_organization(uuid) is
    'Makes a suspended organization active again. Notifies '
    '"organization:<id>".';

create or replace function redisgate.set_organization_plan(
    organization_id uuid, plan_id text)
returns void
language plpgsql
as $$
begin
    perform redisgate.require_organization(set_organization_plan.organization_id);
    perform redisgate.require_plan(set_organization_plan.plan_id);
    update redisgate.organizations o
       set plan_id = set_organization_plan.plan_id, updated_at = now()
     where o.id = set_organization_plan.organization_id
       and o.plan_id <> set_organization_plan.plan_id;
end
$$;

comment on function redisgate.set_organization_plan(uuid, text) is
    'Moves an organization to another plan. Notifies "organization:<id>".';


-- ---------------------------------------------------------------------------
-- Instances
-- ---------------------------------------------------------------------------

create or replace function redisgate.require_instance(instance_id uuid)
returns uuid
language plpgsql stable
as $$
begin
    perform 1 from redisgate.instances i
     where i.id = require_instance.instance_id and i.deleted_at is null;
    if not found then
        raise exception 'unknown instance %',
                        coalesce(require_instance.instance_id::text, 'NULL')
            using errcode = 'no_data_found';
    end if;
    return require_instance.instance_id;
end
$$;

comment on function redisgate.require_instance(uuid) is
    'Returns the id of a live (not deleted) instance, or raises '
    '"unknown instance".';

create or replace function redisgate.check_cluster_db(address text,
    db integer)
returns void
language plpgsql immutable
as $$
begin
    if address ~ '^rediss?-cluster:' and db <> 0 then
        raise exception 'a Redis Cluster has database 0 only'
            using errcode = 'invalid_parameter_value';
    end if;
end
$$;

comment on function redisgate.check_cluster_db(text, integer) is
    'Raises unless a cluster address goes with database 0.';

create or replace function redisgate.create_instance(
    organization_id uuid,
    name text,
    redis_address text,
    redis_db integer default 0,
    redis_user text default null,
    redis_password text default null)
returns uuid
language plpgsql
as $$
declare
    inst_name text := redisgate.require_name('instance', create_instance.name);
    usr text := nullif(create_instance.redis_user, '');
    pass text := nullif(create_instance.redis_password, '');
    result uuid;
begin
    perform redisgate.require_organization(create_instance.organization_id);
    perform redisgate.check_redis_address(create_instance.redis_address);
    if create_instance.redis_db is null or create_instance.redis_db < 0 then
        raise exception 'redis_db must be 0 or more'
            using errcode = 'invalid_parameter_value';
    end if;
    perform redisgate.check_cluster_db(create_instance.redis_address,
                                       create_instance.redis_db);
    if usr is not null and pass is null then
        raise exception 'a redis_user needs a redis_password'
            using errcode = 'invalid_parameter_value';
    end if;
    perform 1 from redisgate.instances i
     where i.organization_id = create_instance.organization_id
       and i.name = inst_name and i.deleted_at is null;
    if found then
        raise exception 'organization % already has an instance named "%"',
                        create_instance.organization_id, inst_name
            using errcode = 'unique_violation';
    end if;

    insert into redisgate.instances (organization_id, name, redis_address,
                                     redis_db, redis_user, redis_password)
    values (create_instance.organization_id, inst_name,
            create_instance.redis_address, create_instance.redis_db, usr, pass)
    returning instances.id into result;
    return result;
end
$$;

comment on function redisgate.create_instance(uuid, text, text, integer,
                                               text, text) is
    'Creates an instance of an organization: a Redis address (host:port, '
    '[IPv6]:port or /path/to/redis.sock), database and optional '
    'credentials. Returns its id, the one in /redis/<id>.';

create or replace function redisgate.update_instance(
    instance_id uuid,
    redis_address text default null,
    redis_db integer default null,
    redis_user text default null,
    redis_password text default null)
returns void
language plpgsql
as $$
declare
    cur redisgate.instances;
    usr text;
    pass text;
begin
    perform redisgate.require_instance(update_instance.instance_id);
    select * into cur from redisgate.instances i
     where i.id = update_instance.instance_id for update;

    if update_instance.redis_address is not null then
        perform redisgate.check_redis_address(update_instance.redis_address);
    end if;
    if update_instance.redis_db < 0 then
        raise exception 'redis_db must be 0 or more'
            using errcode = 'invalid_parameter_value';
    end if;
    perform redisgate.check_cluster_db(
        coalesce(update_instance.redis_address, cur.redis_address),
        coalesce(update_instance.redis_db, cur.redis_db));
    -- NULL keeps the current value, '' removes it
    usr := case when update_instance.redis_user is null then cur.redis_user
                else nullif(update_instance.redis_user, '') end;
    pass := case when update_instance.redis_password is null
                 then cur.redis_password
                 else nullif(update_instance.redis_password, '') end;
    if usr is not null and pass is null then
        raise exception 'a redis_user needs a redis_password'
            using errcode = 'invalid_parameter_value';
    end if;

    update redisgate.instances i
       set redis_address = coalesce(update_instance.redis_address,
                                    i.redis_address),
           redis_db = coalesce(update_instance.redis_db, i.redis_db),
           redis_user = usr,
           redis_password = pass,
           updated_at = now()
     where i.id = update_instance.instance_id
       and (coalesce(update_instance.redis_address, i.redis_address),
            coalesce(update_instance.redis_db, i.redis_db), usr, pass)
           is distinct from
           (i.redis_address, i.redis_db, i.redis_user, i.redis_password);
end
$$;

comment on function redisgate.update_instance(uuid, text, integer, text,
                                               text) is
    'Changes an instance''s Redis address, database or credentials. NULL '
    'keeps a value; an empty string removes redis_user or redis_password. '
    'Notifies "instance:<id>" when something changed.';

create or replace function redisgate.set_instance_status(instance_id uuid,
                                                         status text)
returns void
language plpgsql
as $$
begin
    perform redisgate.require_instance(set_instance_status.instance_id);
    if set_instance_status.status is null
       or set_instance_status.status not in ('active', 'suspended') then
        raise exception 'bad instance status "%": active or suspended',
                        coalesce(set_instance_status.status, 'NULL')
            using errcode = 'invalid_parameter_value';
    end if;
    update redisgate.instances i
       set status = set_instance_status.status, updated_at = now()
     where i.id = set_instance_status.instance_id
       and i.status <> set_instance_status.status;
end
$$;

comment on function redisgate.set_instance_status(uuid, text) is
    'Sets an instance''s status (active or suspended); notifies '
    '"instance:<id>" when it changes.';

create or replace function redisgate.suspend_instance(instance_id uuid)
returns void
language sql
as $$
    select redisgate.set_instance_status($1, 'suspended')
$$;

comment on function redisgate.suspend_instance(uuid) is
    'Suspends an instance until it is resumed. Notifies "instance:<id>".';

create or replace function redisgate.resume_instance(instance_id uuid)
returns void
language sql
as $$
    select redisgate.set_instance_status($1, 'active')
$$;

comment on function redisgate.resume_instance(uuid) is
    'Makes a suspended instance active again. Notifies "instance:<id>".';

create or replace function redisgate.delete_instance(instance_id uuid)
returns void
language plpgsql
as $$
begin
    perform 1 from redisgate.instances i
     where i.id = delete_instance.instance_id;
    if not found then
        raise exception 'unknown instance %',
                        coalesce(delete_instance.instance_id::text, 'NULL')
            using errcode = 'no_data_found';
    end if;
    update redisgate.instances i
       set deleted_at = now(), updated_at = now()
     where i.id = delete_instance.instance_id and i.deleted_at is null;
end
$$;

comment on function redisgate.delete_instance(uuid) is
    'Deletes an instance (soft: sets deleted_at; its name can be reused). '
    'Deleting it again does nothing. Notifies "instance:<id>".';


-- ---------------------------------------------------------------------------
-- Keys
-- ---------------------------------------------------------------------------

create or replace function redisgate.create_key(
    organization_id uuid,
    name text,
    scopes text[] default '{read,write}',
    expires_at timestamptz default null)
returns table (key_id uuid, token text)
language plpgsql
as $$
declare
    key_name text := redisgate.require_name('key', create_key.name);
    key_scopes text[] := redisgate.normalize_scopes(create_key.scopes);
    new_token text := redisgate.new_token();
begin
    perform redisgate.require_organization(create_key.organization_id);
    if create_key.expires_at is not null
       and (not isfinite(create_key.expires_at)
            or create_key.expires_at <= now()) then
        raise exception 'expires_at must be a time in the future'
            using errcode = 'invalid_parameter_value';
    end if;

    insert into redisgate.api_keys as k (organization_id, name,
                                         display_prefix, token_sha256,
                                         scopes, expires_at)
    values (create_key.organization_id, key_name, left(new_token, 10),
            redisgate.token_hash(new_token), key_scopes, create_key.expires_at)
    returning k.id into key_id;
    token := new_token;
    return next;
end
$$;

comment on function redisgate.create_key(uuid, text, text[], timestamptz) is
    'Creates an API key with scopes (read, write, admin, manage) and an optional '
    'expiry. Returns its id and its token: the only time the token exists '
    'anywhere; the database keeps its SHA-256.';

create or replace function redisgate.require_key(key_id uuid)
returns redisgate.api_keys
language plpgsql
as $$
declare
    result redisgate.api_keys;
begin
    select * into result from redisgate.api_keys k
     where k.id = require_key.key_id for update;
    if not found then
        raise exception 'unknown key %', coalesce(require_key.key_id::text, 'NULL')
            using errcode = 'no_data_found';
    end if;
    return result;
end
$$;

comment on function redisgate.require_key(uuid) is
    'The key''s row, locked for update; raises "unknown key".';

create or replace function redisgate.revoke_key(key_id uuid)
returns void
language plpgsql
as $$
begin
    perform redisgate.require_key(revoke_key.key_id);
    update redisgate.api_keys k
       set revoked_at = now()
     where k.id = revoke_key.key_id and k.revoked_at is null;
end
$$;

comment on function redisgate.revoke_key(uuid) is
    'Revokes a key for good (revoking it again does nothing). Notifies '
    '"key:<token_sha256>".';

create or replace function redisgate.set_key_expiry(key_id uuid,
                                                    expires_at timestamptz)
returns void
language plpgsql
as $$
declare
    cur redisgate.api_keys := redisgate.require_key(set_key_expiry.key_id);
begin
    if cur.revoked_at is not null then
        raise exception 'key % is revoked', set_key_expiry.key_id
            using errcode = 'invalid_parameter_value';
    end if;
    if not isfinite(set_key_expiry.expires_at) then
        raise exception 'expires_at must be a finite time (NULL: never)'
            using errcode = 'invalid_parameter_value';
    end if;
    update redisgate.api_keys k
       set expires_at = set_key_expiry.expires_at
     where k.id = set_key_expiry.key_id
       and k.expires_at is distinct from set_key_expiry.expires_at;
end
$$;

comment on function redisgate.set_key_expiry(uuid, timestamptz) is
    'Sets when a key stops working (NULL: never; a past time: now). '
    'Notifies "key:<token_sha256>".';

create or replace function redisgate.rotate_key(old_key_id uuid,
                                                grace interval
                                                    default '1 hour')
returns table (key_id uuid, token text)
language plpgsql
as $$
declare
    prev redisgate.api_keys := redisgate.require_key(rotate_key.old_key_id);
    new_token text := redisgate.new_token();
begin
    if prev.revoked_at is not null then
        raise exception 'key % is revoked', rotate_key.old_key_id
            using errcode = 'invalid_parameter_value';
    end if;
    if prev.expires_at is not null and prev.expires_at <= now() then
        raise exception 'key % has expired', rotate_key.old_key_id
            using errcode = 'invalid_parameter_value';
    end if;
    if rotate_key.grace is null or rotate_key.grace < interval '0' then
        raise exception 'grace must be an interval of 0 or more'
            using errcode = 'invalid_parameter_value';
    end if;

    insert into redisgate.api_keys as k (organization_id, name,
                                         display_prefix, token_sha256,
                                         scopes, expires_at, rotated_from)
    values (prev.organization_id, prev.name, left(new_token, 10),
            redisgate.token_hash(new_token), prev.scopes, prev.expires_at,
            prev.id)
    returning k.id into key_id;

    -- the old key keeps working for the grace period, never longer than
    -- it would have anyway
    update redisgate.api_keys k
       set expires_at = least(k.expires_at, now() + rotate_key.grace)
     where k.id = prev.id;

    token := new_token;
    return next;
end
$$;

comment on function redisgate.rotate_key(uuid, interval) is
    'Replaces a key: a new key with the same organization, name, scopes and '
    'expiry; the old one keeps working for the grace period (default 1 '
    'hour). Returns the new id and token. Notifies "key:<old token_sha256>".';


-- ---------------------------------------------------------------------------
-- Listings (never tokens, hashes or passwords)
-- ---------------------------------------------------------------------------

create or replace function redisgate.list_plans()
returns table (id text, requests_per_second integer, burst integer,
               organizations bigint, created_at timestamptz)
language sql stable
as $$
    select p.id, p.requests_per_second, p.burst,
           (select count(*) from redisgate.organizations o
             where o.plan_id = p.id),
           p.created_at
      from redisgate.plans p
     order by p.requests_per_second, p.id
$$;

comment on function redisgate.list_plans() is
    'Plans, with how many organizations are on each.';

create or replace function redisgate.list_organizations()
returns table (id uuid, name text, plan_id text, status text,
               instances bigint, keys bigint,
               created_at timestamptz, updated_at timestamptz)
language sql stable
as $$
    select o.id, o.name, o.plan_id, o.status,
           (select count(*) from redisgate.instances i
             where i.organization_id = o.id and i.deleted_at is null),
           (select count(*) from redisgate.api_keys k
             where k.organization_id = o.id and k.revoked_at is null
               and (k.expires_at is null or k.expires_at > now())),
           o.created_at, o.updated_at
      from redisgate.organizations o
     order by o.name
$$;

comment on function redisgate.list_organizations() is
    'Organizations, with their live instances and usable keys counted.';

create or replace function redisgate.list_instances(
    organization_id uuid, include_deleted boolean default false)
returns table (id uuid, name text, redis_address text, redis_db integer,
               redis_user text, has_password boolean, status text,
               created_at timestamptz, updated_at timestamptz,
               deleted_at timestamptz)
language sql stable
as $$
    select i.id, i.name, i.redis_address, i.redis_db, i.redis_user,
           i.redis_password is not null, i.status,
           i.created_at, i.updated_at, i.deleted_at
      from redisgate.require_organization($1) as org(id)
      join redisgate.instances i on i.organization_id = org.id
     where $2 or i.deleted_at is null
     order by i.name, i.created_at
$$;

comment on function redisgate.list_instances(uuid, boolean) is
    'An organization''s instances (deleted ones too when asked), without '
    'passwords.';

create or replace function redisgate.list_keys(organization_id uuid)
returns table (id uuid, name text, display_prefix text, scopes text[],
               state text, created_at timestamptz, expires_at timestamptz,
               revoked_at timestamptz, last_used_at timestamptz,
               rotated_from uuid)
language sql stable
as $$
    select k.id, k.name, k.display_prefix, k.scopes,
           case when k.revoked_at is not null then 'revoked'
                when k.expires_at <= now() then 'expired'
                else 'active' end,
           k.created_at, k.expires_at, k.revoked_at, k.last_used_at,
           k.rotated_from
      from redisgate.require_organization($1) as org(id)
      join redisgate.api_keys k on k.organization_id = org.id
     order by k.created_at, k.id
$$;

comment on function redisgate.list_keys(uuid) is
    'An organization''s keys (state: active, expired or revoked), without '
    'tokens or hashes.';


-- ---------------------------------------------------------------------------
-- Usage accounting (see docs/usage.md)
-- ---------------------------------------------------------------------------

-- The ids are text, without foreign keys: organizations and instances of
-- nginx.conf have names, those of the key store UUIDs (as text, lower case).
create table if not exists redisgate.usage_minutes (
    organization_id text not null,
    instance_id     text not null,
    minute          timestamptz not null,
    requests        bigint not null default 0,
    commands        bigint not null default 0,
    bytes_in        bigint not null default 0,
    bytes_out       bigint not null default 0,
    primary key (organization_id, instance_id, minute)
);

comment on table redisgate.usage_minutes is
    'Usage per organization, instance and minute, as the module counts it '
    '(redisgate.record_usage adds to it). Ids are the module''s text: a '
    'UUID for the key store, a name for nginx.conf.';
comment on column redisgate.usage_minutes.minute is
    'the start of the minute (whole minutes, UTC)';
comment on column redisgate.usage_minutes.requests is
    'HTTP requests answered for this instance';
comment on column redisgate.usage_minutes.commands is
    'Redis commands sent (each command of a pipeline counts)';
comment on column redisgate.usage_minutes.bytes_in is
    'request bytes (request line, headers and body)';
comment on column redisgate.usage_minutes.bytes_out is
    'response body bytes';

create index if not exists usage_minutes_organization_minute
    on redisgate.usage_minutes (organization_id, minute);

create or replace function redisgate.record_usage(
    organization_ids text[],
    instance_ids text[],
    minutes bigint[],
    requests bigint[],
    commands bigint[],
    bytes_in bigint[],
    bytes_out bigint[])
returns integer
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    n integer := cardinality(record_usage.organization_ids);
    touched integer;
begin
    if record_usage.organization_ids is null
       or record_usage.instance_ids is null or record_usage.minutes is null
       or record_usage.requests is null or record_usage.commands is null
       or record_usage.bytes_in is null or record_usage.bytes_out is null then
        raise exception 'record_usage: an array is NULL'
            using errcode = 'null_value_not_allowed';
    end if;
    if cardinality(record_usage.instance_ids) <> n
       or cardinality(record_usage.minutes) <> n
       or cardinality(record_usage.requests) <> n
       or cardinality(record_usage.commands) <> n
       or cardinality(record_usage.bytes_in) <> n
       or cardinality(record_usage.bytes_out) <> n then
        raise exception 'record_usage: the arrays differ in length '
                        '(organization_ids %, instance_ids %, minutes %, '
                        'requests %, commands %, bytes_in %, bytes_out %)',
                        n, cardinality(record_usage.instance_ids),
                        cardinality(record_usage.minutes),
                        cardinality(record_usage.requests),
                        cardinality(record_usage.commands),
                        cardinality(record_usage.bytes_in),
                        cardinality(record_usage.bytes_out)
            using errcode = 'invalid_parameter_value';
    end if;
    if n = 0 then
        return 0;
    end if;
    if exists (select
                 from unnest(record_usage.organization_ids,
                             record_usage.instance_ids,
                             record_usage.minutes) as u(o, i, m)
                where o is null or o = '' or i is null or i = ''
                   or m is null) then
        raise exception 'record_usage: an organization id, instance id or '
                        'minute is NULL or empty'
            using errcode = 'null_value_not_allowed';
    end if;
    if exists (select
                 from unnest(record_usage.requests, record_usage.commands,
                             record_usage.bytes_in,
                             record_usage.bytes_out) as u(r, c, bi, bo)
                where r < 0 or c < 0 or bi < 0 or bo < 0) then
        raise exception 'record_usage: a count is negative'
            using errcode = 'invalid_parameter_value';
    end if;

    -- one row per key (ON CONFLICT cannot touch a row twice), inserted in
    -- key order (concurrent calls wait for each other instead of
    -- deadlocking); counts are added, never overwritten
    with batch as (
        select u.o, u.i,
               -- the start of the minute, should a time not be one
               to_timestamp(u.m - ((u.m % 60) + 60) % 60) as minute,
               sum(coalesce(u.r, 0))::bigint as r,
               sum(coalesce(u.c, 0))::bigint as c,
               sum(coalesce(u.bi, 0))::bigint as bi,
               sum(coalesce(u.bo, 0))::bigint as bo
          from unnest(record_usage.organization_ids,
                      record_usage.instance_ids, record_usage.minutes,
                      record_usage.requests, record_usage.commands,
                      record_usage.bytes_in, record_usage.bytes_out)
               as u(o, i, m, r, c, bi, bo)
         group by 1, 2, 3
    ), written as (
        insert into redisgate.usage_minutes as t
               (organization_id, instance_id, minute,
                requests, commands, bytes_in, bytes_out)
        select b.o, b.i, b.minute, b.r, b.c, b.bi, b.bo
          from batch b
         order by b.o, b.i, b.minute
        on conflict (organization_id, instance_id, minute) do update
           set requests = t.requests + excluded.requests,
               commands = t.commands + excluded.commands,
               bytes_in = t.bytes_in + excluded.bytes_in,
               bytes_out = t.bytes_out + excluded.bytes_out
        returning 1
    )
    select count(*) into touched from written;
    return touched;
end
$$;

comment on function redisgate.record_usage(text[], text[], bigint[],
                                           bigint[], bigint[], bigint[],
                                           bigint[]) is
    'The module''s usage write: parallel arrays of organization id, '
    'instance id, minute (epoch seconds, a multiple of 60), requests, '
    'commands, bytes in and bytes out, added to usage_minutes (never '
    'overwritten; rows repeated in a batch are summed). Raises when the '
    'arrays differ in length. Returns the rows touched.';

create or replace view redisgate.usage_daily as
    select u.organization_id,
           u.instance_id,
           (u.minute at time zone 'UTC')::date as day,
           sum(u.requests)::bigint as requests,
           sum(u.commands)::bigint as commands,
           sum(u.bytes_in)::bigint as bytes_in,
           sum(u.bytes_out)::bigint as bytes_out
      from redisgate.usage_minutes u
     group by 1, 2, 3;

comment on view redisgate.usage_daily is
    'Usage per organization, instance and day (UTC).';

create or replace function redisgate.usage_for_organization(
    org text,
    from_time timestamptz default null,
    to_time timestamptz default null)
returns table (instance_id text, requests bigint, commands bigint,
               bytes_in bigint, bytes_out bigint)
language sql stable
as $$
    select u.instance_id,
           sum(u.requests)::bigint,
           sum(u.commands)::bigint,
           sum(u.bytes_in)::bigint,
           sum(u.bytes_out)::bigint
      from redisgate.usage_minutes u
     where u.organization_id = $1
       and u.minute >= coalesce($2, '-infinity')
       and u.minute < coalesce($3, 'infinity')
     group by u.instance_id
     order by u.instance_id
$$;

comment on function redisgate.usage_for_organization(text, timestamptz,
                                                     timestamptz) is
    'An organization''s usage per instance, over the minutes that start in '
    '[from_time, to_time) (NULL: no bound). org is the id as usage_minutes '
    'holds it: the UUID text for the key store, the name for nginx.conf.';

create or replace function redisgate.prune_usage(older_than interval)
returns bigint
language plpgsql volatile
as $$
declare
    deleted bigint;
begin
    if prune_usage.older_than is null
       or prune_usage.older_than < interval '0' then
        raise exception 'older_than must be an interval of 0 or more'
            using errcode = 'invalid_parameter_value';
    end if;
    delete from redisgate.usage_minutes u
     where u.minute < now() - prune_usage.older_than;
    get diagnostics deleted = row_count;
    return deleted;
end
$$;

comment on function redisgate.prune_usage(interval) is
    'Deletes the usage minutes that started more than older_than ago. '
    'Returns the rows deleted.';


-- ---------------------------------------------------------------------------
-- The management API (docs/manage.md): what the module's redisgate_manage
-- location asks of the key store.  The module authenticates the caller
-- (manage_lookup() for an organization's key with the scope manage, or an
-- operator key of nginx.conf), then hands each request to manage_request(),
-- which answers it in one transaction: the change, through the functions
-- above (those redisgate-admin uses), and its audit row together.
-- ---------------------------------------------------------------------------

create table if not exists redisgate.audit_log (
    id              bigint generated always as identity primary key,
    at              timestamptz not null default now(),
    organization_id uuid,
    actor_kind      text not null check (actor_kind in ('key', 'operator')),
    actor_id        text not null,
    address         text,
    action          text not null,
    target_id       text,
    details         jsonb not null default '{}'
);

comment on table redisgate.audit_log is
    'Every change made through the management API: who (an organization''s '
    'key, or an operator of nginx.conf), what, on which id, when, from '
    'which address; written in the same transaction as the change.';

create index if not exists audit_log_organization_id
    on redisgate.audit_log (organization_id, id);

create or replace function redisgate.manage_lookup(token_sha256 text)
returns table (key_id text, organization_id text, manager boolean,
               requests_per_second integer, burst integer)
language sql stable security definer
set search_path = pg_catalog, pg_temp
as $$
    select k.id::text, o.id::text,
           'manage' = any (k.scopes) and o.status = 'active',
           p.requests_per_second, p.burst
      from redisgate.api_keys k
      join redisgate.organizations o on o.id = k.organization_id
      join redisgate.plans p on p.id = o.plan_id
     where k.token_sha256 = lower($1)
       and k.revoked_at is null
       and (k.expires_at is null or k.expires_at > now())
$$;

comment on function redisgate.manage_lookup(text) is
    'The management API''s caller: the live key with this token hash, '
    'whether it may manage (the scope manage, an active organization), and '
    'its plan''s limits (for the live rate-limit state). No row: an '
    'unknown, revoked or expired key (401); manager false: 403.';

-- an answer of manage_request(): a status, a JSON body (NULL: none)
create or replace function redisgate.manage_answer(status integer,
                                                   body jsonb,
                                                   allow text default null)
returns table (status integer, response text, allow text)
language sql immutable
as $$
    select $1, case when $2 is null then null else $2::text end, $3
$$;

comment on function redisgate.manage_answer(integer, jsonb, text) is
    'A manage_request() answer: a status, a JSON body (NULL: none), and the '
    'Allow header of a 405.';

create or replace function redisgate.manage_error(status integer,
                                                  message text,
                                                  allow text default null)
returns table (status integer, response text, allow text)
language sql immutable
as $$
    select $1, jsonb_build_object('error', $2)::text, $3
$$;

comment on function redisgate.manage_error(integer, text, text) is
    'A manage_request() answer with {"error": message}.';

-- %XX sequences (and '+' for a space) decoded, as UTF-8
create or replace function redisgate.percent_decode(s text)
returns text
language plpgsql immutable
as $$
declare
    bytes bytea := '';
    i integer := 1;
    c text;
begin
    while i <= length(s) loop
        c := substr(s, i, 1);
        if c = '%' and substr(s, i + 1, 2) ~ '^[0-9A-Fa-f]{2}$' then
            bytes := bytes || decode(substr(s, i + 1, 2), 'hex');
            i := i + 3;
        else
            bytes := bytes || convert_to(case when c = '+' then ' ' else c end,
                                         'UTF8');
            i := i + 1;
        end if;
    end loop;
    return convert_from(bytes, 'UTF8');
end
$$;

comment on function redisgate.percent_decode(text) is
    'A query string''s value decoded: %XX sequences, + for a space, UTF-8.';

-- a query string's parameter, decoded; NULL when it is absent
create or replace function redisgate.manage_param(query text, name text)
returns text
language plpgsql immutable
as $$
declare
    pair text;
begin
    foreach pair in array string_to_array(coalesce(query, ''), '&') loop
        if split_part(pair, '=', 1) = name then
            return redisgate.percent_decode(substr(pair, length(name) + 2));
        end if;
    end loop;
    return null;
end
$$;

comment on function redisgate.manage_param(text, text) is
    'The decoded value of a query string''s parameter; NULL when absent.';

-- the body's fields, each one allowed; raises naming the first other
create or replace function redisgate.manage_fields(body jsonb,
                                                   allowed text[])
returns jsonb
language plpgsql immutable
as $$
declare
    f text;
begin
    if jsonb_typeof(body) <> 'object' then
        raise exception 'the body must be a JSON object'
            using errcode = 'invalid_parameter_value';
    end if;
    for f in select jsonb_object_keys(body) loop
        if not f = any (allowed) then
            raise exception 'unknown field "%"', f
                using errcode = 'invalid_parameter_value';
        end if;
    end loop;
    return body;
end
$$;

comment on function redisgate.manage_fields(jsonb, text[]) is
    'The body, when it is an object of allowed fields only; else raises, '
    'naming the first field not allowed.';

-- a key as the API shows it: never its token or hash
create or replace function redisgate.manage_key_json(k redisgate.api_keys)
returns jsonb
language sql stable
as $$
    select jsonb_build_object(
        'id', k.id, 'organization', k.organization_id, 'name', k.name,
        'display_prefix', k.display_prefix, 'scopes', to_jsonb(k.scopes),
        'state', case when k.revoked_at is not null then 'revoked'
                      when k.expires_at <= now() then 'expired'
                      else 'active' end,
        'created_at', k.created_at, 'expires_at', k.expires_at,
        'last_used_at', k.last_used_at, 'revoked_at', k.revoked_at,
        'rotated_from', k.rotated_from)
$$;

comment on function redisgate.manage_key_json(redisgate.api_keys) is
    'A key as the management API shows it: never its token or its hash.';

-- a page of a list: limit (default 100, at most 1000) and cursor (the last
-- id of the page before, opaque to clients)
create or replace function redisgate.manage_limit(query text)
returns integer
language plpgsql immutable
as $$
declare
    v text := redisgate.manage_param(query, 'limit');
begin
    if v is null then
        return 100;
    end if;
    if v !~ '^[0-9]{1,4}$' or v::integer < 1 or v::integer > 1000 then
        raise exception 'bad limit "%": 1 to 1000', v
            using errcode = 'invalid_parameter_value';
    end if;
    return v::integer;
end
$$;

comment on function redisgate.manage_limit(text) is
    'A list''s page size from ?limit= (default 100, 1 to 1000).';

-- a page of a list: the first lim of page (lim + 1 rows, in order), and
-- the cursor to the next when there is one (the last one's id)
create or replace function redisgate.manage_page(page jsonb, lim integer)
returns jsonb
language sql immutable
as $$
    select jsonb_build_object(
        'data', (select coalesce(jsonb_agg(e order by n), '[]')
                   from jsonb_array_elements($1) with ordinality t(e, n)
                  where n <= $2),
        'next', case when jsonb_array_length($1) > $2
                     then $1 -> ($2 - 1) -> 'id' end)
$$;

comment on function redisgate.manage_page(jsonb, integer) is
    'A list''s answer: {"data": the first lim rows, "next": the cursor or '
    'null}.';

-- the organization a list is of: the manager's own; an operator names it
-- (?organization=)
create or replace function redisgate.manage_list_org(actor_kind text,
    actor_org uuid, query text)
returns uuid
language plpgsql immutable
as $$
declare
    org uuid := actor_org;
begin
    if actor_kind = 'operator' then
        org := redisgate.manage_param(query, 'organization')::uuid;
        if org is null then
            raise exception 'an operator names the organization: '
                            '?organization=<id>'
                using errcode = 'invalid_parameter_value';
        end if;
    end if;
    return org;
end
$$;

comment on function redisgate.manage_list_org(text, uuid, text) is
    'The organization of a list: the manager''s own, or the one an '
    'operator names with ?organization=.';

-- the organization something is made in: the manager's own (naming
-- another is refused); an operator names it ("organization")
create or replace function redisgate.manage_body_org(actor_kind text,
    actor_org uuid, b jsonb)
returns uuid
language plpgsql immutable
as $$
declare
    org uuid := actor_org;
begin
    if actor_kind = 'operator' then
        org := (b ->> 'organization')::uuid;
        if org is null then
            raise exception 'organization: required for an operator'
                using errcode = 'invalid_parameter_value';
        end if;
    elsif b ? 'organization'
          and (b ->> 'organization') is distinct from actor_org::text
    then
        raise exception 'Forbidden: organization: a manager acts on its own '
                        'organization only'
            using errcode = 'insufficient_privilege';
    end if;
    return org;
end
$$;

comment on function redisgate.manage_body_org(text, uuid, jsonb) is
    'The organization a body makes something in: the manager''s own, or '
    'the one an operator names; a manager naming another is refused (403).';

-- a body's "status": active or suspended
create or replace function redisgate.manage_status(b jsonb)
returns text
language plpgsql immutable
as $$
begin
    if jsonb_typeof(b -> 'status') is distinct from 'string'
       or (b ->> 'status') not in ('active', 'suspended')
    then
        raise exception 'status: "active" or "suspended"'
            using errcode = 'invalid_parameter_value';
    end if;
    return b ->> 'status';
end
$$;

comment on function redisgate.manage_status(jsonb) is
    'A body''s status, active or suspended; else raises naming the field.';

-- an id of a path, when it is shaped as one (else no such thing: 404)
create or replace function redisgate.manage_id(seg text)
returns uuid
language sql immutable
as $$
    select case when $1 ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
                then $1::uuid end
$$;

comment on function redisgate.manage_id(text) is
    'A path segment as an id, or NULL when it is not shaped as a UUID.';

-- an instance as the API shows it: its address as a URL, never a password
create or replace function redisgate.manage_instance_json(i redisgate.instances)
returns jsonb
language sql stable
as $$
    select jsonb_build_object(
        'id', i.id, 'organization', i.organization_id, 'name', i.name,
        'address', case when i.redis_address ~ '^[a-z-]+://'
                        then i.redis_address
                        when left(i.redis_address, 1) = '/'
                        then 'unix://' || i.redis_address
                        else 'redis://' || i.redis_address end
                   || case when i.redis_address ~ '^rediss?-cluster://'
                             or i.redis_db = 0 then ''
                           when i.redis_address ~ '^rediss?-sentinel://'
                             or left(i.redis_address, 1) = '/'
                           then '?db=' || i.redis_db
                           else '/' || i.redis_db end,
        'db', i.redis_db, 'user', i.redis_user,
        'has_password', i.redis_password is not null,
        'status', i.status, 'created_at', i.created_at,
        'updated_at', i.updated_at)
$$;

comment on function redisgate.manage_instance_json(redisgate.instances) is
    'An instance as the management API shows it: its address as a URL, '
    'the user, whether there is a password (never the password).';

-- a Redis URL of the API split into what create_instance() takes:
-- redis://[user[:password]@]host:port[/db], rediss://... (TLS), the
-- sentinel and cluster forms (their credentials in the userinfo, the
-- database as ?db=N), unix:///path/to/redis.sock[?db=N]
create or replace function redisgate.manage_parse_url(url text,
    out address text, out db integer, out redis_user text,
    out redis_password text)
language plpgsql immutable
as $$
declare
    m text[];
    scheme text;
    userinfo text;
    rest text;
    q text;
begin
    m := regexp_match(coalesce(url, ''),
                      '^(redis|rediss|redis-sentinel|rediss-sentinel|'
                      'redis-cluster|rediss-cluster|unix)://'
                      '(?:([^@/]*)@)?([^?]*)(?:\?(.*))?$');
    if m is null then
        raise exception 'address: not a Redis URL (redis://host:port/db, '
                        'rediss://..., redis-sentinel://..., '
                        'redis-cluster://..., unix:///path)'
            using errcode = 'invalid_parameter_value';
    end if;
    scheme := m[1];
    userinfo := m[2];
    rest := m[3];
    q := m[4];
    db := 0;

    if userinfo is not null then
        if position(':' in userinfo) > 0 then
            redis_user := nullif(redisgate.percent_decode(
                                     split_part(userinfo, ':', 1)), '');
            redis_password := redisgate.percent_decode(
                                  substr(userinfo,
                                         position(':' in userinfo) + 1));
        else
            redis_password := redisgate.percent_decode(userinfo);
        end if;
    end if;

    if q is not null then
        if q !~ '^db=[0-9]{1,9}$' then
            raise exception 'address: the only query is ?db=<number>'
                using errcode = 'invalid_parameter_value';
        end if;
        db := substr(q, 4)::integer;
    end if;

    if scheme in ('redis', 'rediss') then
        m := regexp_match(rest, '^([^/]+)(?:/([0-9]{1,9}))?/?$');
        if m is null then
            raise exception 'address: redis://host:port[/db]'
                using errcode = 'invalid_parameter_value';
        end if;
        address := case when scheme = 'rediss' then 'rediss://' else '' end
                   || m[1];
        if m[2] is not null then
            db := m[2]::integer;
        end if;
    elsif scheme = 'unix' then
        address := rest;
    else
        address := scheme || '://' || rest;
    end if;

    perform redisgate.check_redis_address(address);
end
$$;

comment on function redisgate.manage_parse_url(text) is
    'A Redis URL of the management API as create_instance() takes it: '
    'address, database, user and password.';

create or replace function redisgate.manage_audit(actor_kind text,
    actor_id text, address text, organization_id uuid, action text,
    target_id text, details jsonb default '{}')
returns void
language sql
as $$
    insert into redisgate.audit_log (organization_id, actor_kind, actor_id,
                                     address, action, target_id, details)
    values ($4, $1, $2, $3, $5, $6, coalesce($7, '{}'))
$$;

comment on function redisgate.manage_audit(text, text, text, uuid, text,
                                            text, jsonb) is
    'One row of the audit log, in the caller''s transaction.';

-- /v1/instances, /v1/instances/{id}
create or replace function redisgate.manage_instances(
    actor_kind text, actor_id text, actor_org uuid, address text,
    method text, seg text[], query text, b jsonb)
returns table (status integer, response text, allow text)
language plpgsql
as $$
declare
    operator boolean := (actor_kind = 'operator');
    org uuid;
    i redisgate.instances;
    u record;
    lim integer;
    cur text;
    page jsonb;
    made uuid;
begin
    if cardinality(seg) = 3 then
        if redisgate.manage_id(seg[3]) is null then
            return query select * from redisgate.manage_error(404,
                'Not Found: no such instance');
            return;
        end if;
        select * into i from redisgate.instances x
         where x.id = seg[3]::uuid and x.deleted_at is null
           and (operator or x.organization_id = actor_org);
        if not found then
            return query select * from redisgate.manage_error(404,
                'Not Found: no such instance');
            return;
        end if;
    elsif cardinality(seg) > 3 then
        return query select * from redisgate.manage_error(404,
            'Not Found: no such resource');
        return;
    end if;

    if cardinality(seg) = 2 and method = 'GET' then
        org := redisgate.manage_list_org(actor_kind, actor_org, query);
        lim := redisgate.manage_limit(query);
        cur := redisgate.manage_param(query, 'cursor');
        select coalesce(jsonb_agg(redisgate.manage_instance_json(x)
                                  order by x.created_at, x.id), '[]')
          into page
          from (select * from redisgate.instances y
                 where y.organization_id = org and y.deleted_at is null
                   and (cur is null
                        or (y.created_at, y.id) >
                           (select z.created_at, z.id
                              from redisgate.instances z
                             where z.id = cur::uuid))
                 order by y.created_at, y.id
                 limit lim + 1) x;
        return query select * from redisgate.manage_answer(200,
            redisgate.manage_page(page, lim));
        return;
    end if;

    if cardinality(seg) = 2 and method = 'POST' then
        perform redisgate.manage_fields(coalesce(b, '{}'),
            array['name', 'address', 'organization']);
        org := redisgate.manage_body_org(actor_kind, actor_org, b);
        if jsonb_typeof(b -> 'name') is distinct from 'string' then
            raise exception 'name: a string is required'
                using errcode = 'invalid_parameter_value';
        end if;
        if jsonb_typeof(b -> 'address') is distinct from 'string' then
            raise exception 'address: a Redis URL is required'
                using errcode = 'invalid_parameter_value';
        end if;
        u := redisgate.manage_parse_url(b ->> 'address');
        made := redisgate.create_instance(org, b ->> 'name', u.address,
                                          u.db, u.redis_user,
                                          u.redis_password);
        select * into i from redisgate.instances x where x.id = made;
        perform redisgate.manage_audit(actor_kind, actor_id, address, org,
            'instance.create', made::text,
            jsonb_build_object('name', i.name));
        return query select * from redisgate.manage_answer(201,
            redisgate.manage_instance_json(i));
        return;
    end if;

    if cardinality(seg) = 2 then
        return query select * from redisgate.manage_error(405,
            'Method Not Allowed', 'GET, POST');
        return;
    end if;

    if method = 'GET' then
        return query select * from redisgate.manage_answer(200,
            redisgate.manage_instance_json(i));
        return;
    end if;

    if method = 'PATCH' then
        perform redisgate.manage_fields(coalesce(b, '{}'),
                                        array['address', 'status']);
        if b ? 'address' then
            if jsonb_typeof(b -> 'address') is distinct from 'string' then
                raise exception 'address: a Redis URL'
                    using errcode = 'invalid_parameter_value';
            end if;
            u := redisgate.manage_parse_url(b ->> 'address');
            -- the URL says it all: no user or password in it removes them
            perform redisgate.update_instance(i.id, u.address, u.db,
                                              coalesce(u.redis_user, ''),
                                              coalesce(u.redis_password, ''));
            perform redisgate.manage_audit(actor_kind, actor_id, address,
                i.organization_id, 'instance.update', i.id::text);
        end if;
        if b ? 'status' then
            perform redisgate.set_instance_status(i.id,
                                                  redisgate.manage_status(b));
            perform redisgate.manage_audit(actor_kind, actor_id, address,
                i.organization_id,
                case when b ->> 'status' = 'active' then 'instance.resume'
                     else 'instance.suspend' end,
                i.id::text);
        end if;
        select * into i from redisgate.instances x where x.id = i.id;
        return query select * from redisgate.manage_answer(200,
            redisgate.manage_instance_json(i));
        return;
    end if;

    if method = 'DELETE' then
        perform redisgate.delete_instance(i.id);
        perform redisgate.manage_audit(actor_kind, actor_id, address,
            i.organization_id, 'instance.delete', i.id::text);
        return query select * from redisgate.manage_answer(204, null);
        return;
    end if;

    return query select * from redisgate.manage_error(405,
        'Method Not Allowed', 'GET, PATCH, DELETE');
end
$$;

comment on function redisgate.manage_instances(text, text, uuid, text, text,
                                                text[], text, jsonb) is
    'manage_request()''s /v1/instances: list, create, show, change '
    '(address, status), delete.';

-- /v1/organizations (operators only)
create or replace function redisgate.manage_organizations(
    actor_kind text, actor_id text, actor_org uuid, address text,
    method text, seg text[], query text, b jsonb)
returns table (status integer, response text, allow text)
language plpgsql
as $$
declare
    o redisgate.organizations;
    lim integer;
    cur text;
    page jsonb;
    made uuid;
begin
    if actor_kind <> 'operator' then
        return query select * from redisgate.manage_error(403,
            'Forbidden: organizations are the operators'' (a manager has '
            '/v1/organization)');
        return;
    end if;

    if cardinality(seg) = 3 then
        if redisgate.manage_id(seg[3]) is null then
            return query select * from redisgate.manage_error(404,
                'Not Found: no such organization');
            return;
        end if;
        select * into o from redisgate.organizations x where x.id = seg[3]::uuid;
        if not found then
            return query select * from redisgate.manage_error(404,
                'Not Found: no such organization');
            return;
        end if;
    elsif cardinality(seg) > 3 then
        return query select * from redisgate.manage_error(404,
            'Not Found: no such resource');
        return;
    end if;

    if cardinality(seg) = 2 and method = 'GET' then
        lim := redisgate.manage_limit(query);
        cur := redisgate.manage_param(query, 'cursor');
        select coalesce(jsonb_agg(redisgate.manage_organization_json(x)
                                  order by x.created_at, x.id), '[]')
          into page
          from (select * from redisgate.organizations y
                 where cur is null
                    or (y.created_at, y.id) >
                       (select z.created_at, z.id
                          from redisgate.organizations z
                         where z.id = cur::uuid)
                 order by y.created_at, y.id
                 limit lim + 1) x;
        return query select * from redisgate.manage_answer(200,
            redisgate.manage_page(page, lim));
        return;
    end if;

    if cardinality(seg) = 2 and method = 'POST' then
        perform redisgate.manage_fields(coalesce(b, '{}'),
                                        array['name', 'plan']);
        if jsonb_typeof(b -> 'name') is distinct from 'string' then
            raise exception 'name: a string is required'
                using errcode = 'invalid_parameter_value';
        end if;
        made := redisgate.create_organization(b ->> 'name',
                                              coalesce(b ->> 'plan', 'free'));
        select * into o from redisgate.organizations x where x.id = made;
        perform redisgate.manage_audit(actor_kind, actor_id, address, made,
            'organization.create', made::text,
            jsonb_build_object('name', o.name, 'plan', o.plan_id));
        return query select * from redisgate.manage_answer(201,
            redisgate.manage_organization_json(o));
        return;
    end if;

    if cardinality(seg) = 2 then
        return query select * from redisgate.manage_error(405,
            'Method Not Allowed', 'GET, POST');
        return;
    end if;

    if method = 'GET' then
        return query select * from redisgate.manage_answer(200,
            redisgate.manage_organization_json(o));
        return;
    end if;

    if method = 'PATCH' then
        perform redisgate.manage_fields(coalesce(b, '{}'),
                                        array['plan', 'status']);
        if b ? 'plan' then
            perform redisgate.set_organization_plan(o.id, b ->> 'plan');
            perform redisgate.manage_audit(actor_kind, actor_id, address,
                o.id, 'organization.plan', o.id::text,
                jsonb_build_object('plan', b ->> 'plan'));
        end if;
        if b ? 'status' then
            perform redisgate.set_organization_status(o.id,
                                                      redisgate.manage_status(b));
            perform redisgate.manage_audit(actor_kind, actor_id, address,
                o.id,
                case when b ->> 'status' = 'active'
                     then 'organization.resume'
                     else 'organization.suspend' end,
                o.id::text);
        end if;
        select * into o from redisgate.organizations x where x.id = o.id;
        return query select * from redisgate.manage_answer(200,
            redisgate.manage_organization_json(o));
        return;
    end if;

    return query select * from redisgate.manage_error(405,
        'Method Not Allowed', 'GET, PATCH');
end
$$;

comment on function redisgate.manage_organizations(text, text, uuid, text,
                                                    text, text[], text,
                                                    jsonb) is
    'manage_request()''s /v1/organizations, for operators: list, create, '
    'show, change (plan, status).';

-- /v1/usage: an organization's usage per instance, in steps
create or replace function redisgate.manage_usage(
    actor_kind text, actor_org uuid, method text, query text)
returns table (status integer, response text, allow text)
language plpgsql
as $$
declare
    org uuid;
    step text := coalesce(redisgate.manage_param(query, 'step'), 'minute');
    inst text := redisgate.manage_param(query, 'instance');
    span interval;
    t_to timestamptz;
    t_from timestamptz;
begin
    if method <> 'GET' then
        return query select * from redisgate.manage_error(405,
            'Method Not Allowed', 'GET');
        return;
    end if;
    org := redisgate.manage_list_org(actor_kind, actor_org, query);
    if step not in ('minute', 'hour', 'day') then
        raise exception 'step: minute, hour or day'
            using errcode = 'invalid_parameter_value';
    end if;
    span := case step when 'minute' then interval '1 hour'
                      when 'hour' then interval '1 day'
                      else interval '30 days' end;
    t_to := coalesce(redisgate.manage_param(query, 'to')::timestamptz,
                     now());
    t_from := coalesce(redisgate.manage_param(query, 'from')::timestamptz,
                       t_to - span);
    if t_from >= t_to then
        raise exception 'from: before to'
            using errcode = 'invalid_parameter_value';
    end if;
    if extract(epoch from t_to - t_from)
       / extract(epoch from ('1 ' || step)::interval) > 10000
    then
        raise exception 'from, to: at most 10000 steps of a %', step
            using errcode = 'invalid_parameter_value';
    end if;

    return query select * from redisgate.manage_answer(200,
        jsonb_build_object('step', step, 'from', t_from, 'to', t_to,
            'series', coalesce((
                select jsonb_agg(jsonb_build_object('instance', s.instance_id,
                                                    'points', s.points)
                                 order by s.instance_id)
                  from (select p.instance_id,
                               jsonb_agg(jsonb_build_object(
                                   't', p.t, 'requests', p.requests,
                                   'commands', p.commands,
                                   'bytes_in', p.bytes_in,
                                   'bytes_out', p.bytes_out)
                                   order by p.t) as points
                          from (select u.instance_id,
                                       date_trunc(step, u.minute) as t,
                                       sum(u.requests)::bigint as requests,
                                       sum(u.commands)::bigint as commands,
                                       sum(u.bytes_in)::bigint as bytes_in,
                                       sum(u.bytes_out)::bigint as bytes_out
                                  from redisgate.usage_minutes u
                                 where u.organization_id = org::text
                                   and (inst is null or u.instance_id = inst)
                                   and u.minute >= t_from
                                   and u.minute < t_to
                                 group by 1, 2) p
                         group by p.instance_id) s), '[]')));
end
$$;

comment on function redisgate.manage_usage(text, uuid, text, text) is
    'manage_request()''s /v1/usage: requests, commands and bytes per '
    'instance, in steps of a minute, an hour or a day.';

-- an organization as the API shows it
create or replace function redisgate.manage_organization_json(
    o redisgate.organizations)
returns jsonb
language sql stable
as $$
    select jsonb_build_object(
        'id', o.id, 'name', o.name, 'plan', o.plan_id, 'status', o.status,
        'limits', (select jsonb_build_object(
                              'requests_per_second', p.requests_per_second,
                              'burst', p.burst)
                     from redisgate.plans p where p.id = o.plan_id),
        'created_at', o.created_at)
$$;

comment on function redisgate.manage_organization_json(
    redisgate.organizations) is
    'An organization as the management API shows it, with its plan''s '
    'limits.';

create or replace function redisgate.manage_request(
    actor_kind text,
    actor_id text,
    actor_org uuid,
    address text,
    method text,
    path text,
    query text,
    body text)
returns table (status integer, response text, allow text)
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
set timezone = 'UTC'
as $$
declare
    seg text[] := string_to_array(btrim(coalesce(path, ''), '/'), '/');
    b jsonb;
    org uuid;
    target uuid;
    lim integer;
    cur text;
    page jsonb;
    k redisgate.api_keys;
    made record;
    scopes text[];
    expires timestamptz;
    grace interval;
    msg text;
    operator boolean := (actor_kind = 'operator');
begin
    if actor_kind not in ('key', 'operator')
       or (actor_kind = 'key' and actor_org is null)
    then
        return query select * from redisgate.manage_error(403,
            'Forbidden: not a manager');
        return;
    end if;

    if coalesce(seg[1], '') <> 'v1' then
        return query select * from redisgate.manage_error(404,
            'Not Found: the API is under /v1/');
        return;
    end if;

    if coalesce(body, '') <> '' then
        begin
            b := body::jsonb;
        exception when others then
            return query select * from redisgate.manage_error(400,
                'the body is not JSON');
            return;
        end;
    end if;

    begin

    -- /v1/organization: the caller's own
    if seg[2] = 'organization' and cardinality(seg) = 2 then
        if method <> 'GET' then
            return query select * from redisgate.manage_error(405,
                'Method Not Allowed', 'GET');
            return;
        end if;
        if operator then
            return query select * from redisgate.manage_error(404,
                'Not Found: an operator has no organization (see '
                '/v1/organizations)');
            return;
        end if;
        return query select * from redisgate.manage_answer(200,
            (select redisgate.manage_organization_json(o)
               from redisgate.organizations o
              where o.id = actor_org));
        return;
    end if;

    if seg[2] = 'instances' then
        return query select * from redisgate.manage_instances(actor_kind,
            actor_id, actor_org, address, method, seg, query, b);
        return;
    end if;

    if seg[2] = 'organizations' then
        return query select * from redisgate.manage_organizations(
            actor_kind, actor_id, actor_org, address, method, seg, query, b);
        return;
    end if;

    if seg[2] = 'usage' and cardinality(seg) = 2 then
        return query select * from redisgate.manage_usage(actor_kind,
            actor_org, method, query);
        return;
    end if;

    -- /v1/keys, /v1/keys/{id}, /v1/keys/{id}/rotate
    if seg[2] = 'keys' then
        if cardinality(seg) >= 3 then
            if redisgate.manage_id(seg[3]) is null then
                return query select * from redisgate.manage_error(404,
                    'Not Found: no such key');
                return;
            end if;
            select * into k from redisgate.api_keys x
             where x.id = seg[3]::uuid
               and (operator or x.organization_id = actor_org);
            if not found then
                -- another organization's key is no key
                return query select * from redisgate.manage_error(404,
                    'Not Found: no such key');
                return;
            end if;
        end if;

        if cardinality(seg) = 2 and method = 'GET' then
            org := redisgate.manage_list_org(actor_kind, actor_org, query);
            lim := redisgate.manage_limit(query);
            cur := redisgate.manage_param(query, 'cursor');
            select coalesce(jsonb_agg(redisgate.manage_key_json(x)
                                      order by x.created_at, x.id), '[]')
              into page
              from (select * from redisgate.api_keys y
                     where y.organization_id = org
                       and (cur is null
                            or (y.created_at, y.id) >
                               (select z.created_at, z.id
                                  from redisgate.api_keys z
                                 where z.id = cur::uuid))
                     order by y.created_at, y.id
                     limit lim + 1) x;
            return query select * from redisgate.manage_answer(200,
                redisgate.manage_page(page, lim));
            return;
        end if;

        if cardinality(seg) = 2 and method = 'POST' then
            perform redisgate.manage_fields(coalesce(b, '{}'),
                array['name', 'scopes', 'expires_at', 'organization']);
            org := redisgate.manage_body_org(actor_kind, actor_org, b);
            if jsonb_typeof(b -> 'name') is distinct from 'string' then
                raise exception 'name: a string is required'
                    using errcode = 'invalid_parameter_value';
            end if;
            if b ? 'scopes' then
                if jsonb_typeof(b -> 'scopes') <> 'array' then
                    raise exception 'scopes: an array of scopes'
                        using errcode = 'invalid_parameter_value';
                end if;
                scopes := array(select jsonb_array_elements_text(b -> 'scopes'));
            else
                scopes := '{read,write}';
            end if;
            if jsonb_typeof(b -> 'expires_at') = 'string' then
                begin
                    expires := (b ->> 'expires_at')::timestamptz;
                exception when others then
                    raise exception 'expires_at: not a time (RFC 3339)'
                        using errcode = 'invalid_parameter_value';
                end;
            elsif coalesce(jsonb_typeof(b -> 'expires_at'), 'null') <> 'null'
            then
                raise exception 'expires_at: a time (RFC 3339) or null'
                    using errcode = 'invalid_parameter_value';
            end if;
            select * into made
              from redisgate.create_key(org, b ->> 'name', scopes, expires);
            select * into k from redisgate.api_keys x where x.id = made.key_id;
            insert into redisgate.audit_log (organization_id, actor_kind,
                                             actor_id, address, action,
                                             target_id, details)
            values (org, actor_kind, actor_id, address, 'key.create',
                    made.key_id::text,
                    jsonb_build_object('name', k.name,
                                       'scopes', to_jsonb(k.scopes),
                                       'expires_at', k.expires_at));
            return query select * from redisgate.manage_answer(201,
                redisgate.manage_key_json(k)
                || jsonb_build_object('token', made.token));
            return;
        end if;

        if cardinality(seg) = 2 then
            return query select * from redisgate.manage_error(405,
                'Method Not Allowed', 'GET, POST');
            return;
        end if;

        if cardinality(seg) = 3 and method = 'GET' then
            return query select * from redisgate.manage_answer(200,
                redisgate.manage_key_json(k));
            return;
        end if;

        if cardinality(seg) = 3 and method = 'DELETE' then
            perform redisgate.revoke_key(k.id);
            insert into redisgate.audit_log (organization_id, actor_kind,
                                             actor_id, address, action,
                                             target_id)
            values (k.organization_id, actor_kind, actor_id, address,
                    'key.revoke', k.id::text);
            return query select * from redisgate.manage_answer(204, null);
            return;
        end if;

        if cardinality(seg) = 3 then
            return query select * from redisgate.manage_error(405,
                'Method Not Allowed', 'GET, DELETE');
            return;
        end if;

        if cardinality(seg) = 4 and seg[4] = 'rotate' then
            if method <> 'POST' then
                return query select * from redisgate.manage_error(405,
                    'Method Not Allowed', 'POST');
                return;
            end if;
            perform redisgate.manage_fields(coalesce(b, '{}'),
                                            array['grace']);
            grace := interval '1 hour';
            if b ? 'grace' then
                begin
                    grace := (b ->> 'grace')::interval;
                exception when others then
                    raise exception 'grace: not an interval ("1 hour")'
                        using errcode = 'invalid_parameter_value';
                end;
                if grace is null then
                    raise exception 'grace: not an interval ("1 hour")'
                        using errcode = 'invalid_parameter_value';
                end if;
            end if;
            select * into made from redisgate.rotate_key(k.id, grace);
            insert into redisgate.audit_log (organization_id, actor_kind,
                                             actor_id, address, action,
                                             target_id, details)
            values (k.organization_id, actor_kind, actor_id, address,
                    'key.rotate', k.id::text,
                    jsonb_build_object('new_key', made.key_id,
                                       'grace', grace::text));
            select * into k from redisgate.api_keys x where x.id = made.key_id;
            return query select * from redisgate.manage_answer(201,
                redisgate.manage_key_json(k)
                || jsonb_build_object('token', made.token));
            return;
        end if;
    end if;

    -- /v1/audit: the organization's (an operator's: all, or ?organization=)
    if seg[2] = 'audit' and cardinality(seg) = 2 then
        if method <> 'GET' then
            return query select * from redisgate.manage_error(405,
                'Method Not Allowed', 'GET');
            return;
        end if;
        org := case when operator
                    then redisgate.manage_param(query, 'organization')::uuid
                    else actor_org end;
        lim := redisgate.manage_limit(query);
        cur := redisgate.manage_param(query, 'cursor');
        select coalesce(jsonb_agg(jsonb_build_object(
                   'id', a.id::text, 'at', a.at,
                   'actor', jsonb_build_object('kind', a.actor_kind,
                                               'id', a.actor_id),
                   'action', a.action, 'organization', a.organization_id,
                   'target', a.target_id, 'address', a.address,
                   'details', a.details) order by a.id desc), '[]')
          into page
          from (select * from redisgate.audit_log x
                 where (org is null or x.organization_id = org)
                   and (cur is null or x.id < cur::bigint)
                   and (redisgate.manage_param(query, 'from') is null
                        or x.at >= redisgate.manage_param(query, 'from')
                                   ::timestamptz)
                   and (redisgate.manage_param(query, 'to') is null
                        or x.at < redisgate.manage_param(query, 'to')
                                  ::timestamptz)
                 order by x.id desc
                 limit lim + 1) a;
        return query select * from redisgate.manage_answer(200,
            redisgate.manage_page(page, lim));
        return;
    end if;

    return query select * from redisgate.manage_error(404,
        'Not Found: no such resource');
    return;

    exception
        when invalid_parameter_value or invalid_text_representation
             or invalid_datetime_format or datetime_field_overflow
             or numeric_value_out_of_range or character_not_in_repertoire
             or interval_field_overflow
        then
            get stacked diagnostics msg = message_text;
            return query select * from redisgate.manage_error(400, msg);
        when unique_violation then
            get stacked diagnostics msg = message_text;
            return query select * from redisgate.manage_error(409, msg);
        when insufficient_privilege then
            get stacked diagnostics msg = message_text;
            return query select * from redisgate.manage_error(403, msg);
        when no_data_found then
            return query select * from redisgate.manage_error(404,
                'Not Found');
    end;
end
$$;

comment on function redisgate.manage_request(text, text, uuid, text, text,
                                              text, text, text) is
    'One request of the management API (docs/manage.md), answered in one '
    'transaction: status, JSON body (NULL for 204) and, for 405, the Allow '
    'header. actor_kind: key (actor_org its organization) or operator.';


-- ---------------------------------------------------------------------------
-- Privileges: nothing for PUBLIC (see the top of this file)
-- ---------------------------------------------------------------------------

revoke all on all functions in schema redisgate from public;
grant execute on function redisgate.redis_address_problem(text) to public;

commit;
