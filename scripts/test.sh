#!/usr/bin/env bash
# Sets everything up, then runs every check and test: formatting, lints, the policy's unit tests,
# the test bed's own tests and the integration tests against real servers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --bench
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# Two test threads: each integration test runs its own primary and standby.
cargo test --workspace -- --test-threads=2
# The benchmark, once through everything (one trial each): proof it works, not a measurement.
cargo run --quiet --release -p bench -- all --smoke --out target/bench-smoke
