#!/usr/bin/env bash
# Admission benchmark: decisions per second through RedisStore (the shared rate-limit store)
# with concurrent callers, Redis round trips (INFO commandstats) and Redis CPU (INFO cpu) per
# admitted request. Starts its own redis-server on a free loopback port, builds in release mode
# (in .build-release, like loadtest/run), runs three partner spreads, each plain and keyed
# (every admission also claims a fresh idempotency key and records a response for it).
# Usage: loadtest/admission.sh [SECONDS] (default 10).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_swift
ensure_packages libhiredis-dev pkg-config redis-server

seconds="${1:-10}"
port=$(free_port)
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --loglevel warning --daemonize no >/dev/null &
redis_pid=$!
trap 'kill $redis_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done

echo "==> building (release)"
build=(swift build -c release --product sluice-admission-bench --scratch-path .build-release)
"${build[@]}" >/dev/null
bench="$("${build[@]}" --show-bin-path)/sluice-admission-bench"

echo "==> $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(redis-server --version | cut -d' ' -f3)"
for partners in 1 10 100; do
  for mode in plain keyed; do
    redis-cli -p "$port" flushall >/dev/null
    "$bench" "redis://127.0.0.1:$port/0" --seconds "$seconds" --callers 256 --partners "$partners" $([ $mode = keyed ] && echo --keyed)
  done
done
