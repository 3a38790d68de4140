# RedisGate — build, run, test.
#
#   make            build build/ngx_http_redisgate_module.so (Debian nginx-dev,
#                   or any nginx source tree with NGINX_SRC=...)
#   make deps       install the Debian and npm packages everything needs
#   make run        start Redis, nginx and a demo instance/key; Ctrl-C stops
#   make stop       stop what "make run" started (from another shell)
#   make test       build, run the Test::Nginx and @upstash/redis suites
#                   and the Debian package's test, then the short forms of
#                   fuzz, asan and valgrind below
#   make deb        build/deb/libnginx-mod-http-redisgate_<version>_<arch>.deb

SHELL := /bin/bash

DEBIAN_NGINX_SRC := /usr/share/nginx/src
NGINX_SRC ?= $(DEBIAN_NGINX_SRC)

BUILD ?= $(CURDIR)/build
OBJS := $(BUILD)/nginx
MODULE := $(BUILD)/ngx_http_redisgate_module.so

# what this module's own files must compile cleanly with
WARNINGS := -Wall -Wextra -Werror

# nginx's own build says -O; Debian builds its nginx with -O2, and so the
# module (the value encoders run twice as fast)
OPTIMIZE := -O2

ifeq ($(NGINX_SRC),$(DEBIAN_NGINX_SRC))
# the flags Debian's nginx was configured with, so the module loads into it
CONF_FLAGS = $(shell bash -c '. $(DEBIAN_NGINX_SRC)/conf_flags && \
	                      echo "$${NGX_CONF_FLAGS[@]}"')
NGINX_BIN ?= /usr/sbin/nginx
else
# TLS to Redis (rediss://) needs nginx's OpenSSL code: an nginx built
# without it loads a module built so, with rediss:// refused
CONF_FLAGS = --with-compat --with-http_ssl_module --prefix=$(BUILD)/prefix
NGINX_BIN ?= $(OBJS)/nginx
endif

SOURCES := config ngx_http_redisgate_module.c $(wildcard src/*.c src/*.h)

export NGINX_BIN MODULE

# Debian packages: to build, to run the demo and tests
BUILD_PKGS := gcc make nginx nginx-dev libhiredis-dev libyajl-dev libpq-dev \
              libssl-dev libpcre2-dev zlib1g-dev
RUN_PKGS := redis-server postgresql postgresql-client curl
# to build the Debian package (debian/), with nginx-dev's dh_nginx
DEB_PKGS := debhelper dpkg-dev lintian
# chromium: the dashboard's browser tests (driven by npm's playwright-core)
TEST_PKGS := libtest-base-perl libtext-diff-perl perl dnsmasq-base \
             valgrind clang libclang-rt-14-dev chromium $(DEB_PKGS)

.PHONY: all deps build-deps run-deps test-deps run stop test clean FORCE \
        bench bench-deps soak asan fuzz fuzz-deps valgrind faults \
        test-short-hardening deb deb-deps

all: $(MODULE)

# configure again when the nginx tree or its flags change
$(OBJS)/configured-for: FORCE
	@mkdir -p $(OBJS)
	@echo '$(NGINX_SRC) $(CONF_FLAGS)' | cmp -s - $@ \
	    || echo '$(NGINX_SRC) $(CONF_FLAGS)' > $@

$(OBJS)/Makefile: config $(OBJS)/configured-for
	@command -v cc >/dev/null || $(MAKE) build-deps
	@test -d $(NGINX_SRC)/auto || $(MAKE) build-deps
	mkdir -p $(OBJS)
	cd $(NGINX_SRC) && \
	    { test -x ./configure && configure=./configure \
	      || configure=auto/configure; } && \
	    $$configure $(CONF_FLAGS) \
	    --builddir=$(OBJS) --add-dynamic-module=$(CURDIR) \
	    > $(OBJS)/configure.log 2>&1 \
	    || { tail -20 $(OBJS)/configure.log; exit 1; }

$(MODULE): $(OBJS)/Makefile $(SOURCES)
ifeq ($(NGINX_SRC),$(DEBIAN_NGINX_SRC))
	cd $(NGINX_SRC) && $(MAKE) -f $(OBJS)/Makefile modules \
	    CFLAGS="$$(sed -n 's/^CFLAGS = //p' $(OBJS)/Makefile) $(WARNINGS) $(OPTIMIZE)"
else
	cd $(NGINX_SRC) && $(MAKE) -f $(OBJS)/Makefile
	cd $(NGINX_SRC) && $(MAKE) -f $(OBJS)/Makefile modules \
	    CFLAGS="$$(sed -n 's/^CFLAGS = //p' $(OBJS)/Makefile) $(WARNINGS) $(OPTIMIZE)"
endif
	@# a new file, not rewritten in place: a running nginx maps the old one
	cp $(OBJS)/ngx_http_redisgate_module.so $(MODULE).tmp
	mv -f $(MODULE).tmp $(MODULE)

clean:
	rm -rf $(BUILD)

# install only what is missing, so repeated calls are quick
define apt_install
	@missing=$$(for p in $(1); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
	        | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "installing:" $$missing; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	        apt-get install -y -qq $$missing >/dev/null; \
	fi
endef

deps: build-deps run-deps test-deps

build-deps:
	$(call apt_install,$(BUILD_PKGS))

run-deps:
	$(call apt_install,$(RUN_PKGS))

test-deps: run-deps
	$(call apt_install,$(TEST_PKGS))
	@command -v node >/dev/null && command -v npm >/dev/null \
	    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	         apt-get install -y -qq nodejs npm >/dev/null; }
	@test -d t/client/node_modules/@upstash/redis \
	    -a -d t/client/node_modules/playwright-core \
	    || npm ci --prefix t/client --no-audit --no-fund --loglevel=error

run: build-deps run-deps
	@$(MAKE) --no-print-directory all >/dev/null
	@tools/demo

stop:
	@tools/demo stop

test: build-deps test-deps
	@$(MAKE) --no-print-directory all
	t/run-tests
	@$(MAKE) --no-print-directory test-short-hardening

# the short forms, each the same on every machine: fuzzing with a fixed
# seed from the committed corpora, and the Test::Nginx suites (t/*.t)
# under AddressSanitizer + UBSan and under valgrind
test-short-hardening:
	@$(MAKE) --no-print-directory fuzz FUZZ_RUNS=$(FUZZ_SHORT_RUNS)
	@$(MAKE) --no-print-directory asan TEST_FILES=t
	@$(MAKE) --no-print-directory valgrind TEST_FILES=t

FUZZ_SHORT_RUNS := 300000

# make bench: RedisGate against nginx's return 200, webdis, an nginx + Lua
# gateway and redis-benchmark, on loopback, a few minutes (BENCH_QUICK=1: a
# smoke test); writes docs/benchmarks.md and docs/benchmarks.png
BENCH_PKGS := wrk webdis libnginx-mod-http-lua lua-nginx-redis lua-cjson \
              gnuplot-nox

bench-deps: build-deps test-deps
	$(call apt_install,$(BENCH_PKGS))

bench: bench-deps
	@$(MAKE) --no-print-directory all
	BENCH_QUICK=$(BENCH_QUICK) bench/run

# make soak: a worker's memory under ten minutes of load (SOAK_SECONDS=...)
soak: bench-deps
	@$(MAKE) --no-print-directory all
	bench/soak

# make asan: the suites against the module built with AddressSanitizer and
# UBSan (the runtime preloaded into Debian's nginx); any report fails it
ASAN_BUILD := $(BUILD)/asan

asan: build-deps test-deps
	@$(MAKE) --no-print-directory BUILD=$(ASAN_BUILD) \
	    WARNINGS="$(WARNINGS) -fsanitize=address,undefined -fno-omit-frame-pointer" \
	    all
	rm -rf $(ASAN_BUILD)/reports && mkdir -p $(ASAN_BUILD)/reports
	REDISGATE_ASAN_DIR=$(ASAN_BUILD)/reports NGINX_BIN=$(CURDIR)/tools/asan-nginx \
	    NGINX_REAL=$(NGINX_BIN) \
	    MODULE=$(ASAN_BUILD)/ngx_http_redisgate_module.so \
	    TEST_FILES="$(TEST_FILES)" t/run-tests
	@if ls $(ASAN_BUILD)/reports/report.* >/dev/null 2>&1; then \
	    cat $(ASAN_BUILD)/reports/report.*; echo "make asan: reports above"; \
	    exit 1; fi
	@echo "make asan: no AddressSanitizer or UBSan report"

# make fuzz: libFuzzer (clang, ASan + UBSan) on the pure parsers and
# encoders, FUZZ_SECONDS (60) each; fails on any crash, leak, timeout or
# failed check (see fuzz/README.md)
fuzz-deps: build-deps
	$(call apt_install,clang libclang-rt-14-dev)

fuzz: fuzz-deps
	@$(MAKE) --no-print-directory $(OBJS)/Makefile
	@$(MAKE) --no-print-directory -f fuzz/Makefile run \
	    NGINX_SRC=$(NGINX_SRC) BUILD=$(BUILD) OBJS=$(OBJS) \
	    FUZZ_RUNS=$(FUZZ_RUNS)

# make valgrind: the suites with nginx under valgrind's memcheck
# (tools/valgrind-nginx; Test::Nginx runs it with master_process off, the
# client suites with their workers followed); any memcheck error or
# definite leak fails it (tools/valgrind-report)
VALGRIND_DIR := $(BUILD)/valgrind

valgrind: build-deps test-deps
	@$(MAKE) --no-print-directory all
	rm -rf $(VALGRIND_DIR) && mkdir -p $(VALGRIND_DIR)
	REDISGATE_VALGRIND_DIR=$(VALGRIND_DIR) \
	    NGINX_BIN=$(CURDIR)/tools/valgrind-nginx NGINX_REAL=$(NGINX_BIN) \
	    TEST_NGINX_STARTUP_TIMEOUT=30 TEST_FILES="$(TEST_FILES)" t/run-tests
	tools/valgrind-report $(VALGRIND_DIR)

# make deb: the Debian package, laid out as Debian's nginx modules are
# (the module enabled on install, Depends: on the nginx ABI), built with
# dpkg-buildpackage from debian/ and checked by lintian (tools/build-deb)
deb-deps: build-deps
	$(call apt_install,$(DEB_PKGS))

deb: deb-deps
	tools/build-deb

# make faults: t/client/load.test.mjs, its phases FAULT_SECONDS (60) each
FAULT_SECONDS ?= 60

faults: build-deps test-deps
	@$(MAKE) --no-print-directory all
	cd t/client && FAULT_SECONDS=$(FAULT_SECONDS) node --test load.test.mjs
