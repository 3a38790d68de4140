#!/usr/bin/env bash
# The key store (sql/schema.sql) and tools/redisgate-admin, against a private
# PostgreSQL cluster on a free port in a temporary directory (tools/pg.sh),
# stopped on exit.  Two runs can go at once.  Last line: "N passed, M failed".

set -uo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top" || exit 1
. tools/lib.sh
. tools/pg.sh

admin=$top/tools/redisgate-admin
tmp=$(mktemp -d "${TMPDIR:-/tmp}/redisgate-sql-test.XXXXXX")
passed=0
failed=0

cleanup() {
    redisgate_stop_pg "$tmp/pg"
    if [ -z "${REDISGATE_KEEP_TMP:-}" ]; then
        rm -rf "$tmp"
    else
        echo "# kept $tmp" >&2
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ok() {
    passed=$((passed + 1))
    echo "ok - $1"
}

not_ok() {
    failed=$((failed + 1))
    echo "not ok - $1"
    shift
    local line
    for line in "$@"; do
        echo "#   $line"
    done
}

# is GOT EXPECTED NAME
is() {
    if [ "$1" = "$2" ]; then
        ok "$3"
    else
        not_ok "$3" "got:      '$1'" "expected: '$2'"
    fi
}

# like GOT REGEX NAME
like() {
    if [[ $1 =~ $2 ]]; then
        ok "$3"
    else
        not_ok "$3" "got:      '$1'" "expected: /$2/"
    fi
}

# refused NAME ERROR-REGEX COMMAND...: COMMAND fails with exit status 1 and
# an error matching ERROR-REGEX on standard error
refused() {
    local name=$1 re=$2 err rc
    shift 2
    err=$("$@" 2>&1 >/dev/null)
    rc=$?
    if [ "$rc" -eq 1 ] && [[ $err =~ $re ]]; then
        ok "$name"
    else
        not_ok "$name" "exit status $rc, stderr: $err" "expected: /$re/"
    fi
}

q() {
    psql -X -q -A -t -F '|' -v ON_ERROR_STOP=1 -d "$REDISGATE_PG" "$@"
}

# lookup TOKEN INSTANCE: the module's query, one '|'-separated line or nothing
lookup() {
    q -v token="$1" -v instance="$2" <<'SQL'
select * from redisgate.lookup(encode(sha256(convert_to(:'token', 'UTF8')),
                                      'hex'),
                               :'instance');
SQL
}

# notified COMMAND: runs the shell COMMAND while a psql session listens on
# "redisgate"; prints the payloads received, space-separated, in order
notified() {
    printf '%s\n' 'LISTEN redisgate;' "\\! $1 >/dev/null" \
                  'SELECT pg_sleep(0.1);' 'SELECT 1;' \
        | q 2>&1 \
        | sed -n 's/^Asynchronous notification "redisgate" with payload "\(.*\)" received from server process with PID [0-9]*\.$/\1/p' \
        | paste -sd ' ' -
}

sha() {
    printf %s "$1" | sha256sum | cut -d' ' -f1
}

# --------------------------------------------------------------------------
echo "# starting PostgreSQL"
started=
for _ in 1 2 3; do
    port=$(redisgate_free_port) || break
    if redisgate_start_pg "$tmp/pg" "$port"; then
        started=1
        break
    fi
done
if [ -z "$started" ]; then
    not_ok "private PostgreSQL cluster starts"
    echo "$passed passed, $failed failed"
    exit 1
fi
ok "private PostgreSQL cluster starts on 127.0.0.1:$port"
redisgate_start_pg "$tmp/pg" "$port" && ok "redisgate_start_pg again: no-op" \
    || not_ok "redisgate_start_pg again: no-op"

export REDISGATE_PG
REDISGATE_PG=$(redisgate_pg_conninfo "$tmp/pg" "$port")
unset PGHOST PGPORT PGDATABASE PGUSER PGSERVICE PGOPTIONS

# --------------------------------------------------------------------------
echo "# schema"
"$admin" schema apply >/dev/null && ok "schema apply" || not_ok "schema apply"
objects() {
    q -c "select (select count(*) from pg_class c join pg_namespace n
                   on n.oid = c.relnamespace where n.nspname = 'redisgate')
              || '/' || (select count(*) from pg_proc p join pg_namespace n
                   on n.oid = p.pronamespace where n.nspname = 'redisgate')
              || '/' || (select count(*) from pg_trigger t join pg_class c
                   on c.oid = t.tgrelid join pg_namespace n
                   on n.oid = c.relnamespace where n.nspname = 'redisgate')"
}
before=$(objects)
psql -X -q -v ON_ERROR_STOP=1 -d "$REDISGATE_PG" -f sql/schema.sql \
    >/dev/null 2>"$tmp/apply.err" \
    && ok "schema.sql applies again with psql -f" \
    || not_ok "schema.sql applies again with psql -f" "$(cat "$tmp/apply.err")"
is "$(objects)" "$before" "applying again creates no new objects"
is "$(q -c "select string_agg(id || ':' || requests_per_second || ':' || burst,
                               ' ' order by id) from redisgate.plans")" \
   "free:10:20 pro:1000:2000 unlimited:1000000:1000000" "seeded plans"
like "$(q -c "select count(*) from pg_description d join pg_proc p
                on p.oid = d.objoid join pg_namespace n
                on n.oid = p.pronamespace
             where n.nspname = 'redisgate' and p.proname in
               ('lookup', 'create_plan', 'create_organization',
                'suspend_organization', 'resume_organization',
                'set_organization_plan', 'create_instance', 'update_instance',
                'suspend_instance', 'resume_instance', 'delete_instance',
                'create_key', 'revoke_key', 'rotate_key', 'list_keys',
                'list_instances', 'list_organizations')")" '^17$' \
     "every function has a comment"

help=$("$admin" --help)
like "$help" 'Examples:' "redisgate-admin --help shows examples"
"$admin" frobnicate 2>/dev/null
is "$?" 2 "unknown command: exit status 2"

# --------------------------------------------------------------------------
echo "# organizations and plans"
acme=$("$admin" -q org create acme)
like "$acme" '^[0-9a-f-]{36}$' "org create --quiet prints the id"
out=$("$admin" org create globex --plan pro)
like "$out" '^organization_id=[0-9a-f-]{36}$' "org create prints organization_id=ID"
globex=${out#organization_id=}
tricky="O'Brien\"; drop table redisgate.plans; --"
tricky_id=$("$admin" -q org create "$tricky")
is "$(q -v id="$tricky_id" <<<"select name from redisgate.organizations
                                 where id = :'id'")" "$tricky" \
   "names with quotes are passed as values, not SQL"
is "$(q -c "select count(*) from redisgate.plans")" 3 "plans table intact"
refused "org create: duplicate name" 'organization "acme" already exists' \
    "$admin" org create acme
refused "org create: unknown plan" 'unknown plan "gold"' \
    "$admin" org create initech --plan gold
refused "org suspend: unknown org" 'unknown organization' \
    "$admin" org suspend 00000000-0000-0000-0000-000000000000
list=$("$admin" org list)
like "$(head -1 <<<"$list")" '^id	name	plan_id	status' "org list has a header"
like "$list" "$globex	globex	pro	active" "org list shows globex on pro"
is "$("$admin" -q org list | wc -l)" 3 "org list --quiet: no header"

# --------------------------------------------------------------------------
echo "# instances"
out=$("$admin" instance create acme cache 127.0.0.1:6379 --db 2 --user app \
          --password 's3cr3t pass')
like "$out" '^instance_id=[0-9a-f-]{36}$' "instance create prints instance_id=ID"
inst=${out#instance_id=}
ginst=$("$admin" -q instance create "$globex" main '[::1]:6380')
like "$ginst" '^[0-9a-f-]{36}$' "instance create on [IPv6]:port"
sock=$("$admin" -q instance create acme sock /var/run/redis/redis.sock)
like "$sock" '^[0-9a-f-]{36}$' "instance create on a unix socket"
host=$("$admin" -q instance create acme named redis-1.internal:6379)
like "$host" '^[0-9a-f-]{36}$' "instance create on host:port"
for bad in nohost 'h:0' 'h:65536' '[1.2.3.4]:1' '[zz]:1' 'a b:1' \
           relative/redis.sock '256.0.0.1:6379' ''; do
    refused "instance create refuses address '$bad'" 'malformed redis_address' \
        "$admin" instance create acme bad "$bad"
done
refused "instance create: duplicate name" 'already has an instance named "cache"' \
    "$admin" instance create acme cache 127.0.0.1:1
refused "instance create: user without password" 'redis_user needs a redis_password' \
    "$admin" instance create acme lonely 127.0.0.1:1 --user u
refused "instance create: unknown org" 'unknown organization' \
    "$admin" instance create nobody x 127.0.0.1:1
list=$("$admin" instance list acme)
like "$list" "$inst	cache	127.0.0.1:6379	2	app	t	active" "instance list"
if [[ $list == *s3cr3t* ]]; then
    not_ok "instance list shows no password"
else
    ok "instance list shows no password"
fi
if [[ "$(q -c "select * from redisgate.list_instances('$acme')")" == *s3cr3t* ]]
then
    not_ok "list_instances() returns no password"
else
    ok "list_instances() returns no password"
fi

# --------------------------------------------------------------------------
echo "# keys"
out=$("$admin" key create acme app --scopes write,read 2>"$tmp/key.err")
like "$out" $'^key_id=[0-9a-f-]{36}\ntoken=rg_[0-9a-f]{64}$' \
     "key create prints key_id= and token="
like "$(cat "$tmp/key.err")" 'shown only this once' \
     "key create says the token is shown once"
key=$(sed -n 's/^key_id=//p' <<<"$out")
token=$(sed -n 's/^token=//p' <<<"$out")
hash=$(sha "$token")
is "$(q -c "select count(*) from redisgate.api_keys
             where token_sha256 = '$token'")" 0 "the token is not stored"
is "$(q -c "select count(*) from redisgate.api_keys k
             where k::text like '%$token%'")" 0 "no column holds the token"
is "$(q -c "select token_sha256 from redisgate.api_keys where id = '$key'")" \
   "$hash" "token_sha256 = printf %s token | sha256sum"
is "$(q -c "select display_prefix from redisgate.api_keys where id = '$key'")" \
   "${token:0:10}" "display_prefix is the first 10 characters"
is "$(q -v t="$token" <<<"select redisgate.token_hash(:'t')")" "$hash" \
   "token_hash() agrees with sha256sum"
tokens=$(q -c "select string_agg(redisgate.new_token(), ' ')
                 from generate_series(1, 50)")
is "$(tr ' ' '\n' <<<"$tokens" | grep -cE '^rg_[0-9a-f]{64}$')" 50 \
   "new tokens: rg_ and 64 hex digits"
is "$(tr ' ' '\n' <<<"$tokens" | sort -u | wc -l)" 50 "new tokens differ"

ro_token=$("$admin" -q key create acme reader --scopes read)
like "$ro_token" '^rg_[0-9a-f]{64}$' "key create --quiet prints the token"
admin_token=$("$admin" -q key create acme boss --scopes admin,write,read,read)
gtoken=$("$admin" -q key create globex app)
refused "key create: bad scope" 'unknown scope "sudo"' \
    "$admin" key create acme x --scopes read,sudo
refused "key create: no scope" 'at least one scope' \
    "$admin" key create acme x --scopes ''
refused "key create: expiry in the past" 'must be a time in the future' \
    "$admin" key create acme x --expires '2001-01-01 00:00Z'
refused "key create: unknown org" 'unknown organization' \
    "$admin" key create nobody x
refused "key revoke: unknown key" 'unknown key' \
    "$admin" key revoke 00000000-0000-0000-0000-000000000000

list=$("$admin" key list acme)
like "$(head -1 <<<"$list")" '^id	name	display_prefix	scopes	state' \
     "key list has a header"
like "$list" "$key	app	${token:0:10}	read,write	active" "key list shows the key"
all_keys=$(q -c "select * from redisgate.list_keys('$acme')")
if [[ $all_keys == *"$hash"* || $all_keys == *"$token"* ]]; then
    not_ok "list_keys() returns neither hashes nor tokens"
else
    ok "list_keys() returns neither hashes nor tokens"
fi

# --------------------------------------------------------------------------
echo "# lookup"
is "$(lookup "$token" "$inst")" \
   "$key|$acme|read,write|0|active|active|127.0.0.1:6379|2|app|s3cr3t pass|10|20" \
   "valid key, own instance: the whole row"
is "$(lookup "$admin_token" "$inst" | cut -d'|' -f3)" "read,write,admin" \
   "scopes are comma-joined in canonical order"
is "$(lookup "$ro_token" "$inst" | cut -d'|' -f3)" "read" "read-only scopes"
is "$(lookup "$token" "$ginst")" "$key|$acme|read,write|0|active||||||10|20" \
   "another organization's instance: instance columns NULL"
is "$(lookup "$token" 6a7d4c1e-0000-4000-8000-000000000000)" \
   "$key|$acme|read,write|0|active||||||10|20" \
   "unknown instance: instance columns NULL"
is "$(lookup "$gtoken" "$ginst" | cut -d'|' -f5-)" \
   "active|active|[::1]:6380|0|||1000|2000" "globex key: its instance, pro plan"
is "$(lookup "rg_$(redisgate_random_hex 32)" "$inst")" "" "unknown token: no row"
is "$(q -c "select count(*) from redisgate.lookup('$(tr a-f A-F <<<"$hash")',
                                                  '$inst')")" 1 \
   "an upper-case hash matches too"
is "$(q -c "select (select provolatile from pg_proc
                     where oid = 'redisgate.lookup(text, uuid)'::regprocedure)")" \
   s "lookup is STABLE"
like "$("$admin" lookup - "$inst" <<<"$token")" \
     "$key	$acme	read,write	0	active	active" "redisgate-admin lookup"

# a role that may only call lookup()
q -c "create role rg_gateway login" >/dev/null
q -c "grant usage on schema redisgate to rg_gateway;
      grant execute on function redisgate.lookup(text, uuid),
                                redisgate.mark_keys_used(uuid[])
         to rg_gateway" >/dev/null
gw="host=127.0.0.1 port=$port dbname=redisgate user=rg_gateway"
is "$(psql -X -q -A -t -d "$gw" -c "select key_id from redisgate.lookup('$hash', '$inst')")" \
   "$key" "a role with EXECUTE on lookup() only can call it"
like "$(psql -X -q -A -t -d "$gw" -c "select count(*) from redisgate.api_keys" 2>&1)" \
     'permission denied' "... and cannot read the tables"
like "$(psql -X -q -A -t -d "$gw" -c "select redisgate.revoke_key('$key')" 2>&1)" \
     'permission denied' "... nor call the management functions"
is "$(psql -X -q -A -t -d "$gw" -c "select redisgate.mark_keys_used(array['$key'::uuid])")" \
   1 "mark_keys_used() sets last_used_at"
is "$(q -c "select last_used_at is not null from redisgate.api_keys where id = '$key'")" \
   t "last_used_at is set"

# --------------------------------------------------------------------------
echo "# expiry"
exp_out=$("$admin" key create acme shortlived \
              --expires "$(date -u -d '+2 seconds' '+%Y-%m-%d %H:%M:%S.%N+00')" \
              2>/dev/null)
exp_key=$(sed -n 's/^key_id=//p' <<<"$exp_out")
exp_token=$(sed -n 's/^token=//p' <<<"$exp_out")
exp_epoch=$(q -c "select floor(extract(epoch from expires_at))::bigint
                    from redisgate.api_keys where id = '$exp_key'")
is "$(lookup "$exp_token" "$inst" | cut -d'|' -f4)" "$exp_epoch" \
   "expires_at: epoch seconds of the expiry"
like "$exp_epoch" '^[0-9]{10}$' "expires_at looks like epoch seconds"
is "$(notified "'$admin' key expires $exp_key '2099-01-01 00:00Z'")" \
   "key:$(sha "$exp_token")" "key expires: notifies key:<sha256>"
is "$(lookup "$exp_token" "$inst" | cut -d'|' -f4)" 4070908800 \
   "changed expiry shows in lookup"
"$admin" -q key expires "$exp_key" "$(date -u -d '+1 seconds' '+%Y-%m-%d %H:%M:%S.%N+00')"
sleep 1.2
is "$(lookup "$exp_token" "$inst")" "" "expired key: no row"
like "$("$admin" key list acme)" "$exp_key	shortlived	[^	]*	read,write	expired" \
     "key list shows it expired"
refused "rotate: expired key" 'has expired' "$admin" key rotate "$exp_key"

# --------------------------------------------------------------------------
echo "# revoke"
rv_token=$("$admin" -q key create acme doomed)
rv_key=$(q -c "select id from redisgate.api_keys
                where token_sha256 = '$(sha "$rv_token")'")
is "$(lookup "$rv_token" "$inst" | cut -d'|' -f1)" "$rv_key" "before revoke: a row"
is "$(notified "'$admin' key revoke $rv_key")" "key:$(sha "$rv_token")" \
   "key revoke: notifies key:<sha256>"
is "$(lookup "$rv_token" "$inst")" "" "revoked key: no row"
is "$(notified "'$admin' key revoke $rv_key")" "" \
   "revoking again: no notification"
refused "rotate: revoked key" 'is revoked' "$admin" key rotate "$rv_key"

# --------------------------------------------------------------------------
echo "# rotate"
rot_out=$("$admin" key rotate "$key" --grace '1 second' 2>/dev/null)
new_key=$(sed -n 's/^key_id=//p' <<<"$rot_out")
new_token=$(sed -n 's/^token=//p' <<<"$rot_out")
like "$new_token" '^rg_[0-9a-f]{64}$' "key rotate prints a new token"
like "$rot_out" "rotated_from=$key" "key rotate prints rotated_from"
is "$(q -c "select name || ' ' || array_to_string(scopes, ',') || ' '
                 || organization_id || ' ' || rotated_from
              from redisgate.api_keys where id = '$new_key'")" \
   "app read,write $acme $key" "the new key: same name, scopes, organization"
is "$(lookup "$token" "$inst" | cut -d'|' -f1)" "$key" \
   "old key works within the grace period"
is "$(lookup "$new_token" "$inst" | cut -d'|' -f1,4)" "$new_key|0" \
   "new key works, no expiry"
sleep 1.2
is "$(lookup "$token" "$inst")" "" "old key: no row after the grace period"
is "$(lookup "$new_token" "$inst" | cut -d'|' -f1)" "$new_key" \
   "new key still works"
token=$new_token
key=$new_key
hash=$(sha "$token")

r2_out=$("$admin" key rotate "$key" 2>/dev/null)
r2_token=$(sed -n 's/^token=//p' <<<"$r2_out")
r2_key=$(sed -n 's/^key_id=//p' <<<"$r2_out")
is "$(q -c "select round(extract(epoch from expires_at - now()) / 60)
              from redisgate.api_keys where id = '$key'")" 60 \
   "default grace: 1 hour"
is "$(notified "'$admin' -q key rotate $r2_key --grace '0 seconds'")" \
   "key:$(sha "$r2_token")" "key rotate: notifies key:<old sha256>"
is "$(lookup "$r2_token" "$inst")" "" "grace 0: the old key stops at once"

# --------------------------------------------------------------------------
echo "# suspensions, plans, updates"
is "$(notified "'$admin' org suspend acme")" "organization:$acme" \
   "org suspend: notifies organization:<id>"
is "$(lookup "$token" "$inst" | cut -d'|' -f5,6)" "suspended|active" \
   "suspended organization: organization_status"
is "$(notified "'$admin' org suspend $acme")" "" \
   "suspending again: no notification"
is "$(notified "'$admin' org resume $acme")" "organization:$acme" \
   "org resume: notifies organization:<id>"
is "$(lookup "$token" "$inst" | cut -d'|' -f5)" "active" "resumed organization"

is "$(notified "'$admin' instance suspend $inst")" "instance:$inst" \
   "instance suspend: notifies instance:<id>"
is "$(lookup "$token" "$inst" | cut -d'|' -f5,6)" "active|suspended" \
   "suspended instance: instance_status"
is "$(notified "'$admin' instance resume $inst")" "instance:$inst" \
   "instance resume: notifies instance:<id>"
is "$(lookup "$token" "$inst" | cut -d'|' -f6)" "active" "resumed instance"

is "$(notified "'$admin' org plan acme pro")" "organization:$acme" \
   "org plan: notifies organization:<id>"
is "$(lookup "$token" "$inst" | cut -d'|' -f11,12)" "1000|2000" \
   "plan columns follow the organization's plan"
refused "org plan: unknown plan" 'unknown plan' "$admin" org plan acme gold
is "$(notified "'$admin' plan set pro 1000 2000")" "" \
   "plan set with the same limits: no notification"
is "$(notified "'$admin' plan set pro 1500 3000")" "all" \
   "plan set with new limits: notifies all"
is "$(lookup "$token" "$inst" | cut -d'|' -f11,12)" "1500|3000" "new limits in lookup"
is "$(notified "'$admin' plan set team 50 100")" "" "a new plan: no notification"
refused "plan set: bad numbers" 'must be 1 or more' "$admin" plan set team 0 1

is "$(notified "'$admin' instance update $inst --address /var/run/redis.sock --db 5 --no-user --no-password")" \
   "instance:$inst" "instance update: notifies instance:<id>"
is "$(lookup "$token" "$inst" | cut -d'|' -f7-10)" "/var/run/redis.sock|5||" \
   "instance update: address, db, credentials removed"
printf 'pw\n' | "$admin" -q instance update "$inst" --user bob --password-stdin
is "$(lookup "$token" "$inst" | cut -d'|' -f7-10)" "/var/run/redis.sock|5|bob|pw" \
   "instance update: user and password (from stdin); the rest kept"
"$admin" -q instance update "$inst" --password 'only-password' --no-user
is "$(lookup "$token" "$inst" | cut -d'|' -f9,10)" "|only-password" \
   "instance update: password without user"
is "$(notified "'$admin' instance update $inst --db 5")" "" \
   "instance update without a change: no notification"
refused "instance update: bad address" 'malformed redis_address' \
    "$admin" instance update "$inst" --address 'nope'
refused "instance update: user needs password" 'needs a redis_password' \
    "$admin" instance update "$inst" --user x --no-password
q -c "select redisgate.update_instance('$inst', redis_address => '127.0.0.1:6379',
                                       redis_db => 2)" >/dev/null
is "$(lookup "$token" "$inst" | cut -d'|' -f7,8,10)" "127.0.0.1:6379|2|only-password" \
   "update_instance() with named arguments; NULL keeps"

is "$(notified "'$admin' instance delete $host")" "instance:$host" \
   "instance delete: notifies instance:<id>"
is "$(lookup "$token" "$host" | cut -d'|' -f6-)" "|||||1500|3000" \
   "deleted instance: instance columns NULL"
is "$(notified "'$admin' instance delete $host")" "" \
   "deleting again: no notification"
refused "suspend a deleted instance" 'unknown instance' \
    "$admin" instance suspend "$host"
again=$("$admin" -q instance create acme named redis-2.internal:6379)
like "$again" '^[0-9a-f-]{36}$' "a deleted instance's name can be reused"
like "$("$admin" instance list acme --all)" "$host	named	.*	deleted|$host	named" \
     "instance list --all shows deleted instances"
if [[ "$("$admin" instance list acme)" == *"$host"* ]]; then
    not_ok "instance list hides deleted instances"
else
    ok "instance list hides deleted instances"
fi

# --------------------------------------------------------------------------
echo "# direct SQL and several changes in one transaction"
is "$(notified "psql -X -q -d '$REDISGATE_PG' -c \"begin; select redisgate.suspend_instance('$inst'); select redisgate.resume_instance('$inst'); update redisgate.organizations set status = 'suspended' where id = '$globex'; commit;\"")" \
   "instance:$inst organization:$globex" \
   "one notification per payload, direct UPDATE notifies too"
q -c "select redisgate.resume_organization('$globex')" >/dev/null
is "$(notified "psql -X -q -d '$REDISGATE_PG' -c \"update redisgate.api_keys set last_used_at = now()\"")" \
   "" "last_used_at updates: no notification"

# --------------------------------------------------------------------------
echo "# schema applied again over data"
"$admin" -q schema apply
is "$(lookup "$token" "$inst" | cut -d'|' -f1,11,12)" "$key|1500|3000" \
   "data and changed plans survive a new apply"
is "$(q -c "select count(*) from redisgate.organizations")" 3 \
   "organizations survive a new apply"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
