# Redis Sentinel (redis-sentinel://): the sentinel of t/run-tests
# ($TEST_NGINX_SENTINEL_PORT) names the test Redis as the primary
# "redisgate".  Served through it from nginx.conf and from the key store;
# a first sentinel that is down; a name it does not know, credentials it
# refuses (each a JSON 500 with the fixed message and the reason in the
# log); the subscription for +switch-master lost; an idle key-store backend
# closed and opened again.  Failovers are in t/client/sentinel.test.mjs
# (they need replicas and several sentinels); these blocks are here to run
# the same paths under make asan and make valgrind.

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::Nginx::Socket 'no_plan';
use RedisGate::Test;
use IO::Socket::INET;

repeat_each(1);
no_shuffle();

my $sentinel = $ENV{TEST_NGINX_SENTINEL_PORT}
    // die "TEST_NGINX_SENTINEL_PORT is not set: run the suites with"
         . " t/run-tests\n";
my $redis = $ENV{TEST_NGINX_REDIS_PORT};
my $spare = $ENV{TEST_NGINX_SPARE_PORT};     # nothing listens there here

# nginx.conf's instances, all in database 4 of the test Redis
my %inst = (
    SENTINEL  => "redis-sentinel://127.0.0.1:$sentinel/redisgate/4",
    DB4       => "redis://127.0.0.1:$redis/4",
    FIRSTDOWN => "redis-sentinel://127.0.0.1:$spare,127.0.0.1:$sentinel"
                 . "/redisgate/4",
    UNKNOWN   => "redis-sentinel://127.0.0.1:$sentinel/nosuchname/4",
    # the sentinel has no password: it refuses any AUTH
    SPW       => "redis-sentinel://127.0.0.1:$sentinel/redisgate/4"
                 . '?sentinel_password=nopass',
    SUSER     => "redis-sentinel://127.0.0.1:$sentinel/redisgate/4"
                 . '?sentinel_user=gate&sentinel_password=nopass',
);

RedisGate::Test::add_instances('5e5e5e5e', %inst);

# the key store's: the primary's database is the instance's column
my $org = RedisGate::Test::admin('org', 'create', "sentinel-$$")
    ->{organization_id};
$ENV{TEST_NGINX_KS_SENTINEL_INSTANCE} = RedisGate::Test::admin('instance',
    'create', $org, 'sentinel', "redis-sentinel://127.0.0.1:$sentinel/redisgate",
    '--db', 4)->{instance_id};
$ENV{TEST_NGINX_KS_UNKNOWN_INSTANCE} = RedisGate::Test::admin('instance',
    'create', $org, 'unknown', "redis-sentinel://127.0.0.1:$sentinel/nosuchname")
    ->{instance_id};
$ENV{TEST_NGINX_KS_TOKEN} = RedisGate::Test::admin('key', 'create', $org,
                                                   'app')->{token};

# idle key-store backends close after 2 to 4 s (TEST 10)
$RedisGate::Test::ExtraHttpConfig .= <<'_EOC_';
    redisgate_pg "$TEST_NGINX_PG_CONNINFO";
    redisgate_cache zone=redisgate_keys:1m;
    redisgate_idle_timeout 2s;
_EOC_

# redis-cli to the sentinel
sub sentinel_cli {
    my $out = `redis-cli -h 127.0.0.1 -p $sentinel @_`;
    die "redis-cli @_ failed\n" if $?;
    chomp $out;
    return $out;
}

our $NoSentinel =
    '{"error":"Redis unavailable: no sentinel knows the primary"}';

run_tests();

__DATA__

=== TEST 1: SET and GET through the sentinel, in database 4 of the primary it names
--- request eval
["GET /redis/$ENV{TEST_NGINX_SENTINEL_INSTANCE}/set/sentinel:t/1",
 "GET /redis/$ENV{TEST_NGINX_SENTINEL_INSTANCE}/get/sentinel:t",
 "GET /redis/$ENV{TEST_NGINX_DB4_INSTANCE}/get/sentinel:t",
 "POST /redis/$ENV{TEST_NGINX_SENTINEL_INSTANCE}/pipeline
[[\"SET\",\"sentinel:p\",\"2\"],[\"GET\",\"sentinel:p\"],[\"GET\",\"sentinel:t\"]]"]
--- response_body eval
['{"result":"OK"}', '{"result":"1"}', '{"result":"1"}',
 '[{"result":"OK"},{"result":"2"},{"result":"1"}]']
--- no_error_log
[error]
[crit]



=== TEST 2: the first sentinel of the list is down: the second names the primary
--- request eval
["GET /redis/$ENV{TEST_NGINX_FIRSTDOWN_INSTANCE}/set/sentinel:fd/3",
 "GET /redis/$ENV{TEST_NGINX_FIRSTDOWN_INSTANCE}/get/sentinel:fd",
 "GET /redis/$ENV{TEST_NGINX_DB4_INSTANCE}/get/sentinel:fd"]
--- response_body eval
['{"result":"OK"}', '{"result":"3"}', '{"result":"3"}']
--- error_log eval
qr/could not connect to Redis at sentinel 127\.0\.0\.1:\d+: Connection refused/
--- no_error_log
[crit]



=== TEST 3: a name the sentinel does not know: 500, at once again within the second
--- request eval
["GET /redis/$ENV{TEST_NGINX_UNKNOWN_INSTANCE}/get/sentinel:t",
 "GET /redis/$ENV{TEST_NGINX_UNKNOWN_INSTANCE}/set/sentinel:t/x"]
--- error_code eval
[500, 500]
--- response_body eval
[$main::NoSentinel, $main::NoSentinel]
--- error_log eval
[qr/\[error\] .*redisgate: sentinel 127\.0\.0\.1:\d+ does not know a primary named "nosuchname"/,
 qr/\[error\] .*redisgate: no sentinel of redis-sentinel:\/\/127\.0\.0\.1:\d+\/nosuchname\/4 named the primary "nosuchname"/]
--- no_error_log
[crit]



=== TEST 4: ... and nothing was written
--- request
GET /redis/$TEST_NGINX_DB4_INSTANCE/get/sentinel:t
--- response_body chomp
{"result":"1"}



=== TEST 5: a sentinel password given to a sentinel that has none: its AUTH error, then 500
--- request
GET /redis/$TEST_NGINX_SPW_INSTANCE/get/sentinel:t
--- error_code: 500
--- response_body eval
$main::NoSentinel
--- error_log eval
[qr/\[error\] .*redisgate: authentication failed at sentinel 127\.0\.0\.1:\d+: ERR AUTH <password> called without any password configured/,
 qr/no sentinel of redis-sentinel:\/\/127\.0\.0\.1:\d+\/redisgate\/4 named the primary "redisgate"/]
--- no_error_log
nopass
[crit]



=== TEST 6: a sentinel user it does not have: WRONGPASS, then 500
--- request
GET /redis/$TEST_NGINX_SUSER_INSTANCE/get/sentinel:t
--- error_code: 500
--- response_body eval
$main::NoSentinel
--- error_log eval
qr/\[error\] .*redisgate: authentication failed at sentinel 127\.0\.0\.1:\d+: WRONGPASS/
--- no_error_log
nopass
[crit]



=== TEST 7: the subscription to the sentinel is closed: still served, and the sentinel asked again
--- init
RedisGate::Test::http_get("/redis/$ENV{TEST_NGINX_SENTINEL_INSTANCE}/get/sentinel:t",
               $RedisGate::Test::Tokens{ADMIN});
select(undef, undef, undef, 0.3);
main::sentinel_cli('CLIENT', 'KILL', 'TYPE', 'pubsub') >= 1
    or die "no subscriber on the sentinel\n";
select(undef, undef, undef, 0.3);
--- request eval
["GET /redis/$ENV{TEST_NGINX_SENTINEL_INSTANCE}/set/sentinel:w/4",
 "GET /redis/$ENV{TEST_NGINX_SENTINEL_INSTANCE}/get/sentinel:w",
 "GET /redis/$ENV{TEST_NGINX_DB4_INSTANCE}/get/sentinel:w"]
--- response_body eval
['{"result":"OK"}', '{"result":"4"}', '{"result":"4"}']
--- error_log eval
qr/\[info\] .*redisgate: Redis at sentinel 127\.0\.0\.1:\d+ closed an idle connection/
--- no_error_log
[crit]



=== TEST 8: the key store's sentinel address: database 4 from the instance's column
--- more_headers
Authorization: Bearer $TEST_NGINX_KS_TOKEN
--- request eval
["GET /redis/$ENV{TEST_NGINX_KS_SENTINEL_INSTANCE}/set/sentinel:ks/5",
 "GET /redis/$ENV{TEST_NGINX_KS_SENTINEL_INSTANCE}/get/sentinel:ks",
 "POST /redis/$ENV{TEST_NGINX_KS_SENTINEL_INSTANCE}/pipeline
[[\"GET\",\"sentinel:ks\"],[\"GET\",\"sentinel:t\"]]"]
--- response_body eval
['{"result":"OK"}', '{"result":"5"}', '[{"result":"5"},{"result":"1"}]']
--- no_error_log
[error]
[crit]



=== TEST 9: the key store's address with a name the sentinel does not know: 500
--- more_headers
Authorization: Bearer $TEST_NGINX_KS_TOKEN
--- request
GET /redis/$TEST_NGINX_KS_UNKNOWN_INSTANCE/get/sentinel:ks
--- error_code: 500
--- response_body eval
$main::NoSentinel
--- error_log eval
[qr/\[error\] .*redisgate: sentinel 127\.0\.0\.1:\d+ does not know a primary named "nosuchname"/,
 qr/\[error\] .*redisgate: no sentinel of redis-sentinel:\/\/127\.0\.0\.1:\d+\/nosuchname\/0 named the primary "nosuchname"/]
--- no_error_log
[crit]



=== TEST 10: an idle key-store backend on a sentinel is closed, and opened again by the next request
--- init
RedisGate::Test::http_get("/redis/$ENV{TEST_NGINX_KS_SENTINEL_INSTANCE}/get/sentinel:ks",
               $ENV{TEST_NGINX_KS_TOKEN});
sleep 5;
--- more_headers
Authorization: Bearer $TEST_NGINX_KS_TOKEN
--- request eval
["GET /redis/$ENV{TEST_NGINX_KS_SENTINEL_INSTANCE}/get/sentinel:ks",
 "GET /redis/$ENV{TEST_NGINX_KS_SENTINEL_INSTANCE}/incr/sentinel:ks"]
--- response_body eval
['{"result":"5"}', '{"result":6}']
--- error_log eval
qr/redisgate: closing idle backend redis-sentinel:\/\/127\.0\.0\.1:\d+\/redisgate\/4/
--- no_error_log
[crit]
--- skip_eval: 9: !$RedisGate::Test::Debug
