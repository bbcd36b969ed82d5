#!/usr/bin/env bash
# Installs everything mqstore needs to build, test and bench on Debian 12.
# Idempotent; run as root (or with sudo available).
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: run as root or install sudo" >&2; exit 1; }
  SUDO=sudo
fi
PKGS=(
  build-essential cmake pkg-config git
  libsqlite3-dev sqlite3
  libpq-dev postgresql-15 pgbouncer
  mariadb-server libmariadb-dev libmariadb-dev-compat
  libcmocka-dev valgrind libssl-dev openssl
  python3 python3-stomp
  activemq default-jre-headless
  clang libclang-rt-14-dev
  gnuplot-nox hyperfine faketime
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PKGS[@]} packages present" >&2
  exit 0
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# Debian starts the database (and ActiveMQ) services it installs; tests
# start their own throw-away servers, so keep the system ones from being
# started.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done" >&2
