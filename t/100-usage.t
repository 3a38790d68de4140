# Usage accounting: what each organization ran reaches the key store's
# usage_minutes, once, and keys get their last-used time.

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::Nginx::Socket 'no_plan';
use RedisGate::Test;

repeat_each(1);
no_shuffle();

my $port = $ENV{TEST_NGINX_REDIS_PORT};
our $Run = $$;

our $Org = RedisGate::Test::admin('org', 'create', "metered-$Run",
                                  '--plan', 'pro')->{organization_id};
$ENV{TEST_NGINX_UA_INSTANCE} = RedisGate::Test::admin('instance', 'create',
    $Org, 'cache', "127.0.0.1:$port", '--db', 9)->{instance_id};
my $key = RedisGate::Test::admin('key', 'create', $Org, 'app');
$ENV{TEST_NGINX_UA_TOKEN} = $key->{token};
our $KeyId = $key->{key_id};

$RedisGate::Test::ExtraHttpConfig = <<'_EOC_';
    redisgate_pg "$TEST_NGINX_PG_CONNINFO";
    redisgate_cache zone=redisgate_keys:1m;
    redisgate_usage zone=redisgate_usage:1m interval=500ms;
_EOC_

run_tests();

__DATA__

=== TEST 1: four requests, six commands, one of them refused by Redis
--- more_headers
Authorization: Bearer $TEST_NGINX_UA_TOKEN
--- request eval
["GET /redis/$ENV{TEST_NGINX_UA_INSTANCE}/set/u/1",
 "POST /redis/$ENV{TEST_NGINX_UA_INSTANCE}/pipeline
[[\"INCR\",\"u\"],[\"INCR\",\"u\"],[\"GET\",\"u\"]]",
 "GET /redis/$ENV{TEST_NGINX_UA_INSTANCE}/lpush/u",
 "GET /redis/$ENV{TEST_NGINX_UA_INSTANCE}/get/u"]
--- error_code eval
[200, 200, 400, 200]
--- wait: 1



=== TEST 2: refused before Redis: not counted
--- more_headers
Authorization: Bearer $TEST_NGINX_UA_TOKEN
--- request
GET /redis/$TEST_NGINX_UA_INSTANCE/select/2
--- error_code: 400
--- wait: 1



=== TEST 3: a key from nginx.conf counts for its organization's name
--- request
GET /redis/$TEST_NGINX_INSTANCE/ping
--- response_body chomp
{"result":"PONG"}
--- wait: 1.5



=== TEST 4: in the key store: the counts, once, and the key's last use
--- init
my $row = RedisGate::Test::psql(
    "SELECT sum(requests), sum(commands), sum(bytes_in) > 0,"
    . " sum(bytes_out) > 0 FROM redisgate.usage_minutes"
    . " WHERE organization_id = '$main::Org'"
    . " AND instance_id = '$ENV{TEST_NGINX_UA_INSTANCE}'");
Test::More::is($row, '4|6|t|t', 'usage of the key store organization');

$row = RedisGate::Test::psql(
    "SELECT sum(requests), sum(commands) FROM redisgate.usage_minutes"
    . " WHERE organization_id = 'acme'"
    . " AND instance_id = '$ENV{TEST_NGINX_INSTANCE}'");
Test::More::ok($row =~ /^(\d+)\|(\d+)$/ && $1 >= 1, 'usage of acme');

$row = RedisGate::Test::psql(
    "SELECT last_used_at > now() - interval '1 minute'"
    . " FROM redisgate.api_keys WHERE id = '$main::KeyId'");
Test::More::is($row, 't', 'the key was marked used');
--- request
GET /redis/$TEST_NGINX_INSTANCE/ping
--- response_body chomp
{"result":"PONG"}
