# What the gateway never runs, what operators change, and Lua scripts.

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::Nginx::Socket 'no_plan';
use RedisGate::Test;

repeat_each(1);
no_shuffle();
run_tests();

__DATA__

=== TEST 1: connection state is the gateway's
--- request eval
["GET /redis/$ENV{TEST_NGINX_INSTANCE}/select/2",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/auth/x",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/hello/3",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/quit",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/client/setname/x",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/CLIENT/KILL/ID/1"]
--- error_code eval
[400, 400, 400, 400, 400, 400]
--- response_body eval
["{\"error\":\"ERR command 'select' is not allowed through this gateway\"}",
 "{\"error\":\"ERR command 'auth' is not allowed through this gateway\"}",
 "{\"error\":\"ERR command 'hello' is not allowed through this gateway\"}",
 "{\"error\":\"ERR command 'quit' is not allowed through this gateway\"}",
 "{\"error\":\"ERR command 'client|setname' is not allowed through this gateway\"}",
 "{\"error\":\"ERR command 'client|kill' is not allowed through this gateway\"}"]



=== TEST 2: read-only CLIENT subcommands pass
--- request
GET /redis/$TEST_NGINX_INSTANCE/client/getname
--- response_body chomp
{"result":null}



=== TEST 3: blocking commands would stall a shared connection
--- request eval
["GET /redis/$ENV{TEST_NGINX_INSTANCE}/blpop/q/0",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/bzpopmin/q/0",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/wait/1/0",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/xread/COUNT/1/block/0/STREAMS/s/\$"]
--- error_code eval
[400, 400, 400, 400]
--- response_body_like eval
["'blpop' is not allowed", "'bzpopmin' is not allowed",
 "'wait' is not allowed", "'xread' is not allowed"]



=== TEST 4: XREAD without BLOCK is fine
--- request
POST /redis/$TEST_NGINX_INSTANCE
["XREAD", "COUNT", "1", "STREAMS", "nostream", "0"]
--- response_body chomp
{"result":null}



=== TEST 5: server-wide commands are denied for every key (MONITOR in a body; the /monitor route is a stream, t/160-stream.t)
--- request eval
["GET /redis/$ENV{TEST_NGINX_INSTANCE}/config/get/maxmemory",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/failover",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/shutdown",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/debug/sleep/1",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/swapdb/1/2",
 "POST /redis/$ENV{TEST_NGINX_INSTANCE}\n[\"MONITOR\"]",
 "POST /redis/$ENV{TEST_NGINX_INSTANCE}\n[\"SUBSCRIBE\",\"ch\"]",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/acl/list",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/script/kill"]
--- error_code eval
[400, 400, 400, 400, 400, 400, 400, 400, 400]
--- response_body_like eval
["'config\\|get' is not allowed", "'failover' is not allowed",
 "'shutdown' is not allowed", "'debug' is not allowed",
 "'swapdb' is not allowed", "'monitor' is not allowed",
 "'subscribe' is not allowed", "'acl\\|list' is not allowed",
 "'script\\|kill' is not allowed"]



=== TEST 6: a denied command hidden in a pipeline denies the whole request
--- request eval
["POST /redis/$ENV{TEST_NGINX_INSTANCE}/pipeline
[[\"SET\",\"pol:a\",\"1\"],[\"SELECT\",\"2\"]]",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/get/pol:a"]
--- error_code eval
[400, 200]
--- response_body eval
["{\"error\":\"ERR command 'select' is not allowed through this gateway\"}",
 '{"result":null}']



=== TEST 7: operators deny more
--- config
location /redis/ { redisgate_deny keys flushdb; redisgate; }
--- request eval
["GET /redis/$ENV{TEST_NGINX_INSTANCE}/keys/*",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/ping"]
--- error_code eval
[400, 200]
--- response_body eval
["{\"error\":\"ERR command 'keys' is not allowed through this gateway\"}",
 '{"result":"PONG"}']



=== TEST 8: operators allow what the gateway denies, down to a subcommand
--- config
location /redis/ { redisgate_allow config|get; redisgate; }
--- request eval
["GET /redis/$ENV{TEST_NGINX_INSTANCE}/config/get/maxmemory",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/config/set/maxmemory/0"]
--- error_code eval
[200, 400]
--- response_body_like eval
['^\{"result":\["maxmemory","\d+"\]\}$',
 "'config\\|set' is not allowed"]



=== TEST 9: lists inherit and add up from http to location
--- http_config
redisgate_deny echo;
--- config
location /redis/ { redisgate_deny ping; redisgate; }
--- request eval
["GET /redis/$ENV{TEST_NGINX_INSTANCE}/echo/x",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/ping",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/select/1"]
--- error_code eval
[400, 400, 400]



=== TEST 10: EVAL runs Lua
--- request
POST /redis/$TEST_NGINX_INSTANCE
["EVAL", "return redis.call('SET', KEYS[1], ARGV[1])", "1", "lua:k", "v"]
--- response_body chomp
{"result":"OK"}



=== TEST 11: @upstash/ratelimit's shebang flag is dropped, other flags kept
--- request eval
["POST /redis/$ENV{TEST_NGINX_INSTANCE}
[\"EVAL\", \"#!lua flags=allow-key-locking\\nreturn redis.call('GET', KEYS[1])\", \"1\", \"lua:k\"]",
 "POST /redis/$ENV{TEST_NGINX_INSTANCE}
[\"EVAL\", \"#!lua flags=no-writes,allow-key-locking\\nreturn redis.call('SET', KEYS[1], 'x')\", \"1\", \"lua:k\"]",
 "POST /redis/$ENV{TEST_NGINX_INSTANCE}
[\"SCRIPT\", \"LOAD\", \"#!lua flags=allow-key-locking,no-writes\\nreturn 1\"]"]
--- error_code eval
[200, 400, 200]
--- response_body_like eval
['^\{"result":"v"\}$',
 'Write commands are not allowed from read-only scripts',
 '^\{"result":"[0-9a-f]{40}"\}$']



=== TEST 12: Lua errors come back as Redis says them
--- request
POST /redis/$TEST_NGINX_INSTANCE
["EVALSHA", "0000000000000000000000000000000000000000", "0"]
--- error_code: 400
--- response_body_like chomp
^\{"error":"NOSCRIPT No matching script[^"]*"\}$



=== TEST 13: COPY into another database is refused; into its own, or without DB, it runs
--- request eval
["POST /redis/$ENV{TEST_NGINX_INSTANCE}
[\"SET\", \"copy:src\", \"v\"]",
 "POST /redis/$ENV{TEST_NGINX_INSTANCE}
[\"COPY\", \"copy:src\", \"copy:other\", \"DB\", \"2\"]",
 "POST /redis/$ENV{TEST_NGINX_INSTANCE}
[\"COPY\", \"copy:src\", \"copy:other\", \"REPLACE\", \"db\", \"0\"]",
 "POST /redis/$ENV{TEST_NGINX_INSTANCE}
[\"COPY\", \"copy:src\", \"copy:own\", \"DB\", \"1\", \"REPLACE\"]",
 "POST /redis/$ENV{TEST_NGINX_INSTANCE}
[\"COPY\", \"copy:src\", \"copy:plain\"]",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/mget/copy:own/copy:plain/copy:other"]
--- error_code eval
[200, 400, 400, 200, 200, 200]
--- response_body eval
['{"result":"OK"}',
 '{"error":"ERR COPY into another database (DB 2) is not allowed through this gateway: an instance is one database"}',
 '{"error":"ERR COPY into another database (DB 0) is not allowed through this gateway: an instance is one database"}',
 '{"result":1}',
 '{"result":1}',
 '{"result":["v","v",null]}']



=== TEST 14: ... and nothing reached database 2 of the server (another tenant's)
--- request
GET /redis/$TEST_NGINX_GLOBEX_INSTANCE/exists/copy:other
--- more_headers
Authorization: Bearer $TEST_NGINX_GLOBEX_TOKEN
--- response_body chomp
{"result":0}



=== TEST 15: a second COPY in a pipeline is checked too, and the whole pipeline is refused
--- request
POST /redis/$TEST_NGINX_INSTANCE/pipeline
[["COPY", "copy:src", "copy:p1", "REPLACE"], ["COPY", "copy:src", "copy:p2", "DB", "2"]]
--- error_code: 400
--- response_body chomp
{"error":"ERR COPY into another database (DB 2) is not allowed through this gateway: an instance is one database"}



=== TEST 16: a key in another organization's instance (database 2 of the server)
--- request
GET /redis/$TEST_NGINX_GLOBEX_INSTANCE/set/flush:globex/kept
--- more_headers
Authorization: Bearer $TEST_NGINX_GLOBEX_TOKEN
--- response_body chomp
{"result":"OK"}



=== TEST 17: FLUSHALL empties the instance's own database only, ASYNC kept, with the admin scope
--- request eval
["GET /redis/$ENV{TEST_NGINX_INSTANCE}/set/flush:acme/1",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/flushall/async",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/dbsize",
 "POST /redis/$ENV{TEST_NGINX_INSTANCE}/multi-exec
[[\"SET\", \"flush:m\", \"1\"], [\"FLUSHALL\"], [\"EXISTS\", \"flush:m\"]]"]
--- response_body eval
['{"result":"OK"}', '{"result":"OK"}', '{"result":0}',
 '[{"result":"OK"},{"result":"OK"},{"result":0}]']



=== TEST 18: ... the other database kept its key
--- request
GET /redis/$TEST_NGINX_GLOBEX_INSTANCE/get/flush:globex
--- more_headers
Authorization: Bearer $TEST_NGINX_GLOBEX_TOKEN
--- response_body chomp
{"result":"kept"}



=== TEST 19: FLUSHALL needs the admin scope, as FLUSHDB does
--- request
GET /redis/$TEST_NGINX_INSTANCE/flushall
--- more_headers
Authorization: Bearer $TEST_NGINX_WRITER_TOKEN
--- error_code: 403
--- response_body chomp
{"error":"Forbidden: this API key's scopes do not allow 'flushdb'"}
