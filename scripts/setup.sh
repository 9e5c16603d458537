#!/usr/bin/env bash
# Installs what pg_promoter needs on Debian 12 (as root), then builds the extension and installs
# it into PostgreSQL 15. Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PGRX_VERSION=$(sed -n 's/^pgrx = "=\(.*\)"$/\1/p' Cargo.toml)
PACKAGES=(postgresql-15 postgresql-server-dev-15 libpq-dev libclang-dev clang pkg-config procps iproute2)
# `setup.sh --bench` adds the failover tools the benchmark compares pg_promoter with.
if [ "${1:-}" = "--bench" ]; then
  PACKAGES+=(postgresql-15-repmgr patroni etcd-server postgresql-15-auto-failover)
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: run as root (it installs Debian packages and writes into PostgreSQL's directories)" >&2
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! cargo pgrx --version 2>/dev/null | grep -qF "$PGRX_VERSION"; then
  echo "setup: installing cargo-pgrx $PGRX_VERSION (a few minutes, once)"
  cargo install cargo-pgrx --version "$PGRX_VERSION" --locked --quiet
fi
cargo pgrx init --pg15 "$PG_CONFIG" >/dev/null

echo "setup: building and installing pg_promoter into $("$PG_CONFIG" --pkglibdir)"
cargo pgrx install --release --pg-config "$PG_CONFIG" >/dev/null
