#!/usr/bin/env bash
# Installs the Debian packages goflame's tests use as oracles, when missing and when we are root.
set -u
need=()
[ -x /usr/lib/go-1.19/bin/go ] || need+=(golang-1.19-go)
command -v perf >/dev/null || need+=(linux-perf)
command -v tmux >/dev/null || need+=(tmux)
command -v npm >/dev/null || need+=(npm)
command -v unshare >/dev/null || need+=(util-linux)
command -v strace >/dev/null || need+=(strace)
command -v chromium >/dev/null || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "sysdeps: missing ${need[*]} (run as root or install them); tests that need them will fail" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null 2>&1
apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 || echo "sysdeps: could not install ${need[*]}" >&2
exit 0
