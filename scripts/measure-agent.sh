#!/usr/bin/env bash
# Measures the node agent's cost: resident memory (VmRSS) and CPU share of a running
# `cloudtik-node agent` at a 1 s heartbeat, against a redis-server started here.
# Usage: scripts/measure-agent.sh [SECONDS]   (default 30)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cloudtik-target}"
seconds="${1:-30}"

step "building cloudtik-node (release)"
cargo build --release -p cloudtik-examples --bin cloudtik-node
node="$CARGO_TARGET_DIR/release/cloudtik-node"

work="$(mktemp -d)"
redis_pid=""
agent_pid=""
cleanup() {
  [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null || true
  [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
password="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
step "starting redis-server on port $port"
redis-server --port "$port" --bind 127.0.0.1 --requirepass "$password" --save '' --appendonly no \
  --dir "$work" --logfile "$work/redis.log" &
redis_pid=$!
for _ in $(seq 100); do
  redis-cli -p "$port" -a "$password" --no-auth-warning ping 2>/dev/null | grep -q PONG && break
  sleep 0.1
done

step "starting cloudtik-node agent (1 s heartbeat, 5 s reports)"
CLOUDTIK_REDIS_PASSWORD="$password" CLOUDTIK_LOG=warn "$node" agent \
  --redis-address "127.0.0.1:$port" --node-id measure-1 --heartbeat-interval 1 &
agent_pid=$!
sleep 3  # past start-up

ticks() { awk '{ s = $0; sub(/^.*\) /, "", s); split(s, f, " "); print f[12] + f[13] }' "/proc/$1/stat"; }
hz="$(getconf CLK_TCK)"
t0="$(ticks "$agent_pid")"
w0="$(date +%s.%N)"
step "measuring for $seconds s"
sleep "$seconds"
t1="$(ticks "$agent_pid")"
w1="$(date +%s.%N)"
rss="$(awk '/^VmRSS/ { print $2 }' "/proc/$agent_pid/status")"
hwm="$(awk '/^VmHWM/ { print $2 }' "/proc/$agent_pid/status")"
beats="$(redis-cli -p "$port" -a "$password" --no-auth-warning hexists cloudtik:nodes:heartbeat measure-1)"
[ "$beats" = 1 ] || { echo "the agent wrote no heartbeat" >&2; exit 1; }

awk -v t0="$t0" -v t1="$t1" -v hz="$hz" -v w0="$w0" -v w1="$w1" -v rss="$rss" -v hwm="$hwm" 'BEGIN {
  cpu = (t1 - t0) / hz; wall = w1 - w0
  printf "agent VmRSS %.1f MiB (peak %.1f MiB); CPU %.2f s over %.1f s = %.3f%% of a core\n", rss / 1024, hwm / 1024, cpu, wall, cpu / wall * 100
  if (t1 == t0) printf "(less than one clock tick, 1/%d s, in %.0f s: under %.3f%% of a core)\n", hz, wall, 100 / hz / wall
}'
