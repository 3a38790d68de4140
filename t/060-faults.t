# Redis away, Redis back, Redis silent, clients leaving: clean 500s, no
# crash, recovery.  Blocks with the same configuration share one nginx
# under the compat runner, so recovery is seen without a restart there.

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::Nginx::Socket 'no_plan';
use RedisGate::Test;

repeat_each(1);
no_shuffle();

$RedisGate::Test::ExtraHttpConfig = <<'_EOC_';
    redisgate_reconnect_backoff 50ms 200ms;
    redisgate_instance 11111111-2222-3333-4444-555555555555
        redis://127.0.0.1:$TEST_NGINX_SPARE_PORT organization=acme;
    redisgate_instance 66666666-7777-8888-9999-000000000000
        redis://127.0.0.1:$TEST_NGINX_SILENT_PORT organization=acme;
_EOC_

$RedisGate::Test::DefaultConfig = <<'_EOC_';
    location /redis/ {
        redisgate_timeout 300ms;
        redisgate;
    }
_EOC_

run_tests();

__DATA__

=== TEST 1: Redis is not there: 500 with a fixed message, the reason in the log, and fast again
--- init
RedisGate::Test::stop_spare_redis();
--- request eval
["GET /redis/11111111-2222-3333-4444-555555555555/ping",
 "GET /redis/11111111-2222-3333-4444-555555555555/ping"]
--- error_code eval
[500, 500]
--- response_body eval
['{"error":"Redis unavailable: could not connect"}',
 '{"error":"Redis unavailable: could not connect"}']
--- error_log eval
qr/could not connect to Redis at redis:\/\/127\.0\.0\.1:\d+\/0: Connection refused/
--- no_error_log
[alert]
[crit]



=== TEST 2: Redis comes up: the pool reconnects after the backoff
--- init
RedisGate::Test::start_spare_redis();
select(undef, undef, undef, 0.3);
--- request eval
["GET /redis/11111111-2222-3333-4444-555555555555/set/f/1",
 "GET /redis/11111111-2222-3333-4444-555555555555/get/f"]
--- error_code eval
[200, 200]
--- response_body eval
['{"result":"OK"}', '{"result":"1"}']
--- no_error_log
[alert]
[crit]



=== TEST 3: Redis goes away under a live connection
--- init
RedisGate::Test::stop_spare_redis();
--- request eval
["GET /redis/11111111-2222-3333-4444-555555555555/get/f",
 "GET /redis/11111111-2222-3333-4444-555555555555/get/f"]
--- error_code eval
[500, 500]
--- response_body_like eval
['^\{"error":"Redis unavailable: (connection lost|could not connect)"\}$',
 '^\{"error":"Redis unavailable: could not connect"\}$']
--- no_error_log
[alert]
[crit]



=== TEST 4: ... and comes back
--- init
RedisGate::Test::start_spare_redis();
select(undef, undef, undef, 0.5);
--- request
GET /redis/11111111-2222-3333-4444-555555555555/ping
--- response_body chomp
{"result":"PONG"}
--- no_error_log
[alert]
[crit]



=== TEST 5: a Redis that never answers: 500 after redisgate_timeout
--- init
RedisGate::Test::start_silent_server();
--- request eval
["GET /redis/66666666-7777-8888-9999-000000000000/ping",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/ping"]
--- error_code eval
[500, 200]
--- response_body eval
['{"error":"Redis command timed out"}', '{"result":"PONG"}']
--- error_log
did not answer in time, dropping the connection
--- no_error_log
[alert]
[crit]



=== TEST 6: a client that leaves while Redis works
--- request
GET /redis/66666666-7777-8888-9999-000000000000/ping
--- timeout: 0.1
--- abort
--- ignore_response
--- wait: 0.5
--- error_log
client prematurely closed connection
--- no_error_log
[alert]
[crit]



=== TEST 7: ... leaves nothing behind: the gateway still answers
--- request
GET /redis/$TEST_NGINX_INSTANCE/ping
--- response_body chomp
{"result":"PONG"}
--- no_error_log
[alert]
[crit]
