#!/bin/sh
# repeat.sh N COMMAND [ARGS...]: run COMMAND N times in a row, stopping at
# the first run that does not pass; its status is returned (77, a skip,
# included). For "passes N times in a row" claims, e.g. the PostgreSQL
# failover test (issue 15).
n=${1:?usage: repeat.sh N COMMAND [ARGS...]}
shift
case $n in '' | *[!0-9]*) echo "repeat.sh: N must be a number, got '$n'" >&2; exit 2 ;; esac
i=1
while [ "$i" -le "$n" ]; do
    echo "repeat.sh: run $i of $n"
    "$@"
    rc=$?
    if [ $rc -ne 0 ]; then
        [ $rc -eq 77 ] || echo "repeat.sh: run $i of $n failed (status $rc)" >&2
        exit $rc
    fi
    i=$((i + 1))
done
echo "repeat.sh: $n of $n passed"
