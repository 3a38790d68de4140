# Path-style commands: the seed's nine routes, percent-decoding, the body
# as last argument, query arguments, methods.

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::Nginx::Socket 'no_plan';
use RedisGate::Test;

repeat_each(1);
no_shuffle();
run_tests();

__DATA__

=== TEST 1: ping
--- request
GET /redis/$TEST_NGINX_INSTANCE/ping
--- error_code: 200
--- response_headers
Content-Type: application/json
--- response_headers_like
upstash-sync-token: \S+
--- response_body chomp
{"result":"PONG"}
--- no_error_log
[error]



=== TEST 2: set, the seed's example
--- request
GET /redis/$TEST_NGINX_INSTANCE/set/mykey/myvalue
--- response_body chomp
{"result":"OK"}



=== TEST 3: get
--- request
GET /redis/$TEST_NGINX_INSTANCE/get/mykey
--- response_body chomp
{"result":"myvalue"}



=== TEST 4: del, then get is null
--- request eval
["GET /redis/$ENV{TEST_NGINX_INSTANCE}/del/mykey",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/get/mykey"]
--- error_code eval
[200, 200]
--- response_body eval
['{"result":1}', '{"result":null}']



=== TEST 5: incr counts up
--- request eval
["GET /redis/$ENV{TEST_NGINX_INSTANCE}/del/counter",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/incr/counter",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/incr/counter"]
--- response_body eval
['{"result":0}', '{"result":1}', '{"result":2}']



=== TEST 6: hset and hget
--- request eval
["GET /redis/$ENV{TEST_NGINX_INSTANCE}/hset/user:1/name/john",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/hget/user:1/name"]
--- response_body_like eval
['^\{"result":[01]\}$', '^\{"result":"john"\}$']



=== TEST 7: lpush and lpop
--- request eval
["GET /redis/$ENV{TEST_NGINX_INSTANCE}/del/mylist",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/lpush/mylist/item1",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/lpop/mylist",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/lpop/mylist"]
--- response_body_like eval
['^\{"result":[01]\}$', '^\{"result":1\}$', '^\{"result":"item1"\}$',
 '^\{"result":null\}$']



=== TEST 8: command names in any case, the instance id in any case
--- request
GET /redis/123E4567-E89B-12D3-A456-426614174000/PiNg
--- response_body chomp
{"result":"PONG"}



=== TEST 9: percent-decoded segments: %2F is part of a key, not a separator
--- request eval
["GET /redis/$ENV{TEST_NGINX_INSTANCE}/set/a%2Fb%20c/%E2%9C%93%01x",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/strlen/a%2Fb%20c",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/get/a%2Fb%20c"]
--- response_body eval
['{"result":"OK"}', '{"result":5}', "{\"result\":\"\xe2\x9c\x93\\u0001x\"}"]



=== TEST 10: query arguments are appended in order, _token is not one
--- request eval
["GET /redis/$ENV{TEST_NGINX_INSTANCE}/set/q1/v?EX=100&NX",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/set/q1/w?NX&_token=$ENV{TEST_NGINX_ADMIN_TOKEN}",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/ttl/q1"]
--- response_body eval
['{"result":"OK"}', '{"result":null}', '{"result":100}']



=== TEST 11: a POST body is the last argument, before query arguments
--- request eval
["POST /redis/$ENV{TEST_NGINX_INSTANCE}/set/bodykey?EX=50
raw \"body\"\nwith a newline",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/get/bodykey",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/ttl/bodykey"]
--- response_body eval
['{"result":"OK"}', '{"result":"raw \"body\"\\nwith a newline"}',
 '{"result":50}']



=== TEST 12: PUT works like POST
--- request eval
["PUT /redis/$ENV{TEST_NGINX_INSTANCE}/set/putkey
put value",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/get/putkey"]
--- response_body eval
['{"result":"OK"}', '{"result":"put value"}']



=== TEST 13: HEAD runs the command and sends no body
--- request
HEAD /redis/$TEST_NGINX_INSTANCE/ping
--- error_code: 200
--- response_headers
Content-Type: application/json
Content-Length: 17
--- response_body



=== TEST 14: other methods: 405 with a JSON error and Allow
--- request
DELETE /redis/$TEST_NGINX_INSTANCE/del/x
--- error_code: 405
--- response_headers
Allow: GET, HEAD, POST, PUT
Content-Type: application/json
--- response_body chomp
{"error":"method DELETE is not allowed: use GET, HEAD, POST or PUT"}



=== TEST 15: no command
--- request
GET /redis/$TEST_NGINX_INSTANCE
--- error_code: 400
--- response_body chomp
{"error":"no command: use /{instance}/{command}/... or POST a JSON array"}



=== TEST 16: a Redis error is 400 with Redis's text
--- request
GET /redis/$TEST_NGINX_INSTANCE/lpush/onlykey
--- error_code: 400
--- response_body chomp
{"error":"ERR wrong number of arguments for 'lpush' command"}



=== TEST 17: malformed percent-encoding in the query
--- request
GET /redis/$TEST_NGINX_INSTANCE/get/k?x=%G1
--- error_code: 400
--- response_body chomp
{"error":"malformed percent-encoding in the URL"}



=== TEST 18: a trailing slash names no empty argument
--- request
GET /redis/$TEST_NGINX_INSTANCE/ping/
--- response_body chomp
{"result":"PONG"}



=== TEST 19: another location prefix
--- config
location /api/v1/redis/ { redisgate; }
--- request
GET /api/v1/redis/$TEST_NGINX_INSTANCE/echo/deep
--- response_body chomp
{"result":"deep"}



=== TEST 20: the sync token changes from one response to the next
--- request eval
["GET /redis/$ENV{TEST_NGINX_INSTANCE}/set/s/1",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/set/s/2"]
--- response_headers_like eval
["upstash-sync-token: [0-9a-f]+-[0-9a-f]+-[0-9a-f]+",
 "upstash-sync-token: [0-9a-f]+-[0-9a-f]+-[0-9a-f]+"]
--- response_body eval
['{"result":"OK"}', '{"result":"OK"}']



=== TEST 21: an instance on a unix socket, in its own database
--- request eval
["GET /redis/$ENV{TEST_NGINX_UNIX_INSTANCE}/set/where/unix",
 "GET /redis/$ENV{TEST_NGINX_UNIX_INSTANCE}/get/where",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/get/where"]
--- response_body eval
['{"result":"OK"}', '{"result":"unix"}', '{"result":null}']
