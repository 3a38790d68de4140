# RedisGate — build, run, test.
#
#   make            build build/ngx_http_redisgate_module.so (Debian nginx-dev,
#                   or any nginx source tree with NGINX_SRC=...)
#   make deps       install the Debian and npm packages everything needs
#   make run        start Redis, nginx and a demo instance/key; Ctrl-C stops
#   make stop       stop what "make run" started (from another shell)
#   make test       build, then run the Test::Nginx and @upstash/redis suites

SHELL := /bin/bash

DEBIAN_NGINX_SRC := /usr/share/nginx/src
NGINX_SRC ?= $(DEBIAN_NGINX_SRC)

BUILD := $(CURDIR)/build
OBJS := $(BUILD)/nginx
MODULE := $(BUILD)/ngx_http_redisgate_module.so

# what this module's own files must compile cleanly with
WARNINGS := -Wall -Wextra -Werror

ifeq ($(NGINX_SRC),$(DEBIAN_NGINX_SRC))
# the flags Debian's nginx was configured with, so the module loads into it
CONF_FLAGS = $(shell bash -c '. $(DEBIAN_NGINX_SRC)/conf_flags && \
	                      echo "$${NGX_CONF_FLAGS[@]}"')
NGINX_BIN ?= /usr/sbin/nginx
else
CONF_FLAGS = --with-compat --prefix=$(BUILD)/prefix
NGINX_BIN ?= $(OBJS)/nginx
endif

SOURCES := config ngx_http_redisgate_module.c $(wildcard src/*.c src/*.h)

export NGINX_BIN MODULE

.PHONY: all deps build-deps test-deps run stop test clean

all: $(MODULE)

$(OBJS)/Makefile: config
	@command -v cc >/dev/null || $(MAKE) build-deps
	@test -d $(NGINX_SRC)/auto || $(MAKE) build-deps
	mkdir -p $(OBJS)
	cd $(NGINX_SRC) && ./configure $(CONF_FLAGS) \
	    --builddir=$(OBJS) --add-dynamic-module=$(CURDIR) \
	    > $(OBJS)/configure.log 2>&1 \
	    || { tail -20 $(OBJS)/configure.log; exit 1; }

$(MODULE): $(OBJS)/Makefile $(SOURCES)
ifeq ($(NGINX_SRC),$(DEBIAN_NGINX_SRC))
	cd $(NGINX_SRC) && $(MAKE) -f $(OBJS)/Makefile modules \
	    CFLAGS="$$(sed -n 's/^CFLAGS = //p' $(OBJS)/Makefile) $(WARNINGS)"
else
	cd $(NGINX_SRC) && $(MAKE) -f $(OBJS)/Makefile
	cd $(NGINX_SRC) && $(MAKE) -f $(OBJS)/Makefile modules \
	    CFLAGS="$$(sed -n 's/^CFLAGS = //p' $(OBJS)/Makefile) $(WARNINGS)"
endif
	cp $(OBJS)/ngx_http_redisgate_module.so $(MODULE)

clean:
	rm -rf $(BUILD)
