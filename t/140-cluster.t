# Redis Cluster (redis-cluster://): the three primaries of t/run-tests
# ($TEST_NGINX_CLUSTER_PORTS, no replicas).  Every command to the primary
# of its first key's slot; MGET, MSET, DEL, UNLINK, EXISTS and TOUCH split
# across slots and merged; a pipeline across nodes; DBSIZE, KEYS, SCAN and
# FLUSHALL on every primary; SCRIPT LOAD and EVALSHA; transactions of one
# slot (CROSSSLOT otherwise); a slot moved behind the gateway's back
# (MOVED), one half migrated (ASK, TRYAGAIN), a client that leaves while a
# TRYAGAIN is waited out; dead seeds; key-store instances (one in another
# database than 0, one closed when idle); a primary stopped and started
# again.  The slots are moved by CLUSTER SETSLOT from init sections, and
# moved back.  Failovers and resharding under load are in
# t/client/cluster.test.mjs (they need replicas); these blocks are here to
# run the same C paths under make asan and make valgrind.

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::Nginx::Socket 'no_plan';
use RedisGate::Test;
use IO::Socket::INET;
use Digest::SHA qw(sha1_hex);

repeat_each(1);
no_shuffle();

my @ports = split /,/, ($ENV{TEST_NGINX_CLUSTER_PORTS}
    // die "TEST_NGINX_CLUSTER_PORTS is not set: run the suites with"
           . " t/run-tests\n");
die "TEST_NGINX_CLUSTER_PORTS: expected three ports\n" unless @ports == 3;
my $spare = $ENV{TEST_NGINX_SPARE_PORT};     # nothing listens there here
my $silent = $ENV{TEST_NGINX_SILENT_PORT};   # nor there

# redis-cli to the node on PORT: its output without the last newline
sub cli {
    my ($port, @args) = @_;
    open my $fh, '-|', 'redis-cli', '-h', '127.0.0.1', '-p', $port, @args
        or die "cannot run redis-cli: $!\n";
    my $out = do { local $/; <$fh> } // '';
    close $fh;
    die "redis-cli -p $port @args failed\n" if $?;
    $out =~ s/\n\z//;
    return $out;
}

# the same, for commands that answer OK
sub cli_ok {
    my $out = cli(@_);
    die "redis-cli -p $_[0] @_[1 .. $#_]: $out\n" unless $out eq 'OK';
}

# CRC16 (XMODEM) and hash tags: a key's slot, as Redis Cluster has it
my @crc = map {
    my $c = $_ << 8;
    $c = ($c & 0x8000) ? (($c << 1) ^ 0x1021) & 0xffff : ($c << 1) & 0xffff
        for 1 .. 8;
    $c;
} 0 .. 255;

sub keyslot {
    my $k = shift;
    my $open = index $k, '{';
    if ($open >= 0) {
        my $close = index $k, '}', $open + 1;
        $k = substr $k, $open + 1, $close - $open - 1 if $close > $open + 1;
    }
    my $crc = 0;
    $crc = (($crc << 8) & 0xffff) ^ $crc[(($crc >> 8) ^ $_) & 0xff]
        for unpack 'C*', $k;
    return $crc % 16384;
}

for my $k ('foo', '{user1}:a', 'a{}b', "t$$") {
    my $s = cli($ports[0], 'CLUSTER', 'KEYSLOT', $k);
    die "keyslot('$k') is " . keyslot($k) . ", Redis says $s\n"
        unless $s == keyslot($k);
}

# the primaries as a node sees them: { port => { id, port, slots } }
sub primaries {
    my %n;
    for (split /\n/, cli(shift // $ports[0], 'CLUSTER', 'NODES')) {
        my @f = split ' ';
        next unless $f[2] =~ /master/ && $f[2] !~ /fail/;
        my ($port) = $f[1] =~ /:(\d+)@/;
        my $node = { id => $f[0], port => $port, slots => [] };
        for my $s (@f[8 .. $#f]) {
            next if $s =~ /^\[/;
            my ($from, $to) = split /-/, $s;
            push @{$node->{slots}}, [$from, $to // $from];
        }
        $n{$port} = $node;
    }
    return \%n;
}

sub port_of_slot {
    my ($nodes, $slot) = @_;
    for my $n (values %$nodes) {
        for (@{$n->{slots}}) {
            return $n->{port} if $slot >= $_->[0] && $slot <= $_->[1];
        }
    }
    die "no primary serves slot $slot\n";
}

my $nodes = primaries();
die "expected 3 primaries, found " . keys(%$nodes) . "\n" unless keys %$nodes == 3;

# the gateway numbers the primaries (SCAN cursors, KEYS) in the order of
# their backends' URLs
our @Order = sort { "redis://127.0.0.1:$a/0" cmp "redis://127.0.0.1:$b/0" }
             @ports;

# keys on each primary, in that order: $K[n] on $Order[n]
sub key_on {
    my ($port, $prefix, $skip) = @_;
    for (my $i = 0; ; $i++) {
        my $k = "$prefix$i";
        next if $skip && $skip->{$k};
        return $k if port_of_slot($nodes, keyslot($k)) == $port;
    }
}

our @K = map { key_on($Order[$_], "k$_-$$-") } 0 .. 2;

# the instances of nginx.conf (organization acme)
my $seeds = join ',', map { "127.0.0.1:$_" } @ports;

RedisGate::Test::add_instances('c1c1c1c1',
    CLUSTER   => "redis-cluster://$seeds",
    FIRSTDOWN => "redis-cluster://127.0.0.1:$spare,127.0.0.1:$ports[1]/0",
    DEAD      => "redis-cluster://127.0.0.1:$spare,127.0.0.1:$silent",
);

our $C = $ENV{TEST_NGINX_CLUSTER_INSTANCE};

# the key store's: one served, one in database 3 (which the key store's
# functions refuse for a cluster: set by hand)
my $org = RedisGate::Test::admin('org', 'create', "cluster-$$")
    ->{organization_id};
$ENV{TEST_NGINX_KS_CLUSTER_INSTANCE} = RedisGate::Test::admin('instance',
    'create', $org, 'cluster', "redis-cluster://127.0.0.1:$ports[0]")
    ->{instance_id};
my $db3 = RedisGate::Test::admin('instance', 'create', $org, 'db3',
    "redis-cluster://127.0.0.1:$ports[1],127.0.0.1:$ports[2]")->{instance_id};
RedisGate::Test::psql(
    "update redisgate.instances set redis_db = 3 where id = '$db3'");
$ENV{TEST_NGINX_KS_DB3_INSTANCE} = $db3;
$ENV{TEST_NGINX_KS_TOKEN} = RedisGate::Test::admin('key', 'create', $org,
    'app')->{token};

# idle key-store backends close after 2 to 4 s (TEST 19)
$RedisGate::Test::ExtraHttpConfig .= <<'_EOC_';
    redisgate_pg "$TEST_NGINX_PG_CONNINFO";
    redisgate_cache zone=redisgate_keys:1m;
    redisgate_idle_timeout 2s;
_EOC_

# CLUSTER SETSLOT slot NODE <the node on PORT> on every primary, the new
# owner first
sub assign_slot {
    my ($slot, $port) = @_;
    my $n = primaries();
    cli_ok($_, 'CLUSTER', 'SETSLOT', $slot, 'NODE', $n->{$port}{id})
        for $port, grep { $_ != $port } @ports;
    $nodes = primaries();
}

# a POST of a JSON body to the cluster instance
sub post { my ($path, $json) = @_; "POST /redis/$C$path\n$json" }

# many keys across slots (TEST 3)
our @Many = map { "many-$$-$_" } 0 .. 99;
our $ManyKeys = join ',', map { qq{"$_"} } @Many;
our $ManyPairs = join ',', map { qq{"$_","=$_"} } @Many;
our $ManyReversed = join ',', map { qq{"$_"} } reverse @Many;
our $ManyValuesReversed = join ',', map { qq{"=$_"} } reverse @Many;

# a key on $Order[0] for MOVED (TEST 8, 9); an empty slot
our $Moved = key_on($Order[0], "moved-$$-");
our $MovedSlot = keyslot($Moved);

# a hash tag on $Order[0] for ASK and TRYAGAIN (TEST 10 to 14)
our $Tag = do {
    my $t;
    for (my $i = 0; ; $i++) {
        $t = "ask-$$-$i";
        last if port_of_slot($nodes, keyslot($t)) == $Order[0];
    }
    "{$t}";
};
our $AskSlot = keyslot($Tag);
our @A = map { "$Tag:$_" } 1 .. 3;

our $Down = 'Redis unavailable: the cluster is down or resharding';
our $NoMap = '{"error":"Redis unavailable: no cluster node gave the slot map"}';
our $Script = "return {redis.call('GET', KEYS[1]), ARGV[1]}";
our $Sha = sha1_hex($Script);

# a stopped node (TEST 20) is started again by TEST 21, or at the end
our $Stopped;

sub stop_node {
    my $port = shift;
    system('bash', '-c', '. "$0" && redisgate_stop_pidfile "$1"',
           "$FindBin::Bin/../tools/lib.sh",
           "$ENV{TEST_NGINX_CLUSTER_DIR}/$port/redis.pid") == 0
        or die "cannot stop the node on $port\n";
    $Stopped = $port;
}

sub start_node {
    my $port = $Stopped // return;
    my $dir = $ENV{TEST_NGINX_CLUSTER_DIR};
    open my $fh, '<', "$dir/$port/bus-port" or die "no bus port: $!\n";
    chomp(my $bus = <$fh>);
    close $fh;
    system('bash', '-c', '. "$0" && redisgate_start_cluster_node "$1" "$2" "$3"'
           . ' && shift 3 && redisgate_wait_cluster "$@"',
           "$FindBin::Bin/../tools/lib.sh", $dir, $port, $bus, @ports) == 0
        or die "cannot start the node on $port again\n";
    undef $Stopped;
}

END { eval { start_node() } }

run_tests();

__DATA__

=== TEST 1: single keys: SET and GET on each primary
--- request eval
[(map { "GET /redis/$::C/set/$::K[$_]/v$_" } 0 .. 2),
 (map { "GET /redis/$::C/get/$::K[$_]" } 0 .. 2)]
--- response_body eval
[('{"result":"OK"}') x 3, '{"result":"v0"}', '{"result":"v1"}',
 '{"result":"v2"}']
--- no_error_log
[error]
[crit]



=== TEST 2: ... which are on their primaries; MSET, MGET, EXISTS, TOUCH, DEL, UNLINK across slots
--- init
for my $n (0 .. 2) {
    my $v = main::cli($main::Order[$n], 'GET', $main::K[$n]);
    die "$main::K[$n] on $main::Order[$n]: '$v'\n" unless $v eq "v$n";
}
--- request eval
[main::post('', qq{["MSET","$::K[0]","a","$::K[1]","b","$::K[2]","c"]}),
 main::post('', qq{["MGET","$::K[2]","nokey-$$","$::K[0]","$::K[1]","$::K[2]"]}),
 main::post('', qq{["EXISTS","$::K[0]","$::K[1]","$::K[2]","$::K[0]","nokey-$$"]}),
 main::post('', qq{["TOUCH","$::K[0]","$::K[1]"]}),
 main::post('', qq{["DEL","$::K[0]","$::K[1]","nokey-$$"]}),
 main::post('', qq{["UNLINK","$::K[2]"]}),
 main::post('', qq{["MGET","$::K[0]","$::K[1]","$::K[2]"]})]
--- response_body eval
['{"result":"OK"}', '{"result":["c",null,"a","b","c"]}', '{"result":4}',
 '{"result":2}', '{"result":2}', '{"result":1}',
 '{"result":[null,null,null]}']
--- no_error_log
[error]
[crit]



=== TEST 3: a hundred keys across slots: MSET, MGET in another order, EXISTS, DEL
--- request eval
[main::post('', qq{["MSET",$::ManyPairs]}),
 main::post('', qq{["MGET",$::ManyReversed]}),
 main::post('/pipeline', qq{[["EXISTS",$::ManyKeys],["DEL",$::ManyKeys],}
                         . qq{["DBSIZE"]]})]
--- response_body eval
['{"result":"OK"}', qq{{"result":[$::ManyValuesReversed]}},
 '[{"result":100},{"result":100},{"result":0}]']
--- no_error_log
[error]
[crit]



=== TEST 4: a pipeline across the three primaries, answered in order
--- request eval
main::post('/pipeline', qq{[["SET","$::K[0]","a"],["SET","$::K[1]","b"],}
    . qq{["ECHO","e"],["SET","$::K[2]","c"],["GET","$::K[2]"],["GET","$::K[1]"],}
    . qq{["INCR","$::K[0]"],["GET","$::K[0]"],["MGET","$::K[0]","$::K[1]","$::K[2]"],}
    . qq{["DEL","$::K[0]","$::K[1]","nokey-$$"],["EXISTS","$::K[0]","$::K[1]","$::K[2]"],}
    . qq{["PING"]]})
--- response_body eval
'[{"result":"OK"},{"result":"OK"},{"result":"e"},{"result":"OK"},'
. '{"result":"c"},{"result":"b"},'
. '{"error":"ERR value is not an integer or out of range"},{"result":"a"},'
. '{"result":["a","b","c"]},{"result":2},{"result":1},{"result":"PONG"}]'
--- no_error_log
[error]
[crit]



=== TEST 5: FLUSHALL, then DBSIZE sums, KEYS concatenates, SCAN goes node after node
--- request eval
[main::post('', '["FLUSHALL"]'),
 main::post('', qq{["MSET","$::K[2]","c","$::K[0]","a","$::K[1]","b"]}),
 main::post('', '["DBSIZE"]'),
 main::post('', '["KEYS","*"]'),
 main::post('', '["SCAN","0","COUNT","100"]'),
 main::post('', '["SCAN","1","COUNT","100"]'),
 main::post('', '["SCAN","2","COUNT","100"]')]
--- response_body eval
['{"result":"OK"}', '{"result":"OK"}', '{"result":3}',
 qq{{"result":["$::K[0]","$::K[1]","$::K[2]"]}},
 qq{{"result":["1",["$::K[0]"]]}}, qq{{"result":["2",["$::K[1]"]]}},
 qq{{"result":["0",["$::K[2]"]]}}]
--- no_error_log
[error]
[crit]



=== TEST 6: SCAN cursors: not a number, too large, past the last node
--- request eval
[main::post('', '["SCAN","abc"]'),
 main::post('', '["SCAN","18446744073709551616"]'),
 main::post('', '["SCAN","123456789012345678901234"]'),
 main::post('', '["SCAN","1023","COUNT","100"]'),
 main::post('', '["SCAN","18446744073709551615","COUNT","100"]'),
 main::post('', '["SCAN"]')]
--- error_code eval
[400, 400, 400, 200, 200, 400]
--- response_body eval
['{"error":"ERR invalid cursor"}', '{"error":"ERR invalid cursor"}',
 '{"error":"ERR invalid cursor"}', qq{{"result":["0",["$::K[2]"]]}},
 qq{{"result":["0",["$::K[2]"]]}},
 q{{"error":"ERR wrong number of arguments for 'scan' command"}}]
--- no_error_log
[alert]
[crit]



=== TEST 7: /multi-exec: keys of several slots 400 CROSSSLOT, nothing sent; one slot's served; keyless served
--- request eval
[main::post('/multi-exec', qq{[["SET","$::K[0]","x"],["SET","$::K[1]","y"]]}),
 main::post('/multi-exec', qq{[["SET","{tx$$}:a","1"],["INCRBY","{tx$$}:a","4"],}
                         . qq{["GET","{tx$$}:a"],["LPUSH","{tx$$}:a","z"]]}),
 main::post('/multi-exec', '[["PING"],["ECHO","hi"]]'),
 main::post('', qq{["MGET","$::K[0]","$::K[1]"]})]
--- error_code eval
[400, 200, 200, 200]
--- response_body eval
[q{{"error":"CROSSSLOT Keys in request don't hash to the same slot"}},
 '[{"result":"OK"},{"result":5},{"result":"5"},'
 . '{"error":"WRONGTYPE Operation against a key holding the wrong kind of value"}]',
 '[{"result":"PONG"},{"result":"hi"}]',
 '{"result":["a","b"]}']
--- no_error_log
[crit]



=== TEST 8: SCRIPT LOAD on every primary: EVALSHA on each node's key; SCRIPT FLUSH on every primary
--- request eval
[main::post('', qq{["SCRIPT","LOAD","$::Script"]}),
 (map { main::post('', qq{["EVALSHA","$::Sha","1","$::K[$_]","n$_"]}) } 0 .. 2),
 main::post('', qq{["SCRIPT","EXISTS","$::Sha","0000000000000000000000000000000000000000"]}),
 main::post('', '["SCRIPT","FLUSH"]'),
 main::post('', qq{["EVALSHA","$::Sha","1","$::K[1]","x"]}),
 main::post('', qq{["SCRIPT","EXISTS","$::Sha"]})]
--- error_code eval
[200, 200, 200, 200, 200, 200, 400, 200]
--- response_body eval
[qq{{"result":"$::Sha"}}, '{"result":["a","n0"]}', '{"result":["b","n1"]}',
 '{"result":["c","n2"]}', '{"result":[1,0]}', '{"result":"OK"}',
 '{"error":"NOSCRIPT No matching script. Please use EVAL."}',
 '{"result":[0]}']
--- no_error_log
[crit]



=== TEST 9: MOVED: the slot of a key given to another primary behind the gateway's back
--- init
RedisGate::Test::http_get("/redis/$main::C/get/$main::Moved");
main::assign_slot($main::MovedSlot, $main::Order[1]);
--- request eval
["GET /redis/$::C/set/$::Moved/moved",
 "GET /redis/$::C/get/$::Moved",
 main::post('', qq{["MGET","$::K[0]","$::Moved","$::K[2]"]}),
 main::post('/pipeline', qq{[["GET","$::Moved"],["GET","$::K[1]"]]})]
--- response_body eval
['{"result":"OK"}', '{"result":"moved"}', '{"result":["a","moved","c"]}',
 '[{"result":"moved"},{"result":"b"}]']
--- no_error_log
[error]
[crit]



=== TEST 10: ... it was written there; moved back (empty), the gateway follows again
--- init
my $v = main::cli($main::Order[1], 'GET', $main::Moved);
die "$main::Moved on $main::Order[1]: '$v'\n" unless $v eq 'moved';
main::cli($main::Order[1], 'DEL', $main::Moved);
main::assign_slot($main::MovedSlot, $main::Order[0]);
--- request eval
["GET /redis/$::C/set/$::Moved/back",
 "GET /redis/$::C/get/$::Moved"]
--- response_body eval
['{"result":"OK"}', '{"result":"back"}']
--- no_error_log
[error]
[crit]



=== TEST 11: ASK: a slot half migrated; the moved key, the key left, a new key
--- init
my $v = main::cli($main::Order[0], 'GET', $main::Moved);
die "$main::Moved on $main::Order[0]: '$v'\n" unless $v eq 'back';
my ($src, $dst) = @main::Order[0, 1];
my $n = main::primaries();
main::cli_ok($src, 'SET', $main::A[0], 'one');
main::cli_ok($src, 'SET', $main::A[1], 'two');
main::cli_ok($dst, 'CLUSTER', 'SETSLOT', $main::AskSlot, 'IMPORTING', $n->{$src}{id});
main::cli_ok($src, 'CLUSTER', 'SETSLOT', $main::AskSlot, 'MIGRATING', $n->{$dst}{id});
main::cli_ok($src, 'MIGRATE', '127.0.0.1', $dst, $main::A[0], 0, 5000);
--- request eval
["GET /redis/$::C/get/$::A[0]",
 "GET /redis/$::C/get/$::A[1]",
 "GET /redis/$::C/set/$::A[2]/three",
 main::post('/pipeline', qq{[["GET","$::A[0]"],["ECHO","x"],["GET","$::A[1]"],}
                       . qq{["GET","$::A[2]"],["GET","$::K[2]"]]})]
--- response_body eval
['{"result":"one"}', '{"result":"two"}', '{"result":"OK"}',
 '[{"result":"one"},{"result":"x"},{"result":"two"},{"result":"three"},'
 . '{"result":"c"}]']
--- no_error_log
[error]
[crit]



=== TEST 12: TRYAGAIN: keys of that slot on both nodes, waited out 5 times (3.1 s), then 500
--- request eval
main::post('', qq{["MGET","$::A[0]","$::A[1]"]})
--- error_code: 500
--- response_body eval
qq{{"error":"$::Down"}}
--- error_log eval
qr/\[error\] .*redisgate: redis-cluster:\/\/[\d.:,]+\/0 still answers "TRYAGAIN[^"]*" after 5 tries/
--- no_error_log
[crit]
--- timeout: 15



=== TEST 13: a client that leaves while a TRYAGAIN is waited out
--- request eval
main::post('/pipeline', qq{[["GET","$::K[0]"],["MGET","$::A[0]","$::A[1]"],["GET","$::K[1]"]]})
--- timeout: 0.5
--- abort
--- ignore_response
--- wait: 4
--- no_error_log
[crit]



=== TEST 14: a transaction on the half-moved slot ends (whatever its answer)
--- request eval
main::post("/multi-exec", qq{[["GET","$::A[0]"],["INCR","$::Tag:4"]]})
--- ignore_response
--- timeout: 15
--- no_error_log
[crit]



=== TEST 15: the slot's migration finished: MOVED to the new owner for every key
--- init
my ($src, $dst) = @main::Order[0, 1];
main::cli_ok($src, 'MIGRATE', '127.0.0.1', $dst, '', 0, 5000, 'KEYS', $main::A[1]);
main::assign_slot($main::AskSlot, $dst);
--- request eval
["GET /redis/$::C/get/$::A[0]",
 "GET /redis/$::C/get/$::A[2]",
 main::post('', qq{["MGET","$::A[0]","$::A[1]","$::A[2]"]}),
 main::post('/multi-exec', qq{[["GET","$::A[0]"],["INCR","$::A[1]"]]})]
--- error_code eval
[200, 200, 200, 200]
--- response_body eval
['{"result":"one"}', '{"result":"three"}',
 '{"result":["one","two","three"]}',
 '[{"result":"one"},{"error":"ERR value is not an integer or out of range"}]']
--- no_error_log
[error]
[crit]



=== TEST 16: no seed answers: 500, at once again within the second
--- request eval
["GET /redis/$::ENV{TEST_NGINX_DEAD_INSTANCE}/get/x",
 "GET /redis/$::ENV{TEST_NGINX_DEAD_INSTANCE}/set/x/1",
 "POST /redis/$::ENV{TEST_NGINX_DEAD_INSTANCE}/pipeline\n[[\"GET\",\"a\"],[\"DBSIZE\"]]"]
--- error_code eval
[500, 500, 500]
--- response_body eval
[$::NoMap, $::NoMap, $::NoMap]
--- error_log eval
[qr/\[error\] .*redisgate: could not connect to Redis at cluster seed 127\.0\.0\.1:\d+/,
 qr/\[error\] .*redisgate: no seed of redis-cluster:\/\/127\.0\.0\.1:\d+,127\.0\.0\.1:\d+\/0 gave the slot map/]
--- no_error_log
[crit]



=== TEST 17: the first seed down, the second up: served
--- request eval
["GET /redis/$::ENV{TEST_NGINX_FIRSTDOWN_INSTANCE}/set/$::K[2]/fd",
 "GET /redis/$::ENV{TEST_NGINX_FIRSTDOWN_INSTANCE}/get/$::K[2]",
 "GET /redis/$::C/get/$::K[2]"]
--- response_body eval
['{"result":"OK"}', '{"result":"fd"}', '{"result":"fd"}']
--- error_log eval
qr/could not connect to Redis at cluster seed 127\.0\.0\.1:\d+: Connection refused/
--- no_error_log
[crit]



=== TEST 18: the key store's cluster address; and one in database 3: 500, the reason in the log
--- more_headers
Authorization: Bearer $TEST_NGINX_KS_TOKEN
--- request eval
["GET /redis/$::ENV{TEST_NGINX_KS_CLUSTER_INSTANCE}/get/$::K[2]",
 "POST /redis/$::ENV{TEST_NGINX_KS_CLUSTER_INSTANCE}\n[\"MGET\",\"$::K[0]\",\"$::K[1]\",\"$::K[2]\"]",
 "POST /redis/$::ENV{TEST_NGINX_KS_CLUSTER_INSTANCE}/pipeline\n[[\"SET\",\"$::K[0]\",\"ks\"],[\"GET\",\"$::K[1]\"],[\"EXISTS\",\"$::K[0]\",\"$::K[1]\",\"$::K[2]\"]]",
 "GET /redis/$::ENV{TEST_NGINX_KS_DB3_INSTANCE}/get/$::K[0]"]
--- error_code eval
[200, 200, 200, 500]
--- response_body eval
['{"result":"fd"}', '{"result":["a","b","fd"]}',
 '[{"result":"OK"},{"result":"b"},{"result":3}]',
 '{"error":"the instance\'s database is not 0: a cluster has database 0 only"}']
--- error_log eval
qr/\[error\] .*redisgate: key "[^"]+": the instance's database is not 0: a cluster has database 0 only/
--- no_error_log
[crit]



=== TEST 19: an idle key-store cluster backend is closed, and opened again by the next request
--- init
RedisGate::Test::http_get("/redis/$ENV{TEST_NGINX_KS_CLUSTER_INSTANCE}/get/$main::K[0]",
               $ENV{TEST_NGINX_KS_TOKEN});
sleep 5;
--- more_headers
Authorization: Bearer $TEST_NGINX_KS_TOKEN
--- request eval
["GET /redis/$::ENV{TEST_NGINX_KS_CLUSTER_INSTANCE}/get/$::K[0]",
 "POST /redis/$::ENV{TEST_NGINX_KS_CLUSTER_INSTANCE}\n[\"MGET\",\"$::K[0]\",\"$::K[1]\",\"$::K[2]\"]"]
--- response_body eval
['{"result":"ks"}', '{"result":["ks","b","fd"]}']
--- error_log eval
qr/redisgate: closing idle backend redis-cluster:\/\/127\.0\.0\.1:\d+\/0/
--- no_error_log
[crit]
--- skip_eval: 9: !$RedisGate::Test::Debug



=== TEST 20: a primary stopped: its keys 500, with the fixed texts
--- init
RedisGate::Test::http_get("/redis/$main::C/get/$main::K[2]");
main::stop_node($main::Order[2]);
--- request eval
["GET /redis/$::C/get/$::K[2]",
 "GET /redis/$::C/set/$::K[2]/x"]
--- error_code eval
[500, 500]
--- response_body_like eval
[qr/^\{"error":"Redis unavailable: (could not connect|connection lost|connection closed|the cluster is down or resharding)"\}$/,
 qr/^\{"error":"Redis unavailable: (could not connect|connection lost|connection closed|the cluster is down or resharding)"\}$/]
--- no_error_log
[crit]
--- timeout: 15



=== TEST 21: ... started again (empty: nothing is saved): served again
--- init
main::start_node();
--- request eval
["GET /redis/$::C/get/$::K[2]",
 "GET /redis/$::C/set/$::K[2]/back",
 main::post('', qq{["MGET","$::K[0]","$::K[1]","$::K[2]"]}),
 main::post('', '["FLUSHALL"]'),
 main::post('', '["DBSIZE"]')]
--- response_body eval
['{"result":null}', '{"result":"OK"}', '{"result":["ks","b","back"]}',
 '{"result":"OK"}', '{"result":0}']
--- no_error_log
[crit]
--- timeout: 15
