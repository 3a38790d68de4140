# Plans' rates: a token bucket per organization, one token per command,
# 429 with Retry-After over it, RateLimit-* headers on every response.

use FindBin;
use lib "$FindBin::Bin/lib";

# buckets refill with the wall clock, and under valgrind (make valgrind)
# every request is tens of times slower: the counts below would drift
BEGIN {
    if ($ENV{REDISGATE_VALGRIND_DIR}) {
        require Test::More;
        Test::More::plan(skip_all => 'token buckets need real-time speed');
    }
}

use Test::Nginx::Socket 'no_plan';
use RedisGate::Test;

repeat_each(1);
no_shuffle();

my $port = $ENV{TEST_NGINX_REDIS_PORT};
our $Run = $$;

# a plan of 2 commands a second, burst 3, for an organization of the key
# store; nginx.conf's organizations get the zone's own rate
RedisGate::Test::admin('plan', 'set', "tiny-$Run", 2, 3);
my $org = RedisGate::Test::admin('org', 'create', "limited-$Run",
                                 '--plan', "tiny-$Run")->{organization_id};
$ENV{TEST_NGINX_RL_INSTANCE} = RedisGate::Test::admin('instance', 'create',
    $org, 'cache', "127.0.0.1:$port", '--db', 8)->{instance_id};
$ENV{TEST_NGINX_RL_TOKEN} = RedisGate::Test::admin('key', 'create', $org,
    'app')->{token};

$RedisGate::Test::ExtraHttpConfig = <<'_EOC_';
    redisgate_pg "$TEST_NGINX_PG_CONNINFO";
    redisgate_cache zone=redisgate_keys:1m;
    redisgate_limit zone=redisgate_rates:1m rate=5r/s burst=5;
_EOC_

run_tests();

__DATA__

=== TEST 1: five commands pass, the sixth is refused, with the headers
--- request eval
[map { "GET /redis/$ENV{TEST_NGINX_INSTANCE}/ping" } 1 .. 7]
--- error_code eval
[200, 200, 200, 200, 200, 429, 429]
--- response_headers eval
["RateLimit-Limit: 5\nRateLimit-Remaining: 4\n!Retry-After",
 "RateLimit-Remaining: 3", "RateLimit-Remaining: 2",
 "RateLimit-Remaining: 1", "RateLimit-Remaining: 0",
 "RateLimit-Limit: 5\nRateLimit-Remaining: 0\nRetry-After: 1",
 "Retry-After: 1"]
--- response_body_like eval
['PONG', 'PONG', 'PONG', 'PONG', 'PONG',
 '^\{"error":"Too Many Requests: [^"]+"\}$', 'Too Many Requests']
--- error_log
over its rate



=== TEST 2: another organization has its own bucket
--- more_headers
Authorization: Bearer $TEST_NGINX_GLOBEX_TOKEN
--- request
GET /redis/$TEST_NGINX_GLOBEX_INSTANCE/ping
--- response_headers
RateLimit-Limit: 5
--- response_body chomp
{"result":"PONG"}



=== TEST 3: after Retry-After, the bucket has refilled
--- init
sleep 1;
--- request
GET /redis/$TEST_NGINX_INSTANCE/ping
--- error_code: 200
--- response_headers_like
RateLimit-Remaining: \d+
--- response_body chomp
{"result":"PONG"}



=== TEST 4: a pipeline costs one token per command
--- init
sleep 1;
--- request eval
["POST /redis/$ENV{TEST_NGINX_INSTANCE}/pipeline
[[\"PING\"],[\"PING\"],[\"PING\"]]",
 "POST /redis/$ENV{TEST_NGINX_INSTANCE}/pipeline
[[\"PING\"],[\"PING\"],[\"PING\"]]"]
--- error_code eval
[200, 429]
--- response_headers eval
["RateLimit-Remaining: 2", "RateLimit-Remaining: 2\nRetry-After: 1"]



=== TEST 5: the key store's plan sets the rate: 3 at once, then refused
--- more_headers
Authorization: Bearer $TEST_NGINX_RL_TOKEN
--- request eval
[map { "GET /redis/$ENV{TEST_NGINX_RL_INSTANCE}/ping" } 1 .. 4]
--- error_code eval
[200, 200, 200, 429]
--- response_headers eval
["RateLimit-Limit: 3\nRateLimit-Remaining: 2", "RateLimit-Remaining: 1",
 "RateLimit-Remaining: 0", "RateLimit-Limit: 3\nRetry-After: 1"]



=== TEST 6: a request over the limit never reaches Redis
--- init
sleep 1;
--- request eval
["POST /redis/$ENV{TEST_NGINX_INSTANCE}/pipeline
[[\"SET\",\"rl:n\",\"0\"],[\"INCR\",\"rl:n\"],[\"INCR\",\"rl:n\"],[\"INCR\",\"rl:n\"],[\"INCR\",\"rl:n\"]]",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/incr/rl:n"]
--- error_code eval
[200, 429]



=== TEST 7: ... checked later
--- init
sleep 1;
--- request
GET /redis/$TEST_NGINX_INSTANCE/get/rl:n
--- response_body chomp
{"result":"4"}



=== TEST 8: refused before the limit (no key): no RateLimit headers
--- more_headers
X-Nothing: 1
--- request
GET /redis/$TEST_NGINX_INSTANCE/ping
--- error_code: 401
--- response_headers
!RateLimit-Limit



=== TEST 9: a plan change reaches the limit within a second (NOTIFY)
--- init
RedisGate::Test::admin('plan', 'set', "tiny-$main::Run", 2, 7);
select(undef, undef, undef, 0.5);
--- more_headers
Authorization: Bearer $TEST_NGINX_RL_TOKEN
--- request
GET /redis/$TEST_NGINX_RL_INSTANCE/ping
--- response_headers
RateLimit-Limit: 7
--- response_body chomp
{"result":"PONG"}
