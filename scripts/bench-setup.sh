#!/usr/bin/env bash
# What `make bench` needs beyond `make setup`: nginx (the reference proxy) with its
# stream module (the reference for raw TCP behind TLS and TLS passthrough: Debian
# builds it as a dynamic module, packaged apart) and wrk (the load generator), from
# Debian. Idempotent and quick when all are present.
#
# The bench runs nginx itself, from a config in a temporary directory; the
# package's own service is not started by this install (policy-rc.d denies it
# while apt runs), so nothing starts listening on port 80.
set -euo pipefail

log() { printf 'bench-setup: %s\n' "$*" >&2; }

have_nginx() { command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]]; }
have_wrk() { command -v wrk >/dev/null 2>&1; }
# Built in (`--with-stream`), or Debian's dynamic module installed where -V says modules live.
have_stream() {
    have_nginx || return 1
    local build
    build=$(nginx -V 2>&1 || /usr/sbin/nginx -V 2>&1)
    grep -Eq -- '--with-stream( |$)' <<<"$build" && return 0
    local modules
    modules=$(grep -Eo -- '--modules-path=[^ ]+' <<<"$build" | cut -d= -f2)
    [[ -e ${modules:-/usr/lib/nginx/modules}/ngx_stream_module.so ]]
}

missing=()
have_nginx || missing+=(nginx)
have_stream || missing+=(libnginx-mod-stream)
have_wrk || missing+=(wrk)
if ((${#missing[@]} == 0)); then
    exit 0
fi

if ((EUID != 0)); then
    log "must run as root to install ${missing[*]}"
    exit 1
fi

log "installing ${missing[*]}"
policy=/usr/sbin/policy-rc.d
made_policy=0
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    made_policy=1
fi
cleanup() { if ((made_policy)); then rm -f "$policy"; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
have_nginx || { log "nginx is still missing"; exit 1; }
have_stream || { log "nginx's stream module is still missing"; exit 1; }
have_wrk || { log "wrk is still missing"; exit 1; }
