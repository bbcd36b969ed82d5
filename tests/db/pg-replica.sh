#!/bin/sh
# pg-replica.sh - a throw-away PostgreSQL primary + streaming standby for the
# database-failover tests (tests/replication/).
#
#   pg-replica.sh start [--async]  initdb a primary, pg_basebackup a standby
#                                  that streams from it through a replication
#                                  slot; print the two-host store URI.
#                                  Default: synchronous replication (a COMMIT
#                                  returns once the standby flushed it);
#                                  --async: synchronous_standby_names = ''
#   pg-replica.sh uri              print the URI (both hosts, in node order,
#                                  target_session_attrs=read-write)
#   pg-replica.sh status           print the role of each node; exit 0 if a
#                                  primary is up
#   pg-replica.sh kill-primary     kill -9 the current primary's postmaster
#                                  and all its processes at once (no shutdown
#                                  checkpoint, no goodbye to the clients);
#                                  prints the kill's time (date +%s.%N)
#   pg-replica.sh promote          promote the standby (what an HA manager
#                                  such as Patroni does); it waits until the
#                                  new primary accepts writes
#   pg-replica.sh stall-standby    SIGSTOP the primary's WAL sender, so the
#                                  standby falls behind (the async test uses
#                                  it to show what a failover loses; in sync
#                                  mode COMMITs then wait)
#   pg-replica.sh stop             stop both nodes and remove the data
#
# Only URIs (start, uri) and the kill time (kill-primary) go to stdout; progress and errors go to stderr.
#
# Nodes: a on $MQS_PGR_PORT (55500), b on MQS_PGR_PORT+1; a starts as the
# primary. Both listen on 127.0.0.1 only. Data lives in one temp dir owned by
# the postgres user (initdb and pg_ctl refuse to run as root). Role mqs,
# database mqstore, as in tests/db/postgres.sh.
#
# Synchronous replication and a promotion: only the primary names its
# standby in synchronous_standby_names; the standby's own setting is empty,
# so once promoted (with no standby of its own) its COMMITs do not wait
# forever for one. That is what an HA manager does in its non-strict
# synchronous mode (Patroni's synchronous_mode without _strict).
#
# Environment: MQS_PGR_PORT (55500; ports 55500-55519 are the tests'),
# MQS_PG_BINDIR (as in postgres.sh), MQS_PGR_STATE (the file that remembers
# the data directory; /tmp/mqs-pgr-<port>.dir).
set -eu

PORT_A="${MQS_PGR_PORT:-55500}"
case "$PORT_A" in
'' | *[!0-9]*) echo "pg-replica.sh: MQS_PGR_PORT must be a port number" >&2; exit 2 ;;
esac
PORT_B=$((PORT_A + 1))
USER_NAME=mqs
USER_PASS=mqs-secret
DB_NAME=mqstore
SLOT=mqs_standby
STATE="${MQS_PGR_STATE:-/tmp/mqs-pgr-$PORT_A.dir}"
URI="postgresql://$USER_NAME:$USER_PASS@127.0.0.1:$PORT_A,127.0.0.1:$PORT_B/$DB_NAME?target_session_attrs=read-write"

log() { printf 'pg-replica.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

find_bindir() {
    if [ -n "${MQS_PG_BINDIR:-}" ]; then
        printf '%s\n' "$MQS_PG_BINDIR"
        return
    fi
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -n "$d" ] && [ -x "$d/initdb" ]; then
        printf '%s\n' "$d"
        return
    fi
    p=$(command -v initdb 2>/dev/null || true)
    [ -n "$p" ] || die "initdb not found: install the PostgreSQL server (apt-get install postgresql) or set MQS_PG_BINDIR"
    dirname "$p"
}

if [ "$(id -u)" -eq 0 ]; then
    RUN_USER=postgres
    id "$RUN_USER" >/dev/null 2>&1 || die "running as root but there is no 'postgres' user to run the server as"
    as_owner() { runuser -u "$RUN_USER" -- "$@"; }
else
    RUN_USER=$(id -un)
    as_owner() { "$@"; }
fi

current_dir() {
    [ -f "$STATE" ] || return 1
    d=$(cat "$STATE")
    [ -n "$d" ] && [ -d "$d" ] || return 1
    printf '%s\n' "$d"
}

port_of() { if [ "$1" = a ]; then echo "$PORT_A"; else echo "$PORT_B"; fi; }
other() { if [ "$1" = a ]; then echo b; else echo a; fi; }

# The postmaster pid of node $1, if it runs (a zombie does not count).
node_pid() {
    f="$D/$1/postmaster.pid"
    [ -f "$f" ] || return 1
    pid=$(head -n 1 "$f" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
    state=$(sed 's/.*) //' "/proc/$pid/stat" | cut -d' ' -f1)
    [ "$state" != Z ] || return 1
    printf '%s\n' "$pid"
}

psql_node() {
    n=$1
    shift
    as_owner "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$D" -p "$(port_of "$n")" \
        -U postgres -d postgres "$@"
}

wait_ready() {
    i=0
    while [ $i -lt 200 ]; do
        if "$BINDIR/pg_isready" -q -h 127.0.0.1 -p "$1" -t 1 2>/dev/null; then
            return 0
        fi
        i=$((i + 1))
        sleep 0.05
    done
    return 1
}

port_free() {
    ! ss -Hltn "sport = :$1" 2>/dev/null | grep -q .
}

start_node() {
    n=$1
    if ! as_owner "$BINDIR/pg_ctl" -D "$D/$n" -l "$D/$n.log" -w -t 60 start >/dev/null; then
        tail -n 30 "$D/$n.log" >&2 || true
        die "node $n did not start (log above, full log in $D/$n.log)"
    fi
    wait_ready "$(port_of "$n")" || die "node $n started but 127.0.0.1:$(port_of "$n") does not answer"
}

do_start() {
    mode=sync
    [ "${1:-}" = --async ] && mode=async
    if D=$(current_dir); then
        if node_pid "$(cat "$D/primary")" >/dev/null; then
            have=$(cat "$D/mode")
            [ "$have" = "$mode" ] || die "a $have pair is already running from $D; stop it first"
            log "already running in $D"
            return 0
        fi
        log "removing stale $D"
        do_stop
    fi
    for p in "$PORT_A" "$PORT_B"; do
        port_free "$p" || die "port $p is already in use; set MQS_PGR_PORT to a free pair of ports (55500-55519)"
    done
    D=$(mktemp -d /tmp/mqs-pgr.XXXXXX)
    chmod 700 "$D"
    [ "$RUN_USER" = "$(id -un)" ] || chown "$RUN_USER" "$D"
    printf '%s\n' "$D" >"$STATE"
    echo a >"$D/primary"
    echo "$mode" >"$D/mode"

    log "initdb of the primary (node a) in $D/a"
    if ! as_owner "$BINDIR/initdb" -D "$D/a" -U postgres -E UTF8 --locale=C \
        --auth-local=trust --auth-host=scram-sha-256 --no-sync >"$D/initdb.log" 2>&1; then
        cat "$D/initdb.log" >&2
        die "initdb failed (log above)"
    fi
    # Same durability settings as tests/db/postgres.sh, plus replication.
    # wal_sender_timeout/wal_receiver_timeout are left at their defaults: the
    # tests kill the primary outright, which the standby sees at once.
    cat >>"$D/a/postgresql.conf" <<EOF

# mqstore failover test pair (tests/db/pg-replica.sh)
listen_addresses = '127.0.0.1'
port = $PORT_A
unix_socket_directories = '$D'
fsync = on
synchronous_commit = on
full_page_writes = on
password_encryption = 'scram-sha-256'
max_connections = 200
lc_messages = 'C'
log_min_messages = warning
log_min_error_statement = error
wal_level = replica
max_wal_senders = 4
max_replication_slots = 4
hot_standby = on
wal_log_hints = on
cluster_name = 'mqsr${PORT_A}_a'
EOF
    log "starting the primary on 127.0.0.1:$PORT_A ($mode replication)"
    start_node a
    psql_node a -c "CREATE ROLE $USER_NAME LOGIN PASSWORD '$USER_PASS'" \
        -c "CREATE DATABASE $DB_NAME OWNER $USER_NAME" ||
        die "creating role $USER_NAME / database $DB_NAME failed"
    psql_node a -d "$DB_NAME" -c "GRANT ALL ON SCHEMA public TO $USER_NAME" ||
        die "granting schema public to $USER_NAME failed"

    # The standby: a base backup over the primary's Unix socket (local
    # trust, as the superuser), with a physical slot so the primary keeps
    # every WAL segment the standby has not received.
    log "pg_basebackup of the standby (node b) in $D/b, slot $SLOT"
    if ! as_owner "$BINDIR/pg_basebackup" -h "$D" -p "$PORT_A" -U postgres -D "$D/b" \
        -X stream -C -S "$SLOT" --checkpoint=fast --no-sync >"$D/basebackup.log" 2>&1; then
        cat "$D/basebackup.log" >&2
        die "pg_basebackup failed (log above)"
    fi
    # Later lines win in postgresql.conf: the standby's own port, name and
    # no synchronous standby of its own (see the header).
    cat >>"$D/b/postgresql.conf" <<EOF

# standby overrides (tests/db/pg-replica.sh)
port = $PORT_B
cluster_name = 'mqsr${PORT_A}_b'
synchronous_standby_names = ''
primary_conninfo = 'host=$D port=$PORT_A user=postgres application_name=mqs_b'
primary_slot_name = '$SLOT'
EOF
    as_owner touch "$D/b/standby.signal"
    log "starting the standby on 127.0.0.1:$PORT_B"
    start_node b
    # Only now, with the standby there to confirm them, may the primary's
    # COMMITs wait for it (set earlier, the setup's own COMMITs would hang).
    if [ "$mode" = sync ]; then
        printf "synchronous_standby_names = 'mqs_b'\n" >>"$D/a/postgresql.conf"
        as_owner "$BINDIR/pg_ctl" -D "$D/a" reload >/dev/null || die "reloading the primary failed"
    fi
    # Ready only once the standby streams (and, in sync mode, is the
    # synchronous one): before that a COMMIT on the primary would wait.
    i=0
    want=async
    [ "$mode" = sync ] && want=sync
    while :; do
        st=$(psql_node a -At -c "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'mqs_b' AND state = 'streaming'" 2>/dev/null || true)
        [ "$st" = "$want" ] && break
        i=$((i + 1))
        [ $i -lt 300 ] || die "the standby does not stream as $want after 15 s (state '$st'; logs in $D)"
        sleep 0.05
    done
    log "ready: primary a :$PORT_A, standby b :$PORT_B ($st)"
}

do_stop() {
    D=$(current_dir) || {
        rm -f "$STATE"
        log "not running"
        return 0
    }
    for n in a b; do
        # A stalled WAL sender would keep a fast shutdown waiting.
        [ -f "$D/stalled.pid" ] && kill -CONT "$(cat "$D/stalled.pid")" 2>/dev/null || true
        if [ -d "$D/$n" ] && node_pid "$n" >/dev/null; then
            as_owner "$BINDIR/pg_ctl" -D "$D/$n" -m fast -w -t 30 stop >/dev/null 2>&1 ||
                as_owner "$BINDIR/pg_ctl" -D "$D/$n" -m immediate -w -t 10 stop >/dev/null 2>&1 || true
        fi
    done
    case "$D" in
    /tmp/mqs-pgr.*) rm -rf "$D" ;;
    *) log "not removing unexpected directory $D" ;;
    esac
    rm -f "$STATE"
    log "stopped"
}

need_dir() {
    D=$(current_dir) || die "no replica pair is running: use '$0 start'"
}

do_kill_primary() {
    need_dir
    p=$(cat "$D/primary")
    pid=$(node_pid "$p") || die "the primary (node $p) is not running"
    # SIGKILL the postmaster and every child in one kill(1) call, as a
    # crashed host would stop them: a postmaster killed alone leaves its
    # backends and WAL sender running until they notice, and they can go on
    # committing (and replicating) meanwhile.
    kids=$(pgrep -P "$pid" 2>/dev/null | tr '\n' ' ' || true)
    # shellcheck disable=SC2086 # word splitting wanted: a list of pids
    kill -KILL "$pid" $kids || die "cannot kill the postmaster $pid"
    # The kill's wall-clock time on stdout (seconds, ns): tests measure the
    # pause from it.
    date +%s.%N
    i=0
    while [ -d "/proc/$pid" ] && [ "$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)" != Z ]; do
        i=$((i + 1))
        [ $i -lt 200 ] || die "postmaster $pid survived kill -9 for 10 s"
        sleep 0.05
    done
    # A child forked between pgrep and kill would be orphaned: none may stay.
    for b in $(pgrep -u "$RUN_USER" -f "postgres: mqsr${PORT_A}_$p: " 2>/dev/null || true); do
        kill -KILL "$b" 2>/dev/null || true
    done
    echo "$p" >"$D/killed"
    log "killed the primary (node $p, postmaster $pid) with SIGKILL"
}

do_stall_standby() {
    need_dir
    p=$(cat "$D/primary")
    # Stop the primary's WAL sender, not the standby's receiver: WAL the
    # sender already wrote to its socket would still reach a receiver that
    # is continued later, so nothing would be lost. The primary goes on
    # committing (asynchronous replication) what only it has; the kill
    # (SIGKILL works on a stopped process) then loses it.
    pid=$(pgrep -u "$RUN_USER" -f "postgres: mqsr${PORT_A}_$p: walsender" | head -n 1 || true)
    [ -n "$pid" ] || die "no WAL sender on the primary (node $p)"
    kill -STOP "$pid" || die "cannot stop the WAL sender $pid"
    echo "$pid" >"$D/stalled.pid"
    log "stalled the primary's WAL sender (pid $pid): the standby receives nothing more"
}

do_promote() {
    need_dir
    p=$(cat "$D/primary")
    s=$(other "$p")
    node_pid "$s" >/dev/null || die "the standby (node $s) is not running"
    rm -f "$D/stalled.pid"
    # pg_ctl promote -w returns once the node left recovery and accepts
    # writes (it polls pg_control; -t bounds it).
    if ! as_owner "$BINDIR/pg_ctl" -D "$D/$s" -w -t 30 promote >/dev/null; then
        tail -n 20 "$D/$s.log" >&2 || true
        die "promoting node $s failed (log above)"
    fi
    echo "$s" >"$D/primary"
    # A primary that still runs (promote without kill) would be a split
    # brain at the database level: say so, the tests never do it.
    if node_pid "$p" >/dev/null; then
        log "warning: the old primary (node $p) still runs: two primaries"
    fi
    log "promoted node $s (127.0.0.1:$(port_of "$s")) to primary"
}

do_status() {
    need_dir
    rc=1
    for n in a b; do
        if node_pid "$n" >/dev/null; then
            r=$(psql_node "$n" -At -c "SELECT CASE WHEN pg_is_in_recovery() THEN 'standby' ELSE 'primary' END" 2>/dev/null || echo unknown)
            [ "$r" = primary ] && rc=0
        else
            r=down
        fi
        printf 'node %s 127.0.0.1:%s %s\n' "$n" "$(port_of "$n")" "$r" >&2
    done
    printf 'mode %s, data in %s\n' "$(cat "$D/mode")" "$D" >&2
    return $rc
}

BINDIR=$(find_bindir)
# The postgres user may not be able to read the caller's working directory.
cd /
cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
start)
    case "${1:-}" in
    '' | --async) ;;
    *) die "unknown argument '$1'" ;;
    esac
    do_start "${1:-}"
    printf '%s\n' "$URI"
    ;;
uri)
    need_dir
    printf '%s\n' "$URI"
    ;;
status) do_status ;;
kill-primary) do_kill_primary ;;
stall-standby) do_stall_standby ;;
promote) do_promote ;;
stop) do_stop ;;
*)
    printf 'usage: %s start [--async] | uri | status | kill-primary | promote |\n       stall-standby | stop\n' "$0" >&2
    exit 2
    ;;
esac
