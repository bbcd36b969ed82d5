#!/bin/sh
# async-loss.sh [BUILD_DIR] - by hand: what a PostgreSQL failover loses under
# ASYNCHRONOUS replication. Starts its own primary + standby with
# synchronous_standby_names = '' (tests/db/pg-replica.sh start --async),
# runs the failover test with the standby held 500 ms behind (the primary's
# WAL sender stopped), kills the primary and the master broker together
# (one site lost), promotes the standby, and prints what was lost: receipted
# messages never delivered, and messages delivered again after their ACK was
# confirmed (the "ASYNC:" lines and the results JSON). It never fails on
# losses: they are the point. Ports 127.0.0.1:55500-55501 (MQS_PGR_PORT).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-$here/../../build}
export MQSTORE_TEST_PG_REPLICA=1
exec /usr/bin/python3 "$here/test_pg_failover.py" --async --stall-ms "${STALL_MS:-500}" \
    --kill-broker-too --broker "$build/bin/mqbroker" --mqstore "$build/bin/mqstore"
