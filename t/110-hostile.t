# Hostile input against the real module and a real Redis: oversized and
# deeply nested bodies, malformed JSON, 100k-argument commands, pipelines
# past redisgate_max_commands, thousands of path segments, NUL and invalid
# UTF-8, malformed percent-encoding, abused Authorization headers and
# _token, cross-tenant URL tricks, denied commands hidden in pipelines and
# transactions, and what a Lua script can reach inside Redis.
#
# Where nginx core answers before the module runs (HTML 400/413/414), the
# blocks pin that answer and the core's error line.  Lua blocks never run
# FLUSHDB/SWAPDB/MOVE outside databases 9 and 10, which no other suite
# uses, and never FLUSHALL (Redis allows it in scripts).  SHUTDOWN is only
# called when Redis flags it noscript, so it cannot run.

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::Nginx::Socket 'no_plan';
use RedisGate::Test;

# one GET with exactly these header lines: more_headers would trim them
sub raw_get {
    my ($uri, @headers) = @_;
    return "GET $uri HTTP/1.1\r\nHost: localhost\r\n"
           . join('', map { "$_\r\n" } @headers)
           . "Connection: close\r\n\r\n";
}

# a JSON array of strings
sub jarr {
    return '[' . join(',', map { qq{"$_"} } @_) . ']';
}

# what Redis 7 answers for a command flagged noscript, called from Lua
our $NoScript = '^\{"error":"ERR This Redis command is not allowed from'
                . ' script script: [0-9a-f]{40}, on @user_script:1\."\}$';

our $I = $ENV{TEST_NGINX_INSTANCE};
our $GI = $ENV{TEST_NGINX_GLOBEX_INSTANCE};

repeat_each(1);
no_shuffle();
run_tests();

__DATA__

=== TEST 1: a body at client_max_body_size works; one byte more is nginx core's HTML 413
--- config
location /redis/ { client_max_body_size 100; redisgate; }
--- request eval
my $p = '["SET","h:near","';
my $s = '"]';
["POST /redis/$main::I\n" . $p . ('x' x (100 - length($p) - length($s))) . $s,
 "POST /redis/$main::I\n" . $p . ('x' x (101 - length($p) - length($s))) . $s,
 "POST /redis/$main::I/pipeline\n[" . $p . ('x' x 100) . "$s]",
 "POST /redis/$main::I/set/h:near\n" . ('y' x 101),
 "GET /redis/$main::I/strlen/h:near"]
--- error_code eval
[200, 413, 413, 413, 200]
--- response_body_like eval
['^\{"result":"OK"\}$',
 '<title>413 Request Entity Too Large</title>',
 '<title>413 Request Entity Too Large</title>',
 '<title>413 Request Entity Too Large</title>',
 '^\{"result":81\}$']
--- error_log
client intended to send too large body



=== TEST 2: 100000 opening brackets: 400 JSON on every route, and nginx lives on
--- request eval
["POST /redis/$main::I\n" . ('[' x 100000),
 "POST /redis/$main::I/pipeline\n" . ('[' x 100000),
 "POST /redis/$main::I/multi-exec\n" . ('[' x 100000),
 "POST /redis/$main::I/pipeline\n[[\"PING\"]," . ('[' x 100000),
 "GET /redis/$main::I/ping"]
--- error_code eval
[400, 400, 400, 400, 200]
--- response_body eval
['{"error":"nested arrays are not valid arguments"}',
 '{"error":"nested arrays are not valid arguments"}',
 '{"error":"nested arrays are not valid arguments"}',
 '{"error":"nested arrays are not valid arguments"}',
 '{"result":"PONG"}']



=== TEST 3: deep nesting inside an argument, balanced or not, arrays or objects
--- request eval
["POST /redis/$main::I\n[\"SET\",\"h:deep\"," . ('[' x 100000) . (']' x 100000) . ']',
 "POST /redis/$main::I\n[\"SET\",\"h:deep\"," . ('{"a":' x 100000) . ('}' x 100000) . ']',
 "POST /redis/$main::I/pipeline\n[[\"SET\",\"h:deep\"," . ('{"a":' x 100000),
 "POST /redis/$main::I\n" . ('{"a":' x 100000),
 "GET /redis/$main::I/exists/h:deep"]
--- error_code eval
[400, 400, 400, 400, 200]
--- response_body eval
['{"error":"nested arrays are not valid arguments"}',
 '{"error":"JSON objects are not valid arguments"}',
 '{"error":"JSON objects are not valid arguments"}',
 '{"error":"JSON objects are not valid arguments"}',
 '{"result":0}']



=== TEST 4: huge and out-of-range numbers reach Redis as their JSON text
--- request eval
["POST /redis/$main::I\n[\"SET\",\"h:num\"," . ('9' x 100000) . ']',
 "POST /redis/$main::I\n[\"STRLEN\",\"h:num\"]",
 "POST /redis/$main::I\n[\"DEL\",\"h:nums\"]",
 "POST /redis/$main::I\n[\"RPUSH\",\"h:nums\",1e999,-1E-400,1E+400,0.000000000000000000000000000001]",
 "POST /redis/$main::I\n[\"LRANGE\",\"h:nums\",0,-1]",
 "POST /redis/$main::I\n[\"INCRBY\",\"h:num\",1e999]"]
--- error_code eval
[200, 200, 200, 200, 200, 400]
--- response_body_like eval
['^\{"result":"OK"\}$', '^\{"result":100000\}$', '^\{"result":[01]\}$', '^\{"result":4\}$',
 '^\{"result":\["1e999","-1E-400","1E\+400","0\.000000000000000000000000000001"\]\}$',
 '^\{"error":"ERR value is not an integer or out of range"\}$']



=== TEST 5: objects as arguments or as the body, duplicate keys or not
--- request eval
["POST /redis/$main::I\n[\"SET\",\"h:obj\",{\"a\":1,\"a\":2}]",
 "POST /redis/$main::I\n{\"a\":1,\"a\":2}",
 "POST /redis/$main::I/pipeline\n{\"a\":[\"PING\"]}",
 "POST /redis/$main::I/pipeline\n[[\"PING\"],{\"a\":1}]",
 "POST /redis/$main::I\n[{}]"]
--- error_code eval
[400, 400, 400, 400, 400]
--- response_body eval
['{"error":"JSON objects are not valid arguments"}',
 '{"error":"JSON objects are not valid arguments"}',
 '{"error":"JSON objects are not valid arguments"}',
 '{"error":"JSON objects are not valid arguments"}',
 '{"error":"JSON objects are not valid arguments"}']



=== TEST 6: garbage around or inside the array, NUL and BOM included: invalid JSON
--- request eval
["POST /redis/$main::I\n[\"PING\"] x",
 "POST /redis/$main::I\n[\"PING\"],",
 "POST /redis/$main::I\n[\"PING\"]]",
 "POST /redis/$main::I\n[\"PING\"]\0",
 "POST /redis/$main::I\n\xef\xbb\xbf[\"PING\"]",
 "POST /redis/$main::I\n[\"PING\",]",
 "POST /redis/$main::I\n[,\"PING\"]",
 "POST /redis/$main::I\n[\"ECHO\",\"a\0b\"]",
 "POST /redis/$main::I\n[\"ECHO\",\"a\tb\"]",
 "POST /redis/$main::I\n[\"ECHO\",\"\\x\"]",
 "POST /redis/$main::I\n[\"ECHO\",\"\\u00\"]",
 "POST /redis/$main::I\n[\"ECHO\",NaN]",
 "POST /redis/$main::I\n[\"ECHO\",01]",
 "POST /redis/$main::I/pipeline\n[[\"PING\"]] x",
 "POST /redis/$main::I/multi-exec\n[[\"PING\"]],"]
--- error_code: 400
--- response_body chomp
{"error":"invalid JSON in the request body"}



=== TEST 7: empty bodies and empty arrays
--- request eval
["POST /redis/$main::I\n",
 "POST /redis/$main::I\n[]",
 "POST /redis/$main::I/pipeline\n[]",
 "POST /redis/$main::I/pipeline\n[[]]",
 "POST /redis/$main::I/multi-exec\n[[]]",
 "POST /redis/$main::I/pipeline\n[[\"PING\"],[]]",
 "POST /redis/$main::I\n[[]]"]
--- error_code: 400
--- response_body eval
['{"error":"no command: use /{instance}/{command}/... or POST a JSON array"}',
 '{"error":"empty command"}', '{"error":"empty pipeline"}',
 '{"error":"empty command"}', '{"error":"empty command"}',
 '{"error":"empty command"}',
 '{"error":"nested arrays are not valid arguments"}']



=== TEST 8: /pipeline without a body at all (no Content-Length)
--- raw_request eval
"POST /redis/$main::I/pipeline HTTP/1.1\r\nHost: localhost\r\n"
. "Authorization: Bearer $ENV{TEST_NGINX_ADMIN_TOKEN}\r\n"
. "Connection: close\r\n\r\n"
--- error_code: 400
--- response_body chomp
{"error":"empty request body: expected a JSON array"}



=== TEST 9: ... /multi-exec too
--- raw_request eval
"POST /redis/$main::I/multi-exec HTTP/1.1\r\nHost: localhost\r\n"
. "Authorization: Bearer $ENV{TEST_NGINX_ADMIN_TOKEN}\r\n"
. "Connection: close\r\n\r\n"
--- error_code: 400
--- response_body chomp
{"error":"empty request body: expected a JSON array"}



=== TEST 10: ... with "Content-Length: 0" (curl -d ''): the same 400
--- request eval
["POST /redis/$main::I/pipeline\n", "POST /redis/$main::I/multi-exec\n",
 "POST /redis/$main::I\n"]
--- error_code: 400
--- response_headers
Content-Type: application/json
--- response_body eval
['{"error":"empty request body: expected a JSON array"}',
 '{"error":"empty request body: expected a JSON array"}',
 '{"error":"no command: use /{instance}/{command}/... or POST a JSON array"}']



=== TEST 11: 100000 arguments in one command
--- request eval
["POST /redis/$main::I\n[\"DEL\",\"h:big\"]",
 "POST /redis/$main::I\n" . main::jarr('RPUSH', 'h:big', 1 .. 100000),
 "POST /redis/$main::I\n[\"LLEN\",\"h:big\"]",
 "POST /redis/$main::I\n[\"LINDEX\",\"h:big\",-1]",
 "POST /redis/$main::I\n[\"MSET\",\"h:k1\",\"a\",\"h:k50000\",\"b\",\"h:k100000\",\"c\"]",
 "POST /redis/$main::I\n" . main::jarr('DEL', map { "h:k$_" } 1 .. 100000),
 "POST /redis/$main::I\n[\"EXISTS\",\"h:k1\",\"h:k50000\",\"h:k100000\"]"]
--- response_body_like eval
['^\{"result":[01]\}$', '^\{"result":100000\}$', '^\{"result":100000\}$',
 '^\{"result":"100000"\}$', '^\{"result":"OK"\}$', '^\{"result":3\}$',
 '^\{"result":0\}$']



=== TEST 12: the default redisgate_max_commands: 10000 commands pass, 10001 run nothing
--- request eval
["POST /redis/$main::I/pipeline\n["
     . CORE::join(',', map { qq{["ECHO","$_"]} } 1 .. 10000) . ']',
 "POST /redis/$main::I/pipeline\n[[\"SET\",\"h:max\",\"1\"],"
     . CORE::join(',', ('["PING"]') x 10000) . ']',
 "POST /redis/$main::I/multi-exec\n[[\"SET\",\"h:max\",\"1\"],"
     . CORE::join(',', ('["PING"]') x 10000) . ']',
 "GET /redis/$main::I/get/h:max"]
--- error_code eval
[200, 400, 400, 200]
--- response_body eval
['[' . CORE::join(',', map { qq{{"result":"$_"}} } 1 .. 10000) . ']',
 '{"error":"too many commands in one request"}',
 '{"error":"too many commands in one request"}',
 '{"result":null}']



=== TEST 13: thousands of path segments: 4000 fit nginx's 8k request line, 5000 are its 414
--- request eval
["GET /redis/$main::I/del/h:segs",
 "GET /redis/$main::I/rpush/h:segs/" . CORE::join('/', ('x') x 4000),
 "GET /redis/$main::I/rpush/h:segs/" . CORE::join('/', ('x') x 5000),
 "GET /redis/$main::I/llen/h:segs"]
--- error_code eval
[200, 200, 414, 200]
--- response_body_like eval
['^\{"result":[01]\}$', '^\{"result":4000\}$',
 '<title>414 Request-URI Too Large</title>', '^\{"result":4000\}$']
--- error_log
client sent too long URI



=== TEST 14: ... 20000 segments with large_client_header_buffers 4 128k
--- config
large_client_header_buffers 4 128k;
location /redis/ { redisgate; }
--- request eval
["GET /redis/$main::I/del/h:segs",
 "GET /redis/$main::I/rpush/h:segs/" . CORE::join('/', map { "v$_" } 1 .. 20000),
 "GET /redis/$main::I/lindex/h:segs/-1"]
--- response_body eval
['{"result":1}', '{"result":20000}', '{"result":"v20000"}']



=== TEST 15: NUL and \xff in a raw body value: \u0000 and U+FFFD without base64
--- request eval
["POST /redis/$main::I/set/h:bin\na\0b\xffc",
 "GET /redis/$main::I/strlen/h:bin",
 "GET /redis/$main::I/get/h:bin"]
--- response_body eval
['{"result":"OK"}', '{"result":5}', "{\"result\":\"a\\u0000b\xef\xbf\xbdc\"}"]



=== TEST 16: ... and through Upstash-Encoding: base64
--- more_headers
Authorization: Bearer $TEST_NGINX_ADMIN_TOKEN
Upstash-Encoding: base64
--- request eval
["GET /redis/$main::I/get/h:bin",
 "POST /redis/$main::I\n[\"SET\",\"h:bin2\",\"a\\u0000b\xffc\"]",
 "POST /redis/$main::I\n[\"GET\",\"h:bin2\"]"]
--- response_body eval
['{"result":"YQBi/2M="}', '{"result":"T0s="}', '{"result":"YQBi/2M="}']



=== TEST 17: "\u0000" in a key is part of the key, not its end
--- request eval
["POST /redis/$main::I\n[\"SET\",\"h:nul\\u0000key\",\"v0\"]",
 "POST /redis/$main::I\n[\"GET\",\"h:nul\\u0000key\"]",
 "POST /redis/$main::I\n[\"GET\",\"h:nul\"]",
 "POST /redis/$main::I\n[\"KEYS\",\"h:nul*\"]",
 "GET /redis/$main::I/echo?a%00b"]
--- response_body eval
['{"result":"OK"}', '{"result":"v0"}', '{"result":null}',
 '{"result":["h:nul\\u0000key"]}', '{"result":"a\\u0000b"}']



=== TEST 18: invalid UTF-8 in path segments: U+FFFD in replies, raw bytes in keys
--- request eval
["GET /redis/$main::I/echo/%FF%FEa%C0%AE",
 "GET /redis/$main::I/set/h:%FFkey/v",
 "GET /redis/$main::I/get/h:%FFkey"]
--- response_body eval
# C0 AE (an overlong "." that no decoder may accept) is one U+FFFD here
["{\"result\":\"\xef\xbf\xbd\xef\xbf\xbda\xef\xbf\xbd\"}",
 '{"result":"OK"}', '{"result":"v"}']



=== TEST 19: lone UTF-16 surrogates in JSON strings (yajl 2.1's decoding, pinned)
--- more_headers
Authorization: Bearer $TEST_NGINX_ADMIN_TOKEN
Upstash-Encoding: base64
--- request eval
["POST /redis/$main::I\n[\"ECHO\",\"\\ud800\"]",
 "POST /redis/$main::I\n[\"ECHO\",\"\\udc00\"]",
 "POST /redis/$main::I\n[\"ECHO\",\"\\ud800\\u0041\"]",
 "POST /redis/$main::I\n[\"ECHO\",\"\\ud83d\\ude00\"]"]
--- response_body eval
# a lone high surrogate becomes "?", a lone low one its 3 raw bytes, and
# a high one followed by any \u escape is paired with it: "\ud800\u0041"
# is U+10041 (F0 90 81 81), the "A" is lost
['{"result":"Pw=="}', '{"result":"7bCA"}', '{"result":"8JCBgQ=="}',
 '{"result":"8J+YgA=="}']



=== TEST 20: %00 in the path is nginx core's HTML 400; the module never sees it
--- request eval
["GET /redis/$main::I/set/h:pnul/a%00b",
 "GET /redis/$main::I/set/h:pnul%00x/v",
 "GET /redis/$main::I%00/ping",
 "GET /redis/$main::I/get/h:pnul"]
--- error_code eval
[400, 400, 400, 200]
--- response_headers eval
['Content-Type: text/html', 'Content-Type: text/html', 'Content-Type: text/html',
 'Content-Type: application/json']
--- response_body_like eval
['<title>400 Bad Request</title>', '<title>400 Bad Request</title>',
 '<title>400 Bad Request</title>', '^\{"result":null\}$']
--- error_log
client sent invalid request while reading client request line



=== TEST 21: malformed percent-encoding in the path is nginx core's HTML 400 too
--- request eval
["GET /redis/$main::I/set/h:pct/%zz",
 "GET /redis/$main::I/set/h:pct/%4",
 "GET /redis/$main::I/set/h:pct/abc%",
 "GET /redis/$main::I/set/h:pct/%4g",
 "GET /redis/$main::I/set/h:pct/%%",
 "GET /redis/%zz/ping",
 "GET /redis/$main::I/get/h:pct"]
--- error_code eval
[400, 400, 400, 400, 400, 400, 200]
--- response_body_like eval
['<title>400 Bad Request</title>', '<title>400 Bad Request</title>',
 '<title>400 Bad Request</title>', '<title>400 Bad Request</title>',
 '<title>400 Bad Request</title>', '<title>400 Bad Request</title>',
 '^\{"result":null\}$']
--- error_log
client sent invalid request while reading client request line



=== TEST 22: ... in the query string it reaches the module: JSON 400
--- request eval
["GET /redis/$main::I/set/h:pct/v?EX=%zz",
 "GET /redis/$main::I/set/h:pct/v?EX=10%",
 "GET /redis/$main::I/set/h:pct/v?%4",
 "GET /redis/$main::I/get/h:pct"]
--- error_code eval
[400, 400, 400, 200]
--- response_body eval
['{"error":"malformed percent-encoding in the URL"}',
 '{"error":"malformed percent-encoding in the URL"}',
 '{"error":"malformed percent-encoding in the URL"}',
 '{"result":null}']



=== TEST 23: a 10 KB bearer token is nginx core's 400 with the default 8k header buffers
--- more_headers eval
"Authorization: Bearer " . ('a' x 10240)
--- request eval
"GET /redis/$main::I/ping"
--- error_code: 400
--- response_body_like chomp
<title>400 Request Header Or Cookie Too Large</title>
--- error_log
client sent too long header line



=== TEST 24: ... and 401 JSON from the module with larger buffers
--- config
large_client_header_buffers 4 32k;
location /redis/ { redisgate; }
--- more_headers eval
"Authorization: Bearer " . ('a' x 10240)
--- request eval
"GET /redis/$main::I/ping"
--- error_code: 401
--- response_body chomp
{"error":"Unauthorized: invalid API key"}



=== TEST 25: ... the same in _token
--- config
large_client_header_buffers 4 32k;
location /redis/ { redisgate; }
--- more_headers
X-Nothing: 1
--- request eval
"GET /redis/$main::I/ping?_token=" . ('a' x 10240)
--- error_code: 401
--- response_body chomp
{"error":"Unauthorized: invalid API key"}



=== TEST 26: a 100 KB header is too large even for 32k buffers
--- config
large_client_header_buffers 4 32k;
location /redis/ { redisgate; }
--- more_headers eval
"Authorization: Bearer " . ('a' x 102400)
--- request eval
"GET /redis/$main::I/ping"
--- error_code: 400
--- response_body_like chomp
<title>400 Request Header Or Cookie Too Large</title>
--- error_log
client sent too long header line



=== TEST 27: two Authorization headers are nginx 1.22 core's 400, even two good ones
--- more_headers
Authorization: Bearer $TEST_NGINX_ADMIN_TOKEN
Authorization: Bearer $TEST_NGINX_ADMIN_TOKEN
--- request eval
"GET /redis/$main::I/ping"
--- error_code: 400
--- response_headers
Content-Type: text/html
--- response_body_like chomp
<title>400 Bad Request</title>
--- error_log
client sent duplicate header line



=== TEST 28: "Bearer" without a token, even with a good _token
--- more_headers
Authorization: Bearer
--- request eval
["GET /redis/$main::I/ping",
 "GET /redis/$main::I/ping?_token=$ENV{TEST_NGINX_ADMIN_TOKEN}"]
--- error_code: 401
--- response_body chomp
{"error":"Unauthorized: expected \"Authorization: Bearer <api key>\""}



=== TEST 29: an empty Authorization header, even with a good _token
--- more_headers
Authorization:
--- request eval
["GET /redis/$main::I/ping",
 "GET /redis/$main::I/ping?_token=$ENV{TEST_NGINX_ADMIN_TOKEN}"]
--- error_code: 401
--- response_body chomp
{"error":"Unauthorized: expected \"Authorization: Bearer <api key>\""}



=== TEST 30: a tab after Bearer
--- more_headers eval
"Authorization: Bearer\t$ENV{TEST_NGINX_ADMIN_TOKEN}"
--- request eval
"GET /redis/$main::I/ping"
--- error_code: 401
--- response_body chomp
{"error":"Unauthorized: expected \"Authorization: Bearer <api key>\""}



=== TEST 31: no space after Bearer
--- more_headers
Authorization: Bearer$TEST_NGINX_ADMIN_TOKEN
--- request eval
"GET /redis/$main::I/ping"
--- error_code: 401
--- response_body chomp
{"error":"Unauthorized: expected \"Authorization: Bearer <api key>\""}



=== TEST 32: a tab after the token is part of it
--- raw_request eval
main::raw_get("/redis/$main::I/ping",
              "Authorization: Bearer $ENV{TEST_NGINX_ADMIN_TOKEN}\t")
--- error_code: 401
--- response_body chomp
{"error":"Unauthorized: invalid API key"}



=== TEST 33: extra spaces around the scheme and the token are fine
--- raw_request eval
main::raw_get("/redis/$main::I/ping",
              "Authorization:    Bearer   $ENV{TEST_NGINX_ADMIN_TOKEN}   ")
--- error_code: 200
--- response_body chomp
{"result":"PONG"}



=== TEST 34: ... a tab before the scheme is not (nginx 1.22 keeps it in the value)
--- raw_request eval
main::raw_get("/redis/$main::I/ping",
              "Authorization:\tBearer $ENV{TEST_NGINX_ADMIN_TOKEN}")
--- error_code: 401
--- response_body chomp
{"error":"Unauthorized: expected \"Authorization: Bearer <api key>\""}



=== TEST 35: a good token in the Basic scheme, even with a good _token
--- more_headers
Authorization: Basic $TEST_NGINX_ADMIN_TOKEN
--- request eval
["GET /redis/$main::I/ping",
 "GET /redis/$main::I/ping?_token=$ENV{TEST_NGINX_ADMIN_TOKEN}"]
--- error_code: 401
--- response_body chomp
{"error":"Unauthorized: expected \"Authorization: Bearer <api key>\""}



=== TEST 36: ... or in another scheme
--- more_headers
Authorization: Token $TEST_NGINX_ADMIN_TOKEN
--- request eval
"GET /redis/$main::I/ping"
--- error_code: 401
--- response_body chomp
{"error":"Unauthorized: expected \"Authorization: Bearer <api key>\""}



=== TEST 37: BEARER in upper case; a good header wins over a bad _token
--- more_headers
Authorization: BEARER $TEST_NGINX_ADMIN_TOKEN
--- request eval
["GET /redis/$main::I/ping",
 "GET /redis/$main::I/ping?_token=bad"]
--- error_code: 200
--- response_body chomp
{"result":"PONG"}



=== TEST 38: the token in upper case is another token
--- more_headers eval
"Authorization: Bearer " . uc $ENV{TEST_NGINX_ADMIN_TOKEN}
--- request eval
"GET /redis/$main::I/ping"
--- error_code: 401
--- response_body chomp
{"error":"Unauthorized: invalid API key"}



=== TEST 39: two tokens in one header
--- more_headers
Authorization: Bearer $TEST_NGINX_ADMIN_TOKEN, Bearer $TEST_NGINX_ADMIN_TOKEN
--- request eval
"GET /redis/$main::I/ping"
--- error_code: 401
--- response_body chomp
{"error":"Unauthorized: invalid API key"}



=== TEST 40: a token followed by a word
--- more_headers
Authorization: Bearer $TEST_NGINX_ADMIN_TOKEN x
--- request eval
"GET /redis/$main::I/ping"
--- error_code: 401
--- response_body chomp
{"error":"Unauthorized: invalid API key"}



=== TEST 41: _token abuse: twice (the last one wins), NUL, upper case, other names
--- more_headers
X-Nothing: 1
--- request eval
my $t = $ENV{TEST_NGINX_ADMIN_TOKEN};
my $u = "GET /redis/$main::I/ping";
(my $pct = $t) =~ s/_/%5F/g;
["$u?_token=$t&_token=bad",
 "$u?_token=bad&_token=$t",
 "$u?_token=$t%00",
 "$u?_token=%00$t",
 "$u?_token=" . uc $t,
 "$u?_token=",
 "$u?_token",
 "$u?_TOKEN=$t",
 "$u?%5Ftoken=$t",
 "$u?_token=%zz",
 "$u?_token=$pct"]
--- error_code eval
[401, 200, 401, 401, 401, 401, 401, 401, 401, 401, 200]
--- response_body eval
['{"error":"Unauthorized: invalid API key"}',
 '{"result":"PONG"}',
 '{"error":"Unauthorized: invalid API key"}',
 '{"error":"Unauthorized: invalid API key"}',
 '{"error":"Unauthorized: invalid API key"}',
 '{"error":"Unauthorized: missing API key, send \"Authorization: Bearer <api key>\""}',
 '{"error":"Unauthorized: missing API key, send \"Authorization: Bearer <api key>\""}',
 '{"error":"Unauthorized: missing API key, send \"Authorization: Bearer <api key>\""}',
 '{"error":"Unauthorized: missing API key, send \"Authorization: Bearer <api key>\""}',
 '{"error":"Unauthorized: malformed _token"}',
 '{"result":"PONG"}']



=== TEST 42: cross-tenant setup: the same key name in both organizations
--- more_headers
Authorization: Bearer $TEST_NGINX_GLOBEX_TOKEN
--- request eval
["GET /redis/$main::GI/set/h:xt/globex-secret",
 "GET /redis/$main::I/set/h:xt/x",
 "GET /redis/" . uc($main::GI) . "/get/h:xt"]
--- error_code eval
[200, 404, 200]
--- response_body eval
['{"result":"OK"}', '{"error":"instance not found"}', '{"result":"globex-secret"}']



=== TEST 43: acme's key never reads globex's data, whatever the URL
--- request eval
# the module reads the raw request URI and skips the location's segments:
# ".." and "." are arguments, never path steps; nginx's normalised URI
# only chooses the location
my $enc = CORE::join '', map { sprintf '%%%02X', ord } split //, $main::GI;
["GET /redis/$main::I/set/h:xt/acme-own",
 "GET /redis/$main::GI/get/h:xt",
 "GET /redis/" . uc($main::GI) . "/get/h:xt",
 "GET /redis/%39" . substr($main::GI, 1) . "/get/h:xt",
 "GET /redis/$enc/get/h:xt",
 "GET /redis/$main::GI/../$main::I/get/h:xt",
 "GET /redis//$main::GI/get/h:xt",
 "GET /redis/./$main::GI/get/h:xt",
 "GET /x/../redis/$main::GI/get/h:xt",
 "GET /%72edis/$main::GI/get/h:xt",
 "GET /redis/$main::I%2F..%2F$main::GI/get/h:xt",
 "GET /redis/${main::GI}x/get/h:xt",
 "GET /redis/$main::GI;x/get/h:xt",
 "GET /redis/$main::GI%20/get/h:xt",
 "GET /redis/{$main::GI}/get/h:xt",
 "GET /redis/$main::GI/get/h:xt?_token=$ENV{TEST_NGINX_GLOBEX_TOKEN}",
 "GET /redis/$main::I/../$main::GI/get/h:xt",
 "GET /redis/$main::I/./../$main::GI/get/h:xt",
 "GET /redis/$main::I/get/h:xt",
 "POST /redis/$main::I/pipeline\n[[\"GET\",\"h:xt\"],[\"EXISTS\",\"h:xt\"]]"]
--- error_code eval
[200, (404) x 15, 400, 400, 200, 200]
--- response_body eval
['{"result":"OK"}',
 ('{"error":"instance not found"}') x 15,
 "{\"error\":\"ERR unknown command '..', with args beginning with: '$main::GI' 'get' 'h:xt' \"}",
 "{\"error\":\"ERR unknown command '.', with args beginning with: '..' '$main::GI' 'get' 'h:xt' \"}",
 '{"result":"acme-own"}',
 '[{"result":"acme-own"},{"result":1}]']



=== TEST 44: ... nor globex's key acme's data
--- more_headers
Authorization: Bearer $TEST_NGINX_GLOBEX_TOKEN
--- request eval
["GET /redis/$main::I/get/h:xt",
 "GET /redis/" . uc($main::I) . "/get/h:xt",
 "GET /redis/$main::I/../$main::GI/get/h:xt",
 "GET /redis/$main::GI/../$main::I/get/h:xt",
 "GET /%72edis/$main::I/get/h:xt",
 "POST /redis/$main::I/pipeline\n[[\"GET\",\"h:xt\"]]",
 "GET /redis/$main::GI/get/h:xt"]
--- error_code eval
[404, 404, 404, 400, 404, 404, 200]
--- response_body eval
['{"error":"instance not found"}', '{"error":"instance not found"}',
 '{"error":"instance not found"}',
 "{\"error\":\"ERR unknown command '..', with args beginning with: '$main::I' 'get' 'h:xt' \"}",
 '{"error":"instance not found"}', '{"error":"instance not found"}',
 '{"result":"globex-secret"}']



=== TEST 45: SWAPDB as the 500th entry refuses the whole pipeline; nothing before it ran
--- request eval
my $body = '[["SET","h:p500","1"],'
           . CORE::join(',', map { qq{["ECHO","$_"]} } 1 .. 498)
           . ',["SWAPDB","0","1"],["SET","h:p500b","1"]]';
["POST /redis/$main::I/pipeline\n$body",
 "POST /redis/$main::I/multi-exec\n$body",
 "POST /redis/$main::I\n[\"MGET\",\"h:p500\",\"h:p500b\"]"]
--- error_code eval
[400, 400, 200]
--- response_body eval
["{\"error\":\"ERR command 'swapdb' is not allowed through this gateway\"}",
 "{\"error\":\"ERR command 'swapdb' is not allowed through this gateway\"}",
 '{"result":[null,null]}']



=== TEST 46: CONFIG in any case or JSON escape, bare, or in a path escape: denied, nothing ran
--- request eval
my $p = "POST /redis/$main::I/pipeline\n[[\"SET\",\"h:cfg\",\"1\"],";
[$p . '["config","get","maxmemory"]]',
 $p . '["CoNfIg","GeT","maxmemory"]]',
 $p . '["\u0043ONFIG","\u0047ET","maxmemory"]]',
 $p . '["CONFIG"]]',
 $p . '["CONFIG","SET","maxmemory","1"]]',
 $p . '["SH\u0055TDOWN"]]',
 "POST /redis/$main::I/multi-exec\n[[\"SET\",\"h:cfg\",\"1\"],[\"cOnFiG\",\"resetstat\"]]",
 "GET /redis/$main::I/%43ONFIG/%67et/maxmemory",
 "GET /redis/$main::I/get/h:cfg"]
--- error_code eval
[400, 400, 400, 400, 400, 400, 400, 400, 200]
--- response_body eval
["{\"error\":\"ERR command 'config|get' is not allowed through this gateway\"}",
 "{\"error\":\"ERR command 'config|get' is not allowed through this gateway\"}",
 "{\"error\":\"ERR command 'config|get' is not allowed through this gateway\"}",
 "{\"error\":\"ERR command 'config' is not allowed through this gateway\"}",
 "{\"error\":\"ERR command 'config|set' is not allowed through this gateway\"}",
 "{\"error\":\"ERR command 'shutdown' is not allowed through this gateway\"}",
 "{\"error\":\"ERR command 'config|resetstat' is not allowed through this gateway\"}",
 "{\"error\":\"ERR command 'config|get' is not allowed through this gateway\"}",
 '{"result":null}']



=== TEST 47: a NUL after CONFIG: refused, nothing of the pipeline runs (Redis 7.0 compares names with strcasecmp(), which stops at the NUL: "CONFIG\0" would be CONFIG whenever its hash met CONFIG's bucket)
--- request eval
["POST /redis/$ENV{TEST_NGINX_INSTANCE}/pipeline
[[\"SET\",\"h:cfgnul\",\"1\"],[\"CONFIG\\u0000\",\"GET\",\"maxmemory\"],[\"GET\",\"h:cfgnul\"]]",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/exists/h:cfgnul"]
--- error_code eval
[400, 200]
--- response_body eval
["{\"error\":\"ERR a command name cannot hold a NUL byte\"}",
 "{\"result\":0}"]



=== TEST 48: transaction commands inside /multi-exec are refused; nothing ran
--- request eval
my $p = "POST /redis/$main::I/multi-exec\n[[\"SET\",\"h:mx\",\"1\"],";
[$p . '["MULTI"],["SET","h:mx","2"],["EXEC"]]',
 $p . '["exec"]]',
 $p . '["Discard"]]',
 $p . '["WATCH","h:mx"]]',
 $p . '["UNWATCH"]]',
 "GET /redis/$main::I/get/h:mx"]
--- error_code eval
[400, 400, 400, 400, 400, 200]
--- response_body eval
["{\"error\":\"ERR command 'multi' is not allowed through this gateway\"}",
 "{\"error\":\"ERR command 'exec' is not allowed through this gateway\"}",
 "{\"error\":\"ERR command 'discard' is not allowed through this gateway\"}",
 "{\"error\":\"ERR command 'watch' is not allowed through this gateway\"}",
 "{\"error\":\"ERR command 'unwatch' is not allowed through this gateway\"}",
 '{"result":null}']



=== TEST 49: subcommand forms with a write-scope key: denied, out of scope, or harmless
--- more_headers
Authorization: Bearer $TEST_NGINX_WRITER_TOKEN
--- request eval
my $p = "POST /redis/$main::I/pipeline\n[[\"SET\",\"h:sub\",\"1\"],";
[$p . '["client","kill","ID","1"]]',
 $p . '["Client","Pause","1"]]',
 $p . '["SCRIPT","FLUSH"]]',
 $p . '["script","kill"]]',
 $p . '["FUNCTION","FLUSH"]]',
 $p . '["MEMORY","PURGE"]]',
 $p . '["DEBUG","SLEEP","0"]]',
 $p . '["FLUSHDB"]]',
 "GET /redis/$main::I/get/h:sub",
 $p . '["OBJECT","HELP"]]',
 "GET /redis/$main::I/getdel/h:sub"]
--- error_code eval
[400, 400, 403, 400, 403, 400, 400, 403, 200, 200, 200]
--- response_body_like eval
["^\\{\"error\":\"ERR command 'client\\|kill' is not allowed through this gateway\"\\}\$",
 "^\\{\"error\":\"ERR command 'client\\|pause' is not allowed through this gateway\"\\}\$",
 "^\\{\"error\":\"Forbidden: this API key's scopes do not allow 'script\\|flush'\"\\}\$",
 "^\\{\"error\":\"ERR command 'script\\|kill' is not allowed through this gateway\"\\}\$",
 "^\\{\"error\":\"Forbidden: this API key's scopes do not allow 'function\\|flush'\"\\}\$",
 "^\\{\"error\":\"ERR command 'memory\\|purge' is not allowed through this gateway\"\\}\$",
 "^\\{\"error\":\"ERR command 'debug' is not allowed through this gateway\"\\}\$",
 "^\\{\"error\":\"Forbidden: this API key's scopes do not allow 'flushdb'\"\\}\$",
 '^\{"result":null\}$',
 '^\[\{"result":"OK"\},\{"result":\["OBJECT <subcommand> .*"HELP","    Prints this help\."\]\}\]$',
 '^\{"result":"1"\}$']



=== TEST 50: Lua: Redis refuses noscript commands inside EVAL, whatever the gateway allowed
--- more_headers
Authorization: Bearer $TEST_NGINX_WRITER_TOKEN
--- request eval
[map { "POST /redis/$main::I\n[\"EVAL\",\"return redis.call($_)\",\"0\"]" }
 "'CONFIG','GET','maxmemory'", "'CONFIG','SET','maxmemory','1'",
 "'DEBUG','SLEEP',0", "'CLIENT','KILL','ID','999999999'",
 "'CLIENT','LIST'", "'CLIENT','PAUSE',1", "'MONITOR'", "'SUBSCRIBE','x'",
 "'BLPOP','h:q',0", "'MULTI'", "'WATCH','h:q'", "'SCRIPT','FLUSH'",
 "'FUNCTION','FLUSH'", "'ACL','LIST'", "'SAVE'", "'BGSAVE'",
 "'REPLICAOF','NO','ONE'", "'MODULE','LIST'", "'AUTH','x'", "'HELLO'",
 "'EVAL','return 1',0", "'WAIT',0,0", "'LATENCY','RESET'"]
--- error_code: 400
--- response_body_like eval
$main::NoScript



=== TEST 51: ... XREAD BLOCK with its own text; EVAL_RO refuses writes
--- more_headers
Authorization: Bearer $TEST_NGINX_WRITER_TOKEN
--- request eval
["POST /redis/$main::I\n[\"EVAL\",\"return redis.call('XREAD','BLOCK',0,'STREAMS','h:s','\$')\",\"0\"]",
 "POST /redis/$main::I\n[\"EVAL_RO\",\"return redis.call('SET','h:ro','1')\",\"0\"]",
 "POST /redis/$main::I\n[\"EVAL_RO\",\"return redis.call('PUBLISH','h:ch','m')\",\"0\"]",
 "POST /redis/$main::I\n[\"EVAL\",\"#!lua flags=no-writes\\nreturn redis.call('DEL','h:xt')\",\"0\"]",
 "GET /redis/$main::I/exists/h:ro/h:xt"]
--- error_code eval
[400, 400, 400, 400, 200]
--- response_body_like eval
['^\{"error":"ERR XREAD command is not allowed with BLOCK option from scripts script: [0-9a-f]{40}, on @user_script:1\."\}$',
 '^\{"error":"ERR Write commands are not allowed from read-only scripts\. script: [0-9a-f]{40}, on @user_script:1\."\}$',
 '^\{"error":"ERR Write commands are not allowed from read-only scripts\. script: [0-9a-f]{40}, on @user_script:1\."\}$',
 '^\{"error":"ERR Write commands are not allowed from read-only scripts\. script: [0-9a-f]{40}, on @user_script:2\."\}$',
 '^\{"result":1\}$']



=== TEST 52: SHUTDOWN inside a script is refused (called only when Redis flags it noscript)
--- more_headers
Authorization: Bearer $TEST_NGINX_WRITER_TOKEN
--- request eval
my $guard = "local f = redis.call('COMMAND','INFO','SHUTDOWN')[1][3]"
            . " for _, v in ipairs(f) do if v['ok'] == 'noscript' then"
            . " return redis.call(%s) end end"
            . " return 'SHUTDOWN is not noscript: not called'";
[map { "POST /redis/$main::I\n[\"EVAL\",\"" . sprintf($guard, $_) . "\",\"0\"]" }
 "'SHUTDOWN'", "'SHUTDOWN','NOSAVE'"]
--- error_code: 400
--- response_body_like eval
$main::NoScript



=== TEST 53: what scripts do reach: another database (documented in docs/security.md)
--- more_headers
Authorization: Bearer $TEST_NGINX_WRITER_TOKEN
--- request eval
["POST /redis/$main::I\n[\"EVAL\",\"redis.call('SELECT', 2) return redis.call('GET', 'h:xt')\",\"0\"]",
 "POST /redis/$main::I\n[\"EVAL\",\"return redis.call('SELECT', 2)\",\"0\"]",
 "POST /redis/$main::I/pipeline\n[[\"EVAL\",\"redis.call('SELECT', 2) return 1\",\"0\"],[\"GET\",\"h:xt\"]]",
 "POST /redis/$main::I\n[\"EVAL\",\"return redis.call('PUBLISH', 'h:ch', 'm')\",\"0\"]",
 "POST /redis/$main::I\n[\"EVAL\",\"return redis.call('MEMORY', 'PURGE')\",\"0\"]",
 "POST /redis/$main::I\n[\"EVAL\",\"return redis.call('SLOWLOG', 'RESET')\",\"0\"]",
 "POST /redis/$main::I\n[\"EVAL\",\"return redis.call('OBJECT', 'ENCODING', 'h:xt')\",\"0\"]"]
--- response_body eval
# the script's SELECT does not outlive the script: the shared connection
# is back on the instance's database for the next command
['{"result":"globex-secret"}', '{"result":"OK"}',
 '[{"result":1},{"result":"acme-own"}]',
 '{"result":0}', '{"result":"OK"}', '{"result":"OK"}',
 '{"result":"embstr"}']



=== TEST 54: ... FLUSHDB, SWAPDB and MOVE, tried on databases 9 and 10 only
--- more_headers
Authorization: Bearer $TEST_NGINX_WRITER_TOKEN
--- request eval
my $e = sub { "POST /redis/$main::I\n[\"EVAL\",\"$_[0]\",\"0\"]" };
[$e->("redis.call('SELECT', 9) redis.call('FLUSHDB') redis.call('SET', 'h:9', 'x') return redis.call('DBSIZE')"),
 $e->("redis.call('SELECT', 9) return redis.call('FLUSHDB')"),
 $e->("redis.call('SELECT', 9) return redis.call('DBSIZE')"),
 $e->("redis.call('SELECT', 9) redis.call('SET', 'h:swap', 'was in 9') return redis.call('SWAPDB', 9, 10)"),
 $e->("redis.call('SELECT', 10) return redis.call('GET', 'h:swap')"),
 $e->("redis.call('SET', 'h:mv', 'moved') return redis.call('MOVE', 'h:mv', 9)"),
 $e->("redis.call('SELECT', 9) return redis.call('GET', 'h:mv')"),
 $e->("redis.call('SELECT', 9) redis.call('FLUSHDB') redis.call('SELECT', 10) return redis.call('FLUSHDB')"),
 "GET /redis/$main::I/mget/h:mv/h:xt"]
--- response_body eval
['{"result":1}', '{"result":"OK"}', '{"result":0}', '{"result":"OK"}',
 '{"result":"was in 9"}', '{"result":1}', '{"result":"moved"}',
 '{"result":"OK"}', '{"result":[null,"acme-own"]}']



=== TEST 55: a read-only key: EVAL and EVALSHA are 403, EVAL_RO reads, even another database
--- more_headers
Authorization: Bearer $TEST_NGINX_READER_TOKEN
--- request eval
["POST /redis/$main::I\n[\"EVAL\",\"return redis.call('GET', 'h:xt')\",\"0\"]",
 "POST /redis/$main::I\n[\"EVALSHA\",\"0000000000000000000000000000000000000000\",\"0\"]",
 "POST /redis/$main::I\n[\"FCALL\",\"nofn\",\"0\"]",
 "POST /redis/$main::I/pipeline\n[[\"EVAL_RO\",\"return 1\",\"0\"],[\"EVAL\",\"return 1\",\"0\"]]",
 "POST /redis/$main::I\n[\"EVAL_RO\",\"return redis.call('GET', 'h:xt')\",\"0\"]",
 "POST /redis/$main::I\n[\"EVAL_RO\",\"return redis.call('SET', 'h:ro', '1')\",\"0\"]",
 "POST /redis/$main::I\n[\"EVAL_RO\",\"redis.call('SELECT', 2) return redis.call('GET', 'h:xt')\",\"0\"]",
 "POST /redis/$main::I\n[\"EVALSHA_RO\",\"0000000000000000000000000000000000000000\",\"0\"]"]
--- error_code eval
[403, 403, 403, 403, 200, 400, 200, 400]
--- response_body_like eval
["^\\{\"error\":\"Forbidden: this API key's scopes do not allow 'eval'\"\\}\$",
 "^\\{\"error\":\"Forbidden: this API key's scopes do not allow 'evalsha'\"\\}\$",
 "^\\{\"error\":\"Forbidden: this API key's scopes do not allow 'fcall'\"\\}\$",
 "^\\{\"error\":\"Forbidden: this API key's scopes do not allow 'eval'\"\\}\$",
 '^\{"result":"acme-own"\}$',
 '^\{"error":"ERR Write commands are not allowed from read-only scripts\. script: [0-9a-f]{40}, on @user_script:1\."\}$',
 '^\{"result":"globex-secret"\}$',
 '^\{"error":"NOSCRIPT No matching script[^"]*"\}$']



=== TEST 56: ?_token= on JSON commands, pipelines and transactions too
--- more_headers
X-Nothing: 1
--- request eval
my $t = $ENV{TEST_NGINX_ADMIN_TOKEN};
["POST /redis/$main::I?_token=$t\n[\"ECHO\",\"t\"]",
 "POST /redis/$main::I/pipeline?_token=$t\n[[\"ECHO\",\"t\"]]",
 "POST /redis/$main::I/multi-exec?_token=$t\n[[\"ECHO\",\"t\"]]",
 "POST /redis/$main::I/pipeline?EX=1&_token=bad&_token=$t\n[[\"ECHO\",\"t\"]]",
 "POST /redis/$main::GI/pipeline?_token=$t\n[[\"ECHO\",\"t\"]]",
 "POST /redis/$main::I/pipeline?_token=bad\n[[\"ECHO\",\"t\"]]",
 "POST /redis/$main::I/pipeline?token=$t\n[[\"ECHO\",\"t\"]]"]
--- error_code eval
[200, 200, 200, 200, 404, 401, 401]
--- response_body eval
['{"result":"t"}', '[{"result":"t"}]', '[{"result":"t"}]',
 '[{"result":"t"}]', '{"error":"instance not found"}',
 '{"error":"Unauthorized: invalid API key"}',
 '{"error":"Unauthorized: missing API key, send \"Authorization: Bearer <api key>\""}']
