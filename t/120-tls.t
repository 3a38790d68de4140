# Redis over TLS (rediss://): the answers, what Redis holds afterwards, and
# every way a TLS connection can fail, each a JSON 500 with a fixed message
# and the reason in the error log.  Servers: the TLS Redis of t/run-tests
# ($TEST_NGINX_TLS_PORT), TLS Redis servers of this file's own (an expired
# certificate, one for another name, client certificates required, TLSv1.2
# with one cipher only), and peers that Redis cannot play (t/lib/peers.mjs):
# a TLS front that picks its certificate by SNI, a proxy that closes in the
# middle of a record, a peer that answers in plain text.

use FindBin;
use lib "$FindBin::Bin/lib";
# this file says itself which instances are on TLS
BEGIN { delete $ENV{TEST_NGINX_REDIS_TLS} }
use Test::Nginx::Socket 'no_plan';
use RedisGate::Test;

repeat_each(1);
no_shuffle();

my $certs = $ENV{TEST_NGINX_CERT_DIR}
    // die "TEST_NGINX_CERT_DIR is not set: run the suites with t/run-tests\n";
my $tls = $ENV{TEST_NGINX_TLS_PORT}
    // die "TEST_NGINX_TLS_PORT is not set: run the suites with t/run-tests\n";

sub cert_opts {
    my $name = shift;
    return ('--tls-cert-file', "$certs/$name.crt",
            '--tls-key-file', "$certs/$name.key");
}

$ENV{TEST_NGINX_EXPIRED_PORT} =
    RedisGate::Test::start_tls_redis('expired', cert_opts('expired'));
$ENV{TEST_NGINX_WRONGNAME_PORT} =
    RedisGate::Test::start_tls_redis('wrongname', cert_opts('wrongname'));
$ENV{TEST_NGINX_MTLS_PORT} =
    RedisGate::Test::start_tls_redis('mtls', '--tls-auth-clients', 'yes');
$ENV{TEST_NGINX_TLS12_PORT} =
    RedisGate::Test::start_tls_redis('tls12', '--tls-protocols', 'TLSv1.2',
        '--tls-ciphers', 'ECDHE-ECDSA-AES128-GCM-SHA256');

# the names the SNI front was given, a line each
our $SniLog = "$ENV{TEST_NGINX_REDIS_DIR}/sni-$$.log";
$ENV{TEST_NGINX_FRONT_PORT} = RedisGate::Test::start_peer('sni-front',
    $ENV{TEST_NGINX_REDIS_PORT}, $certs, $SniLog);
$ENV{TEST_NGINX_CUT_PORT} = RedisGate::Test::start_peer('cut', $tls, 100000);
$ENV{TEST_NGINX_GARBAGE_PORT} = RedisGate::Test::start_peer('garbage');

# an ACL user of the TLS Redis that may touch only keys acl:*
our $AclUser = "rg-tls-$$";
$ENV{TEST_NGINX_ACL_USER} = $AclUser;
$ENV{TEST_NGINX_ACL_PASSWORD} = 'pw-' . join '', map { int rand 10 } 1 .. 16;
RedisGate::Test::tls_redis_cli($tls, 'ACL', 'SETUSER', $AclUser, 'reset',
    'on', ">$ENV{TEST_NGINX_ACL_PASSWORD}", '~acl:*', '&*', '+@all') eq 'OK'
    or die "cannot create the ACL user $AclUser\n";

END {
    RedisGate::Test::tls_redis_cli($tls, 'ACL', 'DELUSER', $AclUser)
        if $AclUser;
}

my %inst = (
    TLS       => "rediss://127.0.0.1:$tls/1",
    TLSDB2    => "rediss://127.0.0.1:$tls/2",
    TLSNAME   => "rediss://localhost:$tls/1",
    EXPIRED   => 'rediss://127.0.0.1:$TEST_NGINX_EXPIRED_PORT',
    WRONGNAME => 'rediss://127.0.0.1:$TEST_NGINX_WRONGNAME_PORT/1',
    MTLS      => 'rediss://127.0.0.1:$TEST_NGINX_MTLS_PORT/1',
    TLS12     => 'rediss://127.0.0.1:$TEST_NGINX_TLS12_PORT/1',
    ACL       => 'rediss://$TEST_NGINX_ACL_USER:$TEST_NGINX_ACL_PASSWORD'
                 . "\@127.0.0.1:$tls/5",
    BADPASS   => "rediss://\$TEST_NGINX_ACL_USER:wrong\@127.0.0.1:$tls/5",
    FRONTIP   => 'rediss://127.0.0.1:$TEST_NGINX_FRONT_PORT/1',
    FRONTNAME => 'rediss://localhost:$TEST_NGINX_FRONT_PORT/1',
    CUT       => 'rediss://127.0.0.1:$TEST_NGINX_CUT_PORT/1',
    GARBAGE   => 'rediss://127.0.0.1:$TEST_NGINX_GARBAGE_PORT',
    SILENT    => 'rediss://127.0.0.1:$TEST_NGINX_SILENT_PORT',
    REFUSED   => 'rediss://127.0.0.1:$TEST_NGINX_SPARE_PORT',
);

RedisGate::Test::add_instances('a1a1a1a1', %inst);

$RedisGate::Test::ExtraHttpConfig .= <<'_EOC_';
    log_format tlstest 'TLSTEST $request_uri $status $request_time';
_EOC_

$RedisGate::Test::DefaultConfig = <<'_EOC_';
    location /redis/ {
        access_log logs/error.log tlstest;
        redisgate;
    }

    location = /status {
        redisgate_status;
    }
_EOC_

# the fixed client messages
our $Unverified =
    '{"error":"Redis unavailable: TLS certificate verification failed"}';
our $Handshake = '{"error":"Redis unavailable: TLS handshake failed"}';

# a request's answer (the JSON message), then the status page's: the
# failure counted for the backend on 127.0.0.1:PORT, database DB
sub counted {
    my ($message, $port, $db) = @_;
    return ["^\Q$message\E\$",
            qr/redisgate_backend_tls_handshake_failures_total\{backend="rediss:\/\/127\.0\.0\.1:$port\/$db"\} [1-9]/];
}

# TESTs 24 and 25: a connection to database 1 of the TLS Redis; CLIENT KILL
# through database 2 (every connection but its own); database 1 again; the
# status page: at least two handshakes of database 1's backend, and as many
# session reuses as reconnected() is told
our $KillConfig = <<'_EOC_';
    location /redis/ {
        redisgate_allow client|kill;
        redisgate;
    }

    location = /status {
        redisgate_status;
    }
_EOC_

our @KillRequests = (
    "GET /redis/$ENV{TEST_NGINX_TLS_INSTANCE}/ping",
    "POST /redis/$ENV{TEST_NGINX_TLSDB2_INSTANCE}\n"
    . '["CLIENT","KILL","TYPE","normal"]',
    "GET /redis/$ENV{TEST_NGINX_TLS_INSTANCE}/ping",
    "GET /status");

our @KillAnswers = ('^\{"result":"PONG"\}$', '^\{"result":[1-9]\d*\}$',
                    '^\{"result":"PONG"\}$');

sub reconnected {
    my $reuses = shift;
    my $backend = "\\{backend=\"rediss://127\\.0\\.0\\.1:$tls/1\"\\}";
    return qr/^(?=.*redisgate_backend_tls_handshakes_total$backend ([2-9]|\d\d+)\n)(?=.*redisgate_backend_tls_session_reuses_total$backend $reuses)/s;
}

run_tests();

__DATA__

=== TEST 1: rediss:// with the test CA: path, JSON, pipeline and multi-exec answered
--- http_config
redisgate_ssl_trusted_certificate $TEST_NGINX_CERT_DIR/ca.crt;
--- init
RedisGate::Test::tls_redis_cli($ENV{TEST_NGINX_TLS_PORT}, '-n', 1,
    'SET', 'tls:seed', 'from-redis-cli');
RedisGate::Test::tls_redis_cli($ENV{TEST_NGINX_TLS_PORT}, '-n', 1,
    'DEL', 'tls:k', 'tls:n', 'tls:m');
--- request eval
["GET /redis/$ENV{TEST_NGINX_TLS_INSTANCE}/get/tls:seed",
 "GET /redis/$ENV{TEST_NGINX_TLS_INSTANCE}/set/tls:k/v1",
 "POST /redis/$ENV{TEST_NGINX_TLS_INSTANCE}
[\"GET\",\"tls:k\"]",
 "POST /redis/$ENV{TEST_NGINX_TLS_INSTANCE}/pipeline
[[\"INCR\",\"tls:n\"],[\"INCR\",\"tls:n\"],[\"GET\",\"tls:k\"]]",
 "POST /redis/$ENV{TEST_NGINX_TLS_INSTANCE}/multi-exec
[[\"SET\",\"tls:m\",\"x\"],[\"APPEND\",\"tls:m\",\"y\"],[\"GET\",\"tls:m\"]]"]
--- response_body eval
['{"result":"from-redis-cli"}', '{"result":"OK"}', '{"result":"v1"}',
 '[{"result":1},{"result":2},{"result":"v1"}]',
 '[{"result":"OK"},{"result":2},{"result":"xy"}]']
--- no_error_log
[error]
[crit]



=== TEST 2: what was written is in database 1 of the TLS Redis, not in the plain one; a handshake counted
--- http_config
redisgate_ssl_trusted_certificate $TEST_NGINX_CERT_DIR/ca.crt;
--- init
Test::More::is(RedisGate::Test::tls_redis_cli($ENV{TEST_NGINX_TLS_PORT},
    '-n', 1, 'GET', 'tls:k'), 'v1', 'SET over TLS reached the TLS Redis');
Test::More::is(RedisGate::Test::tls_redis_cli($ENV{TEST_NGINX_TLS_PORT},
    '-n', 1, 'GET', 'tls:m'), 'xy', 'MULTI/EXEC over TLS reached it');
Test::More::is(`redis-cli -p $ENV{TEST_NGINX_REDIS_PORT} -n 1 EXISTS tls:k`,
    "0\n", 'the plain Redis has none of it');
--- request eval
["GET /redis/$ENV{TEST_NGINX_TLS_INSTANCE}/get/tls:n", "GET /status"]
--- response_body_like eval
['^\{"result":"2"\}$',
 qr/redisgate_backend_tls_handshakes_total\{backend="rediss:\/\/127\.0\.0\.1:$ENV{TEST_NGINX_TLS_PORT}\/1"\} [1-9]/]
--- no_error_log
[error]
[crit]



=== TEST 3: a host name in the URL is checked against the certificate's DNS name
--- http_config
redisgate_ssl_trusted_certificate $TEST_NGINX_CERT_DIR/ca.crt;
--- request
GET /redis/$TEST_NGINX_TLSNAME_INSTANCE/get/tls:k
--- response_body chomp
{"result":"v1"}
--- no_error_log
[error]
[crit]



=== TEST 4: an expired certificate
--- http_config
redisgate_ssl_trusted_certificate $TEST_NGINX_CERT_DIR/ca.crt;
--- request
GET /redis/$TEST_NGINX_EXPIRED_INSTANCE/ping
--- error_code: 500
--- response_body eval
$main::Unverified
--- error_log eval
qr/\[error\].*TLS certificate verification failed for Redis at rediss:\/\/127\.0\.0\.1:\d+\/0: \(10: certificate has expired\)/
--- no_error_log
[crit]



=== TEST 5: a certificate for another name: an IP literal is checked against the IP addresses it names
--- http_config
redisgate_ssl_trusted_certificate $TEST_NGINX_CERT_DIR/ca.crt;
--- request
GET /redis/$TEST_NGINX_WRONGNAME_INSTANCE/ping
--- error_code: 500
--- response_body eval
$main::Unverified
--- error_log eval
qr/\[error\].*TLS certificate .*Redis at rediss:\/\/127\.0\.0\.1:\d+\/1: .*does not match "127\.0\.0\.1"/
--- no_error_log
[crit]



=== TEST 6: a peer that is not TLS and answers in plain text: handshake failed, counted
--- http_config
redisgate_ssl_trusted_certificate $TEST_NGINX_CERT_DIR/ca.crt;
--- request eval
["GET /redis/$ENV{TEST_NGINX_GARBAGE_INSTANCE}/ping", "GET /status"]
--- error_code eval
[500, 200]
--- response_body_like eval
main::counted($main::Handshake, $ENV{TEST_NGINX_GARBAGE_PORT}, 0)
--- error_log eval
qr/\[error\].*wrong version number/
--- no_error_log
[crit]



=== TEST 7: nothing listens: could not connect, the reason in the log
--- http_config
redisgate_ssl_trusted_certificate $TEST_NGINX_CERT_DIR/ca.crt;
--- request
GET /redis/$TEST_NGINX_REFUSED_INSTANCE/ping
--- error_code: 500
--- response_body chomp
{"error":"Redis unavailable: could not connect"}
--- error_log
Connection refused
--- no_error_log
[crit]



=== TEST 8: a peer that closes in the middle of a record of a large reply: the streamed body ends short, then the next request works
--- http_config
redisgate_ssl_trusted_certificate $TEST_NGINX_CERT_DIR/ca.crt;
--- init
RedisGate::Test::tls_redis_cli($ENV{TEST_NGINX_TLS_PORT}, '-n', 1, 'EVAL',
    "redis.call('SET', KEYS[1], string.rep('x', 1048576)) return 1",
    1, 'tls:big') eq '1' or die "cannot write tls:big\n";
--- request eval
["GET /redis/$ENV{TEST_NGINX_CUT_INSTANCE}/get/tls:big",
 "GET /redis/$ENV{TEST_NGINX_CUT_INSTANCE}/strlen/tls:big",
 "GET /status"]
--- error_code eval
[200, 200, 200]
--- response_body_like eval
['^\{"result":"x+$',
 '^\{"result":1048576\}$',
 qr/redisgate_backend_tls_handshakes_total\{backend="rediss:\/\/127\.0\.0\.1:$ENV{TEST_NGINX_CUT_PORT}\/1"\} ([2-9]|\d\d+)\n/]
--- error_log eval
qr/\[error\].*redisgate: a large reply ended after \d+ bytes: Redis unavailable: connection lost/
--- no_error_log
[crit]



=== TEST 9: tls-auth-clients yes, no client certificate, TLSv1.3: Redis refuses after our side of the handshake
--- http_config
redisgate_ssl_trusted_certificate $TEST_NGINX_CERT_DIR/ca.crt;
--- request
GET /redis/$TEST_NGINX_MTLS_INSTANCE/ping
--- error_code: 500
--- response_body chomp
{"error":"Redis unavailable: TLS handshake failed"}
--- error_log eval
qr/\[error\].*redisgate: TLS handshake failed with Redis at rediss:\/\/127\.0\.0\.1:\d+\/1: (read|write) failed before any reply: the server asked for a client certificate, and redisgate_ssl_certificate is not set/
--- no_error_log eval
# nginx before 1.27.0 logs a TLS alert it does not list (TLS 1.3's
# "certificate required", 116) at crit when SSL_read() meets it; no other
# crit line
qr/\[crit\](?!.*alert certificate required)/



=== TEST 10: an ACL user and password over TLS, then a wrong password
--- http_config
redisgate_ssl_trusted_certificate $TEST_NGINX_CERT_DIR/ca.crt;
--- request eval
["GET /redis/$ENV{TEST_NGINX_ACL_INSTANCE}/set/acl:k/1",
 "GET /redis/$ENV{TEST_NGINX_ACL_INSTANCE}/set/other:k/1",
 "GET /redis/$ENV{TEST_NGINX_BADPASS_INSTANCE}/ping"]
--- error_code eval
[200, 400, 500]
--- response_body_like eval
['^\{"result":"OK"\}$',
 '^\{"error":"NOPERM [^"]*"\}$',
 '^\{"error":"Redis unavailable: authentication failed"\}$']
--- error_log eval
qr/\[error\].*WRONGPASS/
--- no_error_log
[crit]



=== TEST 11: ... the ACL user wrote to database 5
--- http_config
redisgate_ssl_trusted_certificate $TEST_NGINX_CERT_DIR/ca.crt;
--- init
Test::More::is(RedisGate::Test::tls_redis_cli($ENV{TEST_NGINX_TLS_PORT},
    '-n', 5, 'GET', 'acl:k'), '1', 'the ACL user wrote to database 5');
Test::More::is(RedisGate::Test::tls_redis_cli($ENV{TEST_NGINX_TLS_PORT},
    '-n', 5, 'EXISTS', 'other:k'), '0', 'and not where its ACL forbids');
--- request
GET /redis/$TEST_NGINX_ACL_INSTANCE/get/acl:k
--- response_body chomp
{"result":"1"}



=== TEST 12: a server with TLSv1.2 and one cipher only: the defaults agree with it
--- http_config
redisgate_ssl_trusted_certificate $TEST_NGINX_CERT_DIR/ca.crt;
--- request
GET /redis/$TEST_NGINX_TLS12_INSTANCE/ping
--- response_body chomp
{"result":"PONG"}
--- no_error_log
[error]
[crit]



=== TEST 13: SNI: the URL's host name is sent
--- http_config
redisgate_ssl_trusted_certificate $TEST_NGINX_CERT_DIR/ca.crt;
--- init
open my $fh, '>', $main::SniLog or die "$main::SniLog: $!\n";
close $fh;
--- request
GET /redis/$TEST_NGINX_FRONTNAME_INSTANCE/ping
--- response_body chomp
{"result":"PONG"}
--- no_error_log
[error]
[crit]



=== TEST 14: SNI: redisgate_ssl_name is sent, and the front answers with that name's certificate
--- http_config
redisgate_ssl_trusted_certificate $TEST_NGINX_CERT_DIR/ca.crt;
redisgate_ssl_name other.example;
--- request
GET /redis/$TEST_NGINX_FRONTIP_INSTANCE/ping
--- response_body chomp
{"result":"PONG"}
--- no_error_log
[error]
[crit]



=== TEST 15: redisgate_ssl_name is the name checked, instead of the URL's host
--- http_config
redisgate_ssl_trusted_certificate $TEST_NGINX_CERT_DIR/ca.crt;
redisgate_ssl_name other.example;
--- request eval
["GET /redis/$ENV{TEST_NGINX_WRONGNAME_INSTANCE}/set/tls:wn/1",
 "GET /redis/$ENV{TEST_NGINX_WRONGNAME_INSTANCE}/get/tls:wn",
 "GET /redis/$ENV{TEST_NGINX_TLS_INSTANCE}/ping"]
--- error_code eval
[200, 200, 500]
--- response_body eval
['{"result":"OK"}', '{"result":"1"}', $main::Unverified]
--- error_log eval
qr/\[error\].*TLS certificate .*Redis at rediss:\/\/127\.0\.0\.1:\d+\/1: .*does not match "other\.example"/
--- no_error_log
[crit]



=== TEST 16: redisgate_ssl_server_name off: no name sent, so the front's default certificate, which is not other.example's
--- http_config
redisgate_ssl_trusted_certificate $TEST_NGINX_CERT_DIR/ca.crt;
redisgate_ssl_name other.example;
redisgate_ssl_server_name off;
--- request
GET /redis/$TEST_NGINX_FRONTIP_INSTANCE/ping
--- error_code: 500
--- response_body eval
$main::Unverified
--- error_log eval
qr/\[error\].*TLS certificate .*Redis at rediss:\/\/127\.0\.0\.1:\d+\/1: .*does not match "other\.example"/
--- no_error_log
[crit]



=== TEST 17: ... the names the front was given, in order
--- http_config
redisgate_ssl_trusted_certificate $TEST_NGINX_CERT_DIR/ca.crt;
--- init
open my $fh, '<', $main::SniLog or die "$main::SniLog: $!\n";
my @seen;
while (my $line = <$fh>) {
    chomp $line;
    push @seen, $line unless @seen && $seen[-1] eq $line;
}
Test::More::is_deeply(\@seen, ['sni=localhost', 'sni=other.example', 'sni=-'],
    'SNI: the host name, redisgate_ssl_name, nothing');
--- request
GET /redis/$TEST_NGINX_TLS_INSTANCE/ping
--- response_body chomp
{"result":"PONG"}



=== TEST 18: a CA that did not sign the certificate: 500, the reason in the log, a failed handshake counted
--- http_config
redisgate_ssl_trusted_certificate $TEST_NGINX_CERT_DIR/other-ca.crt;
--- request eval
["GET /redis/$ENV{TEST_NGINX_TLS_INSTANCE}/get/tls:k",
 "GET /redis/$ENV{TEST_NGINX_TLS_INSTANCE}/get/tls:k",
 "GET /status"]
--- error_code eval
[500, 500, 200]
--- response_body_like eval
["^\Q$main::Unverified\E\$",
 @{ main::counted($main::Unverified, $ENV{TEST_NGINX_TLS_PORT}, 1) }]
--- error_log eval
qr/\[error\].*TLS certificate verification failed for Redis at rediss:\/\/127\.0\.0\.1:\d+\/1: \((19|20|21): [^)]+\)/
--- no_error_log
[crit]



=== TEST 19: redisgate_ssl_verify off: any certificate will do, still over TLS
--- http_config
redisgate_ssl_trusted_certificate $TEST_NGINX_CERT_DIR/other-ca.crt;
redisgate_ssl_verify off;
--- request eval
["GET /redis/$ENV{TEST_NGINX_TLS_INSTANCE}/get/tls:k",
 "GET /redis/$ENV{TEST_NGINX_EXPIRED_INSTANCE}/ping",
 "GET /redis/$ENV{TEST_NGINX_WRONGNAME_INSTANCE}/ping"]
--- response_body eval
['{"result":"v1"}', '{"result":"PONG"}', '{"result":"PONG"}']
--- no_error_log
[error]
[crit]



=== TEST 20: verification is on by default: without redisgate_ssl_trusted_certificate nothing trusts the test CA
--- request
GET /redis/$TEST_NGINX_TLS_INSTANCE/ping
--- error_code: 500
--- response_body eval
$main::Unverified
--- error_log eval
qr/\[error\].*TLS certificate verification failed for Redis at rediss:\/\/127\.0\.0\.1:\d+\/1/
--- no_error_log
[crit]



=== TEST 21: tls-auth-clients yes: redisgate_ssl_certificate is the client certificate
--- http_config
redisgate_ssl_trusted_certificate $TEST_NGINX_CERT_DIR/ca.crt;
redisgate_ssl_certificate $TEST_NGINX_CERT_DIR/client.crt;
redisgate_ssl_certificate_key $TEST_NGINX_CERT_DIR/client.key;
--- request eval
["GET /redis/$ENV{TEST_NGINX_MTLS_INSTANCE}/set/tls:mt/1",
 "GET /redis/$ENV{TEST_NGINX_MTLS_INSTANCE}/incr/tls:mt"]
--- response_body eval
['{"result":"OK"}', '{"result":2}']
--- no_error_log
[error]
[crit]



=== TEST 22: tls-auth-clients yes, no client certificate, TLSv1.2: refused in the handshake
--- http_config
redisgate_ssl_trusted_certificate $TEST_NGINX_CERT_DIR/ca.crt;
redisgate_ssl_protocols TLSv1.2;
--- init
Test::More::is(RedisGate::Test::tls_redis_cli($ENV{TEST_NGINX_MTLS_PORT},
    '-n', 1, 'GET', 'tls:mt'), '2', 'the writes with a client certificate');
--- request eval
["GET /redis/$ENV{TEST_NGINX_MTLS_INSTANCE}/ping", "GET /status"]
--- error_code eval
[500, 200]
--- response_body_like eval
main::counted($main::Handshake, $ENV{TEST_NGINX_MTLS_PORT}, 1)
--- error_log eval
qr/\[error\].*alert handshake failure/
--- no_error_log
[crit]



=== TEST 23: a server that accepts and never speaks TLS: connect timed out, after redisgate_connect_timeout
--- http_config
redisgate_ssl_trusted_certificate $TEST_NGINX_CERT_DIR/ca.crt;
redisgate_connect_timeout 1s;
--- init
RedisGate::Test::start_silent_server();
--- request
GET /redis/$TEST_NGINX_SILENT_INSTANCE/ping
--- timeout: 4
--- error_code: 500
--- response_body chomp
{"error":"Redis unavailable: connect timed out"}
--- error_log eval
qr/TLSTEST \/redis\/\S+\/ping 500 (0\.9|[12]\.)\d+$/
--- no_error_log
[crit]



=== TEST 24: a connection that Redis closed is opened again, resuming the TLS session
--- http_config
redisgate_ssl_trusted_certificate $TEST_NGINX_CERT_DIR/ca.crt;
--- config eval
$main::KillConfig
--- request eval
[@main::KillRequests]
--- response_body_like eval
[@main::KillAnswers, main::reconnected('[1-9]')]
--- no_error_log
[error]
[crit]



=== TEST 25: redisgate_ssl_session_reuse off: the same, with a full handshake each time
--- http_config
redisgate_ssl_trusted_certificate $TEST_NGINX_CERT_DIR/ca.crt;
redisgate_ssl_session_reuse off;
--- config eval
$main::KillConfig
--- request eval
[@main::KillRequests]
--- response_body_like eval
[@main::KillAnswers, main::reconnected('0\n')]
--- no_error_log
[error]
[crit]



=== TEST 26: the server with TLSv1.2 and one cipher only and redisgate_ssl_protocols TLSv1.3: handshake failed
--- http_config
redisgate_ssl_trusted_certificate $TEST_NGINX_CERT_DIR/ca.crt;
redisgate_ssl_protocols TLSv1.3;
--- request
GET /redis/$TEST_NGINX_TLS12_INSTANCE/ping
--- error_code: 500
--- response_body eval
$main::Handshake
--- error_log eval
qr/\[error\].*protocol version/
--- no_error_log
[crit]



=== TEST 27: ... and redisgate_ssl_ciphers without its cipher: handshake failed
--- http_config
redisgate_ssl_trusted_certificate $TEST_NGINX_CERT_DIR/ca.crt;
redisgate_ssl_ciphers ECDHE-ECDSA-CHACHA20-POLY1305;
--- request
GET /redis/$TEST_NGINX_TLS12_INSTANCE/ping
--- error_code: 500
--- response_body eval
$main::Handshake
--- error_log eval
qr/\[error\].*handshake failure/
--- no_error_log
[crit]
