# redisgate_limit ... store=<Redis URL>: the organizations' buckets in a
# Redis that several nginx servers share (t/client/limit-store.test.mjs
# runs several servers under load).  These blocks run the C paths of one
# server under make asan and make valgrind: leases and refusals from a
# store on the test Redis (database 13, emptied first), its hash, a
# pipeline's cost (a smaller request that fits what the store holds is
# asked for, and let in), a store on a closed port, one that answers an error,
# one that never answers (and a client that leaves while it waits), one
# behind the Sentinel of t/run-tests and one over TLS.
#
# The plan is rate=1r/s burst=3.  A block that expects a refusal makes it
# independent of speed (valgrind is tens of times slower): a request
# larger than what is left, or than the burst (debt), so that what
# follows would wait seconds, not milliseconds.  Every block has an
# organization of its own, so that no bucket carries over from one block
# to the next.  Keys go in ?_token= (a header would win over it), so that
# one block can speak for two organizations: its own, and a "peek" one
# whose instance is the store's database, to read the store's hash.

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::Nginx::Socket 'no_plan';
use RedisGate::Test;
use Digest::SHA qw(sha256_hex);
use IO::Socket::INET;

repeat_each(1);
no_shuffle();

my $port = $ENV{TEST_NGINX_REDIS_PORT};
our $Run = $$;

# NAME => the instance's URL; each its own organization and key
my %orgs = map { $_ => "redis://127.0.0.1:$port/13" }
    qw(MAIN PIPE DOWN WRONG SILENT LEAVE SENTINEL TLS PEEK1 PEEK2 PEEK7);

my $n = 0;
for my $name (sort keys %orgs) {
    my $org = lc($name) . "-$Run";
    my $token = "rg_test_store_" . lc($name) . "_$Run";
    my $id = sprintf '15015015-0000-4000-8000-%012d', ++$n;
    $ENV{"TEST_NGINX_${name}_ORG"} = $org;
    $ENV{"TEST_NGINX_${name}_ID"} = $id;
    $ENV{"TEST_NGINX_${name}_TOKEN"} = $token;
    $RedisGate::Test::ExtraHttpConfig .=
        "    redisgate_instance $id $orgs{$name} organization=$org;\n"
        . "    redisgate_key sha256:" . sha256_hex($token)
        . " id=" . lc($name) . "-app organization=$org;\n";
}

# a peer that answers "-ERR this is not TLS" to whatever it reads: a store
# that answers the EVAL with an error (database 0: no SELECT first)
$ENV{TEST_NGINX_GARBAGE_PORT} = RedisGate::Test::start_peer('garbage');

$RedisGate::Test::ExtraHttpConfig .=
    "    redisgate_reconnect_backoff 50ms 200ms;\n";
$RedisGate::Test::ExtraHttpConfig .=
    "    redisgate_ssl_trusted_certificate \$TEST_NGINX_CERT_DIR/ca.crt;\n"
    unless $RedisGate::Test::Tls;

# database 13 is this file's: the store's hashes and the counters
{
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                  Timeout => 2)
        or die "cannot reach the test Redis: $!\n";
    print $s "SELECT 13\r\nFLUSHDB\r\n";
    my ($one, $two) = (scalar <$s>, scalar <$s>);
    die "the test Redis said $one $two\n"
        unless ($one // '') =~ /^\+OK/ && ($two // '') =~ /^\+OK/;
    close $s;
}

# GET /redis/<NAME's instance>/<rest> with NAME's key
sub get {
    my ($name, $rest) = @_;
    my $sep = $rest =~ /\?/ ? '&' : '?';
    return "GET /redis/$ENV{\"TEST_NGINX_${name}_ID\"}/$rest${sep}_token="
        . $ENV{"TEST_NGINX_${name}_TOKEN"};
}

# POST of a JSON body to /redis/<NAME's instance><path>
sub post {
    my ($name, $path, $json) = @_;
    return "POST /redis/$ENV{\"TEST_NGINX_${name}_ID\"}$path?_token="
        . $ENV{"TEST_NGINX_${name}_TOKEN"} . "\n$json";
}

# a pipeline of n INCR key
sub incrs {
    my ($name, $key, $count) = @_;
    return post($name, '/pipeline',
                '[' . join(',', ('["INCR","' . $key . '"]') x $count) . ']');
}

# commands on the store's database, as NAME (a "peek" organization of the
# block's own): one pipeline, so one request of its bucket
sub peek {
    my ($name, @cmds) = @_;
    return post($name, '/pipeline', '[' . join(',', @cmds) . ']');
}

sub bucket {
    my $name = shift;
    return 'redisgate:limit:{' . $ENV{"TEST_NGINX_${name}_ORG"} . '}';
}

run_tests();

__DATA__

=== TEST 1: a store on the test Redis: three single commands let in, then refused; the hash in the store
--- http_config
    redisgate_limit zone=rg_store:1m rate=1r/s burst=3
                    store=redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/13;
--- more_headers
X-Nothing: 1
--- request eval
[main::get('MAIN', 'incr/s:main'), main::get('MAIN', 'incr/s:main'),
 main::get('MAIN', 'incr/s:main'),
 main::incrs('MAIN', 's:main', 3),
 main::get('MAIN', 'incr/s:main'),
 main::peek('PEEK1', '["HGETALL","' . main::bucket('MAIN') . '"]',
            '["PTTL","' . main::bucket('MAIN') . '"]', '["GET","s:main"]')]
--- error_code eval
[200, 200, 200, 429, 429, 200]
--- response_headers_like eval
["RateLimit-Limit: 3\nRateLimit-Remaining: 2\nRateLimit-Reset: 1",
 "RateLimit-Limit: 3\nRateLimit-Remaining: [12]",
 "RateLimit-Limit: 3\nRateLimit-Remaining: [0-2]",
 "RateLimit-Limit: 3\nRetry-After: [1-3]",
 "RateLimit-Limit: 3\nRetry-After: [1-3]",
 "RateLimit-Limit: 3"]
--- response_body_like eval
['^\{"result":1\}$', '^\{"result":2\}$', '^\{"result":3\}$',
 '^\{"error":"Too Many Requests: the organization\'s plan allows 3 commands at once, retry in [1-3] s"\}$',
 '^\{"error":"Too Many Requests: [^"]+"\}$',
 '^\[\{"result":\["tokens","\d+","at","\d+"\]\},\{"result":[1-4]\d{3}\},\{"result":"3"\}\]$']
--- error_log
over its rate
--- no_error_log
rate limit store



=== TEST 2: a pipeline costs its commands in the store; a smaller request that fits what is left is let in
--- http_config
    redisgate_limit zone=rg_store:1m rate=1r/s burst=3
                    store=redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/13;
--- more_headers
X-Nothing: 1
--- request eval
[main::incrs('PIPE', 's:pipe', 2),
 main::incrs('PIPE', 's:pipe', 2),
 main::get('PIPE', 'incr/s:pipe'),
 main::peek('PEEK2', '["HGET","' . main::bucket('PIPE') . '","tokens"]',
            '["GET","s:pipe"]')]
--- error_code eval
[200, 429, 200, 200]
--- response_headers_like eval
["RateLimit-Limit: 3\nRateLimit-Remaining: 1",
 "RateLimit-Limit: 3\nRateLimit-Remaining: [12]\nRetry-After: 1",
 "RateLimit-Limit: 3\nRateLimit-Remaining: [01]", ""]
--- response_headers eval
["!Retry-After", "", "!Retry-After", ""]
--- response_body_like eval
['^\[\{"result":1\},\{"result":2\}\]$',
 'allows 3 commands at once, retry in 1 s', '^\{"result":3\}$',
 '^\[\{"result":"\d+"\},\{"result":"3"\}\]$']
--- no_error_log
rate limit store



=== TEST 3: the store on a closed port: counted here at the nodes= share, a warning, nothing fails
--- http_config
    redisgate_limit zone=rg_store:1m rate=1r/s burst=3 nodes=3
                    store=redis://127.0.0.1:$TEST_NGINX_SPARE_PORT/13;
--- more_headers
X-Nothing: 1
--- request eval
[main::incrs('DOWN', 's:down', 3),
 main::get('DOWN', 'incr/s:down'),
 main::get('DOWN', 'incr/s:down')]
--- error_code eval
[200, 429, 429]
--- response_headers_like eval
["RateLimit-Limit: 1\nRateLimit-Remaining: 0",
 "RateLimit-Limit: 1\nRetry-After: [23]",
 "RateLimit-Limit: 1\nRetry-After: [23]"]
--- response_body_like eval
['^\[\{"result":1\},\{"result":2\},\{"result":3\}\]$',
 '^\{"error":"Too Many Requests: the organization\'s plan allows 1 commands at once, retry in [23] s"\}$',
 'Too Many Requests']
--- error_log eval
[qr/\[warn\] .*redisgate: the rate limit store redis:\/\/127\.0\.0\.1:$ENV{TEST_NGINX_SPARE_PORT}\/13 failed \(Redis unavailable: could not connect\): this server counts its share of each plan for 1000 ms/]



=== TEST 4: a store that answers an error: logged, counted here, nothing fails
--- http_config
    redisgate_limit zone=rg_store:1m rate=1r/s burst=3
                    store=redis://127.0.0.1:$TEST_NGINX_GARBAGE_PORT/0;
--- more_headers
X-Nothing: 1
--- request eval
[main::get('WRONG', 'incr/s:wrong'), main::get('WRONG', 'incr/s:wrong')]
--- error_code eval
[200, 200]
--- response_body eval
['{"result":1}', '{"result":2}']
--- response_headers_like eval
["RateLimit-Limit: 3\nRateLimit-Remaining: 2", "RateLimit-Limit: 3\nRateLimit-Remaining: [12]"]
--- error_log eval
[qr/\[error\] .*redisgate: the rate limit store redis:\/\/127\.0\.0\.1:$ENV{TEST_NGINX_GARBAGE_PORT}\/0 answered ERR this is not TLS/,
 qr/\[warn\] .*redisgate: the rate limit store redis:\/\/127\.0\.0\.1:$ENV{TEST_NGINX_GARBAGE_PORT}\/0 failed \(a wrong answer\): this server counts its share of each plan for 1000 ms/]



=== TEST 5: a store that never answers: the request waits 1 s, then is counted here
--- init
RedisGate::Test::start_silent_server();
--- http_config
    redisgate_limit zone=rg_store:1m rate=1r/s burst=3
                    store=redis://127.0.0.1:$TEST_NGINX_SILENT_PORT/13;
--- more_headers
X-Nothing: 1
--- request eval
[main::get('SILENT', 'incr/s:silent'), main::get('SILENT', 'incr/s:silent')]
--- error_code eval
[200, 200]
--- response_body eval
['{"result":1}', '{"result":2}']
--- response_headers eval
["RateLimit-Limit: 3", "RateLimit-Limit: 3"]
--- error_log eval
[qr/\[warn\] .*redisgate: the rate limit store redis:\/\/127\.0\.0\.1:$ENV{TEST_NGINX_SILENT_PORT}\/13 failed \(Redis command timed out\): this server counts its share of each plan for 1000 ms/]



=== TEST 6: a client that leaves while its request waits for the store
--- init
select(undef, undef, undef, 1.2);
--- http_config
    redisgate_limit zone=rg_store:1m rate=1r/s burst=3
                    store=redis://127.0.0.1:$TEST_NGINX_SILENT_PORT/13;
--- more_headers
X-Nothing: 1
--- request eval
main::get('LEAVE', 'incr/s:leave')
--- timeout: 0.3
--- abort
--- ignore_response
--- wait: 1.5
--- error_log
did not answer in time



=== TEST 7: a store behind the Sentinel (its address asked first), in debt after a pipeline over the burst
--- http_config
    redisgate_limit zone=rg_store:1m rate=1r/s burst=3
        store=redis-sentinel://127.0.0.1:$TEST_NGINX_SENTINEL_PORT/redisgate/13;
--- more_headers
X-Nothing: 1
--- request eval
[main::incrs('SENTINEL', 's:sentinel', 5),
 main::get('SENTINEL', 'incr/s:sentinel'),
 main::peek('PEEK7', '["HGET","' . main::bucket('SENTINEL') . '","tokens"]',
            '["GET","s:sentinel"]')]
--- error_code eval
[200, 429, 200]
--- response_headers_like eval
["RateLimit-Limit: 3\nRateLimit-Remaining: 0\nRateLimit-Reset: 5",
 "RateLimit-Limit: 3\nRetry-After: [23]", ""]
--- response_body_like eval
['^\[(\{"result":\d\},?){5}\]$', 'Too Many Requests',
 '^\[\{"result":"-[12]\d{3}"\},\{"result":"5"\}\]$']
--- no_error_log
rate limit store



=== TEST 8: a store over TLS
--- http_config
    redisgate_limit zone=rg_store:1m rate=1r/s burst=3
                    store=rediss://127.0.0.1:$TEST_NGINX_TLS_PORT/13;
--- more_headers
X-Nothing: 1
--- request eval
[main::incrs('TLS', 's:tls', 4),
 main::get('TLS', 'incr/s:tls')]
--- error_code eval
[200, 429]
--- response_headers_like eval
["RateLimit-Limit: 3\nRateLimit-Remaining: 0",
 "RateLimit-Limit: 3\nRetry-After: [12]"]
--- no_error_log
rate limit store
