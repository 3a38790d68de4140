# Pub/sub streams (/subscribe, /psubscribe) as Server-Sent Events: the
# framing, what ends a stream (Redis gone past redisgate_timeout, a client
# that does not read), Redis back within it, heartbeats, the answers
# before a stream starts (403, 400), a client that leaves, an instance
# nothing listens on.  t/client/stream.test.mjs has the rest (the
# @upstash/redis client, fan-out, reload).
#
# A stream stays open until something ends it, so the streams here end by
# themselves: a helper forked in the block's init waits until Redis has
# the subscription (PUBSUB NUMSUB on the spare redis-server), publishes,
# then stops that Redis; past redisgate_timeout the stream gets its error
# line and the last chunk, a finite answer Test::Nginx can check.  The
# helpers wait for what they need rather than for fixed times, so that the
# blocks hold under valgrind too.

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::Nginx::Socket 'no_plan';
use RedisGate::Test;
use Digest::SHA qw(sha256_hex);
use IO::Socket::INET;
use Socket;
use POSIX ();
use Time::HiRes ();

repeat_each(1);
no_shuffle();

# this run's channels
our $Chan = "rg160-$$";
$ENV{TEST_NGINX_CHAN} = $Chan;

# nothing listens there
$ENV{TEST_NGINX_CLOSED_PORT} = RedisGate::Test::free_port();
# a second server, for the slow reader: small socket buffers
$ENV{TEST_NGINX_SLOW_PORT} = RedisGate::Test::free_port();

RedisGate::Test::add_instances('5ab5ab50',
    SPARE  => 'redis://127.0.0.1:$TEST_NGINX_SPARE_PORT',
    CLOSED => 'redis://127.0.0.1:$TEST_NGINX_CLOSED_PORT');

# a key with the write scope only
our $WriteOnly = 'rg_test_wonly_9d1c5e7a3b2f4068';
$RedisGate::Test::ExtraHttpConfig .= '    redisgate_key sha256:'
    . sha256_hex($WriteOnly)
    . " id=acme-wonly organization=acme scopes=write;\n";

$RedisGate::Test::DefaultConfig = <<'_EOC_';
    location /redis/ {
        redisgate_timeout 500ms;
        redisgate;
    }
_EOC_

our $Spare = $ENV{TEST_NGINX_SPARE_PORT};
our $Main = $ENV{TEST_NGINX_REDIS_PORT};

# the error line of a stream whose Redis went away
our $Lost = qr/data: error,Redis unavailable: (?:connection lost|could not connect)\n\n/;

# --- a small Redis client, for the helpers

sub resp {
    return join '', '*' . scalar(@_) . "\r\n",
                    map { '$' . length($_) . "\r\n$_\r\n" } @_;
}

sub read_reply {
    my $s = shift;
    my $line = <$s>;
    die "Redis closed the connection\n" unless defined $line;
    $line =~ s/\r\n\z//;
    my $type = substr $line, 0, 1, '';
    return $line if $type eq '+' || $type eq ':';
    die "Redis: $line\n" if $type eq '-';
    if ($type eq '$') {
        return undef if $line < 0;
        my $buf = '';
        while (length $buf < $line + 2) {
            read($s, $buf, $line + 2 - length $buf, length $buf)
                or die "Redis closed the connection\n";
        }
        return substr $buf, 0, $line;
    }
    return [map { read_reply($s) } 1 .. $line] if $type eq '*';
    die "not RESP: $type$line\n";
}

# redis_call(PORT, [CMD...], ...): the replies, in order
sub redis_call {
    my ($port, @cmds) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                  Timeout => 10)
        or die "cannot connect to Redis on $port: $!\n";
    binmode $s;
    print $s join '', map { resp(@$_) } @cmds;
    my @replies = map { read_reply($s) } @cmds;
    close $s;
    return wantarray ? @replies : $replies[0];
}

# wait_for(SECONDS, CODE): CODE until it returns true (then true), or false
sub wait_for {
    my ($secs, $code) = @_;
    my $end = Time::HiRes::time() + $secs;
    while (Time::HiRes::time() < $end) {
        my $ok = eval { $code->() };
        return 1 if $ok;
        Time::HiRes::sleep(0.02);
    }
    return 0;
}

# NUMSUB of each channel on Redis at PORT is at least 1
sub subscribed {
    my ($port, @chans) = @_;
    my $r = redis_call($port, ['PUBSUB', 'NUMSUB', @chans]);
    my %n = @$r;
    return !grep { !$n{$_} } @chans;
}

# CODE in a child process, while the block's request runs; what goes
# wrong there is said on stderr.  Children are killed at the end.
our @Helpers;

sub helper {
    my $code = shift;
    my $pid = fork();
    die "fork: $!\n" unless defined $pid;
    if ($pid) {
        push @Helpers, $pid;
        return;
    }
    # not the runner's handlers (they stop nginx), nor its END blocks
    $SIG{$_} = 'DEFAULT' for qw(INT TERM HUP PIPE);
    eval { $code->(); 1 } or warn "160-stream.t helper: $@";
    POSIX::_exit(0);
}

END {
    for my $pid (@Helpers) {
        kill 'KILL', $pid;
        waitpid $pid, 0;
    }
}

# The spare Redis goes with SHUTDOWN, not with stop_spare_redis(): that
# one waits for the process to be gone, which may take the (lazy) init
# seconds to reap, and then removes the pid file, maybe a newer Redis's.
sub stop_spare {
    eval { redis_call($Spare, ['SHUTDOWN', 'NOSAVE']) };
    wait_for(10, sub { !RedisGate::Test::port_open($Spare) })
        or die "the spare Redis does not stop\n";
}

sub restart_spare {
    stop_spare() if RedisGate::Test::port_open($Spare);
    RedisGate::Test::start_spare_redis();
}

# a client that reads the headers and the subscribe line, then nothing
# (SO_RCVBUF 2048): its socket
sub slow_client {
    my ($port, $path) = @_;
    socket(my $s, PF_INET, SOCK_STREAM, getprotobyname('tcp'))
        or die "socket: $!\n";
    setsockopt($s, SOL_SOCKET, SO_RCVBUF, pack('i', 2048))
        or die "SO_RCVBUF: $!\n";
    connect($s, pack_sockaddr_in($port, inet_aton('127.0.0.1')))
        or die "connect: $!\n";
    syswrite $s, "GET $path HTTP/1.1\r\nHost: localhost\r\n"
        . "Authorization: Bearer $RedisGate::Test::Tokens{ADMIN}\r\n\r\n";
    my $buf = '';
    while ($buf !~ /data: subscribe,/) {
        sysread($s, $buf, 4096, length $buf)
            or die "closed before the subscribe line: $buf\n";
    }
    return ($s, $buf);
}

# the chunked body of an answer
sub dechunk {
    my $raw = shift;
    my ($head, $rest) = split /\r\n\r\n/, $raw, 2;
    my $body = '';
    while ($rest =~ s/\A([0-9a-fA-F]+)\r\n//) {
        my $n = hex $1;
        return ($head, $body, 1) if $n == 0;
        $body .= substr $rest, 0, $n, '';
        $rest =~ s/\A\r\n// or last;
    }
    return ($head, $body, 0);
}

run_tests();

__DATA__

=== TEST 1: a stream: the event-stream headers, subscribe lines once Redis confirmed, messages (line breaks escaped), then Redis gone: the error line, the last chunk
--- init
restart_spare();
helper(sub {
    wait_for(30, sub { subscribed($Spare, "$Chan:news", "$Chan:other") })
        or die "never subscribed\n";
    redis_call($Spare,
        ['PUBLISH', "$Chan:news", 'hello'],
        ['PUBLISH', "$Chan:news", 'a,b,,c'],
        ['PUBLISH', "$Chan:news", "l1\nl2\r\nl3"],
        ['PUBLISH', "$Chan:news", "h\xc3\xa9llo \xe4\xb8\x96\xe7\x95\x8c"],
        ['PUBLISH', "$Chan:news", ''],
        ['PUBLISH', "$Chan:other", 'x']);
    stop_spare();
});
--- request
GET /redis/$TEST_NGINX_SPARE_INSTANCE/subscribe/$TEST_NGINX_CHAN:news/$TEST_NGINX_CHAN:other
--- timeout: 14
--- response_headers
Content-Type: text/event-stream
Cache-Control: no-cache
X-Accel-Buffering: no
Transfer-Encoding: chunked
!Content-Length
--- response_body_like eval
qr/\A\Qdata: subscribe,$::Chan:news,1

data: subscribe,$::Chan:other,2

data: message,$::Chan:news,hello

data: message,$::Chan:news,a,b,,c

data: message,$::Chan:news,l1\nl2\r\nl3

data: message,$::Chan:news,h\E\xc3\xa9llo \xe4\xb8\x96\xe7\x95\x8c\Q

data: message,$::Chan:news,

data: message,$::Chan:other,x

\E$::Lost\z/
--- error_log eval
[qr/\[warn\] .*redisgate: lost the subscriber connection to redis:\/\/127\.0\.0\.1:\d+\/0, 2 channels to subscribe to again/,
 qr/\[error\] .*redisgate: the subscriber connection to redis:\/\/127\.0\.0\.1:\d+\/0 is not back in time, ending the streams of its 2 channel\(s\)/]
--- no_error_log
[crit]



=== TEST 2: psubscribe, POSTed as the client does (body [] ignored), the token in ?_token=, a read-only key: pmessage with the pattern and the channel
--- init
restart_spare();
helper(sub {
    wait_for(30, sub { redis_call($Spare, ['PUBSUB', 'NUMPAT']) >= 1 })
        or die "never subscribed\n";
    redis_call($Spare,
        ['PUBLISH', "$Chan:else", 'not for us'],
        ['PUBLISH', "$Chan:news.tech", '{"title":"x, y"}']);
    stop_spare();
});
--- request eval
"POST /redis/$ENV{TEST_NGINX_SPARE_INSTANCE}/psubscribe/$::Chan:news.*?_token=$RedisGate::Test::Tokens{READER}
[]"
--- more_headers
Content-Type: application/json
Accept: text/event-stream
Upstash-Encoding: base64
--- timeout: 14
--- response_headers
Content-Type: text/event-stream
--- response_body_like eval
qr/\A\Qdata: psubscribe,$::Chan:news.*,1

data: pmessage,$::Chan:news.*,$::Chan:news.tech,{"title":"x, y"}

\E$::Lost\z/
--- no_error_log
[crit]



=== TEST 3: heartbeats: ":" and an empty line every redisgate_sse_heartbeat, between whole events (from the start: the subscribe line may come after one)
--- config
    location /redis/ {
        redisgate_timeout 500ms;
        redisgate_sse_heartbeat 100ms;
        redisgate;
    }
--- init
restart_spare();
helper(sub {
    wait_for(30, sub { subscribed($Spare, "$Chan:hb") })
        or die "never subscribed\n";
    Time::HiRes::sleep(0.6);
    redis_call($Spare, ['PUBLISH', "$Chan:hb", 'beat']);
    Time::HiRes::sleep(0.3);
    stop_spare();
});
--- request
GET /redis/$TEST_NGINX_SPARE_INSTANCE/subscribe/$TEST_NGINX_CHAN:hb
--- timeout: 6
--- response_body_like eval
qr/\A(?::\n\n)*\Qdata: subscribe,$::Chan:hb,1\E\n\n(?::\n\n){3,}\Qdata: message,$::Chan:hb,beat\E\n\n(?::\n\n){2,}$::Lost\z/
--- no_error_log
[crit]



=== TEST 4: Redis back within redisgate_timeout: the stream goes on, subscribed again without a second subscribe line
--- config
    location /redis/ {
        redisgate_timeout 3s;
        redisgate;
    }
--- init
restart_spare();
helper(sub {
    wait_for(30, sub { subscribed($Spare, "$Chan:back") })
        or die "never subscribed\n";
    redis_call($Spare, ['PUBLISH', "$Chan:back", 'before']);
    restart_spare();
    wait_for(30, sub { subscribed($Spare, "$Chan:back") })
        or die "never subscribed again\n";
    redis_call($Spare, ['PUBLISH', "$Chan:back", 'after']);
    stop_spare();
});
--- request
GET /redis/$TEST_NGINX_SPARE_INSTANCE/subscribe/$TEST_NGINX_CHAN:back
--- timeout: 14
--- response_body_like eval
qr/\A\Qdata: subscribe,$::Chan:back,1

data: message,$::Chan:back,before

data: message,$::Chan:back,after

\E$::Lost\z/
--- error_log eval
[qr/\[warn\] .*lost the subscriber connection to redis:\/\/127\.0\.0\.1:\d+\/0, 1 channels/,
 qr/\[notice\] .*the subscriber connection to redis:\/\/127\.0\.0\.1:\d+\/0 is back/]
--- no_error_log
[crit]



=== TEST 5: a client that does not read: past redisgate_sse_buffer its stream ends with the error line; a reader on the same channel gets every message
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_SLOW_PORT sndbuf=4k;
        location /redis/ {
            redisgate_timeout 500ms;
            redisgate_sse_buffer 8k;
            redisgate;
        }
    }
--- init
restart_spare();
helper(sub {
    my $c = "$Chan:slow";
    wait_for(30, sub { subscribed($Spare, $c) })
        or die "never subscribed\n";
    my ($s, $got) = slow_client($ENV{TEST_NGINX_SLOW_PORT},
        "/redis/$ENV{TEST_NGINX_SPARE_INSTANCE}/subscribe/$c");
    redis_call($Spare,
        map { ['PUBLISH', $c, "$_:" . ('x' x 1000)] } 0 .. 199);
    my $log = Test::Nginx::Socket::server_root() . '/logs/error.log';
    wait_for(30, sub {
        open my $fh, '<', $log or return 0;
        local $/;
        <$fh> =~ /a stream's client reads too slowly/;
    }) or die "no log line about the slow reader\n";
    # now it reads: to the last chunk
    local $SIG{ALRM} = sub { die "the slow reader timed out: $got\n" };
    alarm 30;
    while ($got !~ /\r\n0\r\n\r\n\z/) {
        sysread($s, $got, 65536, length $got) or last;
    }
    alarm 0;
    my ($head, $body, $ended) = dechunk($got);
    my @n = $body =~ /data: message,\Q$c\E,(\d+):x{1000}\n\n/g;
    my $verdict =
        $head !~ m{\AHTTP/1\.1 200 } ? "status: $head"
        : !$ended ? 'no last chunk'
        : $body !~ /\Adata: subscribe,\Q$c\E,1\n\n(?:data: message,\Q$c\E,\d+:x{1000}\n\n)*data: error,the client reads too slowly: the stream's buffer is full\n\n\z/
            ? 'body: ' . substr($body, 0, 100) . ' ... ' . substr($body, -100)
        : !@n || @n >= 200 ? scalar(@n) . ' messages'
        : "@n" ne join(' ', 0 .. $#n) ? 'messages out of order'
        : 'ok';
    warn "160-stream.t: slow reader: $verdict\n" if $verdict ne 'ok';
    redis_call($Spare, ['PUBLISH', $c, "slow reader: $verdict"]);
    stop_spare();
});
--- request
GET /redis/$TEST_NGINX_SPARE_INSTANCE/subscribe/$TEST_NGINX_CHAN:slow
--- timeout: 14
--- response_body_like eval
qr/\A\Qdata: subscribe,$::Chan:slow,1\E\n\n(?:\Qdata: message,$::Chan:slow,\E\d+:x{1000}\n\n){200}\Qdata: message,$::Chan:slow,slow reader: ok\E\n\n$::Lost\z/
--- error_log eval
qr/\[info\] .*redisgate: a stream's client reads too slowly, \d+ bytes not read, ending it/
--- no_error_log
[crit]



=== TEST 6: before a stream starts, plain JSON answers: 403 without the read scope, 400 without a channel
--- request eval
["GET /redis/$ENV{TEST_NGINX_INSTANCE}/subscribe/$::Chan:no?_token=$::WriteOnly",
 "POST /redis/$ENV{TEST_NGINX_INSTANCE}/psubscribe/$::Chan:no*?_token=$::WriteOnly\n[]",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/subscribe?_token=$RedisGate::Test::Tokens{READER}",
 "POST /redis/$ENV{TEST_NGINX_INSTANCE}/subscribe?_token=$RedisGate::Test::Tokens{READER}\n[]",
 "GET /redis/$ENV{TEST_NGINX_INSTANCE}/psubscribe/?_token=$RedisGate::Test::Tokens{ADMIN}"]
--- more_headers
Accept: text/event-stream
--- error_code eval
[403, 403, 400, 400, 400]
--- response_headers
Content-Type: application/json
--- response_body eval
['{"error":"Forbidden: this API key\'s scopes do not allow \'subscribe\'"}',
 '{"error":"Forbidden: this API key\'s scopes do not allow \'psubscribe\'"}',
 '{"error":"ERR subscribe needs at least one channel: /subscribe/<name>"}',
 '{"error":"ERR subscribe needs at least one channel: /subscribe/<name>"}',
 '{"error":"ERR psubscribe needs at least one pattern: /psubscribe/<name>"}']



=== TEST 7: a client that leaves: the stream had its subscribe line
--- request
GET /redis/$TEST_NGINX_INSTANCE/subscribe/$TEST_NGINX_CHAN:closing
--- timeout: 3
--- abort
--- response_body eval
"data: subscribe,$::Chan:closing,1\n\n"
--- wait: 0.2
--- no_error_log
[crit]



=== TEST 8: ... and its listener left: unsubscribed, and the subscriber connection closed
--- init
# (the sentinel of t/run-tests has a subscriber connection of its own)
my @left;
my $gone = wait_for(20, sub {
    my ($n, $list) = redis_call($Main,
        ['PUBSUB', 'NUMSUB', "$Chan:closing"], ['CLIENT', 'LIST']);
    @left = grep { /\b(?:sub|psub)=[1-9]|\bcmd=p?(?:un)?subscribe\b/
                   && !/\bname=sentinel-/ } split /\n/, $list;
    $n->[1] == 0 && !@left;
});
Test::More::ok($gone, 'TEST 8: no subscription and no subscriber connection left in Redis')
    or Test::More::diag("left: @left");
--- request
GET /redis/$TEST_NGINX_INSTANCE/pubsub/numsub/$TEST_NGINX_CHAN:closing
--- response_body eval
qq{{"result":["$::Chan:closing",0]}}



=== TEST 9: an instance nothing listens on: a 200 stream with the error line only, at once (not after redisgate_timeout, 5s here)
--- http_config
    log_format streamtime 'STREAMTIME $request_uri $status $request_time';
--- config
    location /redis/ {
        access_log logs/error.log streamtime;
        redisgate;
    }
--- request
GET /redis/$TEST_NGINX_CLOSED_INSTANCE/subscribe/$TEST_NGINX_CHAN:nowhere
--- timeout: 14
--- response_headers
Content-Type: text/event-stream
--- response_body eval
"data: error,Redis unavailable: could not connect\n\n"
--- error_log eval
[qr/could not connect to Redis at redis:\/\/127\.0\.0\.1:\d+\/0: Connection refused/,
 qr/STREAMTIME \/redis\/\S+\/subscribe\/\S+ 200 [01]\.\d+$/]
--- no_error_log
[crit]



=== TEST 10: MONITOR: "OK" once Redis is in monitor mode, then what the instance's database sees (another database's commands are not shown), then Redis gone: the error line at once
--- config
    location /redis/ {
        redisgate_monitor on;
        redisgate;
    }
--- init
restart_spare();
helper(sub {
    wait_for(30, sub {
        redis_call($Spare, ['CLIENT', 'LIST']) =~ /\bcmd=monitor\b/
    }) or die "never monitored\n";
    redis_call($Spare, ['SET', "$Chan:mon", "v 1"]);
    redis_call($Spare, ['SELECT', '5'], ['SET', "$Chan:hidden", 'secret']);
    redis_call($Spare, ['GET', "$Chan:mon"]);
    stop_spare();
});
--- request
GET /redis/$TEST_NGINX_SPARE_INSTANCE/monitor
--- timeout: 14
--- response_headers
Content-Type: text/event-stream
--- response_body_like eval
my $at = qr/data: \d+\.\d+ \[0 127\.0\.0\.1:\d+\] /;
qr/\Adata: "OK"\n\n$at"SET" "\Q$::Chan\E:mon" "v 1"\n\n(?:$at"SELECT" "5"\n\n)?$at"GET" "\Q$::Chan\E:mon"\n\n(?:$at"(?i:shutdown)"[^\n]*\n\n)?$::Lost\z/
--- no_error_log
[crit]
secret



=== TEST 11: MONITOR is refused before a stream starts: not enabled (403), a key without the admin scope (403), an argument (400)
--- config
    location /redis/ {
        redisgate;
    }
    location /on/ {
        redisgate_monitor on;
        redisgate;
    }
--- request eval
["GET /redis/$ENV{TEST_NGINX_INSTANCE}/monitor?_token=$RedisGate::Test::Tokens{ADMIN}",
 "GET /on/$ENV{TEST_NGINX_INSTANCE}/monitor?_token=$RedisGate::Test::Tokens{READER}",
 "POST /on/$ENV{TEST_NGINX_INSTANCE}/monitor/extra?_token=$RedisGate::Test::Tokens{ADMIN}\n[]"]
--- more_headers
Accept: text/event-stream
--- error_code eval
[403, 403, 400]
--- response_headers
Content-Type: application/json
--- response_body eval
['{"error":"Forbidden: MONITOR is not enabled on this server"}',
 '{"error":"Forbidden: this API key\'s scopes do not allow \'monitor\'"}',
 '{"error":"ERR wrong number of arguments for \'monitor\' command"}']
