#!/usr/bin/env bash
# demo.sh - the first command to run: installs the dependencies
# (scripts/install-deps.sh), builds (scripts/build.sh), then runs a demo you
# can watch: two mqbroker brokers on one SQLite store (ports 61613/61614), a
# producer (`mqclient send`) sending persistent messages to /queue/demo and a
# consumer (`mqclient recv`) acking them, both on a libmqclient failover:
# URI; kill -9 of the master mid-stream, the standby taking over and both
# clients failing over (their stderr shows it). It ends with sent / received
# / lost / duplicates, the takeover time and the producer's pause, and exits
# non-zero if anything was lost. About 30 s; cleans up its processes and
# temporary files.
#
#   scripts/demo.sh [--no-install] [--no-build] [-- DEMO-ARGS]
#   (DEMO-ARGS go to tests/e2e/demo.py; see its --help, e.g. --ports A,B)
set -euo pipefail
cd "$(dirname "$0")/.."

install=1 build=1
while [ $# -gt 0 ]; do
  case $1 in
    --no-install) install=0 ;;
    --no-build) build=0 ;;
    --help|-h) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; break ;;
    *) echo "demo.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ $install = 1 ]; then scripts/install-deps.sh; fi
if [ $build = 1 ]; then scripts/build.sh; fi

# Debian's python3 (it has python3-stomp); another python3 may come first on PATH.
PY=/usr/bin/python3
[ -x "$PY" ] || PY=$(command -v python3)

if [ -x build/bin/mqbroker ] && [ -x build/bin/mqclient ]; then
  exec "$PY" tests/e2e/demo.py --broker build/bin/mqbroker --client build/bin/mqclient "$@"
fi
if [ -x build/bin/mqbroker ]; then
  echo "demo.sh: build/bin/mqclient is not built (libmqclient missing?): the demo" \
       "needs it; running the store-level quickstart instead" >&2
fi

# Without the broker: the store-level demo (store, "crash", recover).
[ -x build/bin/mqbroker ] || echo "demo.sh: build/bin/mqbroker is not built: running the store-level quickstart" >&2
tmp=$(mktemp -d /tmp/mqstore-demo.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
build/bin/mqstore-quickstart "sqlite:///$tmp/demo.db"
