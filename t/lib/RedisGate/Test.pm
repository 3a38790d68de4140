package RedisGate::Test;

# Copyright (C) RedisGate authors
#
# What every RedisGate Test::Nginx suite shares: the module, two
# organizations with an instance each (databases 1 and 2 of the test
# Redis), their keys, and a default location.  Load it after
# Test::Nginx::Socket.  A block gets, unless it says otherwise:
#   main_config   load_module of the module under test (always)
#   http_config   the instances and keys below, before its own
#   config        location /redis/ { redisgate; }
#   more_headers  Authorization: Bearer <the admin key>; $TEST_NGINX_*
#                 variables in more_headers are expanded here.

use strict;
use warnings;

use Digest::SHA qw(sha256_hex);
use IO::Socket::INET;
use Test::Nginx::Socket ();

our %Tokens = (
    ADMIN  => 'rg_test_admin_5f2c8e0d9b7a41c6',
    WRITER => 'rg_test_writer_a83b1f6e22d04c9e',
    READER => 'rg_test_reader_0c6d4b2a97e8f315',
    GLOBEX => 'rg_test_globex_7e19d3c5b6a2f048',
);

$ENV{TEST_NGINX_INSTANCE} = '123e4567-e89b-12d3-a456-426614174000';
$ENV{TEST_NGINX_GLOBEX_INSTANCE} = '9b2f6c1e-3d4a-4e5b-8c7d-0a1b2c3d4e5f';

for my $name (keys %Tokens) {
    $ENV{"TEST_NGINX_${name}_TOKEN"} = $Tokens{$name};
    $ENV{"TEST_NGINX_${name}_HASH"} = sha256_hex($Tokens{$name});
}

for my $var (qw(TEST_NGINX_REDISGATE_MODULE TEST_NGINX_REDIS_PORT)) {
    die "$var is not set: run the suites with 'make test' (t/run-tests)\n"
        unless defined $ENV{$var};
}

our $HttpConfig = <<'_EOC_';
    redisgate_instance $TEST_NGINX_INSTANCE
        redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/1 organization=acme;
    redisgate_instance $TEST_NGINX_GLOBEX_INSTANCE
        redis://127.0.0.1:$TEST_NGINX_REDIS_PORT/2 organization=globex;

    redisgate_key sha256:$TEST_NGINX_ADMIN_HASH id=acme-admin
        organization=acme scopes=read,write,admin;
    redisgate_key sha256:$TEST_NGINX_WRITER_HASH id=acme-writer
        organization=acme;
    redisgate_key sha256:$TEST_NGINX_READER_HASH id=acme-reader
        organization=acme scopes=read;
    redisgate_key sha256:$TEST_NGINX_GLOBEX_HASH id=globex-admin
        organization=globex scopes=read,write,admin;
_EOC_

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
            $HttpConfig . ($block->http_config // ''));
    }

    if (!defined $block->config) {
        $block->set_value('config', "location /redis/ { redisgate; }\n");
    }

    if (!defined $block->more_headers) {
        $block->set_value('more_headers',
            "Authorization: Bearer $Tokens{ADMIN}\n");

    } elsif (!ref $block->more_headers) {
        $block->set_value('more_headers', expand($block->more_headers));
    }
});

# a command sent straight to the test Redis (db 0 unless given), for setup
sub redis {
    my ($db, @args) = @_;
    my $sock = IO::Socket::INET->new(
        PeerAddr => '127.0.0.1', PeerPort => $ENV{TEST_NGINX_REDIS_PORT},
        Timeout => 3) or die "cannot reach the test Redis: $!\n";
    my $out = '';
    for my $cmd (['SELECT', $db], [@args]) {
        $out .= '*' . @$cmd . "\r\n";
        $out .= '$' . length($_) . "\r\n$_\r\n" for @$cmd;
    }
    print $sock $out;
    my $reply = '';
    # two replies: +OK for SELECT, then the command's
    my $lines = 0;
    while ($lines < 2 && defined(my $line = <$sock>)) {
        $reply .= $line;
        $lines++ if $line =~ /^[+\-:]/ || $line =~ /^\$-1/;
        if ($line =~ /^\$(\d+)/) { $reply .= <$sock>; $lines++ }
    }
    close $sock;
    return $reply;
}

1;
