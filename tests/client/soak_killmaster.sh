#!/bin/sh
# soak_killmaster.sh MQC_E2E MQBROKER [REPS] [MSGS]: scenario e (kill -9 the
# master during async sends with trackMessages; 0 lost, 0 duplicates)
# repeated REPS times (default 20) with MSGS messages each (default 10000).
# CI runs 2 repetitions (ctest client_e2e_e_killmaster); this is the soak.
# Example: tests/client/soak_killmaster.sh build/tests/client/mqc_e2e build/bin/mqbroker
if [ $# -lt 2 ]; then
    echo "usage: $0 MQC_E2E MQBROKER [REPS] [MSGS]" >&2
    exit 2
fi
exec "$1" --broker "$2" --reps "${3:-20}" --msgs "${4:-10000}" \
    --port-base "${MQC_E2E_PORT_BASE:-61760}" e_killmaster
