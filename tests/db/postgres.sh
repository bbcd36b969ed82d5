#!/bin/sh
# postgres.sh - a throw-away PostgreSQL (and optional pgbouncer) for tests/CI.
#
#   postgres.sh start [--pgbouncer]  start (or reuse) the server; print its URI
#   postgres.sh pgbouncer            start pgbouncer (transaction pooling) in
#                                    front of it; print the pgbouncer URI
#   postgres.sh uri [--pgbouncer]    print the URI (exit 1 if not running)
#   postgres.sh status               exit 0 if the server is running
#   postgres.sh restart [--pgbouncer] stop the server (fast: sessions end)
#                                    and start it again, keeping its data;
#                                    down for $MQS_RESTART_PAUSE_MS ms if
#                                    set; print the URI (pgbouncer stays up)
#   postgres.sh stop                 stop both and remove the data directory
#
# Only URIs go to stdout; progress and errors go to stderr, so CI can do
#   MQSTORE_TEST_URIS="$(tests/db/postgres.sh start)"
#
# Databases: mqstore (the URI's), mqstore_e2e (the broker's end-to-end
# tests, which need a store of their own) and mqstore_e2e_b / mqstore_e2e_c
# (the stores of the other brokers in the bridge tests: each broker of a
# network keeps its own store), all owned by the role mqs.
#
# The server listens on 127.0.0.1 only, with fsync and synchronous_commit on
# (the tests check durability-related behaviour, so no unsafe speed-ups on
# the server; only initdb skips its final sync, the data is throw-away).
#
# Environment: MQS_PG_PORT (55432), MQS_PGB_PORT (56432), MQS_PG_BINDIR (the
# newest /usr/lib/postgresql/*/bin, else PATH), MQS_PG_STATE (the file that
# remembers the data directory; /tmp/mqs-pg-<port>.dir).
set -eu

PORT="${MQS_PG_PORT:-55432}"
PGB_PORT="${MQS_PGB_PORT:-56432}"
USER_NAME=mqs
USER_PASS=mqs-secret
DB_NAME=mqstore
E2E_DB=mqstore_e2e
STATE="${MQS_PG_STATE:-/tmp/mqs-pg-$PORT.dir}"
PG_URI="postgresql://$USER_NAME:$USER_PASS@127.0.0.1:$PORT/$DB_NAME"
PGB_URI="postgresql://$USER_NAME:$USER_PASS@127.0.0.1:$PGB_PORT/$DB_NAME"

log() { printf 'postgres.sh: %s\n' "$*" >&2; }
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

# initdb, pg_ctl and pgbouncer refuse to run as root: run them as postgres.
if [ "$(id -u)" -eq 0 ]; then
    RUN_USER=postgres
    id "$RUN_USER" >/dev/null 2>&1 || die "running as root but there is no 'postgres' user to run the server as"
    as_owner() { runuser -u "$RUN_USER" -- "$@"; }
else
    RUN_USER=$(id -un)
    as_owner() { "$@"; }
fi

# The data directory recorded by the last start, if it still exists.
current_dir() {
    [ -f "$STATE" ] || return 1
    d=$(cat "$STATE")
    [ -n "$d" ] && [ -d "$d" ] || return 1
    printf '%s\n' "$d"
}

pg_running() {
    d=$(current_dir) || return 1
    as_owner "$BINDIR/pg_ctl" -D "$d/data" status >/dev/null 2>&1 || return 1
    # A killed postmaster can linger as a zombie, which pg_ctl counts as
    # running: look at its state too.
    pid=$(head -n 1 "$d/data/postmaster.pid" 2>/dev/null) || return 1
    if [ -r "/proc/$pid/stat" ]; then
        state=$(sed 's/.*) //' "/proc/$pid/stat" | cut -d' ' -f1)
        [ "$state" != Z ] || return 1
    fi
    return 0
}

pgb_running() {
    d=$(current_dir) || return 1
    [ -f "$d/pgbouncer.pid" ] || return 1
    kill -0 "$(cat "$d/pgbouncer.pid")" 2>/dev/null
}

# Wait until something accepts TCP connections on 127.0.0.1:$1.
wait_port() {
    i=0
    while [ $i -lt 100 ]; do
        if "$BINDIR/pg_isready" -q -h 127.0.0.1 -p "$1" -t 1 2>/dev/null; then
            return 0
        fi
        i=$((i + 1))
        sleep 0.1
    done
    return 1
}

psql_admin() {
    d=$1
    shift
    as_owner "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$d" -p "$PORT" -U postgres -d postgres "$@"
}

# The broker's end-to-end tests get a database of their own beside the main
# one (a broker recovers its whole store; scripts/test.sh uses
# ${MQSTORE_TEST_PG_URI%/*}/mqstore_e2e). Also made on a server started
# before this existed.
# The bridge tests (tests/e2e/test_bridge.py) run brokers with a store each:
# ${E2E_DB}_b and ${E2E_DB}_c.
ensure_e2e_db() {
    d=$1
    for db in "$E2E_DB" "${E2E_DB}_b" "${E2E_DB}_c"; do
        have=$(psql_admin "$d" -At -c "SELECT 1 FROM pg_database WHERE datname = '$db'") ||
            die "cannot list the databases"
        [ "$have" = 1 ] && continue
        psql_admin "$d" -c "CREATE DATABASE $db OWNER $USER_NAME" ||
            die "creating database $db failed"
        psql_admin "$d" -d "$db" -c "GRANT ALL ON SCHEMA public TO $USER_NAME" ||
            die "granting schema public of $db to $USER_NAME failed"
    done
}

start_pg() {
    if pg_running; then
        log "already running in $(current_dir)"
        ensure_e2e_db "$(current_dir)"
        return 0
    fi
    # Left over from a crash or a killed CI job: clear it first.
    if d=$(current_dir); then
        log "removing stale $d"
        stop_all
    fi
    if command -v ss >/dev/null 2>&1 && ss -Hltn "sport = :$PORT" 2>/dev/null | grep -q .; then
        die "port $PORT is already in use by another process; set MQS_PG_PORT to a free port"
    fi

    d=$(mktemp -d /tmp/mqs-pg.XXXXXX)
    chmod 700 "$d"
    [ "$RUN_USER" = "$(id -un)" ] || chown "$RUN_USER" "$d"
    printf '%s\n' "$d" >"$STATE"

    log "initdb in $d/data"
    # Local (Unix socket in $d) trust for the setup below; TCP needs scram.
    if ! as_owner "$BINDIR/initdb" -D "$d/data" -U postgres -E UTF8 --locale=C \
        --auth-local=trust --auth-host=scram-sha-256 --no-sync \
        >"$d/initdb.log" 2>&1; then
        cat "$d/initdb.log" >&2
        die "initdb failed (log above)"
    fi
    cat >>"$d/data/postgresql.conf" <<EOF

# mqstore test server (tests/db/postgres.sh)
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$d'
fsync = on
synchronous_commit = on
full_page_writes = on
password_encryption = 'scram-sha-256'
max_connections = 200
lc_messages = 'C'
log_min_messages = warning
log_min_error_statement = error
EOF
    log "starting on 127.0.0.1:$PORT"
    if ! as_owner "$BINDIR/pg_ctl" -D "$d/data" -l "$d/server.log" -w -t 60 start >/dev/null; then
        tail -n 30 "$d/server.log" >&2 || true
        die "the server did not start (log above, full log in $d/server.log)"
    fi
    psql_admin "$d" -c "CREATE ROLE $USER_NAME LOGIN PASSWORD '$USER_PASS'" \
        -c "CREATE DATABASE $DB_NAME OWNER $USER_NAME" ||
        die "creating role $USER_NAME / database $DB_NAME failed"
    # PostgreSQL 15 no longer lets everyone create in public; the owner of the
    # database does not own its public schema either, so grant it.
    psql_admin "$d" -d "$DB_NAME" -c "GRANT ALL ON SCHEMA public TO $USER_NAME" ||
        die "granting schema public to $USER_NAME failed"
    ensure_e2e_db "$d"
    wait_port "$PORT" || die "server started but 127.0.0.1:$PORT does not answer"
    log "ready"
}

start_pgb() {
    command -v pgbouncer >/dev/null 2>&1 || die "pgbouncer not found: apt-get install pgbouncer"
    pg_running || die "PostgreSQL is not running: run '$0 start' first"
    if pgb_running; then
        log "pgbouncer already running"
        return 0
    fi
    d=$(current_dir)
    # auth_file with the clear password lets pgbouncer do SCRAM both ways.
    printf '"%s" "%s"\n' "$USER_NAME" "$USER_PASS" >"$d/userlist.txt"
    cat >"$d/pgbouncer.ini" <<EOF
[databases]
$DB_NAME = host=127.0.0.1 port=$PORT dbname=$DB_NAME
$E2E_DB = host=127.0.0.1 port=$PORT dbname=$E2E_DB
${E2E_DB}_b = host=127.0.0.1 port=$PORT dbname=${E2E_DB}_b
${E2E_DB}_c = host=127.0.0.1 port=$PORT dbname=${E2E_DB}_c

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
unix_socket_dir = $d
auth_type = scram-sha-256
auth_file = $d/userlist.txt
pool_mode = transaction
max_client_conn = 400
default_pool_size = 20
ignore_startup_parameters = extra_float_digits
# After a failed server login (the server restarting under an HA test)
# retry soon, not after the default 15 s during which every client fails.
server_login_retry = 0.2
pidfile = $d/pgbouncer.pid
logfile = $d/pgbouncer.log
log_connections = 0
log_disconnections = 0
EOF
    [ "$RUN_USER" = "$(id -un)" ] || chown "$RUN_USER" "$d/userlist.txt" "$d/pgbouncer.ini"
    chmod 600 "$d/userlist.txt"
    if ss -Hltn "sport = :$PGB_PORT" 2>/dev/null | grep -q .; then
        die "port $PGB_PORT is already in use; set MQS_PGB_PORT to a free port"
    fi
    log "starting pgbouncer (transaction pooling) on 127.0.0.1:$PGB_PORT"
    if ! as_owner pgbouncer -d -q "$d/pgbouncer.ini"; then
        tail -n 20 "$d/pgbouncer.log" >&2 || true
        die "pgbouncer did not start (log above)"
    fi
    wait_port "$PGB_PORT" || {
        tail -n 20 "$d/pgbouncer.log" >&2 || true
        die "pgbouncer started but 127.0.0.1:$PGB_PORT does not answer"
    }
}

restart_pg() {
    d=$(current_dir) || die "PostgreSQL is not running: use '$0 start'"
    pid=$(head -n 1 "$d/data/postmaster.pid" 2>/dev/null) || die "PostgreSQL is not running (no postmaster.pid in $d/data)"
    state=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)
    [ -n "$state" ] && [ "$state" != Z ] || die "PostgreSQL is not running (postmaster $pid is gone)"
    # SIGINT is a fast shutdown (what pg_ctl stop -m fast sends): every
    # session ends at once, as a crash or failover of the server looks from
    # the clients' side, and the data is checkpointed. Sent directly, not
    # through runuser + pg_ctl, so the outage starts when the HA tests think
    # it does.
    kill -INT "$pid" || die "cannot signal the postmaster ($pid)"
    i=0
    while kill -0 "$pid" 2>/dev/null; do
        i=$((i + 1))
        [ $i -lt 1200 ] || die "the server did not stop within 60 s (log in $d/server.log)"
        sleep 0.05
    done
    # HA tests hold the server down for a while (longer than a lease).
    pause=${MQS_RESTART_PAUSE_MS:-0}
    case "$pause" in
    '' | *[!0-9]*) die "MQS_RESTART_PAUSE_MS must be a number of milliseconds, not '$pause'" ;;
    esac
    if [ "$pause" -gt 0 ]; then
        sleep "$(awk "BEGIN{print $pause/1000}")"
    fi
    if ! as_owner "$BINDIR/pg_ctl" -D "$d/data" -l "$d/server.log" -w -t 60 start >/dev/null; then
        tail -n 30 "$d/server.log" >&2 || true
        die "the server did not start again (log above, full log in $d/server.log)"
    fi
    wait_port "$PORT" || die "server restarted but 127.0.0.1:$PORT does not answer"
    log "restarted (data in $d)"
}

stop_all() {
    d=$(current_dir) || {
        rm -f "$STATE"
        log "not running"
        return 0
    }
    if [ -f "$d/pgbouncer.pid" ]; then
        pid=$(cat "$d/pgbouncer.pid")
        if kill "$pid" 2>/dev/null; then
            i=0
            while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do
                i=$((i + 1))
                sleep 0.1
            done
        fi
    fi
    if [ -d "$d/data" ]; then
        # fast = roll back open transactions and stop now; immediate if stuck.
        as_owner "$BINDIR/pg_ctl" -D "$d/data" -m fast -w -t 30 stop >/dev/null 2>&1 ||
            as_owner "$BINDIR/pg_ctl" -D "$d/data" -m immediate -w -t 10 stop >/dev/null 2>&1 || true
    fi
    case "$d" in
    /tmp/mqs-pg.*) rm -rf "$d" ;;
    *) log "not removing unexpected directory $d" ;;
    esac
    rm -f "$STATE"
    log "stopped"
}

BINDIR=$(find_bindir)
# The postgres user may not be able to read the caller's working directory.
cd /
cmd="${1:-}"
[ $# -gt 0 ] && shift
want_pgb=0
for a in "$@"; do
    case "$a" in
    --pgbouncer) want_pgb=1 ;;
    *) die "unknown argument '$a'" ;;
    esac
done

case "$cmd" in
start)
    start_pg
    if [ $want_pgb -eq 1 ]; then
        start_pgb
        printf '%s\n' "$PGB_URI"
    else
        printf '%s\n' "$PG_URI"
    fi
    ;;
pgbouncer)
    start_pgb
    printf '%s\n' "$PGB_URI"
    ;;
uri)
    if [ $want_pgb -eq 1 ]; then
        pgb_running || die "pgbouncer is not running"
        printf '%s\n' "$PGB_URI"
    else
        pg_running || die "PostgreSQL is not running"
        printf '%s\n' "$PG_URI"
    fi
    ;;
status)
    pg_running
    ;;
restart)
    restart_pg
    if [ $want_pgb -eq 1 ]; then
        pgb_running || die "pgbouncer is not running"
        printf '%s\n' "$PGB_URI"
    else
        printf '%s\n' "$PG_URI"
    fi
    ;;
stop)
    stop_all
    ;;
*)
    printf 'usage: %s start [--pgbouncer] | pgbouncer | uri [--pgbouncer] | status |\n       restart [--pgbouncer] | stop\n' "$0" >&2
    exit 2
    ;;
esac
