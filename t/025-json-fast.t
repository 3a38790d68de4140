# The request body decoder's fast path (ngx_http_redisgate_json_fast) at
# its edges: what it takes must reach Redis as yajl would have sent it, and
# what it declines (escapes, control bytes, bad numbers, limits, bodies in
# a file) must get yajl's answer.  The debug log says which path decoded.

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::Nginx::Socket 'no_plan';
use RedisGate::Test;

repeat_each(1);
no_shuffle();
run_tests();

__DATA__

=== TEST 1: numbers reach Redis as their JSON text, in a pipeline too
--- request eval
["POST /redis/$ENV{TEST_NGINX_INSTANCE}
[\"RPUSH\",\"fp:n\",-0,1e5,1.5E-3,0,-12.50e+007,100,true,false]",
 "POST /redis/$ENV{TEST_NGINX_INSTANCE}/pipeline
[[\"LRANGE\",\"fp:n\",0,-1],[\"DEL\",\"fp:n\"],[\"ECHO\",-1E+0]]"]
--- response_body eval
['{"result":8}',
 '[{"result":["-0","1e5","1.5E-3","0","-12.50e+007","100","true","false"]},{"result":1},{"result":"-1E+0"}]']
--- error_log
redisgate json: 59 bytes in 1 buffer(s), 1 command(s), without yajl
redisgate json: 54 bytes in 1 buffer(s), 3 command(s), without yajl
--- no_error_log
to yajl



=== TEST 2: white space everywhere JSON allows it
--- request eval
"POST /redis/$ENV{TEST_NGINX_INSTANCE}/pipeline
 \t\r\n[ \n[ \"SET\" , \"fp:w\" ,\"v\"\t] ,\t[\"GET\",\"fp:w\"  ]\r\n , [\"DEL\"\n,\n\"fp:w\"]]\n "
--- response_body chomp
[{"result":"OK"},{"result":"v"},{"result":1}]
--- error_log
3 command(s), without yajl



=== TEST 3: empty strings are empty arguments
--- request eval
"POST /redis/$ENV{TEST_NGINX_INSTANCE}/pipeline
[[\"SET\",\"fp:e\",\"\"],[\"STRLEN\",\"fp:e\"],[\"ECHO\",\"\"],[\"HSET\",\"fp:h\",\"\",\"\"],[\"HGETALL\",\"fp:h\"],[\"DEL\",\"fp:e\",\"fp:h\"]]"
--- response_body chomp
[{"result":"OK"},{"result":0},{"result":""},{"result":1},{"result":["",""]},{"result":2}]
--- error_log
6 command(s), without yajl



=== TEST 4: raw UTF-8 and bytes that are not UTF-8 go to Redis as they are
--- more_headers
Authorization: Bearer $TEST_NGINX_ADMIN_TOKEN
Upstash-Encoding: base64
--- request eval
"POST /redis/$ENV{TEST_NGINX_INSTANCE}/pipeline
[[\"SET\",\"fp:u\",\"\xc3\xa9\xf0\x9f\x98\x80\x7f\xff\"],[\"GET\",\"fp:u\"],[\"STRLEN\",\"fp:u\"]]"
--- response_body chomp
[{"result":"T0s="},{"result":"w6nwn5iAf/8="},{"result":8}]
--- error_log
3 command(s), without yajl



=== TEST 5: a long value with bytes from 0x80 among plain ones
--- request eval
["POST /redis/$ENV{TEST_NGINX_INSTANCE}
[\"SET\",\"fp:l\",\"" . ("a" x 40) . "\xc3\xa9" . ("b" x 40) . "\xe2\x82\xac\"]",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/get/fp:l"]
--- response_body eval
['{"result":"OK"}',
 '{"result":"' . ("a" x 40) . "\xc3\xa9" . ("b" x 40) . "\xe2\x82\xac" . '"}']
--- error_log
1 command(s), without yajl



=== TEST 6: a raw control byte in a string is yajl's error
--- request eval
"POST /redis/$ENV{TEST_NGINX_INSTANCE}/pipeline
[[\"SET\",\"fp:c\",\"ok\"],[\"SET\",\"fp:c\",\"a\x01b\"]]"
--- error_code: 400
--- response_body chomp
{"error":"invalid JSON in the request body"}
--- error_log
to yajl
--- no_error_log
without yajl



=== TEST 7: ... a raw tab too
--- request eval
"POST /redis/$ENV{TEST_NGINX_INSTANCE}
[\"SET\",\"fp:c\",\"a\tb\"]"
--- error_code: 400
--- response_body chomp
{"error":"invalid JSON in the request body"}
--- error_log
to yajl



=== TEST 8: an escape in the last command: yajl decodes the whole body
--- request eval
"POST /redis/$ENV{TEST_NGINX_INSTANCE}/pipeline
[[\"SET\",\"fp:x\",\"1\"],[\"GET\",\"fp:x\"],[\"ECHO\",\"q\\\"b\\\\s\\u00e9/\\/\"],[\"DEL\",\"fp:x\"]]"
--- response_body chomp
[{"result":"OK"},{"result":"1"},{"result":"q\"b\\sé//"},{"result":1}]
--- error_log
redisgate json: 78 bytes in 1 buffer(s), to yajl
--- no_error_log
without yajl



=== TEST 9: numbers JSON does not allow are yajl's errors
--- request eval
["POST /redis/$ENV{TEST_NGINX_INSTANCE}
[\"ECHO\",01]",
 "POST /redis/$ENV{TEST_NGINX_INSTANCE}
[\"ECHO\",1.]",
 "POST /redis/$ENV{TEST_NGINX_INSTANCE}
[\"ECHO\",.5]",
 "POST /redis/$ENV{TEST_NGINX_INSTANCE}
[\"ECHO\",1e]",
 "POST /redis/$ENV{TEST_NGINX_INSTANCE}
[\"ECHO\",+1]",
 "POST /redis/$ENV{TEST_NGINX_INSTANCE}
[\"ECHO\",-]",
 "POST /redis/$ENV{TEST_NGINX_INSTANCE}
[\"ECHO\",truex]"]
--- error_code eval
[400, 400, 400, 400, 400, 400, 400]
--- response_body eval
[('{"error":"invalid JSON in the request body"}') x 7]
--- no_error_log
without yajl



=== TEST 10: what the callbacks refuse keeps their words
--- request eval
["POST /redis/$ENV{TEST_NGINX_INSTANCE}
[\"SET\",\"fp:k\",null]",
 "POST /redis/$ENV{TEST_NGINX_INSTANCE}
[1,\"fp:k\"]",
 "POST /redis/$ENV{TEST_NGINX_INSTANCE}/pipeline
[[\"GET\",\"fp:k\"],[]]",
 "POST /redis/$ENV{TEST_NGINX_INSTANCE}/pipeline
[[\"GET\",\"fp:k\"],[[\"GET\"]]]",
 "POST /redis/$ENV{TEST_NGINX_INSTANCE}/pipeline
[[\"GET\",\"fp:k\"],{\"a\":1}]",
 "POST /redis/$ENV{TEST_NGINX_INSTANCE}
[\"GET\",\"fp:k\"] [\"GET\",\"fp:k\"]"]
--- error_code eval
[400, 400, 400, 400, 400, 400]
--- response_body eval
['{"error":"null is not a valid argument"}',
 '{"error":"the command name must be a string"}',
 '{"error":"empty command"}',
 '{"error":"nested arrays are not valid arguments"}',
 '{"error":"JSON objects are not valid arguments"}',
 '{"error":"invalid JSON in the request body"}']
--- no_error_log
without yajl



=== TEST 11: exactly redisgate_max_commands, and one more
--- config
location /redis/ { redisgate_max_commands 3; redisgate; }
--- request eval
["POST /redis/$ENV{TEST_NGINX_INSTANCE}/pipeline
[[\"ECHO\",\"a\"],[\"ECHO\",\"b\"],[\"ECHO\",\"c\"]]",
 "POST /redis/$ENV{TEST_NGINX_INSTANCE}/pipeline
[[\"ECHO\",\"a\"],[\"ECHO\",\"b\"],[\"ECHO\",\"c\"],[\"ECHO\",\"d\"]]"]
--- error_code eval
[200, 400]
--- response_body eval
['[{"result":"a"},{"result":"b"},{"result":"c"}]',
 '{"error":"too many commands in one request"}']
--- error_log
3 command(s), without yajl
redisgate json: 53 bytes in 1 buffer(s), to yajl



=== TEST 12: a body past the 1k header buffer: two buffers, decoded as one
--- request eval
"POST /redis/$ENV{TEST_NGINX_INSTANCE}/pipeline
[" . join(",", map { "[\"ECHO\",\"fp:$_\"]" } 1 .. 200) . "]"
--- response_body eval
"[" . join(",", map { "{\"result\":\"fp:$_\"}" } 1 .. 200) . "]"
--- error_log eval
qr/redisgate json: \d+ bytes in [2-9] buffer\(s\), 200 command\(s\), without yajl/



=== TEST 13: a chunked body in several chunks
--- raw_request eval
"POST /redis/$ENV{TEST_NGINX_INSTANCE}/pipeline HTTP/1.1\r
Host: localhost\r
Authorization: Bearer $ENV{TEST_NGINX_ADMIN_TOKEN}\r
Transfer-Encoding: chunked\r
Connection: close\r
\r
9\r
[[\"SET\",\"\r
13\r
fp:ch\",\"v\"],[\"GET\",\r
9\r
\"fp:ch\"]]\r
0\r
\r
"
--- response_body chomp
[{"result":"OK"},{"result":"v"}]
--- error_log eval
qr/redisgate json: 37 bytes in [2-9] buffer\(s\), 2 command\(s\), without yajl/



=== TEST 14: a chunked body nginx keeps in a file is streamed through yajl
--- config
location /redis/ { client_body_buffer_size 128; redisgate; }
--- raw_request eval
my $body = "[" . join(",", map { "[\"ECHO\",\"fp:$_\"]" } 1 .. 100) . "]";
my $half = int(length($body) / 2);
"POST /redis/$ENV{TEST_NGINX_INSTANCE}/pipeline HTTP/1.1\r
Host: localhost\r
Authorization: Bearer $ENV{TEST_NGINX_ADMIN_TOKEN}\r
Transfer-Encoding: chunked\r
Connection: close\r
\r
" . sprintf("%x", $half) . "\r\n" . substr($body, 0, $half) . "\r\n"
  . sprintf("%x", length($body) - $half) . "\r\n" . substr($body, $half)
  . "\r\n0\r\n\r\n"
--- response_body eval
"[" . join(",", map { "{\"result\":\"fp:$_\"}" } 1 .. 100) . "]"
--- error_log eval
qr/redisgate json: \d+ bytes in \d+ buffer\(s\) and a file, to yajl/
--- no_error_log
without yajl



=== TEST 15: multi-exec takes the fast path too
--- request
POST /redis/$TEST_NGINX_INSTANCE/multi-exec
[["SET","fp:m","1"],["INCR","fp:m"],["GET","fp:m"],["DEL","fp:m"]]
--- response_body chomp
[{"result":"OK"},{"result":2},{"result":"2"},{"result":1}]
--- error_log
4 command(s), without yajl
