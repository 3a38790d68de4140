# Copyright (C) RedisGate authors
#
# A small, self-contained test runner that accepts test files written for
# the CPAN module Test::Nginx::Socket.  It implements only the subset that
# is documented in t/compat/README.md and is meant to be used only when the
# real Test::Nginx is not installed:
#
#     prove -I t/compat -r t
#
# Built on Test::Base (data-driven blocks, filters, ONLY/SKIP/LAST) and
# core Perl modules only.

package Test::Nginx::Socket;

# If the real Test::Nginx::Socket is installed anywhere else in @INC, load
# it instead and cut the rest of this file off with a source filter, so
# that `-I t/compat` is harmless where the CPAN module exists.
# TEST_NGINX_USE_COMPAT=1 forces this runner.
our $RealModule;
1;
BEGIN {
    if (!$ENV{TEST_NGINX_USE_COMPAT}) {
        require Cwd;
        my $me = Cwd::abs_path(__FILE__) // '';
        for my $dir (@INC) {
            next if ref $dir;
            my $f = "$dir/Test/Nginx/Socket.pm";
            next unless -f $f;
            my $abs = Cwd::abs_path($f);
            next if !defined $abs || $abs eq $me;
            $RealModule = $abs;
            last;
        }
        if ($RealModule) {
            do $RealModule
                or die "cannot load $RealModule: " . ($@ || $!) . "\n";
            require Filter::Util::Call;
            Filter::Util::Call::filter_add(sub { 0 });
        }
    }
}

use strict;
use warnings;

use Test::Base -base;

use Config ();
use Cwd ();
use Fcntl qw(:flock SEEK_SET);
use File::Path ();
use File::Spec ();
use IO::Select ();
use IO::Socket::INET ();
use POSIX ();
use Time::HiRes ();

our $VERSION = '0.01';

# lets test files (and our own selftest) tell this runner from the CPAN one
our $RedisGateCompat = 1;

our @EXPORT = qw(
    run_tests repeat_each no_shuffle no_long_string no_root_location
    log_level worker_connections workers master_on master_off
    master_process_enabled add_block_preprocessor env_to_nginx
    server_port server_port_for_client server_addr server_root html_dir
    config_preamble bail_out done_testing
    $ServerPort $ServerPortForClient $ServerAddr $ServRoot $HtmlDir
    $NginxBinary $NginxVersion $NginxRawVersion $LogLevel
);

# ---------------------------------------------------------------------------
# settings

our $RepeatEach           = 1;
our $NoRootLocation       = 0;
our $LogLevel             = $ENV{TEST_NGINX_LOG_LEVEL} || 'debug';
our $WorkerConnections    = 1024;
our $Workers              = 1;
our $MasterProcessEnabled = 0;
our @EnvToNginx;
our $ConfigPreamble       = '';
our @BlockPreprocessors;
our $Timeout              = 3;
our $ServerAddr           = '127.0.0.1';
our $Verbose              = $ENV{TEST_NGINX_VERBOSE};
our $NoClean              = $ENV{TEST_NGINX_NO_CLEAN};
our $ForceRestart         = $ENV{TEST_NGINX_FORCE_RESTART_ON_TEST};
# nginx under valgrind takes seconds to start on a busy machine
our $StartupTimeout       = $ENV{TEST_NGINX_STARTUP_TIMEOUT} || 5;

our ($NginxBinary, $NginxRawVersion, $NginxVersion, %NginxWithout);
our ($ServerPort, $ServerPortForClient, $ServRoot, $HtmlDir);

my ($ServRootLock, $ErrLog, $NginxPid, $RunningConf);
my $MainPid = $$;

sub _now () { Time::HiRes::time() }

# ---------------------------------------------------------------------------
# nginx binary and version

sub _find_nginx {
    return $ENV{TEST_NGINX_BINARY}
        if defined $ENV{TEST_NGINX_BINARY} && length $ENV{TEST_NGINX_BINARY};
    for my $dir (split /:/, $ENV{PATH} // '') {
        next unless length $dir;
        my $p = "$dir/nginx";
        return $p if -f $p && -x _;
    }
    return '/usr/sbin/nginx';
}

sub _nginx_info {
    my $pid = open(my $fh, '-|');
    return unless defined $pid;
    if (!$pid) {
        open STDERR, '>&', \*STDOUT;
        no warnings q(exec);
        exec {$NginxBinary} $NginxBinary, '-V';
        POSIX::_exit(127);
    }
    local $/;
    my $out = <$fh> // '';
    close $fh;
    if ($out =~ m{nginx version: \S+?/(\d+(?:\.\d+)*)}) {
        $NginxRawVersion = $1;
        my @v = (split(/\./, $1), 0, 0);
        $NginxVersion = sprintf('%d.%03d%03d', @v[0 .. 2]);
    }
    $NginxWithout{$1} = 1 while $out =~ /--without-http_(\w+?)_module/g;
}

# ---------------------------------------------------------------------------
# port and server root (both chosen so that concurrent runs do not collide)

sub _port_is_free {
    my $port = shift;
    my $s = IO::Socket::INET->new(
        LocalAddr => '0.0.0.0', LocalPort => $port, Proto => 'tcp',
        Listen => 1, ReuseAddr => 1,
    ) or return 0;
    close $s;
    return 1;
}

sub _pick_port {
    for (1 .. 200) {
        my $p = 10000 + int(rand(20000));
        return $p if _port_is_free($p);
    }
    my $s = IO::Socket::INET->new(LocalAddr => '0.0.0.0', LocalPort => 0,
                                  Proto => 'tcp', Listen => 1)
        or die "Test::Nginx::Socket: cannot find a free TCP port: $!\n";
    my $p = $s->sockport;
    close $s;
    return $p;
}

sub _lock_dir {
    my $dir = shift;
    File::Path::make_path($dir) unless -d $dir;
    open(my $fh, '<', $dir) or return;
    flock($fh, LOCK_EX | LOCK_NB) or return;
    return $fh;
}

sub _setup_servroot {
    if (defined $ENV{TEST_NGINX_SERVROOT} && length $ENV{TEST_NGINX_SERVROOT}) {
        $ServRoot = File::Spec->rel2abs($ENV{TEST_NGINX_SERVROOT});
        $ServRootLock = _lock_dir($ServRoot)
            or die "Test::Nginx::Socket: server root $ServRoot is not "
                 . "accessible or in use by another test run\n";
    }
    else {
        my $base = Cwd::getcwd() . '/t/servroot';
        for my $n ('', map { "_$_" } 2 .. 20) {
            if ($ServRootLock = _lock_dir("$base$n")) {
                $ServRoot = "$base$n";
                last;
            }
        }
        die "Test::Nginx::Socket: all of $base, ${base}_2 .. ${base}_20 are "
          . "in use; set TEST_NGINX_SERVROOT\n" unless $ServRoot;
    }
    $ServRoot =~ s{/+\z}{};
    $HtmlDir = "$ServRoot/html";
    $ErrLog  = "$ServRoot/logs/error.log";

    # only ever remove what this runner creates itself
    if (!$NoClean) {
        File::Path::remove_tree("$ServRoot/$_") for _servroot_entries();
    }
    File::Path::make_path(map { "$ServRoot/$_" } _servroot_entries());
}

sub _temp_dirs {
    my @d = ([client_body => 'client_body_temp'], [proxy => 'proxy_temp'],
             [fastcgi => 'fastcgi_temp'], [uwsgi => 'uwsgi_temp'],
             [scgi => 'scgi_temp']);
    return grep { !$NginxWithout{$_->[0]} } @d;
}

sub _servroot_entries { ('conf', 'logs', 'html', map { $_->[1] } _temp_dirs()) }

sub _set_port_env {
    $ENV{TEST_NGINX_PORT} = $ENV{TEST_NGINX_SERVER_PORT} = $ServerPort;
    $ServerPortForClient = $ServerPort;
}

$NginxBinary = _find_nginx();
_nginx_info();

$ServerPort = $ENV{TEST_NGINX_PORT} || $ENV{TEST_NGINX_SERVER_PORT}
              || _pick_port();
_set_port_env();
_setup_servroot();
$ENV{TEST_NGINX_SERVROOT} = $ServRoot;
$ENV{TEST_NGINX_HTML_DIR} = $HtmlDir;

# ---------------------------------------------------------------------------
# exported configuration functions

sub repeat_each {
    $RepeatEach = shift if @_;
    return $RepeatEach;
}

sub no_shuffle ()      { 1 }     # blocks always run in file order
sub no_long_string ()  { 1 }     # diagnostics are always plain Test::More
sub no_root_location () { $NoRootLocation = 1 }
sub master_on ()       { $MasterProcessEnabled = 1 }
sub master_off ()      { $MasterProcessEnabled = 0 }

sub master_process_enabled {
    $MasterProcessEnabled = shift if @_;
    return $MasterProcessEnabled;
}

sub log_level {
    $LogLevel = shift if @_;
    return $LogLevel;
}

sub worker_connections {
    $WorkerConnections = shift if @_;
    return $WorkerConnections;
}

sub workers {
    $Workers = shift if @_;
    return $Workers;
}

sub add_block_preprocessor {
    push @BlockPreprocessors, @_;
}

sub env_to_nginx {
    push @EnvToNginx, @_;
}

sub config_preamble {
    $ConfigPreamble = shift if @_;
    return $ConfigPreamble;
}

sub server_port {
    if (@_) {
        $ServerPort = shift;
        _set_port_env();
    }
    return $ServerPort;
}

sub server_port_for_client { $ServerPortForClient }

sub server_addr {
    $ServerAddr = shift if @_;
    return $ServerAddr;
}

sub server_root () { $ServRoot }
sub html_dir ()    { $HtmlDir }

sub bail_out { Test::More::BAIL_OUT(@_) }

# not exported by Test::Base; handy after run_tests() when no plan was given
sub done_testing { Test::More::done_testing(@_) }

# ---------------------------------------------------------------------------
# section access with $TEST_NGINX_* expansion

sub _bname {
    my $block = shift;
    my $name = $block->name;
    return defined $name && length $name ? $name : 'block ' . $block->seq_num;
}

sub _expand {
    my ($text, $where) = @_;
    return $text unless defined $text && !ref $text;
    $text =~ s{\$(TEST_NGINX_[_A-Z0-9]+)}{
        defined $ENV{$1} ? $ENV{$1}
            : die "$where: environment variable $1 is used but not "
                . "defined (export it before running the tests)\n"
    }ge;
    return $text;
}

sub _val {
    my ($block, $sec) = @_;
    return undef unless exists $block->{$sec};
    my $v = $block->{$sec};
    $v = $v->[0] if ref $v eq 'ARRAY';
    my $where = _bname($block) . " (--- $sec)";
    return [map { _expand($_, $where) } @$v] if ref $v eq 'ARRAY';
    return _expand($v, $where);
}

sub _has { exists $_[0]->{$_[1]} }

sub _idx {
    my ($v, $i) = @_;
    return ref $v eq 'ARRAY' ? $v->[$i] : $v;
}

sub _trim {
    my $s = shift;
    return undef unless defined $s;
    $s =~ s/\A\s+//;
    $s =~ s/\s+\z//;
    return $s;
}

sub _seconds {
    my ($v, $default) = @_;
    $v = _trim($v);
    return $default unless defined $v && length $v;
    return $1 / 1000 if $v =~ /^(\d+(?:\.\d+)?)ms$/;
    return $1 if $v =~ /^(\d+(?:\.\d+)?)s?$/;
    die "bad time value '$v'\n";
}

# expand $TEST_NGINX_* in the raw section text before Test::Base filters run,
# so that `--- request eval` and friends see the substituted text as well
sub _pre_expand {
    my $obj = Test::Base::default_object();
    for my $block (@{ $obj->block_list }) {
        next if $block->is_filtered;
        my $order = $block->{_section_order};
        $order = $order->[0] if ref $order eq 'ARRAY' && ref $order->[0];
        for my $sec (@{ $order || [] }) {
            my $v = $block->{$sec};
            next unless ref $v eq 'ARRAY';
            for (@$v) {
                $_ = _expand($_, _bname($block) . " (--- $sec)")
                    if defined && !ref;
            }
        }
    }
}

# ---------------------------------------------------------------------------
# nginx.conf generation and the nginx process

sub _indent {
    my ($text, $pad) = @_;
    return '' unless defined $text && $text =~ /\S/;
    $text =~ s/\s+\z//;
    $text =~ s/^(?=.)/$pad/mg;
    return "$text\n";
}

sub _build_conf {
    my $block = shift;
    my $level = _trim(_val($block, 'log_level')) || $LogLevel;
    my $c = "# generated by the RedisGate Test::Nginx::Socket compat runner\n";
    $c .= "user root;\n" if $> == 0;
    $c .= "worker_processes $Workers;\n";
    $c .= "daemon off;\n";
    $c .= 'master_process ' . ($MasterProcessEnabled ? 'on' : 'off') . ";\n";
    $c .= "error_log logs/error.log $level;\n";
    $c .= "pid logs/nginx.pid;\n";
    $c .= "env $_;\n" for @EnvToNginx;
    $c .= _indent(_val($block, 'main_config'), '');
    $c .= "\nevents {\n    worker_connections $WorkerConnections;\n}\n\n";
    $c .= "http {\n";
    $c .= "    access_log logs/access.log;\n";
    $c .= "    default_type text/plain;\n";
    $c .= "    keepalive_timeout 68;\n";
    $c .= "    $_->[0]_temp_path $_->[1];\n" for _temp_dirs();
    $c .= "\n" . _indent(_val($block, 'http_config'), '    ');
    $c .= "\n    server {\n";
    $c .= "        listen $ServerPort;\n";
    $c .= "        server_name localhost;\n";
    $c .= "        client_max_body_size 30M;\n";
    $c .= _indent(_expand($ConfigPreamble, 'config_preamble'), '        ');
    $c .= "\n" . _indent(_val($block, 'config'), '        ');
    $c .= "\n        location / {\n            root html;\n"
        . "            index index.html index.htm;\n        }\n"
        unless $NoRootLocation;
    $c .= "    }\n}\n";
    return $c;
}

sub _write_file {
    my ($path, $content) = @_;
    open(my $fh, '>', $path) or die "cannot write $path: $!\n";
    binmode $fh;
    print $fh $content;
    close $fh or die "cannot write $path: $!\n";
}

sub _slurp {
    my ($path, $offset) = @_;
    open(my $fh, '<', $path) or return '';
    binmode $fh;
    seek($fh, $offset, SEEK_SET) if $offset;
    local $/;
    return <$fh> // '';
}

sub _write_user_files {
    my $block = shift;
    my $spec = _val($block, 'user_files');
    return unless defined $spec;
    my @files;
    if (ref $spec eq 'ARRAY') {
        @files = map { [$_->[0], $_->[1]] } @$spec;
    }
    else {
        while ($spec =~ /^>>> (\S+)[^\n]*\n(.*?)(?=^>>> |\z)/msg) {
            push @files, [$1, $2];
        }
    }
    for my $f (@files) {
        my ($name, $content) = @$f;
        die _bname($block) . ": bad user_files name '$name'\n"
            if $name =~ m{(?:^|/)\.\.(?:/|$)} || $name =~ m{^/};
        my $path = "$HtmlDir/$name";
        (my $dir = $path) =~ s{/[^/]*\z}{};
        File::Path::make_path($dir) unless -d $dir;
        _write_file($path, $content // '');
    }
}

sub _exit_str {
    my $st = shift;
    return 'killed by signal ' . ($st & 127) if $st & 127;
    return 'exit code ' . ($st >> 8);
}

# reaps nginx if it has exited, so a stale pid is never signalled later
sub _nginx_alive {
    return 0 unless $NginxPid;
    return 1 if waitpid($NginxPid, POSIX::WNOHANG()) == 0;
    $NginxPid = $RunningConf = undef;
    return 0;
}

sub _start_nginx {
    my $conf = shift;
    _write_file("$ServRoot/conf/nginx.conf", $conf);
    unlink "$ServRoot/logs/nginx.pid";
    _write_file($ErrLog, '');
    my $stderr_log = "$ServRoot/logs/stderr.log";
    my $pid = fork;
    return "cannot fork: $!" unless defined $pid;
    if (!$pid) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>', $stderr_log;
        open STDERR, '>&', \*STDOUT;
        _set_pdeathsig();
        no warnings q(exec);
        exec {$NginxBinary} $NginxBinary, '-p', "$ServRoot/",
             '-c', "$ServRoot/conf/nginx.conf";
        print STDERR "cannot exec $NginxBinary: $!\n";
        POSIX::_exit(127);
    }
    $NginxPid = $pid;

    # nginx writes its pid file only after the listening sockets are open,
    # so waiting for it avoids probe connections showing up in error.log
    my $deadline = _now() + $StartupTimeout;
    while (_now() < $deadline) {
        if (waitpid($pid, POSIX::WNOHANG()) == $pid) {
            my $st = $?;
            $NginxPid = undef;
            my $err = _slurp($stderr_log);
            return "nginx failed to start (" . _exit_str($st)
                 . "): $NginxBinary -p $ServRoot/ -c conf/nginx.conf\n$err";
        }
        my $pidtxt = _slurp("$ServRoot/logs/nginx.pid");
        if ($pidtxt =~ /^(\d+)/ && $1 == $pid) {
            $RunningConf = $conf;
            return;
        }
        Time::HiRes::sleep(0.01);
    }
    _stop_nginx();
    return "nginx did not write its pid file within $StartupTimeout s";
}

# Linux only, best effort: have the kernel send SIGTERM to nginx should this
# test process be killed without running its END block (e.g. SIGKILL)
sub _set_pdeathsig {
    return unless $^O eq 'linux';
    my ($arch) = ($Config::Config{archname} // '') =~ /^(x86_64|aarch64)/
        or return;
    my $nr = { x86_64 => 157, aarch64 => 167 }->{$arch};   # SYS_prctl
    eval { syscall($nr, 1, 15) };                           # PR_SET_PDEATHSIG
}

sub _stop_nginx {
    return unless $NginxPid;
    my $pid = $NginxPid;
    $NginxPid = $RunningConf = undef;
    for my $step (['QUIT', 3], ['TERM', 3], ['KILL', 3]) {
        kill $step->[0], $pid;
        my $deadline = _now() + $step->[1];
        while (_now() < $deadline) {
            my $r = waitpid($pid, POSIX::WNOHANG());
            return if $r == $pid || $r == -1;
            Time::HiRes::sleep(0.01);
        }
    }
}

END {
    local $?;
    _stop_nginx() if $$ == $MainPid;
}

for my $sig (qw(INT TERM HUP PIPE)) {
    next if defined $SIG{$sig} && $SIG{$sig} ne '' && $SIG{$sig} ne 'DEFAULT';
    $SIG{$sig} = sub {
        _stop_nginx() if $$ == $MainPid;
        $SIG{$sig} = 'DEFAULT';
        kill $sig, $$;
    };
}

# ---------------------------------------------------------------------------
# HTTP client

sub _build_request {
    my ($block, $text, $mode) = @_;
    $text = '' unless defined $text;
    $text =~ s/\A\s+//;
    my ($line, $body) = split /\r?\n/, $text, 2;
    $line = '' unless defined $line;
    $body = _trim($body) // '';
    $line =~ s/\s+\z//;
    my @w = split /\s+/, $line;
    my $method = shift(@w) // 'GET';
    my $proto = (@w > 1 && $w[-1] =~ m{^HTTP/\d+(?:\.\d+)?$}) ? pop @w
              : 'HTTP/1.1';
    my $uri = join ' ', @w;

    my (@hdrs, %has);
    my $more = _val($block, 'more_headers');
    for my $l (split /\n/, $more // '') {
        next unless $l =~ /^\s*([^:\s][^:]*?)\s*:\s*(.*?)\s*$/;
        push @hdrs, [$1, $2];
        $has{lc $1} = $2;
    }

    my $req = "$method $uri $proto\r\n";
    $req .= "Host: localhost\r\n" unless exists $has{host};
    my $close;
    if (exists $has{connection}) {
        $close = lc($has{connection}) eq 'close';
    }
    elsif ($mode eq 'close') {
        $req .= "Connection: close\r\n" unless $proto eq 'HTTP/1.0';
        $close = 1;
    }
    else {
        $req .= "Connection: keep-alive\r\n" if $proto eq 'HTTP/1.0';
        $close = 0;
    }
    $req .= "$_->[0]: $_->[1]\r\n" for @hdrs;
    if ((length $body || $method =~ /^(?:POST|PUT|PATCH)$/)
        && !exists $has{'content-length'} && !exists $has{'transfer-encoding'})
    {
        $req .= 'Content-Length: ' . length($body) . "\r\n";
    }
    $req .= "\r\n$body";
    return { pieces => [$req], is_head => $method eq 'HEAD',
             until_eof => $close };
}

sub _collect_requests {
    my $block = shift;
    if (defined(my $p = _val($block, 'pipelined_requests'))) {
        my @l = ref $p eq 'ARRAY' ? @$p : ($p);
        return (1, map { _build_request($block, $l[$_],
                                        $_ == $#l ? 'close' : 'keep') } 0 .. $#l);
    }
    if (defined(my $r = _val($block, 'raw_request'))) {
        my @pieces = ref $r eq 'ARRAY' ? @$r : ($r);
        my $all = join '', @pieces;
        my $close = $all =~ /^Connection:\s*close\s*$/mi
            || ($all =~ m{\A\S+\s+\S+\s+HTTP/1\.0\r?\n}
                && $all !~ /^Connection:\s*keep-alive/mi);
        my $head = $all =~ /\A\s*HEAD\s/ ? 1 : 0;
        return (0, { pieces => \@pieces, is_head => $head,
                     until_eof => $close ? 1 : 0 });
    }
    if (defined(my $r = _val($block, 'request'))) {
        my @l = ref $r eq 'ARRAY' ? @$r : ($r);
        return (0, map { _build_request($block, $_, 'close') } @l);
    }
    return (0);
}

sub _send_all {
    my ($sock, $data, $timeout) = @_;
    my $sel = IO::Select->new($sock);
    my $off = 0;
    while ($off < length $data) {
        return 'timeout' unless $sel->can_write($timeout);
        my $n = syswrite($sock, $data, length($data) - $off, $off);
        if (!defined $n) {
            next if $!{EAGAIN} || $!{EINTR};
            return "send failed: $!";
        }
        $off += $n;
    }
    return;
}

sub _header {
    my ($res, $name) = @_;
    my @v = map { $_->[1] } grep { lc $_->[0] eq lc $name } @{ $res->{headers} || [] };
    return @v ? join(', ', @v) : undef;
}

# parse one response from the start of $buf; returns a hash with
# status/headers/body, `complete` and the number of bytes `consumed`
sub _parse_response {
    my ($buf, $is_head, $eof) = @_;
    my %r = (status => '', headers => [], body => '', complete => 0,
             consumed => 0);
    my $pos = 0;
    while (1) {
        my $rest = substr($buf, $pos);
        if ($rest !~ /\A(.*?)\r?\n\r?\n/s) {
            $r{status} = $1 if $rest =~ m{\AHTTP/\d+(?:\.\d+)?\s+(\d{3})};
            return \%r;
        }
        my $head   = $1;
        my $bstart = $pos + $+[0];
        my @lines  = split /\r?\n/, $head;
        my $sl     = shift(@lines) // '';
        if ($sl !~ m{\AHTTP/\d+(?:\.\d+)?\s+(\d{3})(?:\s|\z)}) {
            $r{body} = $rest;
            $r{complete} = $eof;
            $r{consumed} = length $buf;
            $r{error} = "bad status line: $sl";
            return \%r;
        }
        my $code = $1;
        my @h;
        for (@lines) {
            if (/^([^:\s][^:]*?)\s*:\s*(.*?)\s*$/) { push @h, [$1, $2] }
            elsif (/^\s+(.*?)\s*$/ && @h) { $h[-1][1] .= " $1" }
        }
        if ($code =~ /^1/ && $code != 101) {    # skip interim responses
            $pos = $bstart;
            next;
        }
        @r{qw(status headers)} = ($code, \@h);
        my $te = _header(\%r, 'Transfer-Encoding');
        my $cl = _header(\%r, 'Content-Length');
        if ($is_head || $code =~ /^(?:1|204|304)/) {
            @r{qw(complete consumed)} = (1, $bstart);
        }
        elsif (defined $te && $te =~ /chunked/i) {
            my $p = $bstart;
            while (1) {
                pos($buf) = $p;
                last unless $buf =~ /\G([0-9a-fA-F]+)[^\r\n]*\r?\n/gc;
                my ($size, $d) = (hex $1, pos($buf));
                if ($size == 0) {
                    @r{qw(complete consumed)} = (1, pos($buf))
                        if $buf =~ /\G(?:[^\r\n]+\r?\n)*\r?\n/gc;
                    last;
                }
                if (length($buf) - $d < $size) {
                    $r{body} .= substr($buf, $d);
                    last;
                }
                $r{body} .= substr($buf, $d, $size);
                pos($buf) = $d + $size;
                last unless $buf =~ /\G\r?\n/gc;
                $p = pos($buf);
            }
        }
        elsif (defined $cl && $cl =~ /^\s*(\d+)/) {
            my $len = $1;
            $r{body} = substr($buf, $bstart, $len);
            @r{qw(complete consumed)} = (1, $bstart + $len)
                if length($buf) - $bstart >= $len;
        }
        else {
            $r{body} = substr($buf, $bstart);
            @r{qw(complete consumed)} = ($eof ? 1 : 0, length $buf);
        }
        return \%r;
    }
}

sub _read_response {
    my ($sock, $bufref, $rq, $timeout) = @_;
    my $sel  = IO::Select->new($sock);
    my $hard = _now() + ($timeout * 10 > 30 ? $timeout * 10 : 30);
    my ($eof, $timed_out, $err) = (0, 0, undef);
    while (1) {
        my $res = _parse_response($$bufref, $rq->{is_head}, 0);
        last if $res->{complete} && !$rq->{until_eof};
        # after a complete response we only wait (briefly) for the close,
        # which guarantees nginx has finished logging the request
        my $wait = $res->{complete} && $timeout > 1 ? 1 : $timeout;
        my $left = $hard - _now();
        $wait = $left if $left < $wait;
        if ($wait <= 0 || !$sel->can_read($wait)) {
            $timed_out = 1 unless $res->{complete};
            last;
        }
        my $n = sysread($sock, my $chunk, 65536);
        if (!defined $n) {
            next if $!{EAGAIN} || $!{EINTR};
            ($err, $eof) = ("recv failed: $!", 1);
            last;
        }
        if ($n == 0) {
            $eof = 1;
            last;
        }
        $$bufref .= $chunk;
    }
    my $res = _parse_response($$bufref, $rq->{is_head}, $eof);
    $$bufref = $res->{complete} ? substr($$bufref, $res->{consumed}) : '';
    $res->{eof} = $eof;
    $res->{timed_out} = $timed_out;
    $res->{error} //= $err;
    $res->{error} //= 'connection closed before the response was complete'
        if !$res->{complete} && !$timed_out;
    return $res;
}

sub _exchange {
    my ($block, $pipelined, $reqs, $timeout) = @_;
    local $SIG{PIPE} = 'IGNORE';
    my $delay = _seconds(_val($block, 'raw_request_middle_delay'), 0);
    my (@results, $sock, $buf);
    for my $i (0 .. $#$reqs) {
        my $rq = $reqs->[$i];
        if (!$pipelined || $i == 0) {
            close $sock if $sock;
            $buf = '';
            $sock = IO::Socket::INET->new(
                PeerAddr => $ServerAddr, PeerPort => $ServerPortForClient,
                Proto => 'tcp', Timeout => $timeout);
            if (!$sock) {
                push @results, { status => '', headers => [], body => '',
                    error => "cannot connect to $ServerAddr:$ServerPortForClient: "
                           . ($@ || $!) };
                next;
            }
            $sock->blocking(0);
            binmode $sock;
        }
        if (!$sock) {
            push @results, { status => '', headers => [], body => '',
                             error => 'connection already closed' };
            next;
        }
        my $serr;
        my @pieces = @{ $rq->{pieces} };
        for my $k (0 .. $#pieces) {
            Time::HiRes::sleep($delay) if $k && $delay;
            $serr = _send_all($sock, $pieces[$k] // '', $timeout);
            last if $serr;
        }
        Test::More::diag("request:\n" . join('', @pieces)) if $Verbose;
        my $res = _read_response($sock, \$buf, $rq, $timeout);
        $res->{timed_out} = 1 if $serr && $serr eq 'timeout';
        Test::More::diag("response status: $res->{status}, body:\n$res->{body}")
            if $Verbose;
        push @results, $res;
        if ($res->{eof} || $res->{timed_out} || $res->{error}) {
            close $sock;
            $sock = undef;
        }
    }
    close $sock if $sock;
    return @results;
}

# ---------------------------------------------------------------------------
# checks

sub _check_response {
    my ($block, $name, $res, $i, $sfx) = @_;
    return if _has($block, 'ignore_response');

    my $code = _trim(_idx(_val($block, 'error_code'), $i));
    $code = 200 unless defined $code && length $code;
    Test::More::is($res->{status}, $code, "$name - status code ok$sfx");

    my $hspec = _idx(_val($block, 'response_headers'), $i);
    for my $l (grep { /\S/ } split /\n/, $hspec // '') {
        if ($l =~ /^\s*!\s*(\S+?)\s*$/) {
            my $got = _header($res, $1);
            Test::More::ok(!defined $got, "$name - header $1 not present$sfx")
                or Test::More::diag("got: $1: $got");
            next;
        }
        my ($k, $v) = $l =~ /^\s*([^:]+?)\s*:\s*(.*?)\s*$/
            or die "$name: bad response_headers line '$l'\n";
        Test::More::is(_header($res, $k) // '', $v, "$name - header $k ok$sfx");
    }

    my $lspec = _idx(_val($block, 'response_headers_like'), $i);
    for my $l (grep { /\S/ } split /\n/, $lspec // '') {
        my ($k, $v) = $l =~ /^\s*([^:]+?)\s*:\s*(.*?)\s*$/
            or die "$name: bad response_headers_like line '$l'\n";
        Test::More::like(_header($res, $k) // '', qr/^$v$/,
                         "$name - header $k like ok$sfx");
    }

    if (_has($block, 'response_body')) {
        Test::More::is($res->{body}, _idx(_val($block, 'response_body'), $i),
                       "$name - response_body - response is expected$sfx");
    }
    if (_has($block, 'response_body_like')) {
        my $pat = _idx(_val($block, 'response_body_like'), $i) // '';
        $pat = qr/$pat/s unless ref $pat eq 'Regexp';
        Test::More::like($res->{body}, $pat,
                         "$name - response_body_like - response is expected$sfx");
    }
}

sub _patterns {
    my $v = shift;
    return () unless defined $v;
    return @$v if ref $v eq 'ARRAY';
    return ($v) if ref $v;
    return grep { /\S/ } split /\n/, $v;
}

sub _check_logs {
    my ($block, $name, $offset) = @_;
    my @err = _patterns(_val($block, 'error_log'));
    my @no  = _patterns(_val($block, 'no_error_log'));
    return unless @err || @no;
    my @lines = split /\n/, _slurp($ErrLog, $offset);
    my $match = sub {
        my $pat = shift;
        return grep { ref $pat ? $_ =~ $pat : index($_, $pat) >= 0 } @lines;
    };
    for my $pat (@err) {
        Test::More::ok(scalar($match->($pat)),
                       "$name - pattern \"$pat\" matches a line in error.log")
            or Test::More::diag("searched " . scalar(@lines)
                                . " lines of this block in $ErrLog");
    }
    for my $pat (@no) {
        my @hits = $match->($pat);
        Test::More::ok(!@hits,
                  "$name - pattern \"$pat\" should not match any line in error.log")
            or Test::More::diag("matching line: $hits[0]");
    }
}

sub _ver_cmp {
    my ($have, $want) = @_;
    my @h = split /\./, $have;
    my @w = split /\./, $want;
    while (@h || @w) {
        my ($x, $y) = (shift(@h) // 0, shift(@w) // 0);
        return $x <=> $y if $x != $y;
    }
    return 0;
}

# returns [count, reason] when the block must be skipped
sub _skip_info {
    my $block = shift;
    if (defined(my $s = _trim(_val($block, 'skip_nginx')))) {
        my ($n, $cond) = $s =~ /^(\d+)\s*:\s*(.*)$/
            or die _bname($block) . ": bad skip_nginx value '$s'\n";
        if ($cond =~ /^(<=|>=|==|!=|<|>)\s*(\d+(?:\.\d+)*)$/) {
            my ($op, $want) = ($1, $2);
            my $c = _ver_cmp($NginxRawVersion // '0', $want);
            my $hit = { '<' => $c < 0, '<=' => $c <= 0, '>' => $c > 0,
                        '>=' => $c >= 0, '==' => $c == 0, '!=' => $c != 0 }->{$op};
            return [$n, "tests skipped due to nginx version $op $want"] if $hit;
        }
        else {
            return [$n, $cond];
        }
    }
    if (defined(my $s = _trim(_val($block, 'skip_eval')))) {
        my ($n, $code) = $s =~ /^(\d+)\s*:\s*(.*)$/s
            or die _bname($block) . ": bad skip_eval value '$s'\n";
        my $hit = eval "package main; no strict; $code";
        die _bname($block) . ": skip_eval failed: $@" if $@;
        return [$n, "tests skipped due to skip_eval: $code"] if $hit;
    }
    return;
}

sub _run_block {
    my ($block, $rep) = @_;
    my $name = _bname($block);

    if (my $skip = _skip_info($block)) {
        SKIP: { Test::More::skip("$name - $skip->[1]", $skip->[0]) }
        return;
    }

    my $conf = _build_conf($block);
    _write_user_files($block);
    my $offset = 0;
    if (!$ForceRestart && _nginx_alive() && defined $RunningConf
        && $RunningConf eq $conf)
    {
        $offset = -s $ErrLog // 0;     # reuse: only look at new log lines
    }
    else {
        _stop_nginx();
        if (my $err = _start_nginx($conf)) {
            Test::More::diag("$name - $err");
        }
    }
    Test::More::diag("$name - nginx pid " . ($NginxPid // 'none')
                     . ", servroot $ServRoot, port $ServerPort") if $Verbose;

    if (defined(my $code = _val($block, 'init'))) {
        (my $file = "$name init") =~ tr/"\n//d;
        eval "package main; no strict;\n#line 1 \"$file\"\n$code\n;1"
            or die "$name - init failed: $@";
    }

    my $timeout = _seconds(_val($block, 'timeout'), $Timeout);
    my ($pipelined, @reqs) = _collect_requests($block);
    my @res = _exchange($block, $pipelined, \@reqs, $timeout);
    my $abort = _has($block, 'abort');
    for my $i (0 .. $#res) {
        my $res = $res[$i];
        my $sfx = @res > 1 ? " (req $i)" : '';
        if ($res->{timed_out}) {
            Test::More::fail("ERROR: client socket timed out - $name$sfx")
                unless $abort;
        }
        elsif ($res->{error}) {
            Test::More::diag("$name$sfx - $res->{error}");
        }
        _check_response($block, $name, $res, $i, $sfx);
    }

    my $wait = _seconds(_val($block, 'wait'), 0);
    $wait = 0.05 if !$wait && @res && !$res[-1]{eof};  # let nginx log it
    Time::HiRes::sleep($wait) if $wait;
    _check_logs($block, $name, $offset);

    if ($NginxPid && waitpid($NginxPid, POSIX::WNOHANG()) == $NginxPid) {
        my $st = $?;
        $NginxPid = $RunningConf = undef;
        Test::More::fail("$name - nginx exited unexpectedly ("
                         . _exit_str($st) . ')');
    }
}

sub run_tests () {
    Test::More::plan('no_plan') unless Test::More->builder->has_plan;
    _pre_expand();
    for my $block (Test::Base::blocks()) {
        $_->($block) for @BlockPreprocessors;
        _run_block($block, $_) for 1 .. $RepeatEach;
    }
    _stop_nginx();
}

1;
