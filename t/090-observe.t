# The operator's view: variables for log_format, a request URI without
# tokens, and redisgate_status in Prometheus' format.

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::Nginx::Socket 'no_plan';
use RedisGate::Test;

repeat_each(1);
no_shuffle();

$RedisGate::Test::ExtraHttpConfig = <<'_EOC_';
    redisgate_limit zone=redisgate_rates:1m rate=1000r/s burst=1000;

    # access lines into the error log, where the tests can read them
    log_format redisgate_test 'ACCESS $redisgate_request_uri '
        'org=$redisgate_organization key=$redisgate_key_id '
        'instance=$redisgate_instance cmd=$redisgate_command '
        'n=$redisgate_commands cache=$redisgate_cache '
        'rate=$redisgate_rate_limit redis=$redisgate_redis_time';
_EOC_

$RedisGate::Test::DefaultConfig = <<'_EOC_';
    location /redis/ {
        access_log logs/error.log redisgate_test;
        add_header X-RG "$redisgate_organization|$redisgate_key_id|$redisgate_command|$redisgate_commands|$redisgate_cache|$redisgate_rate_limit" always;
        redisgate;
    }

    location = /status {
        redisgate_status;
    }
_EOC_

run_tests();

__DATA__

=== TEST 1: variables of a path-style command
--- request
GET /redis/$TEST_NGINX_INSTANCE/SET/v1/x
--- response_headers
X-RG: acme|acme-admin|set|1|static|passed
--- response_body chomp
{"result":"OK"}
--- error_log eval
qr/ACCESS \/redis\/123e4567-e89b-12d3-a456-426614174000\/SET\/v1\/x org=acme key=acme-admin instance=123e4567-e89b-12d3-a456-426614174000 cmd=set n=1 cache=static rate=passed redis=\d+\.\d{3}/



=== TEST 2: a pipeline counts its commands, names the first
--- request
POST /redis/$TEST_NGINX_INSTANCE/pipeline
[["GET","v1"],["INCR","n1"],["PING"]]
--- response_headers
X-RG: acme|acme-admin|get|3|static|passed



=== TEST 3: ?_token= never reaches the access log
--- more_headers
X-Nothing: 1
--- request
GET /redis/$TEST_NGINX_INSTANCE/get/v1?_token=$TEST_NGINX_WRITER_TOKEN
--- response_body chomp
{"result":"x"}
--- error_log
ACCESS /redis/123e4567-e89b-12d3-a456-426614174000/get/v1?_token=*** org=acme key=acme-writer
--- no_error_log eval
[qr/ACCESS .*$ENV{TEST_NGINX_WRITER_TOKEN}/]



=== TEST 4: refused for its key: what is known is logged, no crash
--- more_headers
Authorization: Bearer rg_nope
--- request
GET /redis/$TEST_NGINX_INSTANCE/get/v1
--- error_code: 401
--- response_headers
X-RG: ||get|1||
--- error_log
ACCESS /redis/123e4567-e89b-12d3-a456-426614174000/get/v1 org=- key=- instance=123e4567-e89b-12d3-a456-426614174000 cmd=get n=1 cache=- rate=- redis=-



=== TEST 5: the status page counts what happened
--- request eval
["GET /redis/$ENV{TEST_NGINX_INSTANCE}/ping",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/lpush/only-a-key",
 "POST /redis/$ENV{TEST_NGINX_INSTANCE}/pipeline
[[\"PING\"],[\"PING\"]]",
 "GET /status"]
--- error_code eval
[200, 400, 200, 200]
--- response_headers eval
["", "", "", "Content-Type: text/plain; version=0.0.4"]
--- response_body_like eval
["PONG", "wrong number", "PONG",
 qr/^(?=.*redisgate_requests_total\{route="path",status="200"\} [1-9])(?=.*redisgate_requests_total\{route="path",status="400"\} [1-9])(?=.*redisgate_requests_total\{route="pipeline",status="200"\} [1-9])(?=.*redisgate_request_duration_seconds_bucket\{le="\+Inf"\} [1-9])(?=.*redisgate_request_duration_seconds_count [1-9])(?=.*redisgate_commands_total [1-9])(?=.*redisgate_backend_connections\{backend="redis:\/\/127\.0\.0\.1:\d+\/1"\} [1-9])(?=.*redisgate_backend_in_flight\{backend="redis:\/\/127\.0\.0\.1:\d+\/1"\} 0\n)(?=.*redisgate_backend_connects_total\{backend="redis:\/\/127\.0\.0\.1:\d+\/1"\} [1-9])/s]



=== TEST 6: the status page counts refusals too
--- more_headers
Authorization: Bearer rg_nope
--- request eval
["GET /redis/$ENV{TEST_NGINX_INSTANCE}/ping", "GET /status"]
--- error_code eval
[401, 200]
--- response_body_like eval
["Unauthorized", qr/redisgate_requests_total\{route="path",status="401"\} [1-9]/]



=== TEST 7: nginx's own error lines show the request without the token
--- http_config
limit_req_zone $binary_remote_addr zone=one:1m rate=1r/m;
--- config
location /redis/ {
    limit_req zone=one nodelay;
    redisgate;
}
--- more_headers
X-Nothing: 1
--- request eval
["GET /redis/$ENV{TEST_NGINX_INSTANCE}/ping?_token=$ENV{TEST_NGINX_ADMIN_TOKEN}",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/ping?_token=$ENV{TEST_NGINX_ADMIN_TOKEN}"]
--- error_code eval
[200, 503]
--- error_log eval
qr/limiting requests.*request: "GET \/redis\/123e4567-e89b-12d3-a456-426614174000\/ping\?_token=\*\*\* HTTP\/1\.1"/
--- no_error_log eval
[qr/\[(error|warn|notice|info)\].*$ENV{TEST_NGINX_ADMIN_TOKEN}/]
