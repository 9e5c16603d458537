#!/usr/bin/env bash
# Sets everything up, then runs a live local failover: a primary and a standby on loopback, the
# primary killed with SIGKILL, the standby promoted by pg_promoter, and the event timeline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec cargo run --quiet --release -p testbed --bin demo
