#!/bin/sh
# run-uri.sh VAR COMMAND [ARGS...]: run COMMAND ARGS... "$VAR's value".
# Unset VAR: skip (exit 77, shown as skipped by ctest) on a developer's
# machine, but fail under CI=true or MQSTORE_REQUIRE_SERVERS=1 (set by
# scripts/test.sh once it started the servers): a run that should test a
# server must never silently skip it.
var=$1
shift
case $var in
    ''|*[!A-Za-z0-9_]*) echo "run-uri.sh: bad variable name '$var'" >&2; exit 2 ;;
esac
eval "uri=\${$var:-}"
if [ -z "$uri" ]; then
    if [ "${CI:-}" = "true" ] || [ -n "${MQSTORE_REQUIRE_SERVERS:-}" ]; then
        echo "run-uri.sh: $var is not set but a server run is required: start the database (tests/db/) and export $var" >&2
        exit 1
    fi
    echo "run-uri.sh: $var is not set: skipping (set it to a store URI to run this test)"
    exit 77
fi
exec "$@" "$uri"
