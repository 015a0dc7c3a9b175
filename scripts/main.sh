#!/usr/bin/env bash
# The main job: on a fresh machine with Docker, build what is needed (the CLI, the
# node daemon, the node image) and start a cluster (head + 2 workers) on the virtual
# provider from examples/configs/virtual.yaml, then print its status.
#
# Usage: scripts/main.sh          start (or update) the cluster and show it
#        scripts/main.sh --stop   stop the cluster and delete its workspace
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cloudtik-target}"

ensure_apt_packages openssh-client rsync debootstrap
docker info >/dev/null 2>&1 || {
  echo "error: Docker is not running (docker info failed); start it (e.g. 'systemctl start docker') and run again" >&2
  exit 1
}

step "building cloudtik and cloudtik-node"
cargo build --locked -p cloudtik-examples --bins
cloudtik="$CARGO_TARGET_DIR/debug/cloudtik"
cluster=examples/configs/virtual.yaml
workspace=examples/configs/virtual-workspace.yaml

if [ "${1:-}" = "--stop" ]; then
  step "cloudtik stop $cluster --yes"
  "$cloudtik" stop "$cluster" --yes
  step "cloudtik workspace delete $workspace --yes"
  "$cloudtik" workspace delete "$workspace" --yes
  exit 0
fi

step "the node image (built locally from Debian packages when missing)"
scripts/build-node-image.sh

step "cloudtik workspace create $workspace --yes"
"$cloudtik" workspace create "$workspace" --yes

step "cloudtik start $cluster --yes --wait-for-workers 2"
"$cloudtik" start "$cluster" --yes --wait-for-workers 2

step "cloudtik status $cluster"
"$cloudtik" status "$cluster"
