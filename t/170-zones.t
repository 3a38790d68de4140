# Shared zones too small for what they hold, and the key store's
# announcements among many cached keys: every request is still answered
# as it should be, a full key cache drops its least recently used entries
# without a word, a zone that cannot make room says so by an alert at most
# once a second, and a key's announcement evicts that key's entries and no
# others.  Each block has zones of its own, fresh whether nginx is
# restarted or reused; what must come before its requests is done in its
# init, over HTTP.

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::Nginx::Socket 'no_plan';
use RedisGate::Test;
use Digest::SHA qw(sha256_hex);
use HTTP::Tiny;
use Time::HiRes ();

repeat_each(1);
no_shuffle();

my $port = $ENV{TEST_NGINX_REDIS_PORT};
our $Run = $$;

# rows of a query, as psql prints them unaligned
sub sql {
    my $q = shift;
    open my $fh, '-|', 'psql', '-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1',
         '-d', $ENV{TEST_NGINX_PG_CONNINFO}, '-c', $q
        or die "cannot run psql: $!\n";
    my @rows = <$fh>;
    close $fh or die "psql failed: $q\n";
    chomp @rows;
    return @rows;
}

my $org = RedisGate::Test::admin('org', 'create', "zones-$Run")
    ->{organization_id};

# instances A to F, on one database of the test Redis
our %Inst;
for my $name (qw(A B C D E F)) {
    $Inst{$name} = RedisGate::Test::admin('instance', 'create', $org,
        "zones-$name", "127.0.0.1:$port", '--db', 10)->{instance_id};
}

# 200 keys: more than a 32k cache holds (about 40)
our (@Tokens, @KeyIds);
for (sql("select k.key_id || ' ' || k.token from generate_series(1, 200) g,
          lateral redisgate.create_key('$org'::uuid, 'zones-' || g) k
          order by g"))
{
    my ($id, $token) = split / /;
    push @KeyIds, $id;
    push @Tokens, $token;
}

our $Http = HTTP::Tiny->new(timeout => 10);

# the status of a ping of instance NAME with token number N (from 1)
sub ping {
    my ($name, $n) = @_;
    my $r = $Http->get('http://127.0.0.1:' . server_port()
                       . "/redis/$Inst{$name}/ping?_token=$Tokens[$n - 1]");
    return $r->{status};
}

# pings of instance NAME with tokens FROM to TO: how many were not 200
sub fill {
    my ($name, $from, $to) = @_;
    return scalar grep { ping($name, $_) != 200 } $from .. $to;
}

sub error_log {
    open my $fh, '<', "$ServRoot/logs/error.log" or return '';
    local $/;
    return <$fh>;
}

# the error log has N lines (1 if not given) that match RE, within SECS
# seconds (5 if not given; nginx may run under valgrind)
sub wait_log {
    my ($re, $n, $secs) = @_;
    my $end = Time::HiRes::time() + ($secs // 5) * ($ENV{REDISGATE_VALGRIND_DIR}
                                                     ? 6 : 1);
    while (Time::HiRes::time() < $end) {
        my @lines = grep { /$re/ } split /\n/, error_log();
        return 1 if @lines >= ($n // 1);
        Time::HiRes::sleep(0.02);
    }
    return 0;
}

# the listener is up: an announcement of nothing shows in the log (sent
# again until it does: one sent before the LISTEN is lost)
sub listening {
    my $hex = sha256_hex("zones-$Run-" . rand());
    for (1 .. 60) {
        sql("select pg_notify('redisgate', 'key:$hex')");
        return 1 if wait_log(qr/key store changed "key:$hex"/, 1, 0.5);
    }
    return 0;
}

# a request made after this is not answered from a worker's memory of the
# last second, in front of the shared cache
sub forget {
    Time::HiRes::sleep(1.1);
}

# 300 instances of nginx.conf, for the admin key's usage: more than a 32k
# usage zone holds (about 100 organization, instance and minute entries)
our @UsageInstances = map { sprintf '7a0e0170-0000-4000-8000-%012d', $_ }
                      1 .. 300;
our $UsageConfig = join '', map {
    "    redisgate_instance $_ redis://127.0.0.1:$port/10"
    . " organization=acme;\n"
} @UsageInstances;

$RedisGate::Test::ExtraHttpConfig = <<'_EOC_';
    redisgate_pg "$TEST_NGINX_PG_CONNINFO";
_EOC_

$RedisGate::Test::DefaultConfig = <<'_EOC_';
    location /redis/ {
        redisgate;
    }

    location = /status {
        redisgate_status;
    }
_EOC_

run_tests();

# the alert of TEST 6, in the log nginx left: once a second at most
{
    my $full = 'could not allocate node in redisgate usage zone'
               . ' "zones_usage_6"';
    my @seconds = error_log() =~ /^(\S+ \S+) \[alert\] .*\Q$full\E/mg;
    my %seen;
    ok(@seconds >= 1, 'TEST 6: the full usage zone raised an alert');
    ok(!grep({ $seen{$_}++ } @seconds),
       'TEST 6: at most one alert a second (' . scalar(@seconds) . ')');
}

__DATA__

=== TEST 1: a key cache too small for its keys answers every key; the least recently used go, unsaid
--- http_config
    redisgate_cache zone=zones_keys_1:32k ttl=60s stale=60s;
--- more_headers
X-Zones: 1
--- init
ok(listening(), 'the key store listener is up');
--- request eval
[(map { "GET /redis/$main::Inst{A}/ping?_token=$main::Tokens[$_ - 1]" }
      1 .. 200),
 "GET /status"]
--- response_body_like eval
[(qr/^\{"result":"PONG"\}$/) x 200,
 qr/^(?=.*^redisgate_cache_misses_total 200$)(?=.*^redisgate_cache_hits_total 0$)(?=.*^redisgate_cache_evictions_total [1-9]\d*$)(?=.*^redisgate_zone_full_total\{zone="zones_keys_1"\} 0$)/ms]



=== TEST 2: ... the most recent keys are found there, the oldest asked for again
--- http_config
    redisgate_cache zone=zones_keys_2:32k ttl=60s stale=60s;
--- more_headers
X-Zones: 1
--- init
ok(listening(), 'the key store listener is up');
is(fill('A', 1, 200), 0, 'the cache filled, every key answered');
forget();
--- request eval
["GET /redis/$main::Inst{A}/ping?_token=$main::Tokens[199]",
 "GET /redis/$main::Inst{A}/ping?_token=$main::Tokens[0]",
 "GET /status"]
--- response_body_like eval
['^\{"result":"PONG"\}$', '^\{"result":"PONG"\}$',
 qr/^(?=.*^redisgate_cache_hits_total 1$)(?=.*^redisgate_cache_misses_total 201$)(?=.*^redisgate_zone_full_total\{zone="zones_keys_2"\} 0$)/ms]



=== TEST 3: a key's announcement evicts its entries, on both its instances, and no other
--- http_config
    redisgate_cache zone=zones_keys_3:1m ttl=60s stale=60s;
--- more_headers
X-Zones: 1
--- init
ok(listening(), 'the key store listener is up');
is(fill('A', 1, 30) + fill('B', 1, 30), 0, '60 entries cached');
RedisGate::Test::admin('key', 'revoke', $main::KeyIds[6]);
my $hash = sha256_hex($main::Tokens[6]);
ok(main::wait_log(qr/key store changed "key:$hash"/), 'announced');
--- request eval
["GET /redis/$main::Inst{A}/ping?_token=$main::Tokens[6]",
 "GET /redis/$main::Inst{B}/ping?_token=$main::Tokens[6]",
 "GET /redis/$main::Inst{A}/ping?_token=$main::Tokens[5]",
 "GET /redis/$main::Inst{B}/ping?_token=$main::Tokens[7]",
 "GET /status"]
--- error_code eval
[401, 401, 200, 200, 200]
--- response_body_like eval
['invalid API key', 'invalid API key', 'PONG', 'PONG',
 qr/^(?=.*^redisgate_cache_hits_total 2$)(?=.*^redisgate_cache_misses_total 62$)(?=.*^redisgate_cache_evictions_total 0$)/ms]
--- error_log eval
"key store changed \"key:" . Digest::SHA::sha256_hex($main::Tokens[6])
. "\", 2 cached entries evicted"



=== TEST 4: an instance's announcement voids its entries, and no other
--- http_config
    redisgate_cache zone=zones_keys_4:1m ttl=60s stale=60s;
--- more_headers
X-Zones: 1
--- init
ok(listening(), 'the key store listener is up');
is(fill('C', 101, 110) + fill('D', 101, 110), 0, '20 entries cached');
RedisGate::Test::admin('instance', 'suspend', $main::Inst{D});
ok(main::wait_log(qr/key store changed "instance:$main::Inst{D}"/),
   'announced');
--- request eval
["GET /redis/$main::Inst{D}/ping?_token=$main::Tokens[100]",
 "GET /redis/$main::Inst{D}/ping?_token=$main::Tokens[101]",
 "GET /redis/$main::Inst{C}/ping?_token=$main::Tokens[100]",
 "GET /redis/$main::Inst{C}/ping?_token=$main::Tokens[109]",
 "GET /status"]
--- error_code eval
[403, 403, 200, 200, 200]
--- response_body_like eval
['the instance is suspended', 'the instance is suspended', 'PONG', 'PONG',
 qr/^(?=.*^redisgate_cache_hits_total 2$)(?=.*^redisgate_cache_misses_total 22$)/ms]
--- error_log eval
"key store changed \"instance:$main::Inst{D}\", its cached entries voided"



=== TEST 5: more announcements than the cache notes: an older entry is asked for again, and answers the same
--- http_config
    redisgate_cache zone=zones_keys_5:1m ttl=60s stale=60s;
--- more_headers
X-Zones: 1
--- init
ok(listening(), 'the key store listener is up');
is(fill('E', 121, 122), 0, '2 entries cached');
main::sql("do \$zones\$ begin for i in 1 .. 70 loop
             update redisgate.instances set redis_db = 10 + i % 2
              where id = '$main::Inst{F}';
             commit;
           end loop; end \$zones\$");
ok(main::wait_log(qr/key store changed "instance:$main::Inst{F}"/, 70),
   '70 announcements of another instance');
--- request eval
["GET /redis/$main::Inst{E}/ping?_token=$main::Tokens[120]",
 "GET /status"]
--- response_body_like eval
['^\{"result":"PONG"\}$',
 qr/^(?=.*^redisgate_cache_hits_total 0$)(?=.*^redisgate_cache_misses_total 3$)/ms]



=== TEST 6: a usage zone too small for its counts: every request answered, the counts lost, said by an alert
--- http_config eval
"    redisgate_usage zone=zones_usage_6:32k interval=1h;\n"
. $main::UsageConfig
--- alert
could not allocate node in redisgate usage zone "zones_usage_6": the zone is full, the counts are lost
--- request eval
[(map { "GET /redis/$_/ping" } @main::UsageInstances), "GET /status"]
--- response_body_like eval
[(qr/^\{"result":"PONG"\}$/) x 300,
 qr/^redisgate_zone_full_total\{zone="zones_usage_6"\} [1-9]\d*$/m]
--- error_log
could not allocate node in redisgate usage zone "zones_usage_6": the zone is full, the counts are lost
