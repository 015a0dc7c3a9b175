#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what the tests need, then format,
# lint, docs and every test. Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_apt_packages redis-server openssh-server openssh-client rsync iproute2 procps debootstrap
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cloudtik-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, all features)"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

step "cloudtik-core feature combinations (the lean core has no openssh, redis or aes-gcm)"
for features in "" "ssh" "redis" "testing"; do
  cargo clippy -p cloudtik-core --no-default-features --features "$features" --locked -- -D warnings
done
if cargo tree -p cloudtik-core --no-default-features -e normal --prefix none | grep -E '^(openssh|redis|aes-gcm) '; then
  echo "cloudtik-core without default features must not depend on the crates above" >&2
  exit 1
fi

step "cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --all-features --no-deps --locked --quiet

step "cloud twin image (stock-like instances of the twin tests, examples/tests/twin/)"
scripts/build-twin-image.sh

step "cargo test (all features)"
cargo test --workspace --all-features --locked 2>&1 | tee "$CARGO_TARGET_DIR/test-output.log"

step "library examples (run against Docker)"
scripts/build-node-image.sh
cargo build -p cloudtik-examples --bins --examples --locked
"$CARGO_TARGET_DIR/debug/examples/custom_runtime"
"$CARGO_TARGET_DIR/debug/examples/custom_provider"
"$CARGO_TARGET_DIR/debug/examples/embedded_controller"

passed=$(grep -Eo 'test result: ok\. [0-9]+ passed' "$CARGO_TARGET_DIR/test-output.log" | awk '{s+=$4} END {print s+0}')
step "all green: $passed tests passed"
