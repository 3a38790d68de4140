package RedisGate::Test;

# Copyright (C) RedisGate authors
#
# What every RedisGate Test::Nginx suite shares: the module, two
# organizations with an instance each (databases 1 and 2 of the test
# Redis), their keys, and a default location.  Load it after
# Test::Nginx::Socket.  A block gets, unless it says otherwise:
#   main_config   load_module of the module under test (always)
#   http_config   the instances and keys below, before its own
#   config        location /redis/ { redisgate; } ($DefaultConfig)
#   more_headers  Authorization: Bearer <the admin key>; $TEST_NGINX_*
#                 variables in more_headers are expanded here.
#   no_error_log  [alert], [emerg] and "exited on signal", added to its own
#                 (alert         a block's own alert: allowed, no other)

use strict;
use warnings;

use Digest::SHA qw(sha256_hex);
use IO::Socket::INET;
use POSIX ();
use FindBin ();
use Test::Nginx::Socket ();

our %Tokens = (
    ADMIN  => 'rg_test_admin_5f2c8e0d9b7a41c6',
    WRITER => 'rg_test_writer_a83b1f6e22d04c9e',
    READER => 'rg_test_reader_0c6d4b2a97e8f315',
    GLOBEX => 'rg_test_globex_7e19d3c5b6a2f048',
);

$ENV{TEST_NGINX_INSTANCE} = '123e4567-e89b-12d3-a456-426614174000';
$ENV{TEST_NGINX_GLOBEX_INSTANCE} = '9b2f6c1e-3d4a-4e5b-8c7d-0a1b2c3d4e5f';
$ENV{TEST_NGINX_UNIX_INSTANCE} = '5a1d0c3b-7e6f-4a2b-9c8d-1e0f2a3b4c5d';

for my $name (keys %Tokens) {
    $ENV{"TEST_NGINX_${name}_TOKEN"} = $Tokens{$name};
    $ENV{"TEST_NGINX_${name}_HASH"} = sha256_hex($Tokens{$name});
}

for my $var (qw(TEST_NGINX_REDISGATE_MODULE TEST_NGINX_REDIS_PORT
                TEST_NGINX_REDIS_DIR))
{
    die "$var is not set: run the suites with 'make test' (t/run-tests)\n"
        unless defined $ENV{$var};
}

our $HttpConfig = <<'_EOC_';
    redisgate_instance $TEST_NGINX_INSTANCE
        redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/1 organization=acme;
    redisgate_instance $TEST_NGINX_GLOBEX_INSTANCE
        redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/2 organization=globex;
    redisgate_instance $TEST_NGINX_UNIX_INSTANCE
        unix://$TEST_NGINX_REDIS_DIR/redis.sock?db=3 organization=acme;

    redisgate_key sha256:$TEST_NGINX_ADMIN_HASH id=acme-admin
        organization=acme scopes=read,write,admin;
    redisgate_key sha256:$TEST_NGINX_WRITER_HASH id=acme-writer
        organization=acme;
    redisgate_key sha256:$TEST_NGINX_READER_HASH id=acme-reader
        organization=acme scopes=read;
    redisgate_key sha256:$TEST_NGINX_GLOBEX_HASH id=globex-admin
        organization=globex scopes=read,write,admin;
_EOC_

# TLS: t/run-tests makes the test certificates (tools/gen-test-certs) in
# $TEST_NGINX_CERT_DIR and runs a Redis that speaks only TLS on
# $TEST_NGINX_TLS_PORT.  With TEST_NGINX_REDIS_TLS=1, the two instances on
# TCP above are on that Redis instead, over rediss:// (t/run-tests runs the
# protocol suites a second time so).
our $Tls = $ENV{TEST_NGINX_REDIS_TLS} ? 1 : 0;

if ($Tls) {
    for my $var (qw(TEST_NGINX_TLS_PORT TEST_NGINX_CERT_DIR)) {
        die "TEST_NGINX_REDIS_TLS=1 needs $var: run the suites with"
            . " t/run-tests\n" unless defined $ENV{$var};
    }
    my $n = $HttpConfig =~ s{\bredis://127\.0\.0\.1:\$TEST_NGINX_REDIS_PORT/}
                             {rediss://127.0.0.1:\$TEST_NGINX_TLS_PORT/}g;
    die "TEST_NGINX_REDIS_TLS=1: expected 2 instances on TCP to move to"
        . " rediss://, found $n\n" unless $n == 2;
    $HttpConfig .= "\n    redisgate_ssl_trusted_certificate"
        . " \$TEST_NGINX_CERT_DIR/ca.crt;\n";
}

# debug lines exist only in nginx built --with-debug (skip_eval on them)
our $Debug = do {
    my $bin = $ENV{TEST_NGINX_BINARY} // 'nginx';
    my $v = `$bin -V 2>&1`;
    $v =~ /--with-debug/ ? 1 : 0;
};

# a test file may set these before run_tests()
our $DefaultConfig = "location /redis/ { redisgate; }\n";
our $ExtraHttpConfig = '';

# a test file's own nginx.conf instances: for each NAME => URL, the id
# PREFIX-0000-4000-8000-<rank> (PREFIX: 8 hex digits; rank in the order of
# the names) in $TEST_NGINX_<NAME>_INSTANCE, and its redisgate_instance line
# (organization acme) in $ExtraHttpConfig
sub add_instances {
    my ($prefix, %inst) = @_;
    my $n = 0;
    for my $name (sort keys %inst) {
        my $id = sprintf '%s-0000-4000-8000-%012d', $prefix, ++$n;
        $ENV{"TEST_NGINX_${name}_INSTANCE"} = $id;
        $ExtraHttpConfig .=
            "    redisgate_instance $id $inst{$name} organization=acme;\n";
    }
}

sub expand {
    my $text = shift;
    $text =~ s/\$(TEST_NGINX_[_A-Z0-9]+)/
        defined $ENV{$1} ? $ENV{$1} : die "$1 is not set\n"/ge;
    return $text;
}

Test::Nginx::Socket::add_block_preprocessor(sub {
    my $block = shift;

    $block->set_value('main_config',
        "load_module $ENV{TEST_NGINX_REDISGATE_MODULE};\n"
        . ($block->main_config // ''));

    if (!$block->no_default_keys) {
        $block->set_value('http_config',
            $HttpConfig . $ExtraHttpConfig . ($block->http_config // ''));
    }

    if (!defined $block->config) {
        $block->set_value('config', $DefaultConfig);
    }

    # no block may crash a worker or raise an alert, whatever it tests;
    # one that tests an alert names it ("--- alert"), and allows no other
    my @never = ('[alert]', '[emerg]', 'exited on signal');
    my $alert = $block->alert;
    my $nel = $block->no_error_log;

    if (defined $alert) {
        $alert =~ s/^\s+|\s+$//g;
        $never[0] = qr/\[alert\](?!.*\Q$alert\E)/;

        # patterns from here on, not lines of text
        $nel = !defined $nel ? []
             : ref $nel ? $nel
             : [grep { length } split /\n/, $nel];
    }

    if (!defined $nel) {
        $block->set_value('no_error_log', join("\n", @never) . "\n");

    } elsif (ref $nel eq 'ARRAY') {
        $block->set_value('no_error_log', [@$nel, @never]);

    } elsif (ref $nel) {
        $block->set_value('no_error_log', [$nel, @never]);

    } else {
        $block->set_value('no_error_log', $nel . join("\n", @never) . "\n");
    }

    if (!defined $block->more_headers) {
        $block->set_value('more_headers',
            "Authorization: Bearer $Tokens{ADMIN}\n");

    } elsif (!ref $block->more_headers) {
        $block->set_value('more_headers', expand($block->more_headers));
    }
});

# Spare servers for fault tests, on ports picked once per test file and
# exported as $TEST_NGINX_SPARE_PORT and $TEST_NGINX_SILENT_PORT.

sub free_port {
    my $s = IO::Socket::INET->new(Listen => 1, LocalAddr => '127.0.0.1',
                                  LocalPort => 0, ReuseAddr => 1)
        or die "no free port: $!\n";
    my $port = $s->sockport;
    close $s;
    return $port;
}

$ENV{TEST_NGINX_SPARE_PORT} //= free_port();
$ENV{TEST_NGINX_SILENT_PORT} //= free_port();

our @SilentPids;

my $spare_dir = ($ENV{TEST_NGINX_REDIS_DIR} // '/tmp') . "/spare-$$";

sub port_open {
    my $port = shift;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $port, Timeout => 1);
    return 0 unless $s;
    close $s;
    return 1;
}

# a real redis-server on the spare port; returns when it accepts
sub start_spare_redis {
    my $port = $ENV{TEST_NGINX_SPARE_PORT};
    mkdir $spare_dir;
    system('redis-server', '--port', $port, '--bind', '127.0.0.1',
           '--save', '', '--appendonly', 'no', '--dir', $spare_dir,
           '--daemonize', 'yes', '--pidfile', "$spare_dir/redis.pid",
           '--logfile', "$spare_dir/redis.log") == 0
        or die "cannot start redis-server\n";
    for (1 .. 100) {
        return if port_open($port);
        select(undef, undef, undef, 0.05);
    }
    die "the spare redis-server does not accept connections\n";
}

# stops the spare redis-server (only the one this file started)
sub stop_spare_redis {
    open my $fh, '<', "$spare_dir/redis.pid" or return;
    my $pid = <$fh>;
    close $fh;
    chomp $pid;
    kill 'TERM', $pid;
    for (1 .. 100) {
        last unless kill 0, $pid;
        select(undef, undef, undef, 0.05);
    }
    unlink "$spare_dir/redis.pid";
}

# a TCP server that accepts and reads but never answers, for 10 seconds
sub start_silent_server {
    my $listen = IO::Socket::INET->new(
        Listen => 64, LocalAddr => '127.0.0.1',
        LocalPort => $ENV{TEST_NGINX_SILENT_PORT}, ReuseAddr => 1)
        or die "cannot listen on the silent port: $!\n";
    my $pid = fork();
    die "fork: $!\n" unless defined $pid;
    if ($pid) {
        close $listen;
        push @SilentPids, $pid;
        return;
    }
    my @held;
    my $deadline = time + 10;
    $listen->blocking(0);
    while (time < $deadline) {
        if (my $c = $listen->accept) { push @held, $c }
        for my $c (@held) { my $buf; sysread($c, $buf, 65536) }
        select(undef, undef, undef, 0.02);
    }
    POSIX::_exit(0);
}

# Redis servers that speak only TLS, of this test file's own
# (redisgate_start_redis_tls of tools/lib.sh, with the certificates of
# $TEST_NGINX_CERT_DIR): start_tls_redis(NAME, OPTION...) starts one with
# more redis-server OPTIONs and returns its port.  A later
# --tls-cert-file/--tls-key-file pair replaces server.crt/server.key.  All
# are stopped at the end of the file.
our %TlsRedis;

sub start_tls_redis {
    my ($name, @opts) = @_;
    my $port = free_port();
    my $dir = "$spare_dir/tls-$name";
    mkdir $spare_dir;
    system('bash', '-c', '. "$0" && redisgate_start_redis_tls "$@"',
           "$FindBin::Bin/../tools/lib.sh", $dir, $port,
           $ENV{TEST_NGINX_CERT_DIR} // die("TEST_NGINX_CERT_DIR is not set\n"),
           @opts) == 0
        or die "cannot start the TLS redis-server $name\n";
    $TlsRedis{$name} = $dir;
    return $port;
}

sub stop_tls_redis {
    my @pidfiles = map { "$_/redis.pid" } values %TlsRedis;
    return unless @pidfiles;
    system('bash', '-c', '. "$0" && for f; do redisgate_stop_pidfile "$f"; done',
           "$FindBin::Bin/../tools/lib.sh", @pidfiles);
    %TlsRedis = ();
}

# redis-cli against a TLS Redis on 127.0.0.1:PORT, trusting the test CA and
# with the client certificate at hand (for tls-auth-clients yes): its
# output, without the last newline
sub tls_redis_cli {
    my ($port, @args) = @_;
    my $certs = $ENV{TEST_NGINX_CERT_DIR};
    open my $fh, '-|', 'redis-cli', '--tls', '--cacert', "$certs/ca.crt",
         '--cert', "$certs/client.crt", '--key', "$certs/client.key",
         '-h', '127.0.0.1', '-p', $port, @args
        or die "cannot run redis-cli: $!\n";
    my $out = do { local $/; <$fh> } // '';
    close $fh;
    $out =~ s/\n\z//;
    return $out;
}

# a peer that a real Redis cannot play (t/lib/peers.mjs, on node):
# start_peer(KIND, ARG...) returns its port once it accepts; it is stopped
# at the end of the file
# one GET through the block's nginx (from an init section) with a bearer
# token (the ADMIN key's by default); dies unless it is 200
sub http_get {
    my ($path, $token) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => Test::Nginx::Socket::server_port(),
                                  Timeout => 10)
        or die "cannot connect to nginx: $!\n";
    print $s "GET $path HTTP/1.0\r\nHost: localhost\r\n"
        . "Authorization: Bearer " . ($token // $Tokens{ADMIN}) . "\r\n\r\n";
    my $answer = do { local $/; <$s> } // '';
    close $s;
    $answer =~ m{^HTTP/1\.\d 200 } or die "GET $path: $answer\n";
    return $answer;
}

our @PeerPids;

sub start_peer {
    my ($kind, @args) = @_;
    my $port = free_port();
    mkdir $spare_dir;
    my $pid = fork();
    die "fork: $!\n" unless defined $pid;
    if (!$pid) {
        open STDOUT, '>>', "$spare_dir/peers.log";
        open STDERR, '>&', \*STDOUT;
        exec('node', "$FindBin::Bin/lib/peers.mjs", $port, $kind, @args)
            or POSIX::_exit(127);
    }
    push @PeerPids, $pid;
    for (1 .. 200) {
        return $port if port_open($port);
        select(undef, undef, undef, 0.05);
    }
    die "the $kind peer does not accept connections\n";
}

# tools/redisgate-admin against the test key store: (name => value) of
# its NAME=VALUE output, for create commands
sub admin {
    my @args = @_;
    my $conninfo = $ENV{TEST_NGINX_PG_CONNINFO}
        // die "TEST_NGINX_PG_CONNINFO is not set\n";
    my $top = "$FindBin::Bin/..";
    # its "shown only once" notice goes to stderr: not into the test output
    open my $stderr, '>&', \*STDERR or die "dup: $!\n";
    open STDERR, '>', '/dev/null' or die "/dev/null: $!\n";
    my $ok = open my $fh, '-|', "$top/tools/redisgate-admin", '--db',
                  $conninfo, @args;
    open STDERR, '>&', $stderr or die "dup: $!\n";
    $ok or die "cannot run redisgate-admin: $!\n";
    my %out;
    while (my $line = <$fh>) {
        $out{$1} = $2 if $line =~ /^(\w+)=(.*)$/;
    }
    close $fh or die "redisgate-admin @args failed\n";
    return \%out;
}

# a statement run as is in the key store (for what the CLI will not do)
sub psql {
    my $sql = shift;
    my $out = `psql -X -q -At -d '$ENV{TEST_NGINX_PG_CONNINFO}' -c "$sql"`;
    die "psql failed: $sql\n" if $?;
    chomp $out;
    return $out;
}

sub stop_pg {
    system('bash', '-c', ". '$FindBin::Bin/../tools/pg.sh'"
                         . " && redisgate_stop_pg '$ENV{TEST_NGINX_PG_DIR}'");
}

sub start_pg {
    system('bash', '-c', ". '$FindBin::Bin/../tools/pg.sh'"
                         . " && redisgate_start_pg '$ENV{TEST_NGINX_PG_DIR}'"
                         . " '$ENV{TEST_NGINX_PG_PORT}'") == 0
        or die "cannot start the test key store\n";
}

END {
    stop_spare_redis();
    stop_tls_redis();
    kill 'TERM', @SilentPids if @SilentPids;
    kill 'TERM', @PeerPids if @PeerPids;
    rmdir $spare_dir;
}

1;
