#!/usr/bin/env bash
# Measures the virtual provider end to end (not a test): the time from `cloudtik start`
# to the head and 2 workers up to date and heartbeating (node image built before), and
# the time from `cloudtik scale --workers 10` to 8 more workers up to date.
# Targets: under 20 s and under 30 s. Usage: scripts/bench-cluster.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cloudtik-target}"
rounds="${1:-3}"

ensure_apt_packages openssh-client rsync debootstrap
cargo build --locked -q -p cloudtik-examples --bins
scripts/build-node-image.sh >/dev/null
cloudtik="$CARGO_TARGET_DIR/debug/cloudtik"

work=$(mktemp -d)
trap '"$cloudtik" stop "$work/cluster.yaml" --yes >/dev/null 2>&1 || true; "$cloudtik" workspace delete "$work/ws.yaml" --yes >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
export CLOUDTIK_HOME="$work/home"
cat > "$work/ws.yaml" <<YAML
workspace_name: bench-ws
provider: {type: virtual, state_dir: $work/virtual}
YAML
cat > "$work/cluster.yaml" <<YAML
cluster_name: bench
workspace_name: bench-ws
provider: {type: virtual, state_dir: $work/virtual}
auth: {ssh_user: root}
max_workers: 10
available_node_types:
  head.default: {node_config: {instance_type: {CPU: 1, memory: 512M}}}
  worker.default:
    min_workers: 2
    max_workers: 10
    node_config: {instance_type: {CPU: 1, memory: 512M}}
head_node_type: head.default
YAML
"$cloudtik" workspace create "$work/ws.yaml" --yes >/dev/null 2>&1

now() { date +%s.%N; }
for r in $(seq 1 "$rounds"); do
  t0=$(now)
  "$cloudtik" start "$work/cluster.yaml" --yes --wait-for-workers 2 --timeout 300 >/dev/null 2>&1
  t1=$(now)
  "$cloudtik" scale "$work/cluster.yaml" --workers 10 >/dev/null
  "$cloudtik" wait-for-ready "$work/cluster.yaml" --min-workers 10 --timeout 300 >/dev/null
  t2=$(now)
  printf 'round %s: start (head + 2 workers up to date) %.1f s; scale +8 workers %.1f s (load %s)\n' \
    "$r" "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t1" | bc)" "$(cut -d' ' -f1-3 /proc/loadavg)"
  "$cloudtik" stop "$work/cluster.yaml" --yes >/dev/null 2>&1
done
