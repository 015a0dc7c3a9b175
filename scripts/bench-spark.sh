#!/usr/bin/env bash
# Measures Spark on the virtual provider (not a test):
#   1. `cloudtik start` to Spark ready (the master with 2 workers registered), with a warm
#      package cache (the shared cache of ~/.cloudtik/package-cache, filled by a first round
#      when empty) and, with --cold, with an empty cache (everything downloaded: a JRE from
#      Debian, pyspark from PyPI). Target: warm under 60 s.
#   2. The time from Spark's demand appearing (an application registered with the master
#      and waiting for executors) to the controller's launch call (a new worker container
#      created). Target: under 10 s.
# Usage: scripts/bench-spark.sh [--cold] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cloudtik-target}"
cold=0
if [ "${1:-}" = "--cold" ]; then cold=1; shift; fi
rounds="${1:-2}"

ensure_apt_packages openssh-client rsync debootstrap
cargo build --locked -q -p cloudtik-examples --bins
scripts/build-node-image.sh >/dev/null
cloudtik="$CARGO_TARGET_DIR/debug/cloudtik"

work=$(mktemp -d)
trap '"$cloudtik" stop "$work/cluster.yaml" --yes >/dev/null 2>&1 || true; "$cloudtik" workspace delete "$work/ws.yaml" --yes >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
export CLOUDTIK_HOME="$work/home"
cache_line=""
if [ "$cold" = 1 ]; then cache_line="package_cache: $work/cache"; fi
cat > "$work/ws.yaml" <<YAML
workspace_name: bench-spark-ws
provider: {type: virtual, state_dir: $work/virtual}
YAML
cat > "$work/cluster.yaml" <<YAML
cluster_name: bench-spark
workspace_name: bench-spark-ws
provider:
  type: virtual
  state_dir: $work/virtual
  $cache_line
auth: {ssh_user: root}
idle_timeout_minutes: 10
available_node_types:
  head.default: {node_config: {instance_type: {CPU: 1, memory: 2G}}}
  worker.default:
    min_workers: 2
    max_workers: 3
    node_config: {instance_type: {CPU: 1, memory: 2G}}
head_node_type: head.default
runtime:
  types: [spark]
  spark: {executor_memory: 512m}
YAML
cat > "$work/job.py" <<'PY'
import time
from pyspark.sql import SparkSession
spark = SparkSession.builder.appName("bench").getOrCreate()
spark.sparkContext.parallelize(range(12), 12).map(lambda x: (time.sleep(5), x)[1]).count()
spark.stop()
PY
"$cloudtik" workspace create "$work/ws.yaml" --yes >/dev/null 2>&1

now() { date +%s.%N; }
# The master's view: "<alive workers> <apps waiting or running>".
master() {
  local ip
  ip=$("$cloudtik" head-ip "$work/cluster.yaml" 2>/dev/null) || { echo "0 0"; return; }
  curl -s -m 2 "http://$ip:8080/json/" | python3 -c 'import json,sys
try:
    d=json.load(sys.stdin); print(sum(w["state"]=="ALIVE" for w in d["workers"]), len(d["activeapps"]))
except Exception:
    print(0, 0)' 2>/dev/null || echo "0 0"
}
containers() { docker ps -q --filter label=cloudtik-cluster-name=bench-spark | wc -l; }

for r in $(seq 1 "$rounds"); do
  t0=$(now)
  "$cloudtik" start "$work/cluster.yaml" --yes >/dev/null 2>&1
  until [ "$(master | cut -d' ' -f1)" -ge 2 ]; do
    sleep 0.5
    if [ "$(echo "$(now) - $t0 > 900" | bc)" = 1 ]; then echo "Spark not ready in 900 s" >&2; exit 1; fi
  done
  t1=$(now)
  before=$(containers)
  "$cloudtik" submit "$work/cluster.yaml" "$work/job.py" >/dev/null 2>&1 &
  job=$!
  until [ "$(master | cut -d' ' -f2)" -ge 1 ]; do sleep 0.2; done
  t2=$(now)
  until [ "$(containers)" -gt "$before" ]; do
    sleep 0.2
    if [ "$(echo "$(now) - $t2 > 120" | bc)" = 1 ]; then echo "no launch within 120 s of the demand" >&2; exit 1; fi
  done
  t3=$(now)
  wait "$job" || true
  printf 'round %s (%s cache): start to Spark ready (master + 2 workers) %.1f s; demand to launch %.1f s (load %s)\n' \
    "$r" "$([ "$cold" = 1 ] && [ "$r" = 1 ] && echo cold || echo warm)" \
    "$(echo "$t1 - $t0" | bc)" "$(echo "$t3 - $t2" | bc)" "$(cut -d' ' -f1-3 /proc/loadavg)"
  "$cloudtik" stop "$work/cluster.yaml" --yes >/dev/null 2>&1
done
