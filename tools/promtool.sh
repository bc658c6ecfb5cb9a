#!/usr/bin/env bash
# Prints the path of a `promtool` (or, as `tools/promtool.sh prometheus`, of a `prometheus`
# server for the console's alert test), or stops with one line saying how to get one.
# On PATH wins; otherwise the binary is unpacked from Debian's `prometheus` package into a
# cache outside the clone (`apt-get download`: nothing is installed, no daemon is started;
# each is one static binary), so a fresh clone on the same machine finds it again.
set -euo pipefail
name="${1:-promtool}"
case "$name" in promtool|prometheus) ;; *) echo "usage: $0 [promtool|prometheus]" >&2; exit 2;; esac
if command -v "$name" >/dev/null 2>&1; then
    command -v "$name"
    exit 0
fi
cache="${XDG_CACHE_HOME:-$HOME/.cache}/mini-ec/$name"
if [ -x "$cache/$name" ]; then
    echo "$cache/$name"
    exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
fetch() { (cd "$tmp" && apt-get download -q prometheus >/dev/null 2>&1); }
if ! fetch && [ "$(id -u)" = 0 ]; then
    apt-get update -q >/dev/null 2>&1 && fetch || true
fi
deb="$(find "$tmp" -maxdepth 1 -name 'prometheus_*.deb' | head -n 1)"
if [ -z "$deb" ] || ! dpkg-deb -x "$deb" "$tmp/root" 2>/dev/null; then
    echo "$name not found: apt-get install prometheus (Debian), or put $name on PATH" >&2
    exit 1
fi
mkdir -p "$cache"
install -m 0755 "$tmp/root/usr/bin/$name" "$cache/$name"
echo "$cache/$name"
