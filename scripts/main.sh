#!/usr/bin/env bash
# The main job. Today: build the CLI and load, merge and validate the example cluster
# config of the default (virtual) provider, then print it. Starting the cluster on the
# virtual provider lands with the virtual provider (issue 6).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cloudtik-target}"

step "building the cloudtik CLI"
cargo build --locked -p cloudtik-examples --bin cloudtik
cloudtik="$CARGO_TARGET_DIR/debug/cloudtik"

step "cloudtik config validate examples/configs/virtual.yaml"
"$cloudtik" config validate examples/configs/virtual.yaml
step "cloudtik config show examples/configs/virtual.yaml"
"$cloudtik" config show examples/configs/virtual.yaml
