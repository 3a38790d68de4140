# Keys: Bearer or ?_token=, hashed, per organization, with scopes.  Tokens
# never reach the log.

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::Nginx::Socket 'no_plan';
use RedisGate::Test;

repeat_each(1);
no_shuffle();
run_tests();

__DATA__

=== TEST 1: no key
--- more_headers
X-Nothing: 1
--- request
GET /redis/$TEST_NGINX_INSTANCE/ping
--- error_code: 401
--- response_headers
Content-Type: application/json
--- response_body chomp
{"error":"Unauthorized: missing API key, send \"Authorization: Bearer <api key>\""}



=== TEST 2: an unknown key
--- more_headers
Authorization: Bearer rg_not_a_real_key
--- request
GET /redis/$TEST_NGINX_INSTANCE/ping
--- error_code: 401
--- response_body chomp
{"error":"Unauthorized: invalid API key"}
--- no_error_log eval
qr/redisgate:.*rg_not_a_real_key/



=== TEST 3: not a bearer token
--- more_headers
Authorization: Basic dXNlcjpwYXNz
--- request
GET /redis/$TEST_NGINX_INSTANCE/ping
--- error_code: 401
--- response_body chomp
{"error":"Unauthorized: expected \"Authorization: Bearer <api key>\""}



=== TEST 4: the scheme in any case, the header name in any case
--- more_headers
authorization: bEaReR $TEST_NGINX_ADMIN_TOKEN
--- request
GET /redis/$TEST_NGINX_INSTANCE/ping
--- response_body chomp
{"result":"PONG"}



=== TEST 5: ?_token= works, and is never logged
--- skip_eval: 7: !$RedisGate::Test::Debug
--- more_headers
X-Nothing: 1
--- request
GET /redis/$TEST_NGINX_INSTANCE/echo/hi?_token=$TEST_NGINX_WRITER_TOKEN
--- response_body chomp
{"result":"hi"}
--- error_log
key "acme-writer" of organization "acme" valid
--- no_error_log eval
[qr/redisgate:.*$ENV{TEST_NGINX_WRITER_TOKEN}/, "[error]"]



=== TEST 6: the header wins over ?_token=
--- more_headers
Authorization: Bearer rg_not_a_real_key
--- request
GET /redis/$TEST_NGINX_INSTANCE/ping?_token=$TEST_NGINX_ADMIN_TOKEN
--- error_code: 401
--- response_body chomp
{"error":"Unauthorized: invalid API key"}



=== TEST 7: a malformed instance id is 404, like an unknown one
--- request eval
["GET /redis/not-a-uuid/ping",
 "GET /redis/123e4567-e89b-12d3-a456-42661417400/ping",
 "GET /redis/00000000-0000-0000-0000-000000000000/ping"]
--- error_code eval
[404, 404, 404]
--- response_body eval
['{"error":"instance not found"}', '{"error":"instance not found"}',
 '{"error":"instance not found"}']



=== TEST 8: another organization's instance is 404, the same answer
--- more_headers
Authorization: Bearer $TEST_NGINX_GLOBEX_TOKEN
--- request
GET /redis/$TEST_NGINX_INSTANCE/ping
--- error_code: 404
--- response_body chomp
{"error":"instance not found"}



=== TEST 9: tenants do not see each other's data
--- more_headers
Authorization: Bearer $TEST_NGINX_GLOBEX_TOKEN
--- request eval
["GET /redis/$ENV{TEST_NGINX_GLOBEX_INSTANCE}/set/shared-name/globex",
 "GET /redis/$ENV{TEST_NGINX_GLOBEX_INSTANCE}/get/shared-name",
 "GET /redis/$ENV{TEST_NGINX_GLOBEX_INSTANCE}/dbsize"]
--- response_body_like eval
['^\{"result":"OK"\}$', '^\{"result":"globex"\}$', '^\{"result":1\}$']



=== TEST 10: ... from the other side
--- request eval
["GET /redis/$ENV{TEST_NGINX_INSTANCE}/get/shared-name",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/set/shared-name/acme",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/get/shared-name"]
--- response_body eval
['{"result":null}', '{"result":"OK"}', '{"result":"acme"}']



=== TEST 11: a read-only key reads
--- more_headers
Authorization: Bearer $TEST_NGINX_READER_TOKEN
--- request
GET /redis/$TEST_NGINX_INSTANCE/get/shared-name
--- response_body chomp
{"result":"acme"}



=== TEST 12: a read-only key may not write
--- more_headers
Authorization: Bearer $TEST_NGINX_READER_TOKEN
--- request
GET /redis/$TEST_NGINX_INSTANCE/set/shared-name/x
--- error_code: 403
--- response_body chomp
{"error":"Forbidden: this API key's scopes do not allow 'set'"}



=== TEST 13: ... not inside a pipeline either, and nothing of it runs
--- more_headers
Authorization: Bearer $TEST_NGINX_READER_TOKEN
--- request eval
["POST /redis/$ENV{TEST_NGINX_INSTANCE}/pipeline
[[\"GET\",\"shared-name\"],[\"DEL\",\"shared-name\"]]",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/get/shared-name"]
--- error_code eval
[403, 200]
--- response_body eval
['{"error":"Forbidden: this API key\'s scopes do not allow \'del\'"}',
 '{"result":"acme"}']



=== TEST 14: ... nor inside multi-exec
--- more_headers
Authorization: Bearer $TEST_NGINX_READER_TOKEN
--- request
POST /redis/$TEST_NGINX_INSTANCE/multi-exec
[["GET","shared-name"],["SET","shared-name","x"]]
--- error_code: 403
--- response_body chomp
{"error":"Forbidden: this API key's scopes do not allow 'set'"}



=== TEST 15: unknown commands need write
--- more_headers
Authorization: Bearer $TEST_NGINX_READER_TOKEN
--- request
GET /redis/$TEST_NGINX_INSTANCE/module.command/x
--- error_code: 403
--- response_body chomp
{"error":"Forbidden: this API key's scopes do not allow 'module.command'"}



=== TEST 16: FLUSHDB needs admin
--- more_headers
Authorization: Bearer $TEST_NGINX_WRITER_TOKEN
--- request
GET /redis/$TEST_NGINX_INSTANCE/flushdb
--- error_code: 403
--- response_body chomp
{"error":"Forbidden: this API key's scopes do not allow 'flushdb'"}



=== TEST 17: RedisGate's debug lines name the key, never the token
--- skip_eval: 8: !$RedisGate::Test::Debug
--- request
GET /redis/$TEST_NGINX_INSTANCE/ping
--- response_body chomp
{"result":"PONG"}
--- error_log
key "acme-admin" of organization "acme" valid for instance 123e4567-e89b-12d3-a456-426614174000
redisgate: 1 command(s) to redis://127.0.0.1:
--- no_error_log eval
[qr/redisgate:.*$ENV{TEST_NGINX_ADMIN_TOKEN}/, "[error]"]




=== TEST 18: a read-only key pings, echoes and runs read-only scripts
--- more_headers
Authorization: Bearer $TEST_NGINX_READER_TOKEN
--- request eval
["GET /redis/$ENV{TEST_NGINX_INSTANCE}/ping",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/echo/x",
 "POST /redis/$ENV{TEST_NGINX_INSTANCE}
[\"EVAL_RO\", \"return redis.call('GET', KEYS[1])\", \"1\", \"shared-name\"]"]
--- response_body eval
['{"result":"PONG"}', '{"result":"x"}', '{"result":"acme"}']



=== TEST 19: scripts that may write and publishing need write
--- more_headers
Authorization: Bearer $TEST_NGINX_READER_TOKEN
--- request eval
["POST /redis/$ENV{TEST_NGINX_INSTANCE}
[\"EVAL\", \"return 1\", \"0\"]",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/publish/ch/msg"]
--- error_code eval
[403, 403]
--- response_body eval
["{\"error\":\"Forbidden: this API key's scopes do not allow 'eval'\"}",
 "{\"error\":\"Forbidden: this API key's scopes do not allow 'publish'\"}"]
