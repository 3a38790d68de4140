# Copyright (C) RedisGate authors
#
# Selftest for the Test::Nginx::Socket compat runner in t/compat (uses only
# stock nginx directives).  Run with:  prove -I t/compat t/000-compat-selftest.t

use Test::Nginx::Socket;
use File::Temp ();

repeat_each(1);

# per-block check counts: 5+2+2+2+7+4+4+5+2+2+1+2 = 38, plus the
# fail-detection checks below
my @fail_checks = (
    [ok     => 'TEST 1: wrong body - status code ok'],
    [not_ok => 'TEST 1: wrong body - response_body - response is expected'],
    [not_ok => 'TEST 2: wrong status and headers - status code ok'],
    [not_ok => 'TEST 2: wrong status and headers - header X-Foo ok'],
    [not_ok => 'TEST 2: wrong status and headers - header X-Foo not present'],
    [not_ok => 'TEST 2: wrong status and headers - response_body_like - response is expected'],
    [ok     => 'TEST 3: log checks - status code ok'],
    [not_ok => 'TEST 3: log checks - pattern "never logged by nginx" matches a line in error.log'],
    [not_ok => 'TEST 3: log checks - pattern "[error]" should not match any line in error.log'],
    [not_ok => 'ERROR: client socket timed out - TEST 4: timeout'],
);

plan tests => repeat_each() * 38 + @fail_checks + 2;

run_tests();

# --- fail detection: run deliberately failing blocks in a child process ----

SKIP: {
    my $compat = do { no warnings 'once'; $Test::Nginx::Socket::RedisGateCompat };
    skip 'fail-detection checks need the RedisGate compat runner',
         @fail_checks + 2
        unless $compat;

    (my $inc = $INC{'Test/Nginx/Socket.pm'}) =~ s{/Test/Nginx/Socket\.pm\z}{};
    my $tmp = File::Temp::tempdir(CLEANUP => 1);

    my $run = sub {
        my ($body) = @_;
        my $file = "$tmp/t.t";
        open my $fh, '>', $file or die $!;
        print $fh "use Test::Nginx::Socket;\nrepeat_each(1);\nrun_tests();\n"
                . "__DATA__\n$body";
        close $fh;
        my $pid = open(my $out, '-|') // die "fork: $!";
        if (!$pid) {
            delete @ENV{qw(TEST_NGINX_PORT TEST_NGINX_SERVER_PORT
                           TEST_NGINX_HTML_DIR TEST_NGINX_VERBOSE)};
            $ENV{TEST_NGINX_SERVROOT} = "$tmp/servroot";
            open STDERR, '>&', \*STDOUT;
            no warnings q(exec);
            exec $^X, "-I$inc", $file;
            POSIX::_exit(127);
        }
        local $/;
        my $text = <$out>;
        close $out;
        return ($text, $?);
    };

    my ($tap) = $run->(<<'_EOB_');
=== TEST 1: wrong body
--- config
location = /t { return 200 "actual\n"; }
--- request
GET /t
--- response_body
expected

=== TEST 2: wrong status and headers
--- config
location = /t { add_header X-Foo present; return 201 "x"; }
--- request
GET /t
--- response_headers
X-Foo: other
!X-Foo
--- response_body_like: ^y$

=== TEST 3: log checks
--- request
GET /nope.html
--- error_code: 404
--- error_log
never logged by nginx
--- no_error_log
[error]

=== TEST 4: timeout
--- config
location = /t { limit_rate 1; return 200 "0123456789"; }
--- request
GET /t
--- timeout: 0.3
--- ignore_response
_EOB_

    for my $c (@fail_checks) {
        my ($want, $name) = @$c;
        my $re = $want eq 'ok' ? qr/^ok \d+ - \Q$name\E$/m
                               : qr/^not ok \d+ - \Q$name\E$/m;
        like($tap, $re, "fail detection: $want - $name");
    }
    my @not_ok = $tap =~ /^not ok /mg;
    is(scalar(@not_ok), scalar(grep { $_->[0] eq 'not_ok' } @fail_checks),
       'fail detection: no other failures');

    my ($err, $status) = $run->(<<'_EOB_');
=== TEST 1: undefined variable
--- config
location = /t { return 200 "$TEST_NGINX_SURELY_UNDEFINED_VAR"; }
--- request
GET /t
_EOB_
    ok($status != 0 && $err =~ /TEST_NGINX_SURELY_UNDEFINED_VAR is used but not defined/,
       'undefined $TEST_NGINX_* variable aborts the run')
        or diag($err);
}

__DATA__

=== TEST 1: plain GET, response headers and body
--- config
location = /t {
    add_header X-Foo bar;
    return 200 "hello, conn=$connection\n";
}
--- request
GET /t
--- response_headers
X-Foo: bar
Content-Type: text/plain
!X-None
--- response_body
hello, conn=1



=== TEST 2: identical config keeps nginx running (HTTP/1.0 request)
--- skip_eval: 2: !$Test::Nginx::Socket::RedisGateCompat || $ENV{TEST_NGINX_FORCE_RESTART_ON_TEST}
--- config
location = /t {
    add_header X-Foo bar;
    return 200 "hello, conn=$connection\n";
}
--- request
GET /t HTTP/1.0
--- response_body
hello, conn=2



=== TEST 3: main_config, http_config and $TEST_NGINX_* expansion
--- main_config
worker_rlimit_nofile 1024;
--- http_config
map $uri $selftest_map {
    default "from-http-config";
}
--- config
location = /vars {
    return 200 "$selftest_map conn=$connection port=$server_port html=$TEST_NGINX_HTML_DIR\n";
}
--- request
GET /vars
--- response_body
from-http-config conn=1 port=$TEST_NGINX_SERVER_PORT html=$TEST_NGINX_SERVROOT/html



=== TEST 4: POST body and more_headers
--- config
location = /post {
    proxy_set_header X-Body $request_body;
    proxy_pass http://127.0.0.1:$TEST_NGINX_PORT/echo;
}
location = /echo {
    return 200 "body=[$http_x_body] len=$http_content_length foo=$http_x_foo\n";
}
--- request
POST /post
hello world
--- more_headers
X-Foo: bar
--- response_body
body=[hello world] len=11 foo=bar



=== TEST 5: several requests, eval'd arrays, error_log eval
--- config
location = /a { return 200 "a\n"; }
location = /b { deny all; }
--- request eval
["GET /a", "GET /b HTTP/1.0"]
--- error_code eval
[200, 403]
--- response_body_like eval
[qr/^a$/, qr/403 Forbidden/]
--- error_log eval
[qr/access forbidden by rule/, 'request: "GET /b HTTP/1.0"']
--- no_error_log eval
qr/\[(?:alert|crit|emerg)\]/



=== TEST 6: raw_request and response_headers_like
--- config
location = /t {
    add_header X-Echo $http_x_foo;
    return 200 "got $http_x_foo\n";
}
--- raw_request eval
"GET /t HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nX-Foo: raw\r\n\r\n"
--- response_headers_like
X-Echo: r.w
Content-Length: \d+
--- response_body_like: ^got raw$



=== TEST 7: pipelined requests share one connection
--- config
location = /p { return 200 "x=$arg_x n=$connection_requests\n"; }
--- pipelined_requests eval
["GET /p?x=1", "GET /p?x=2"]
--- response_body eval
["x=1 n=1\n", "x=2 n=2\n"]



=== TEST 8: error_log and no_error_log
--- request
GET /nope.html
--- error_code: 404
--- error_log
open() "
nope.html" failed (2: No such file or directory)
--- no_error_log
[alert]
[emerg]



=== TEST 9: user_files are served by the root location
--- user_files
>>> index.html
hello from user_files
>>> sub/page.txt
nested
--- request
GET /
--- response_body
hello from user_files



=== TEST 10: init runs before the request; chomp filter
--- init
open my $fh, '>', '$TEST_NGINX_HTML_DIR/init.txt' or die $!;
print $fh "made by init";
close $fh;
--- request
GET /init.txt
--- response_body chomp
made by init



=== TEST 11: abort after timeout is not a failure
--- config
location = /slow {
    limit_rate 1;
    return 200 "0123456789";
}
--- request
GET /slow
--- timeout: 0.3
--- abort
--- ignore_response
--- wait: 0.1
--- no_error_log
[emerg]



=== TEST 12: skip_nginx skips the given number of tests
--- skip_nginx: 2: >= 0.1
--- request
GET /never
--- error_code: 599
--- response_body
never



=== TEST 13: SKIP marker removes the block
--- SKIP
--- request
GET /never
--- error_code: 599
