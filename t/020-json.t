# JSON commands: POST /redis/{id} with ["CMD", args...]; argument types,
# reply encodings (UTF-8, base64, RESP2, hashes as objects), bad bodies.

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::Nginx::Socket 'no_plan';
use RedisGate::Test;

repeat_each(1);
no_shuffle();
run_tests();

__DATA__

=== TEST 1: the seed's SETEX example, without a Content-Type
--- request
POST /redis/$TEST_NGINX_INSTANCE
["SETEX", "session:123", "3600", "user_data"]
--- error_code: 200
--- response_headers
Content-Type: application/json
--- response_body chomp
{"result":"OK"}
--- no_error_log
[error]



=== TEST 2: MGET with missing keys gives nulls
--- request
POST /redis/$TEST_NGINX_INSTANCE
["MGET", "key-missing-1", "session:123", "key-missing-3"]
--- response_body chomp
{"result":[null,"user_data",null]}



=== TEST 3: numbers are sent as their JSON text, booleans as words
--- request eval
["POST /redis/$ENV{TEST_NGINX_INSTANCE}
[\"RPUSH\", \"nums\", 1.5, 1e+21, 100, -0, true, false]",
 "POST /redis/$ENV{TEST_NGINX_INSTANCE}
[\"LRANGE\", \"nums\", 0, -1]",
 "POST /redis/$ENV{TEST_NGINX_INSTANCE}
[\"DEL\", \"nums\"]"]
--- response_body eval
['{"result":6}',
 '{"result":["1.5","1e+21","100","-0","true","false"]}',
 '{"result":1}']



=== TEST 4: escaped strings, unicode and NUL round-trip
--- request eval
["POST /redis/$ENV{TEST_NGINX_INSTANCE}
[\"SET\", \"u\", \"q\\\"b\\\\s\\n\\u00e9\\u0000\\ud83d\\ude00\"]",
 "POST /redis/$ENV{TEST_NGINX_INSTANCE}
[\"GET\", \"u\"]"]
--- response_body eval
['{"result":"OK"}', "{\"result\":\"q\\\"b\\\\s\\n\xc3\xa9\\u0000\xf0\x9f\x98\x80\"}"]



=== TEST 5: invalid UTF-8 from Redis becomes U+FFFD
--- request eval
["GET /redis/$ENV{TEST_NGINX_INSTANCE}/set/bad/a%FFb%C3%28c%E2%82",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/get/bad"]
--- response_body eval
['{"result":"OK"}', "{\"result\":\"a\xef\xbf\xbdb\xef\xbf\xbd(c\xef\xbf\xbd\"}"]



=== TEST 6: Upstash-Encoding: base64 encodes every string, at every depth
--- more_headers
Authorization: Bearer $TEST_NGINX_ADMIN_TOKEN
Upstash-Encoding: base64
--- request eval
["POST /redis/$ENV{TEST_NGINX_INSTANCE}
[\"SET\", \"b64\", \"hello\"]",
 "POST /redis/$ENV{TEST_NGINX_INSTANCE}
[\"MGET\", \"b64\", \"nope\"]",
 "POST /redis/$ENV{TEST_NGINX_INSTANCE}
[\"STRLEN\", \"b64\"]",
 "POST /redis/$ENV{TEST_NGINX_INSTANCE}
[\"INCR\", \"b64\"]"]
--- error_code eval
[200, 200, 200, 400]
--- response_body eval
['{"result":"T0s="}', '{"result":["aGVsbG8=",null]}', '{"result":5}',
 '{"error":"ERR value is not an integer or out of range"}']



=== TEST 7: any other Upstash-Encoding is refused
--- more_headers
Authorization: Bearer $TEST_NGINX_ADMIN_TOKEN
Upstash-Encoding: hex
--- request
POST /redis/$TEST_NGINX_INSTANCE
["GET", "b64"]
--- error_code: 400
--- response_body chomp
{"error":"Upstash-Encoding must be base64"}



=== TEST 8: Upstash-Response-Format: resp2 answers raw RESP
--- more_headers
Authorization: Bearer $TEST_NGINX_ADMIN_TOKEN
Upstash-Response-Format: resp2
--- request
POST /redis/$TEST_NGINX_INSTANCE
["MGET", "b64", "nope"]
--- response_headers
Content-Type: application/octet-stream
--- response_body eval
"*2\r\n\$5\r\nhello\r\n\$-1\r\n"



=== TEST 9: resp2 with base64 is refused
--- more_headers
Authorization: Bearer $TEST_NGINX_ADMIN_TOKEN
Upstash-Response-Format: resp2
Upstash-Encoding: base64
--- request
POST /redis/$TEST_NGINX_INSTANCE
["GET", "b64"]
--- error_code: 400
--- response_body chomp
{"error":"Upstash-Response-Format: resp2 cannot be combined with Upstash-Encoding"}



=== TEST 10: unknown response formats are refused
--- more_headers
Authorization: Bearer $TEST_NGINX_ADMIN_TOKEN
Upstash-Response-Format: xml
--- request
POST /redis/$TEST_NGINX_INSTANCE
["GET", "b64"]
--- error_code: 400
--- response_body chomp
{"error":"Upstash-Response-Format must be json or resp2"}



=== TEST 11: HGETALL is a flat array by default
--- request eval
["POST /redis/$ENV{TEST_NGINX_INSTANCE}
[\"DEL\", \"h\"]",
 "POST /redis/$ENV{TEST_NGINX_INSTANCE}
[\"HSET\", \"h\", \"f\", \"v\"]",
 "POST /redis/$ENV{TEST_NGINX_INSTANCE}
[\"HGETALL\", \"h\"]"]
--- response_body_like eval
['^\{"result":[01]\}$', '^\{"result":1\}$', '^\{"result":\["f","v"\]\}$']



=== TEST 12: ... and an object on request
--- more_headers
Authorization: Bearer $TEST_NGINX_ADMIN_TOKEN
RedisGate-Hash-Format: object
--- request
POST /redis/$TEST_NGINX_INSTANCE
["HGETALL", "h"]
--- response_body chomp
{"result":{"f":"v"}}



=== TEST 13: null is not an argument
--- request
POST /redis/$TEST_NGINX_INSTANCE
["SET", "k", null]
--- error_code: 400
--- response_body chomp
{"error":"null is not a valid argument"}



=== TEST 14: nested arrays are not arguments
--- request
POST /redis/$TEST_NGINX_INSTANCE
["SET", "k", ["v"]]
--- error_code: 400
--- response_body chomp
{"error":"nested arrays are not valid arguments"}



=== TEST 15: objects are not arguments
--- request
POST /redis/$TEST_NGINX_INSTANCE
["SET", "k", {"v": 1}]
--- error_code: 400
--- response_body chomp
{"error":"JSON objects are not valid arguments"}



=== TEST 16: an empty command
--- request
POST /redis/$TEST_NGINX_INSTANCE
[]
--- error_code: 400
--- response_body chomp
{"error":"empty command"}



=== TEST 17: the command name must be a string
--- request
POST /redis/$TEST_NGINX_INSTANCE
[1, "k"]
--- error_code: 400
--- response_body chomp
{"error":"the command name must be a string"}



=== TEST 18: not JSON
--- request
POST /redis/$TEST_NGINX_INSTANCE
["GET", "k"
--- error_code: 400
--- response_body chomp
{"error":"invalid JSON in the request body"}



=== TEST 19: not an array
--- request
POST /redis/$TEST_NGINX_INSTANCE
"GET"
--- error_code: 400
--- response_body chomp
{"error":"the request body must be a JSON array"}



=== TEST 20: trailing garbage after the array
--- request
POST /redis/$TEST_NGINX_INSTANCE
["PING"] ["PING"]
--- error_code: 400
--- response_body chomp
{"error":"invalid JSON in the request body"}



=== TEST 21: a body over client_max_body_size is 413, in JSON (the example's error_page)
--- config
location /redis/ {
    client_max_body_size 16;
    error_page 413 @redisgate_413;
    redisgate;
}
location @redisgate_413 {
    default_type application/json;
    return 413 '{"error":"request body is larger than client_max_body_size"}';
}
--- request
POST /redis/$TEST_NGINX_INSTANCE
["SET", "k", "this body is longer than sixteen bytes"]
--- error_code: 413
--- response_body chomp
{"error":"request body is larger than client_max_body_size"}



=== TEST 22: a body nginx keeps in a temporary file is read from it
--- config
location /redis/ { client_body_buffer_size 1k; redisgate; }
--- request eval
"POST /redis/$ENV{TEST_NGINX_INSTANCE}
[\"SET\", \"big\", \"" . ("x" x 100000) . "\"]"
--- response_body chomp
{"result":"OK"}



=== TEST 23: ... and the raw body of a path-style command too
--- config
location /redis/ { client_body_buffer_size 1k; redisgate; }
--- request eval
["POST /redis/$ENV{TEST_NGINX_INSTANCE}/set/bigraw
" . ("y" x 70000),
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/strlen/bigraw"]
--- response_body eval
['{"result":"OK"}', '{"result":70000}']



=== TEST 24: a chunked body over client_max_body_size is 413 from the module
--- config
location /redis/ { client_max_body_size 16; redisgate; }
--- raw_request eval
"POST /redis/$ENV{TEST_NGINX_INSTANCE} HTTP/1.1\r
Host: localhost\r
Authorization: Bearer $ENV{TEST_NGINX_ADMIN_TOKEN}\r
Transfer-Encoding: chunked\r
Connection: close\r
\r
30\r
[\"SET\", \"k\", \"this body is longer than sixteen\"]\r
0\r
\r
"
--- error_code: 413
--- response_body chomp
{"error":"request body is larger than client_max_body_size"}



=== TEST 25: the smallest integer Redis has (found by fuzzing: a 1-byte overflow)
--- request eval
["GET /redis/$ENV{TEST_NGINX_INSTANCE}/set/llmin/-9223372036854775808",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/incrby/llmin/0",
 "POST /redis/$ENV{TEST_NGINX_INSTANCE}
[\"DECRBY\", \"llmin\", 0]"]
--- response_body eval
['{"result":"OK"}', '{"result":-9223372036854775808}',
 '{"result":-9223372036854775808}']



=== TEST 26: ... in RESP2 too
--- more_headers
Authorization: Bearer $TEST_NGINX_ADMIN_TOKEN
Upstash-Response-Format: resp2
--- request
GET /redis/$TEST_NGINX_INSTANCE/incrby/llmin/0
--- response_body eval
":-9223372036854775808\r\n"



=== TEST 27: an empty command name is Redis' to refuse (fuzzing: memcpy of nothing)
--- request
POST /redis/$TEST_NGINX_INSTANCE
["", "x"]
--- error_code: 400
--- response_body_like chomp
^\{"error":"ERR unknown command ''[^"]*"\}$
