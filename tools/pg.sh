# shellcheck shell=bash
# Private PostgreSQL clusters for tools/demo and the tests: one per
# directory, on 127.0.0.1 and a unix socket inside that directory, trust
# authentication, superuser "postgres", database "redisgate".  Source it; do
# not run it.  As root, the server runs as the "postgres" system user
# (PostgreSQL refuses to run as root).
#
#   redisgate_start_pg DIR PORT [CERTDIR]
#                                    init (once) and start; idempotent.
#                                    With CERTDIR (tools/gen-test-certs),
#                                    its server.crt and server.key are
#                                    copied into DIR/ssl and the server
#                                    takes TLS (ssl = on) from then on, on
#                                    every later start of DIR too
#   redisgate_stop_pg DIR            fast shutdown of that cluster only
#   redisgate_pg_conninfo DIR PORT   the libpq conninfo string for it
#
# PG_BINDIR picks the PostgreSQL binaries (default: the newest installed).

# the directory holding initdb, pg_ctl and postgres
redisgate_pg_bindir() {
    local d
    if [ -n "${PG_BINDIR:-}" ]; then
        echo "$PG_BINDIR"
        return 0
    fi
    d=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    if [ -x "$d/initdb" ]; then
        echo "$d"
        return 0
    fi
    if command -v pg_config >/dev/null 2>&1; then
        d=$(pg_config --bindir)
        if [ -x "$d/initdb" ]; then
            echo "$d"
            return 0
        fi
    fi
    d=$(command -v initdb 2>/dev/null) && { dirname "$d"; return 0; }
    echo "PostgreSQL server binaries not found (apt-get install postgresql," \
         "or set PG_BINDIR)" >&2
    return 1
}

# _redisgate_pg_as_owner DIR COMMAND...: run COMMAND in DIR as the cluster's
# owner: "postgres" when we are root, ourselves otherwise
_redisgate_pg_as_owner() {
    local dir=$1
    shift
    if [ "$(id -u)" -eq 0 ]; then
        (cd "$dir" && runuser -u postgres -- "$@")
    else
        (cd "$dir" && "$@")
    fi
}

# as root: let "postgres" reach DIR (search permission on its parents)
_redisgate_pg_traversable() {
    local d parent
    parent=$(dirname "$1")
    d=$parent
    while [ "$d" != / ] && [ -n "$d" ]; do
        if ! runuser -u postgres -- test -x "$d" 2>/dev/null; then
            if [ ! -O "$d" ] || ! chmod o+x "$d"; then
                echo "redisgate_start_pg: user postgres cannot enter $d" >&2
                return 1
            fi
            # the caller's own (temporary) directory is expected; say so for
            # anything further up
            [ "$d" = "$parent" ] \
                || echo "redisgate_start_pg: made $d searchable (o+x) for" \
                        "user postgres" >&2
        fi
        d=$(dirname "$d")
    done
    return 0
}

# _redisgate_pg_ssl_files DIR CERTDIR: the server's certificate and key in
# DIR/ssl, owned by the cluster's owner, the key readable by it alone (the
# server refuses a key others can read)
_redisgate_pg_ssl_files() {
    local f
    [ -s "$2/server.crt" ] && [ -s "$2/server.key" ] || {
        echo "redisgate_start_pg: no server.crt and server.key in $2" \
             "(tools/gen-test-certs)" >&2
        return 1
    }
    _redisgate_pg_as_owner "$1" mkdir -p "$1/ssl" || return 1
    for f in server.crt server.key; do
        # read by us (the owner may not read CERTDIR), written by the owner
        _redisgate_pg_as_owner "$1" tee "$1/ssl/$f.tmp" <"$2/$f" >/dev/null \
            && _redisgate_pg_as_owner "$1" chmod 600 "$1/ssl/$f.tmp" \
            && _redisgate_pg_as_owner "$1" mv -f "$1/ssl/$f.tmp" "$1/ssl/$f" \
            || return 1
    done
}

# redisgate_start_pg DIR PORT [CERTDIR]
redisgate_start_pg() {
    local dir=${1:-} port=${2:-} certs=${3:-} bin data sockdir running_port
    local psql ssl q="'"
    if [ -z "$dir" ] || [ -z "$port" ]; then
        echo "usage: redisgate_start_pg DIR PORT [CERTDIR]" >&2
        return 2
    fi
    bin=$(redisgate_pg_bindir) || return 1
    mkdir -p "$dir" || return 1
    dir=$(cd "$dir" && pwd) || return 1
    data=$dir/data
    sockdir=$dir/run

    if [ "$(id -u)" -eq 0 ]; then
        id postgres >/dev/null 2>&1 || {
            echo "redisgate_start_pg: no \"postgres\" system user" >&2
            return 1
        }
        chown postgres: "$dir" && chmod 700 "$dir" || return 1
        _redisgate_pg_traversable "$dir" || return 1
    fi

    if [ -f "$data/postmaster.pid" ] \
       && _redisgate_pg_as_owner "$dir" "$bin/pg_ctl" -D "$data" status \
              >/dev/null 2>&1; then
        running_port=$(sed -n 4p "$data/postmaster.pid")
        if [ "$running_port" != "$port" ]; then
            echo "redisgate_start_pg: $dir runs on port $running_port," \
                 "not $port" >&2
            return 1
        fi
    else
        if [ ! -s "$data/PG_VERSION" ]; then
            rm -rf "$data"
            if ! _redisgate_pg_as_owner "$dir" "$bin/initdb" -D "$data" \
                     -U postgres -A trust -E UTF8 --locale=C --no-sync \
                     >"$dir/initdb.log" 2>&1; then
                cat "$dir/initdb.log" >&2
                return 1
            fi
            echo "include_if_exists = 'redisgate.conf'" \
                >> "$data/postgresql.conf"
        fi

        _redisgate_pg_as_owner "$dir" mkdir -p "$sockdir" || return 1
        if [ -n "$certs" ]; then
            _redisgate_pg_ssl_files "$dir" "$certs" || return 1
        fi
        ssl=
        if [ -s "$dir/ssl/server.crt" ]; then
            ssl="ssl = on
ssl_cert_file = '${dir//$q/$q$q}/ssl/server.crt'
ssl_key_file = '${dir//$q/$q$q}/ssl/server.key'"
        fi
        # a unix socket path has at most 107 bytes: TCP only when it is long
        if [ ${#sockdir} -gt 90 ]; then
            sockdir=
        fi
        # the server's settings, rewritten on every start (the port may change)
        _redisgate_pg_as_owner "$dir" tee "$data/redisgate.conf" >/dev/null <<CONF || return 1
# written by redisgate_start_pg (tools/pg.sh) on every start
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '${sockdir//$q/$q$q}'
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 32MB
max_connections = 100
log_min_messages = warning
$ssl
CONF

        if ! _redisgate_pg_as_owner "$dir" "$bin/pg_ctl" -D "$data" \
                 -l "$dir/postgresql.log" -w -t 60 start >/dev/null 2>&1; then
            echo "redisgate_start_pg: PostgreSQL did not start on port" \
                 "$port; the end of $dir/postgresql.log:" >&2
            tail -n 15 "$dir/postgresql.log" >&2
            return 1
        fi
    fi

    psql=psql
    [ -x "$bin/psql" ] && psql=$bin/psql

    # pg_ctl -w has waited for "ready"; make sure TCP answers too
    for _ in $(seq 1 100); do
        "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres \
            && break
        sleep 0.1
    done
    if ! "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres
    then
        echo "redisgate_start_pg: nothing accepts on 127.0.0.1:$port" >&2
        return 1
    fi

    if [ "$("$psql" -X -q -At -h 127.0.0.1 -p "$port" -U postgres -d postgres \
                -c "select 1 from pg_database where datname = 'redisgate'")" \
         != 1 ]; then
        "$psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres \
             -v ON_ERROR_STOP=1 -c 'create database redisgate' >/dev/null \
            || return 1
    fi
    return 0
}

# redisgate_stop_pg DIR
redisgate_stop_pg() {
    local dir=${1:-} bin
    if [ -z "$dir" ]; then
        echo "usage: redisgate_stop_pg DIR" >&2
        return 2
    fi
    [ -f "$dir/data/postmaster.pid" ] || return 0
    bin=$(redisgate_pg_bindir) || return 1
    dir=$(cd "$dir" && pwd) || return 1
    _redisgate_pg_as_owner "$dir" "$bin/pg_ctl" -D "$dir/data" -m fast -w \
        -t 30 stop >/dev/null 2>&1 \
    || _redisgate_pg_as_owner "$dir" "$bin/pg_ctl" -D "$dir/data" \
        -m immediate -w -t 30 stop >/dev/null 2>&1
    return 0
}

# redisgate_pg_conninfo DIR PORT
redisgate_pg_conninfo() {
    echo "host=127.0.0.1 port=${2:?usage: redisgate_pg_conninfo DIR PORT}" \
         "dbname=redisgate user=postgres"
}
