#!/usr/bin/env bash
# The whole test suite: a -Werror build and an ASan+UBSan build, each run
# against SQLite and against throw-away PostgreSQL 15 and MariaDB servers
# that this script starts (temp data dirs, 127.0.0.1) and stops at the end.
# The client's ActiveMQ interop test starts its own throw-away ActiveMQ 5.17
# brokers (tests/db/activemq.sh); the end stops any it left behind.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
scripts/install-deps.sh

step() { printf '\n==> %s\n' "$*" >&2; }

step "build (-Werror, all backends required)"
scripts/build.sh build -DMQS_REQUIRE_ALL_BACKENDS=ON
step "build (ASan + UBSan)"
scripts/build.sh build-asan -DCMAKE_BUILD_TYPE=Debug -DMQS_SANITIZE=ON -DMQS_REQUIRE_ALL_BACKENDS=ON

cleanup() {
  "$root/tests/db/postgres.sh" stop >/dev/null 2>&1 || true
  "$root/tests/db/mariadb.sh" stop >/dev/null 2>&1 || true
  "$root/tests/db/activemq.sh" stop-all >/dev/null 2>&1 || true
  "$root/tests/db/pg-replica.sh" stop >/dev/null 2>&1 || true
}
trap cleanup EXIT
step "start PostgreSQL 15 and MariaDB (throw-away)"
MQSTORE_TEST_PG_URI=$(tests/db/postgres.sh start)
MQSTORE_TEST_MYSQL_URI=$(tests/db/mariadb.sh start)
# The broker tests get a database of their own (a broker recovers all of
# its store); tests/db/ creates it beside the main one.
MQSTORE_TEST_PG_E2E_URI=${MQSTORE_TEST_PG_URI%/*}/mqstore_e2e
MQSTORE_TEST_MYSQL_E2E_URI=${MQSTORE_TEST_MYSQL_URI%/*}/mqstore_e2e
export MQSTORE_TEST_PG_URI MQSTORE_TEST_MYSQL_URI MQSTORE_TEST_PG_E2E_URI MQSTORE_TEST_MYSQL_E2E_URI
# The servers are up, so a test that cannot reach one must fail, not skip.
export MQSTORE_REQUIRE_SERVERS=1
# The client's ActiveMQ interop test (ctest client_interop_activemq) starts
# and stops its own ActiveMQ 5.17 brokers through this script; brokers left
# by an earlier, interrupted run are cleared first.
tests/db/activemq.sh stop-all >/dev/null 2>&1 || true
export MQCLIENT_TEST_ACTIVEMQ=1
export MQCLIENT_ACTIVEMQ_SCRIPT="$root/tests/db/activemq.sh"
# tests/replication/ starts its own PostgreSQL primary + streaming standby
# (127.0.0.1:55500-55501) and pgbouncers (55513-55519).
export MQSTORE_TEST_PG_REPLICA=1
export MQSTORE_TEST_MARIADB_REPLICA=1  # tests/replication: MariaDB primary + replica on 127.0.0.1:53350-53351

# Tests that restart a server are RUN_SERIAL, so two at a time is safe.
step "ctest (build): every test, every backend"
ctest --test-dir build --output-on-failure --timeout 900 -j2
step "ctest (build-asan): library, broker and HA tests under ASan+UBSan+LSan"
# valgrind and ASan do not mix (valgrind runs in build/ only); the broker's
# end-to-end runs on the servers, the fault, replication and pgbouncer tests,
# and the client's failover scenarios (a-i, ActiveMQ, the demo) add little
# under ASan that build/ has not shown, and would double the run. The
# client's unit tests and its bad-input (j), TLS (k) and login (l)
# scenarios run under ASan.
ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure --timeout 900 -j2 -LE valgrind \
    -E 'e2e_.*_(postgresql|mysql)|^faults_|^replication_|^pgbouncer_|^client_interop|^client_e2e_[a-i]_|^e2e_demo'
step "fuzz: each libFuzzer target for 30 s (scripts/fuzz.sh runs longer)"
scripts/fuzz.sh --seconds 30
step "all tests passed"
