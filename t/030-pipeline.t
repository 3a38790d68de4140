# /pipeline and /multi-exec.

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::Nginx::Socket 'no_plan';
use RedisGate::Test;

repeat_each(1);
no_shuffle();
run_tests();

__DATA__

=== TEST 1: a pipeline answers one entry per command, in order
--- request
POST /redis/$TEST_NGINX_INSTANCE/pipeline
[["SET","p:a","1"],["GET","p:a"],["INCR","p:a"],["GET","p:missing"]]
--- error_code: 200
--- response_headers
Content-Type: application/json
--- response_body chomp
[{"result":"OK"},{"result":"1"},{"result":2},{"result":null}]
--- no_error_log
[error]



=== TEST 2: a failing entry does not fail the pipeline
--- request
POST /redis/$TEST_NGINX_INSTANCE/pipeline
[["SET","p:s","x"],["INCR","p:s"],["LPUSH","p:s"],["GET","p:s"]]
--- error_code: 200
--- response_body chomp
[{"result":"OK"},{"error":"ERR value is not an integer or out of range"},{"error":"ERR wrong number of arguments for 'lpush' command"},{"result":"x"}]



=== TEST 3: 1000 commands
--- request eval
"POST /redis/$ENV{TEST_NGINX_INSTANCE}/pipeline
[" . join(",", map { "[\"ECHO\",\"$_\"]" } 1 .. 1000) . "]"
--- response_body eval
"[" . join(",", map { "{\"result\":\"$_\"}" } 1 .. 1000) . "]"



=== TEST 4: more than redisgate_max_commands
--- config
location /redis/ { redisgate_max_commands 3; redisgate; }
--- request
POST /redis/$TEST_NGINX_INSTANCE/pipeline
[["PING"],["PING"],["PING"],["PING"]]
--- error_code: 400
--- response_body chomp
{"error":"too many commands in one request"}



=== TEST 5: base64 in pipeline entries, errors stay text
--- more_headers
Authorization: Bearer $TEST_NGINX_ADMIN_TOKEN
Upstash-Encoding: base64
--- request
POST /redis/$TEST_NGINX_INSTANCE/pipeline
[["SET","p:b","hi"],["GET","p:b"],["INCR","p:b"],["STRLEN","p:b"]]
--- response_body chomp
[{"result":"T0s="},{"result":"aGk="},{"error":"ERR value is not an integer or out of range"},{"result":2}]



=== TEST 6: a pipeline in RESP2
--- more_headers
Authorization: Bearer $TEST_NGINX_ADMIN_TOKEN
Upstash-Response-Format: resp2
--- request
POST /redis/$TEST_NGINX_INSTANCE/pipeline
[["ECHO","a"],["INCR","p:b"]]
--- response_body eval
"\$1\r\na\r\n-ERR value is not an integer or out of range\r\n"



=== TEST 7: an empty pipeline
--- request
POST /redis/$TEST_NGINX_INSTANCE/pipeline
[]
--- error_code: 400
--- response_body chomp
{"error":"empty pipeline"}



=== TEST 8: pipeline entries must be arrays
--- request
POST /redis/$TEST_NGINX_INSTANCE/pipeline
["GET","x"]
--- error_code: 400
--- response_body chomp
{"error":"each command must be a JSON array"}



=== TEST 9: GET on /pipeline
--- request
GET /redis/$TEST_NGINX_INSTANCE/pipeline
--- error_code: 405
--- response_body chomp
{"error":"/pipeline and /multi-exec take POST"}



=== TEST 10: multi-exec runs atomically and answers per command
--- request
POST /redis/$TEST_NGINX_INSTANCE/multi-exec
[["SET","m:a","1"],["INCR","m:a"],["LPUSH","m:a","x"],["GET","m:a"]]
--- error_code: 200
--- response_body chomp
[{"result":"OK"},{"result":2},{"error":"WRONGTYPE Operation against a key holding the wrong kind of value"},{"result":"2"}]



=== TEST 11: a transaction Redis refuses is 400 with one error
--- request eval
["POST /redis/$ENV{TEST_NGINX_INSTANCE}/multi-exec
[[\"SET\",\"m:b\",\"1\"],[\"NOSUCHCOMMAND\",\"m:b\"]]",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/get/m:b"]
--- error_code eval
[400, 200]
--- response_body_like eval
['^\{"error":"EXECABORT Transaction discarded because of previous errors: ERR unknown command .NOSUCHCOMMAND.[^"]*"\}$',
 '^\{"result":null\}$']



=== TEST 12: the connection is not left inside MULTI
--- request eval
["POST /redis/$ENV{TEST_NGINX_INSTANCE}/multi-exec
[[\"NOSUCHCOMMAND\"]]",
 "POST /redis/$ENV{TEST_NGINX_INSTANCE}
[\"SET\", \"m:c\", \"1\"]",
 "POST /redis/$ENV{TEST_NGINX_INSTANCE}
[\"GET\", \"m:c\"]"]
--- error_code eval
[400, 200, 200]
--- response_body_like eval
['EXECABORT', '^\{"result":"OK"\}$', '^\{"result":"1"\}$']



=== TEST 13: multi-exec has no RESP2 form
--- more_headers
Authorization: Bearer $TEST_NGINX_ADMIN_TOKEN
Upstash-Response-Format: resp2
--- request
POST /redis/$TEST_NGINX_INSTANCE/multi-exec
[["PING"]]
--- error_code: 400
--- response_body chomp
{"error":"Upstash-Response-Format: resp2 is not available for /multi-exec"}



=== TEST 14: MULTI and EXEC are the gateway's, not plain commands
--- request
POST /redis/$TEST_NGINX_INSTANCE/pipeline
[["MULTI"],["SET","m:d","1"],["EXEC"]]
--- error_code: 400
--- response_body chomp
{"error":"ERR command 'multi' is not allowed through this gateway"}



=== TEST 15: hashes as objects in pipelines, on request
--- more_headers
Authorization: Bearer $TEST_NGINX_ADMIN_TOKEN
RedisGate-Hash-Format: object
--- request
POST /redis/$TEST_NGINX_INSTANCE/pipeline
[["DEL","m:h"],["HSET","m:h","a","1"],["HGETALL","m:h"],["LRANGE","m:nolist",0,-1]]
--- response_body chomp
[{"result":0},{"result":1},{"result":{"a":"1"}},{"result":[]}]
