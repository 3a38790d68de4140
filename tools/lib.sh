# Shell helpers shared by tools/demo and t/run-tests: free ports and
# servers started under a directory of their own.  Source it; do not run it.

# a free loopback TCP port (nothing answers on it right now), below the
# kernel's ephemeral range: a port there may be some outgoing connection's
# source port, which nothing answers on and nobody can bind either
redisgate_free_port() {
    local port i low
    low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null)
    [ "${low:-0}" -gt 12000 ] || low=32768
    for i in $(seq 1 200); do
        port=$(( (RANDOM * 32768 + RANDOM) % (low - 11000) + 10000 ))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    echo "no free port found" >&2
    return 1
}

# wait (at most ~10 s) until something listens on 127.0.0.1:$1
redisgate_wait_port() {
    local i
    for i in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    return 1
}

# redisgate_start_redis DIR PORT: a private, unpersisted redis-server, on
# 127.0.0.1:PORT and on the unix socket DIR/redis.sock
redisgate_start_redis() {
    mkdir -p "$1"
    redis-server --port "$2" --bind 127.0.0.1 --save '' --appendonly no \
        --unixsocket "$1/redis.sock" --unixsocketperm 777 \
        --dir "$1" --daemonize yes --pidfile "$1/redis.pid" \
        --logfile "$1/redis.log" || return 1
    redisgate_wait_port "$2"
}

# redisgate_start_redis_tls DIR PORT CERTDIR [OPTION...]: a private,
# unpersisted redis-server that speaks only TLS, on 127.0.0.1:PORT, with
# CERTDIR's server.crt and server.key (tools/gen-test-certs), trusting
# CERTDIR/ca.crt for client certificates; clients need none unless the
# OPTIONs (more redis-server options) say --tls-auth-clients yes
redisgate_start_redis_tls() {
    local dir=$1 port=$2 certs=$3
    shift 3
    mkdir -p "$dir"
    redis-server --port 0 --tls-port "$port" --bind 127.0.0.1 --save '' \
        --appendonly no --tls-cert-file "$certs/server.crt" \
        --tls-key-file "$certs/server.key" \
        --tls-ca-cert-file "$certs/ca.crt" --tls-auth-clients no \
        --dir "$dir" --daemonize yes --pidfile "$dir/redis.pid" \
        --logfile "$dir/redis.log" "$@" || return 1
    redisgate_wait_port "$port"
}

# redisgate_start_sentinel DIR PORT NAME MASTER_PORT: a private Redis
# Sentinel on 127.0.0.1:PORT watching the primary 127.0.0.1:MASTER_PORT as
# NAME, alone (quorum 1; a primary down for a minute before it would try a
# failover), with a configuration file of its own, DIR/sentinel.conf
# (Sentinel rewrites it); its pid in DIR/redis.pid
redisgate_start_sentinel() {
    mkdir -p "$1" || return 1
    cat >"$1/sentinel.conf" <<EOF || return 1
port $2
bind 127.0.0.1
dir "$1"
daemonize yes
pidfile "$1/redis.pid"
logfile "$1/redis.log"
sentinel monitor $3 127.0.0.1 $4 1
sentinel down-after-milliseconds $3 60000
EOF
    redis-server "$1/sentinel.conf" --sentinel || return 1
    redisgate_wait_port "$2"
}

# redisgate_start_cluster_node DIR PORT BUSPORT: one node of a private Redis
# Cluster, unpersisted but for its nodes.conf, on 127.0.0.1:PORT with its
# cluster bus on BUSPORT, everything in DIR/PORT (the same DIR and PORT
# start it again as the same node); cluster-node-timeout 2000 ms
redisgate_start_cluster_node() {
    local dir=$1/$2
    mkdir -p "$dir" || return 1
    echo "$3" >"$dir/bus-port"
    redis-server --port "$2" --bind 127.0.0.1 --save '' --appendonly no \
        --cluster-enabled yes --cluster-config-file nodes.conf \
        --cluster-node-timeout 2000 --cluster-port "$3" \
        --dir "$dir" --daemonize yes --pidfile "$dir/redis.pid" \
        --logfile "$dir/redis.log" || return 1
    redisgate_wait_port "$2"
}

# redisgate_wait_cluster PORT...: wait (at most ~20 s) until the nodes on
# these ports all say cluster_state:ok and each sees all of them connected
redisgate_wait_cluster() {
    local i port ok
    for i in $(seq 1 200); do
        ok=1
        for port; do
            redis-cli -p "$port" cluster info 2>/dev/null \
                | grep -q '^cluster_state:ok' || ok=0
            [ "$(redis-cli -p "$port" cluster nodes 2>/dev/null \
                 | grep -v -e fail -e handshake | grep -c ' connected')" = $# ] \
                || ok=0
        done
        [ "$ok" = 1 ] && return 0
        sleep 0.1
    done
    echo "the Redis Cluster on ports $* is not ready" >&2
    return 1
}

# redisgate_start_cluster DIR PORT...: a private Redis Cluster of one
# primary per PORT (no replicas), unpersisted, each in DIR/PORT with its
# pid in DIR/PORT/redis.pid (redisgate_start_cluster_node; each cluster bus
# on a free port of its own, not PORT + 10000), the slots spread by
# redis-cli --cluster create; returns once every node says
# cluster_state:ok and sees all the others (redisgate_wait_cluster)
redisgate_start_cluster() {
    local dir=$1 port bus used hosts=()
    shift
    used=" $* "
    for port; do
        bus=$(redisgate_free_port) || return 1
        while [[ $used == *" $bus "* ]]; do
            bus=$(redisgate_free_port) || return 1
        done
        used="$used$bus "
        redisgate_start_cluster_node "$dir" "$port" "$bus" || return 1
        hosts+=("127.0.0.1:$port")
    done
    if ! redis-cli --cluster create "${hosts[@]}" --cluster-replicas 0 \
            --cluster-yes >"$dir/create.log" 2>&1
    then
        cat "$dir/create.log" >&2
        return 1
    fi
    redisgate_wait_cluster "$@"
}

# redisgate_stop_cluster DIR: stop every node redisgate_start_cluster started
# under DIR
redisgate_stop_cluster() {
    local f
    for f in "$1"/*/redis.pid; do
        [ -f "$f" ] && redisgate_stop_pidfile "$f"
    done
    return 0
}

# redisgate_pid_alive PID: the process runs (a zombie does not: where
# process 1 does not reap orphans, a daemon that exited stays one a while)
redisgate_pid_alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [ "${stat%% *}" != Z ]
}

# redisgate_stop_pidfile FILE: stop the process whose pid FILE holds
redisgate_stop_pidfile() {
    local pid i
    [ -f "$1" ] || return 0
    pid=$(cat "$1" 2>/dev/null)
    [ -n "$pid" ] || return 0
    kill "$pid" 2>/dev/null || return 0
    for i in $(seq 1 50); do
        redisgate_pid_alive "$pid" || return 0
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null
    return 0
}

redisgate_random_hex() {
    od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'
}

redisgate_sha256() {
    printf '%s' "$1" | sha256sum | cut -d' ' -f1
}

# redisgate_start_dns DIR PORT: a DNS server on 127.0.0.1:PORT (UDP) that
# answers 127.0.0.1 for every name under redis.test, nothing else
redisgate_start_dns() {
    mkdir -p "$1"
    dnsmasq --port="$2" --listen-address=127.0.0.1 --bind-interfaces \
        --no-resolv --no-hosts --address=/redis.test/127.0.0.1 \
        --pid-file="$1/dnsmasq.pid" --user=root --group=root \
        --log-facility="$1/dnsmasq.log"
}
