# Key-store lookups in batches: the lookups of an event-loop turn go out
# together, as one redisgate.lookup_many() statement (or, with
# redisgate_pg_query, as statements of their own in one pipeline).  Bursts
# of cache misses for 200 distinct (token, instance) pairs, with repeats:
# valid, revoked and unknown tokens, on two instances of their
# organization and on another organization's.  Each burst is answered as
# lookups one at a time would answer it, each pair looked up once, in far
# fewer round trips (nginx's counters, and PostgreSQL's own count of
# lookup_many() calls); every waiter of a batch that fails mid-way (a
# timeout, PostgreSQL stopped) gets the documented 500; an operator's query
# fails one statement of a pipeline, not the others; a role granted
# lookup() only (the grants of a schema older than lookup_many()) is still
# answered, one lookup() a key.

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::Nginx::Socket 'no_plan';
use RedisGate::Test;
use Digest::SHA qw(sha256_hex);
use IO::Socket::INET;
use Socket qw(SOL_SOCKET SO_RCVTIMEO);
use POSIX ();

repeat_each(1);
no_shuffle();

my $port = $ENV{TEST_NGINX_REDIS_PORT};
my $conninfo = $ENV{TEST_NGINX_PG_CONNINFO};
our $Run = $$;
our $App = "rg-batch-$Run";
our $OldRole = "rg_batch_old_$Run";

# a statement in the key store, without a shell between: its rows
sub sql {
    my ($sql, %env) = @_;
    local @ENV{keys %env} = values %env;
    open my $fh, '-|', 'psql', '-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1',
         '-d', $conninfo, '-c', $sql
        or die "cannot run psql: $!\n";
    my @rows = <$fh>;
    close $fh or die "psql failed: $sql\n";
    chomp @rows;
    return wantarray ? @rows : $rows[0];
}

# poll CODE every 50 ms until it is true, for SECONDS at most
sub wait_for {
    my ($seconds, $code) = @_;
    for (1 .. $seconds * 20) {
        return 1 if $code->();
        select(undef, undef, undef, 0.05);
    }
    return 0;
}

# --- the key store: two organizations, three instances, 170 keys -----------

my $acme = RedisGate::Test::admin('org', 'create', "batch-acme-$Run")
    ->{organization_id};
my $globex = RedisGate::Test::admin('org', 'create', "batch-globex-$Run")
    ->{organization_id};

# acme's two instances are databases 11 and 12, where "batch" tells which
our %Inst = (
    A => RedisGate::Test::admin('instance', 'create', $acme, 'batch-a',
                                "127.0.0.1:$port", '--db', 11)->{instance_id},
    B => RedisGate::Test::admin('instance', 'create', $acme, 'batch-b',
                                "127.0.0.1:$port", '--db', 12)->{instance_id},
    G => RedisGate::Test::admin('instance', 'create', $globex, 'batch-g',
                                "127.0.0.1:$port", '--db', 11)->{instance_id},
);

{
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                  Timeout => 2)
        or die "cannot reach the test Redis: $!\n";
    print $s "SELECT 11\r\nSET batch a\r\nSELECT 12\r\nSET batch b\r\n";
    my @replies = map { scalar <$s> } 1 .. 4;
    die "the test Redis said @replies\n" if grep { !/^\+OK/ } @replies;
    close $s;
}

my @created = map { [split / /] } sql(
    "SELECT k.key_id || ' ' || k.token
       FROM generate_series(1, 170) g,
            LATERAL redisgate.create_key('$acme'::uuid, 'batch-' || g,
                                         '{read}') k
      ORDER BY g");
die "expected 170 keys\n" unless @created == 170;

my @valid = map { $_->[1] } @created[0 .. 139];
my @revoked = map { $_->[1] } @created[140 .. 169];
sql("SELECT redisgate.revoke_key(id) FROM unnest(ARRAY['"
    . join("','", map { $_->[0] } @created[140 .. 169]) . "']::uuid[]) id");

sub unknown_token {
    return 'rg_' . join '', map { sprintf '%02x', int rand 256 } 1 .. 32;
}

my @unknown = map { unknown_token() } 1 .. 30;

my $ok_a = [200, '{"result":"a"}'];
my $ok_b = [200, '{"result":"b"}'];
my $not_found = [404, '{"error":"instance not found"}'];
my $unauthorized = [401, '{"error":"Unauthorized: invalid API key"}'];

# 200 distinct pairs and what each gets: valid keys on instance A, on B,
# and on globex's instance; revoked and unknown keys on A and B
our @Pairs = (
    (map { [$Inst{A}, $valid[$_], $ok_a] } 0 .. 59),
    (map { [$Inst{B}, $valid[$_], $ok_b] } 60 .. 119),
    (map { [$Inst{G}, $valid[$_], $not_found] } 120 .. 139),
    (map { [$Inst{$_ % 2 ? 'B' : 'A'}, $revoked[$_], $unauthorized] }
         0 .. 29),
    (map { [$Inst{$_ % 2 ? 'B' : 'A'}, $unknown[$_], $unauthorized] }
         0 .. 29),
);

# and 50 of them twice more, asked for in the same burst
our @Burst = (@Pairs, @Pairs[map { $_ * 4 } 0 .. 49]);

# the same pairs, of tokens no nginx has seen, for the failures
sub fresh_pairs {
    my $n = shift;
    return map { [$Inst{$_ % 2 ? 'B' : 'A'}, unknown_token()] } 1 .. $n;
}

# a role granted lookup() only, as the schema's grants were before
# lookup_many()
sql("CREATE ROLE $OldRole LOGIN;
     GRANT USAGE ON SCHEMA redisgate TO $OldRole;
     GRANT EXECUTE ON FUNCTION redisgate.lookup(text, uuid) TO $OldRole");

END {
    eval { sql("DROP OWNED BY $OldRole; DROP ROLE $OldRole") };
}

# --- bursts through the block's nginx ----------------------------------------

# Every request at once, each on a connection of its own: the connections
# made and accepted first (a request to /ready each, kept alive), then every
# request written, then every answer read.  nginx then reads the requests
# in one or a few event-loop turns, as it would a burst of clients.
sub burst_send {
    my @socks;
    for (@_) {
        my $s = IO::Socket::INET->new(
            PeerAddr => '127.0.0.1',
            PeerPort => Test::Nginx::Socket::server_port(), Timeout => 10)
            or die "cannot connect to nginx: $!\n";
        $s->setsockopt(SOL_SOCKET, SO_RCVTIMEO, pack('l!l!', 60, 0));
        print $s "GET /ready HTTP/1.1\r\nHost: localhost\r\n\r\n";
        push @socks, $s;
    }
    for my $s (@socks) {
        my $head = '';
        while ($head !~ /\r\n\r\n\z/) {
            sysread($s, $head, 1, length $head) or die "no answer to /ready\n";
        }
        $head =~ m{^HTTP/1\.1 204 } or die "/ready: $head\n";
    }
    for my $i (0 .. $#_) {
        my ($inst, $token) = @{ $_[$i] };
        syswrite $socks[$i], "GET /redis/$inst/get/batch HTTP/1.1\r\n"
            . "Host: localhost\r\nConnection: close\r\n"
            . "Authorization: Bearer $token\r\n\r\n";
    }
    return \@socks;
}

# [status, body] of each, in order
sub burst_read {
    my @answers;
    for my $s (@{ $_[0] }) {
        my $answer = do { local $/; <$s> } // '';
        close $s;
        my ($status) = $answer =~ m{^HTTP/1\.1 (\d+) };
        my ($body) = $answer =~ /\r\n\r\n(.*)\z/s;
        push @answers, [$status // 'none', $body // ''];
    }
    return @answers;
}

sub burst {
    return burst_read(burst_send(@_));
}

# the block nginx's counters, from redisgate_status
sub counters {
    my $s = IO::Socket::INET->new(
        PeerAddr => '127.0.0.1',
        PeerPort => Test::Nginx::Socket::server_port(), Timeout => 10)
        or die "cannot connect to nginx: $!\n";
    print $s "GET /status HTTP/1.0\r\nHost: localhost\r\n\r\n";
    my $page = do { local $/; <$s> } // '';
    close $s;
    my %c = $page =~ /^redisgate_(keystore_\w+_total) (\d+)$/mg;
    return \%c;
}

# the answers against what each pair expects: the pairs whose answer
# differs, at most 5, "" when none
sub mismatches {
    my ($got, $want) = @_;
    my @bad;
    for my $i (0 .. $#$want) {
        my ($s, $b) = @{ $got->[$i] };
        push @bad, "#$i: $s $b, expected @{ $want->[$i] }"
            if $s ne $want->[$i][0] || $b ne $want->[$i][1];
    }
    return join '; ', @bad[0 .. ($#bad < 4 ? $#bad : 4)];
}

# nginx's lookup connections ended, so that they report their function
# calls (PostgreSQL 15 keeps a backend's counts until it is idle a while,
# or exits); the listener's (LISTEN) goes on
sub flush_function_stats {
    my @pids = sql("SELECT pid FROM pg_stat_activity
                     WHERE application_name = '$App'
                       AND query NOT LIKE 'LISTEN%'");
    return unless @pids;
    my $list = join ',', @pids;
    sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE pid IN ($list)");
    wait_for(10, sub {
        sql("SELECT count(*) FROM pg_stat_activity WHERE pid IN ($list)")
            == 0 });
    # what an exiting backend reports comes just after it leaves
    select(undef, undef, undef, 0.3);
}

sub function_calls {
    my $name = shift;
    return sql("SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions
                 WHERE schemaname = 'redisgate' AND funcname = '$name'");
}

# a transaction of our own that holds api_keys, so that lookups wait: the
# psql's pid; release_keys() ends it
our $Holder;

sub hold_keys {
    $Holder = fork();
    die "fork: $!\n" unless defined $Holder;
    if (!$Holder) {
        $ENV{PGAPPNAME} = "$App-lock";
        open STDOUT, '>', '/dev/null';
        open STDERR, '>', '/dev/null';
        exec('psql', '-X', '-q', '-d', $conninfo, '-c',
             'BEGIN; LOCK TABLE redisgate.api_keys IN ACCESS EXCLUSIVE MODE;'
             . ' SELECT pg_sleep(60); COMMIT;')
            or POSIX::_exit(127);
    }
    wait_for(10, sub {
        sql("SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a
                 USING (pid)
              WHERE a.application_name = '$App-lock' AND l.granted
                AND l.mode = 'AccessExclusiveLock'") > 0 })
        or die "the lock on api_keys was not taken\n";
}

sub release_keys {
    eval {
        sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE application_name = '$App-lock'");
    };
    waitpid $Holder, 0 if $Holder;
    $Holder = undef;
}

# the block nginx's listener is connected: it expires the whole cache when
# it is, which would make lookups of a burst that began before
sub listening {
    return wait_for(20, sub {
        sql("SELECT count(*) FROM pg_stat_activity
              WHERE application_name = '$App' AND query LIKE 'LISTEN%'")
        > 0 });
}

# lookups of this nginx waiting for the lock
sub lookups_waiting {
    return sql("SELECT count(*) FROM pg_stat_activity
                 WHERE application_name = '$App'
                   AND wait_event_type = 'Lock'");
}

# the key store as the superuser, PostgreSQL counting function calls (a
# superuser's setting); or as the role granted lookup() only
our $Cache = "redisgate_cache zone=redisgate_batch:4m ttl=60s"
    . " negative_ttl=60s;\n";
our $Pg = "redisgate_pg \"$conninfo application_name=$App"
    . " options=-ctrack_functions=all\";\n$Cache";
our $OldPg = "redisgate_pg \"$conninfo application_name=$App"
    . " user=$OldRole\";\n$Cache";

$RedisGate::Test::DefaultConfig = <<'_EOC_';
    location /redis/ { redisgate; }
    location = /ready { return 204; }
    location = /status { redisgate_status; }
_EOC_

run_tests();

__DATA__

=== TEST 1: a burst of 250 requests, 200 distinct lookups: every answer right, each pair looked up once, in few lookup_many() calls; again: from the cache
--- http_config eval
$main::Pg
--- init
main::listening() or die "the key store listener did not connect\n";
my $c0 = main::counters();
main::flush_function_stats();
my ($many0, $one0) = map { main::function_calls($_) } qw(lookup_many lookup);
my @got = main::burst(@main::Burst);
is(main::mismatches(\@got, [map { $_->[2] } @main::Burst]), '',
   'every answer as a lookup alone would have it');
my $c1 = main::counters();
my $lookups = $c1->{keystore_queries_total} - $c0->{keystore_queries_total};
my $batches = $c1->{keystore_batches_total} - $c0->{keystore_batches_total};
is($lookups, 200, 'each of the 200 pairs looked up once');
ok($batches >= 1 && $batches <= 20,
   "200 lookups in $batches round trips (at most 20)");
main::flush_function_stats();
my $many = main::function_calls('lookup_many') - $many0;
is($many, $batches, "PostgreSQL ran lookup_many() $many times");
is(main::function_calls('lookup') - $one0, 0, '... and lookup() never');
diag("200 lookups: $batches round trips, $many lookup_many() calls")
    if $ENV{TEST_VERBOSE};
@got = main::burst(@main::Burst);
is(main::mismatches(\@got, [map { $_->[2] } @main::Burst]), '',
   'the same burst again: the same answers');
is(main::counters()->{keystore_queries_total}
   - $c1->{keystore_queries_total}, 0, '... from the cache, no lookup');
--- request
GET /ready
--- error_code: 204
--- response_body
--- error_log eval
qr/key store round trip of \d+ lookups/
--- skip_eval: 1: !$RedisGate::Test::Debug



=== TEST 2: a batch that times out: every waiter gets 500 "key store unavailable"
--- http_config eval
$main::Pg . "redisgate_pg_timeout 1s;"
--- init
main::hold_keys();
my @pairs = main::fresh_pairs(150);
my @got = eval { main::burst(@pairs) };
my $err = $@;
main::release_keys();
die $err if $err;
is(main::mismatches(\@got,
                    [map { [500, '{"error":"key store unavailable"}'] }
                     @pairs]),
   '', 'all 150 answered 500');
--- request
GET /ready
--- error_code: 204
--- response_body
--- error_log
key store timed out



=== TEST 3: PostgreSQL stopped while batches wait: every waiter gets 500 "key store unavailable"; back: lookups again
--- http_config eval
$main::Pg . "redisgate_pg_timeout 30s;\n"
. "redisgate_reconnect_backoff 50ms 200ms;"
--- init
main::hold_keys();
my @pairs = main::fresh_pairs(150);
my $socks = main::burst_send(@pairs);
my $waiting = main::wait_for(20, sub { main::lookups_waiting() > 0 });
RedisGate::Test::stop_pg();
my @got = main::burst_read($socks);
waitpid $main::Holder, 0;
$main::Holder = undef;
RedisGate::Test::start_pg();
ok($waiting, 'a batch was running in PostgreSQL when it stopped');
is(main::mismatches(\@got,
                    [map { [500, '{"error":"key store unavailable"}'] }
                     @pairs]),
   '', 'all 150 answered 500');
ok(main::wait_for(10, sub {
       (main::burst([$main::Inst{A}, main::unknown_token()]))[0][0]
       eq '401' }),
   'PostgreSQL back: a lookup answers');
@got = main::burst(@main::Pairs);
is(main::mismatches(\@got, [map { $_->[2] } @main::Pairs]), '',
   '... and 200 misses at once, every answer right');
--- request
GET /ready
--- error_code: 204
--- response_body
--- error_log eval
qr/lost the key store connection|terminating connection/



=== TEST 4: redisgate_pg_query: a statement each, pipelined; one that fails fails its lookup only
--- http_config eval
$main::Pg . q{redisgate_pg_query "SELECT * FROM redisgate.lookup($1, $2::uuid)
    WHERE 1 / CASE WHEN $1 LIKE '0%' THEN 0 ELSE 1 END = 1";}
--- init
# the query divides by zero for hashes that begin with 0: three unknown
# tokens whose hash does, and the valid ones that happen to
my @pairs = (@main::Pairs, map {
    my $t;
    do { $t = main::unknown_token() } until sha256_hex($t) =~ /^0/;
    [$main::Inst{A}, $t, [401, '']]
} 1 .. 3);
my @want = map {
    sha256_hex($_->[1]) =~ /^0/
        ? [500, '{"error":"key store lookup failed"}'] : $_->[2]
} @pairs;
main::listening() or die "the key store listener did not connect\n";
my $c0 = main::counters();
my @got = main::burst(@pairs);
is(main::mismatches(\@got, \@want), '',
   'every answer right, 500 where the query failed ('
   . (grep { $_->[0] == 500 } @want) . ' of ' . @want . ')');
my $c1 = main::counters();
my $batches = $c1->{keystore_batches_total} - $c0->{keystore_batches_total};
is($c1->{keystore_queries_total} - $c0->{keystore_queries_total},
   scalar @pairs, 'each pair looked up once');
ok($batches >= 1 && $batches <= 20,
   scalar(@pairs) . " statements in $batches round trips (at most 20)");
--- request
GET /ready
--- error_code: 204
--- response_body
--- error_log
division by zero



=== TEST 5: a role granted lookup() only: lookup_many() refused, then a lookup() each; every answer right
--- http_config eval
$main::OldPg
--- init
my @got = main::burst(@main::Pairs);
is(main::mismatches(\@got, [map { $_->[2] } @main::Pairs]), '',
   'every answer right');
my @again = main::burst(main::fresh_pairs(40));
is(scalar(grep { $_->[0] eq '401' } @again), 40,
   'and later misses too (401 for 40 unknown tokens)');
--- request
GET /ready
--- error_code: 204
--- response_body
--- error_log
redisgate.lookup_many() failed, this worker looks keys up one at a time
permission denied for function lookup_many
