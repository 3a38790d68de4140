# Keys, organizations and instances from the PostgreSQL key store: every
# outcome, revocation and rotation seen through HTTP, the key store down.
# Lifetime-dependent behaviour (stale entries, TTL without NOTIFY, query
# counts) is in t/client/keystore.test.mjs, where one nginx lives on.

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::Nginx::Socket 'no_plan';
use RedisGate::Test;

repeat_each(1);
no_shuffle();

my $port = $ENV{TEST_NGINX_REDIS_PORT};
our $Run = $$;
my $run = $Run;

my $acme = RedisGate::Test::admin('org', 'create', "acme-$run")
    ->{organization_id};
my $globex = RedisGate::Test::admin('org', 'create', "globex-$run")
    ->{organization_id};

my %inst = (
    ACME => RedisGate::Test::admin('instance', 'create', $acme, 'cache',
                                   "127.0.0.1:$port", '--db', 4),
    GLOBEX => RedisGate::Test::admin('instance', 'create', $globex, 'cache',
                                     "127.0.0.1:$port", '--db', 5),
    PAUSED => RedisGate::Test::admin('instance', 'create', $acme, 'paused',
                                     "127.0.0.1:$port", '--db', 6),
    NAMED => RedisGate::Test::admin('instance', 'create', $acme, 'named',
                                    "cache.redis.test:$port", '--db', 4),
    NOWHERE => RedisGate::Test::admin('instance', 'create', $acme, 'nowhere',
                                      "nowhere.invalid:$port"),
);

$ENV{"TEST_NGINX_KS_${_}_INSTANCE"} = $inst{$_}{instance_id} for keys %inst;

my %keys = (
    RW => ['key', 'create', $acme, 'app', '--scopes', 'read,write'],
    RO => ['key', 'create', $acme, 'reader', '--scopes', 'read'],
    GLOBEX => ['key', 'create', $globex, 'app'],
    DOOMED => ['key', 'create', $acme, 'doomed'],
    OLD => ['key', 'create', $acme, 'rotating'],
    MANAGER => ['key', 'create', $acme, 'manager', '--scopes', 'manage'],
);

for my $name (keys %keys) {
    my $k = RedisGate::Test::admin(@{ $keys{$name} });
    $ENV{"TEST_NGINX_KS_${name}_TOKEN"} = $k->{token};
    $ENV{"TEST_NGINX_KS_${name}_ID"} = $k->{key_id};
}

# rotated now, checked in TESTs 9 to 11: the old token lasts the grace
our $RotatedAt = time;
my $rotated = RedisGate::Test::admin('key', 'rotate',
                                     $ENV{TEST_NGINX_KS_OLD_ID},
                                     '--grace', '8 seconds');
$ENV{TEST_NGINX_KS_NEW_TOKEN} = $rotated->{token};

# an existing deployment's own table, for redisgate_pg_query
RedisGate::Test::psql("CREATE SCHEMA IF NOT EXISTS legacy;
    CREATE TABLE IF NOT EXISTS legacy.tokens (sha256 text, instance uuid,
        address text);
    INSERT INTO legacy.tokens VALUES (encode(sha256('legacy-token-$run'), 'hex'),
        '$inst{ACME}{instance_id}', '127.0.0.1:$port')");

$RedisGate::Test::ExtraHttpConfig = <<'_EOC_';
    redisgate_pg "$TEST_NGINX_PG_CONNINFO";
    redisgate_cache zone=redisgate_keys:1m ttl=60s negative_ttl=1s stale=60s;
_EOC_

run_tests();

__DATA__

=== TEST 1: a key from the key store, on its organization's instance
--- more_headers
Authorization: Bearer $TEST_NGINX_KS_RW_TOKEN
--- request eval
["GET /redis/$ENV{TEST_NGINX_KS_ACME_INSTANCE}/set/ks/1",
 "GET /redis/$ENV{TEST_NGINX_KS_ACME_INSTANCE}/get/ks",
 "GET /redis/$ENV{TEST_NGINX_KS_ACME_INSTANCE}/get/ks"]
--- response_body eval
['{"result":"OK"}', '{"result":"1"}', '{"result":"1"}']
--- error_log
key store lookup for sha256
key cache hit, sha256
--- skip_eval: 5: !$RedisGate::Test::Debug



=== TEST 2: the instance is its own database
--- request
GET /redis/$TEST_NGINX_INSTANCE/get/ks
--- response_body chomp
{"result":null}



=== TEST 3: an unknown key
--- more_headers
Authorization: Bearer rg_0000000000000000000000000000000000000000000000000000000000000000
--- request
GET /redis/$TEST_NGINX_KS_ACME_INSTANCE/ping
--- error_code: 401
--- response_body chomp
{"error":"Unauthorized: invalid API key"}



=== TEST 4: another organization's instance is 404
--- more_headers
Authorization: Bearer $TEST_NGINX_KS_GLOBEX_TOKEN
--- request
GET /redis/$TEST_NGINX_KS_ACME_INSTANCE/ping
--- error_code: 404
--- response_body chomp
{"error":"instance not found"}



=== TEST 5: ... and its own answers
--- more_headers
Authorization: Bearer $TEST_NGINX_KS_GLOBEX_TOKEN
--- request eval
["GET /redis/$ENV{TEST_NGINX_KS_GLOBEX_INSTANCE}/get/ks",
 "GET /redis/$ENV{TEST_NGINX_KS_GLOBEX_INSTANCE}/set/ks/globex"]
--- response_body eval
['{"result":null}', '{"result":"OK"}']



=== TEST 6: a read key reads and may not write, in pipelines neither
--- more_headers
Authorization: Bearer $TEST_NGINX_KS_RO_TOKEN
--- request eval
["GET /redis/$ENV{TEST_NGINX_KS_ACME_INSTANCE}/get/ks",
 "GET /redis/$ENV{TEST_NGINX_KS_ACME_INSTANCE}/set/ks/2",
 "POST /redis/$ENV{TEST_NGINX_KS_ACME_INSTANCE}/pipeline
[[\"GET\",\"ks\"],[\"INCR\",\"ks\"]]",
 "POST /redis/$ENV{TEST_NGINX_KS_ACME_INSTANCE}/multi-exec
[[\"GET\",\"ks\"],[\"DEL\",\"ks\"]]"]
--- error_code eval
[200, 403, 403, 403]
--- response_body eval
['{"result":"1"}',
 "{\"error\":\"Forbidden: this API key's scopes do not allow 'set'\"}",
 "{\"error\":\"Forbidden: this API key's scopes do not allow 'incr'\"}",
 "{\"error\":\"Forbidden: this API key's scopes do not allow 'del'\"}"]



=== TEST 7: a key works until it is revoked...
--- more_headers
Authorization: Bearer $TEST_NGINX_KS_DOOMED_TOKEN
--- request
GET /redis/$TEST_NGINX_KS_ACME_INSTANCE/ping
--- response_body chomp
{"result":"PONG"}



=== TEST 8: ... and within a second after (NOTIFY evicts the cached key)
--- init
RedisGate::Test::admin('key', 'revoke', $ENV{TEST_NGINX_KS_DOOMED_ID});
select(undef, undef, undef, 0.5);
--- more_headers
Authorization: Bearer $TEST_NGINX_KS_DOOMED_TOKEN
--- request
GET /redis/$TEST_NGINX_KS_ACME_INSTANCE/ping
--- error_code: 401
--- response_body chomp
{"error":"Unauthorized: invalid API key"}



=== TEST 9: rotated: the old token works for the grace period
--- more_headers
Authorization: Bearer $TEST_NGINX_KS_OLD_TOKEN
--- request
GET /redis/$TEST_NGINX_KS_ACME_INSTANCE/ping
--- response_body chomp
{"result":"PONG"}



=== TEST 10: ... the new token
--- more_headers
Authorization: Bearer $TEST_NGINX_KS_NEW_TOKEN
--- request
GET /redis/$TEST_NGINX_KS_ACME_INSTANCE/echo/rotated
--- response_body chomp
{"result":"rotated"}



=== TEST 11: ... and after the grace period the old one stops
--- init
my $left = $main::RotatedAt + 9 - time;
sleep $left if $left > 0;
--- more_headers
Authorization: Bearer $TEST_NGINX_KS_OLD_TOKEN
--- request
GET /redis/$TEST_NGINX_KS_ACME_INSTANCE/ping
--- error_code: 401
--- response_body chomp
{"error":"Unauthorized: invalid API key"}



=== TEST 12: a suspended instance
--- init
RedisGate::Test::admin('instance', 'suspend',
                       $ENV{TEST_NGINX_KS_PAUSED_INSTANCE});
select(undef, undef, undef, 0.3);
--- more_headers
Authorization: Bearer $TEST_NGINX_KS_RW_TOKEN
--- request
GET /redis/$TEST_NGINX_KS_PAUSED_INSTANCE/ping
--- error_code: 403
--- response_body chomp
{"error":"Forbidden: the instance is suspended"}



=== TEST 13: ... resumed
--- init
RedisGate::Test::admin('instance', 'resume',
                       $ENV{TEST_NGINX_KS_PAUSED_INSTANCE});
select(undef, undef, undef, 0.3);
--- more_headers
Authorization: Bearer $TEST_NGINX_KS_RW_TOKEN
--- request
GET /redis/$TEST_NGINX_KS_PAUSED_INSTANCE/ping
--- response_body chomp
{"result":"PONG"}



=== TEST 14: a deleted instance is not found
--- init
RedisGate::Test::admin('instance', 'delete',
                       $ENV{TEST_NGINX_KS_PAUSED_INSTANCE});
select(undef, undef, undef, 0.3);
--- more_headers
Authorization: Bearer $TEST_NGINX_KS_RW_TOKEN
--- request
GET /redis/$TEST_NGINX_KS_PAUSED_INSTANCE/ping
--- error_code: 404
--- response_body chomp
{"error":"instance not found"}



=== TEST 15: a suspended organization
--- init
RedisGate::Test::admin('org', 'suspend', "globex-$$");
select(undef, undef, undef, 0.3);
--- more_headers
Authorization: Bearer $TEST_NGINX_KS_GLOBEX_TOKEN
--- request
GET /redis/$TEST_NGINX_KS_GLOBEX_INSTANCE/ping
--- error_code: 403
--- response_body chomp
{"error":"Forbidden: the organization is suspended"}



=== TEST 16: the key store down: a key nobody cached is 500, the reason in the log
--- init
RedisGate::Test::stop_pg();
--- more_headers
Authorization: Bearer $TEST_NGINX_KS_RO_TOKEN
--- request
GET /redis/$TEST_NGINX_KS_GLOBEX_INSTANCE/ping
--- error_code: 500
--- response_body chomp
{"error":"key store unavailable"}
--- error_log eval
qr/(could not connect to the key store|lost the key store)/



=== TEST 17: static keys still work without the key store
--- request
GET /redis/$TEST_NGINX_INSTANCE/ping
--- response_body chomp
{"result":"PONG"}



=== TEST 18: the key store back: lookups again
--- init
RedisGate::Test::start_pg();
select(undef, undef, undef, 1.5);
--- more_headers
Authorization: Bearer $TEST_NGINX_KS_RW_TOKEN
--- request
GET /redis/$TEST_NGINX_KS_ACME_INSTANCE/get/ks
--- response_body chomp
{"result":"1"}



=== TEST 19: a token not shaped like the key store's costs no query
--- more_headers
Authorization: Bearer not-a-key-store-token
--- request
GET /redis/$TEST_NGINX_KS_ACME_INSTANCE/ping
--- error_code: 401
--- response_body chomp
{"error":"Unauthorized: invalid API key"}
--- error_log
not a key store token
--- no_error_log
key store lookup for sha256
--- skip_eval: 6: !$RedisGate::Test::Debug



=== TEST 20: ... unless redisgate_pg_token_check is off
--- http_config
redisgate_pg_token_check off;
--- more_headers
Authorization: Bearer not-a-key-store-token
--- request
GET /redis/$TEST_NGINX_KS_ACME_INSTANCE/ping
--- error_code: 401
--- response_body chomp
{"error":"Unauthorized: invalid API key"}
--- error_log
key store lookup for sha256
--- skip_eval: 5: !$RedisGate::Test::Debug



=== TEST 21: an instance whose address is a host name, through the resolver
--- http_config
resolver 127.0.0.1:$TEST_NGINX_DNS_PORT valid=1s ipv6=off;
--- more_headers
Authorization: Bearer $TEST_NGINX_KS_RW_TOKEN
--- request eval
["GET /redis/$ENV{TEST_NGINX_KS_NAMED_INSTANCE}/get/ks",
 "GET /redis/$ENV{TEST_NGINX_KS_NAMED_INSTANCE}/get/ks"]
--- response_body eval
['{"result":"1"}', '{"result":"1"}']



=== TEST 22: a name the resolver does not know
--- http_config
resolver 127.0.0.1:$TEST_NGINX_DNS_PORT valid=1s ipv6=off;
--- more_headers
Authorization: Bearer $TEST_NGINX_KS_RW_TOKEN
--- request
GET /redis/$TEST_NGINX_KS_NOWHERE_INSTANCE/ping
--- error_code: 500
--- response_body chomp
{"error":"Redis unavailable: could not resolve the host"}
--- error_log eval
qr/could not resolve.*nowhere\.invalid/



=== TEST 23: a host name and no resolver
--- more_headers
Authorization: Bearer $TEST_NGINX_KS_RW_TOKEN
--- request
GET /redis/$TEST_NGINX_KS_NAMED_INSTANCE/ping
--- error_code: 500
--- response_body chomp
{"error":"the instance's Redis address is a host name, and no \"resolver\" is configured"}



=== TEST 24: redisgate_pg_query points the lookup at a deployment's own tables
--- http_config eval
qq{redisgate_pg_token_check off;
redisgate_pg_query "SELECT 'legacy-key', 'legacy-org', 'read', 0::bigint,
    'active', 'active', address, 4, NULL, NULL, 100, 100
    FROM legacy.tokens WHERE sha256 = \$1 AND instance = \$2::uuid";}
--- more_headers eval
"Authorization: Bearer legacy-token-$main::Run"
--- request eval
["GET /redis/$ENV{TEST_NGINX_KS_ACME_INSTANCE}/get/ks",
 "GET /redis/$ENV{TEST_NGINX_KS_ACME_INSTANCE}/set/ks/legacy"]
--- error_code eval
[200, 403]
--- response_body eval
['{"result":"1"}',
 "{\"error\":\"Forbidden: this API key's scopes do not allow 'set'\"}"]



=== TEST 25: a key with the manage scope alone (the management API's) runs no data command, reads included
--- more_headers
Authorization: Bearer $TEST_NGINX_KS_MANAGER_TOKEN
--- request eval
["GET /redis/$ENV{TEST_NGINX_KS_ACME_INSTANCE}/get/ks",
 "GET /redis/$ENV{TEST_NGINX_KS_ACME_INSTANCE}/subscribe/ks"]
--- error_code eval
[403, 403]
--- response_body eval
["{\"error\":\"Forbidden: this API key's scopes do not allow 'get'\"}",
 "{\"error\":\"Forbidden: this API key's scopes do not allow 'subscribe'\"}"]
--- no_error_log
invalid scopes
