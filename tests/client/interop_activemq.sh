#!/bin/sh
# interop_activemq.sh ACTIVEMQ_SH MQC_E2E [ARGS...]: run libmqclient's e2e
# scenarios a b c d f h j against ActiveMQ brokers that ACTIVEMQ_SH
# (tests/db/activemq.sh: start NAME PORT | stop NAME | kill NAME | stop-all)
# starts and stops. Only when MQCLIENT_TEST_ACTIVEMQ=1; otherwise skipped
# (77), or failed when MQSTORE_REQUIRE_SERVERS=1 (a required run must never
# silently skip).
script=$1
e2e=$2
shift 2
if [ "${MQCLIENT_TEST_ACTIVEMQ:-}" != "1" ]; then
    if [ -n "${MQSTORE_REQUIRE_SERVERS:-}" ] && [ "${MQSTORE_REQUIRE_SERVERS}" != "0" ]; then
        echo "interop_activemq.sh: MQSTORE_REQUIRE_SERVERS is set but MQCLIENT_TEST_ACTIVEMQ is not 1" >&2
        exit 1
    fi
    echo "interop_activemq.sh: MQCLIENT_TEST_ACTIVEMQ is not 1: skipping"
    exit 77
fi
if [ ! -f "$script" ]; then
    echo "interop_activemq.sh: $script not found" >&2
    exit 1
fi
# A private instance directory, so stop-all at the end only touches the
# brokers of this run (not those of someone else on the machine).
# (activemq.sh creates that directory itself and marks it as its own.)
parent=
if [ -z "${MQCLIENT_ACTIVEMQ_DIR:-}" ]; then
    parent=$(mktemp -d "${TMPDIR:-/tmp}/mqc-interop.XXXXXX") || exit 1
    MQCLIENT_ACTIVEMQ_DIR=$parent/amq
    export MQCLIENT_ACTIVEMQ_DIR
fi
trap 'sh "$script" stop-all >/dev/null 2>&1; [ -z "$parent" ] || rm -rf "$parent"' EXIT
trap 'exit 1' INT TERM
"$e2e" --activemq "$script" "$@"
