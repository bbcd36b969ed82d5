#!/usr/bin/env bash
# Throw-away MariaDB server for the test suite and CI.
#
#   tests/db/mariadb.sh start   start it (or find the running one), print its URI
#   tests/db/mariadb.sh uri     print the URI
#   tests/db/mariadb.sh status  exit 0 if it is running
#   tests/db/mariadb.sh restart stop and start the server, keeping its data
#                               (down for $MQS_RESTART_PAUSE_MS ms if set)
#                               (for reconnect / failover tests)
#   tests/db/mariadb.sh stop    stop it and delete its data
#
# The URI (mysql://mqs:mqs-secret@127.0.0.1:53306/mqstore) is the only thing
# written to stdout, so `URI=$(tests/db/mariadb.sh start)` works; progress and
# errors go to stderr.
#
# The server listens on 127.0.0.1 only and keeps everything (data, socket,
# log) in one mktemp directory owned by mysql. Durability settings are the
# production ones (innodb_flush_log_at_trx_commit=1) so benchmarks mean
# something. User mqs may do anything in the databases mqstore*, and has
# PROCESS and CONNECTION ADMIN so tests can find and KILL connections.
#
# Environment: MQS_MARIADB_PORT (53306); MQS_MARIADB_OPTS: extra server
# settings, ';'-separated my.cnf lines, e.g. "innodb_autoinc_lock_mode=2"
# (applied when the server is created by start). Needs root (the server drops to
# --user=mysql) and the mariadb-server + mariadb-client packages.
set -euo pipefail

PORT=${MQS_MARIADB_PORT:-53306}
DB=mqstore
USER_NAME=mqs
PASSWORD=mqs-secret
URI="mysql://${USER_NAME}:${PASSWORD}@127.0.0.1:${PORT}/${DB}"
# Remembers which mktemp directory belongs to the server on this port.
POINTER=/tmp/mqs-mariadb-${PORT}.dir
LOCK=/tmp/mqs-mariadb-${PORT}.lock
START_TIMEOUT=60
STOP_TIMEOUT=60

log() { printf 'mariadb.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

find_bin() {
    local name
    for name in "$@"; do
        if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return 0; fi
        if [ -x "/usr/sbin/$name" ]; then echo "/usr/sbin/$name"; return 0; fi
    done
    return 1
}

tools() {
    INSTALL_DB=$(find_bin mariadb-install-db mysql_install_db) ||
        die "mariadb-install-db not found: apt-get install mariadb-server"
    SERVER=$(find_bin mariadbd mysqld) ||
        die "mariadbd not found: apt-get install mariadb-server"
    CLIENT=$(find_bin mariadb mysql) ||
        die "mariadb client not found: apt-get install mariadb-client"
    ADMIN=$(find_bin mariadb-admin mysqladmin) ||
        die "mariadb-admin not found: apt-get install mariadb-client"
    id mysql >/dev/null 2>&1 || die "no 'mysql' system user: apt-get install mariadb-server"
    [ "$(id -u)" -eq 0 ] || die "must run as root (the server is started with --user=mysql)"
}

# Directory of the running server, or nothing.
current_dir() {
    local dir
    [ -f "$POINTER" ] || return 0
    dir=$(cat "$POINTER")
    case "$dir" in /tmp/mqs-mariadb.*) ;; *) return 0 ;; esac
    [ -d "$dir" ] && echo "$dir"
}

server_pid() { # dir
    local pid
    [ -f "$1/mariadbd.pid" ] || return 1
    pid=$(cat "$1/mariadbd.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

ping_root() { # dir
    "$ADMIN" --no-defaults --protocol=socket --socket="$1/mariadbd.sock" -uroot \
        --connect-timeout=2 ping >/dev/null 2>&1
}

root_sql() { # dir sql
    "$CLIENT" --no-defaults --protocol=socket --socket="$1/mariadbd.sock" -uroot \
        --batch --skip-column-names -e "$2"
}

running() { # dir
    server_pid "$1" >/dev/null && ping_root "$1"
}

# Stop the server in dir (if any) and delete dir.
teardown() { # dir
    halt "$1"
    rm -rf -- "$1"
}

# Start mariadbd on an initialized dir and wait until it answers.
launch() { # dir
    local dir=$1 i pid
    log "starting mariadbd on 127.0.0.1:$PORT"
    # setsid: the server must outlive this script and its process group.
    setsid "$SERVER" --defaults-file="$dir/my.cnf" --user=mysql \
        </dev/null >>"$dir/mariadbd.log" 2>&1 9>&- &
    pid=$!
    for ((i = 0; i < START_TIMEOUT * 10; i++)); do
        ping_root "$dir" && return 0
        if ! kill -0 "$pid" 2>/dev/null && ! server_pid "$dir" >/dev/null; then
            tail -n 30 "$dir/mariadbd.log" >&2 || true
            die "mariadbd exited during startup (log above)"
        fi
        sleep 0.1
    done
    tail -n 30 "$dir/mariadbd.log" >&2 || true
    die "mariadbd did not answer within ${START_TIMEOUT}s (log above)"
}

# Stop the server in dir, keeping its data.
halt() { # dir
    local dir=$1 pid i
    pid=$(server_pid "$dir") || return 0
    log "stopping mariadbd (pid $pid)"
    "$ADMIN" --no-defaults --protocol=socket --socket="$dir/mariadbd.sock" -uroot \
        --connect-timeout=5 shutdown >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    log "mariadbd did not stop in ${STOP_TIMEOUT}s, killing it"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.2
}

STARTING=
on_exit() {
    local rc=$?
    if [ -n "$STARTING" ]; then
        log "start failed; cleaning up $STARTING"
        teardown "$STARTING"
        rm -f "$POINTER"
    fi
    exit "$rc"
}

start() {
    local dir pid
    dir=$(current_dir || true)
    if [ -n "$dir" ]; then
        if running "$dir"; then
            echo "$URI"
            return 0
        fi
        log "removing stale server directory $dir"
        teardown "$dir"
        rm -f "$POINTER"
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
        die "port $PORT on 127.0.0.1 is taken by another process; set MQS_MARIADB_PORT to a free port"
    fi

    dir=$(mktemp -d /tmp/mqs-mariadb.XXXXXX)
    # Until the server is ready, any exit (error, die, signal) must not leave
    # a half-started server or its directory behind.
    STARTING=$dir
    trap 'on_exit' EXIT
    chown mysql:mysql "$dir"
    chmod 750 "$dir"
    cat >"$dir/my.cnf" <<EOF
[mariadbd]
datadir=$dir/data
socket=$dir/mariadbd.sock
pid-file=$dir/mariadbd.pid
log-error=$dir/mariadbd.log
port=$PORT
bind-address=127.0.0.1
skip-name-resolve
skip-log-bin
character-set-server=utf8mb4
innodb_flush_log_at_trx_commit=1
max_allowed_packet=64M
innodb_buffer_pool_size=128M
max_connections=200
EOF
    if [ -n "${MQS_MARIADB_OPTS:-}" ]; then
        tr ';' '\n' <<<"$MQS_MARIADB_OPTS" >>"$dir/my.cnf"
    fi
    chown mysql:mysql "$dir/my.cnf"

    log "initializing $dir/data"
    if ! "$INSTALL_DB" --defaults-file="$dir/my.cnf" --user=mysql --skip-test-db \
        --auth-root-authentication-method=socket >"$dir/install.log" 2>&1; then
        cat "$dir/install.log" >&2
        false
    fi

    echo "$dir" >"$POINTER"
    launch "$dir"

    root_sql "$dir" "
        CREATE DATABASE IF NOT EXISTS \`$DB\` CHARACTER SET utf8mb4;
        CREATE DATABASE IF NOT EXISTS \`mqstore_e2e\` CHARACTER SET utf8mb4;
        CREATE USER IF NOT EXISTS '$USER_NAME'@'127.0.0.1' IDENTIFIED BY '$PASSWORD';
        CREATE USER IF NOT EXISTS '$USER_NAME'@'localhost' IDENTIFIED BY '$PASSWORD';
        GRANT ALL PRIVILEGES ON \`mqstore%\`.* TO '$USER_NAME'@'127.0.0.1', '$USER_NAME'@'localhost';
        GRANT PROCESS, CONNECTION ADMIN ON *.* TO '$USER_NAME'@'127.0.0.1', '$USER_NAME'@'localhost';
    "
    STARTING=
    pid=$(server_pid "$dir" || echo '?')
    log "ready (pid $pid, dir $dir, socket $dir/mariadbd.sock)"
    echo "$URI"
}

stop() {
    local dir
    dir=$(current_dir || true)
    if [ -z "$dir" ]; then
        log "not running"
        rm -f "$POINTER"
        return 0
    fi
    teardown "$dir"
    rm -f "$POINTER"
    log "stopped, removed $dir"
}

restart() {
    local dir
    dir=$(current_dir || true)
    [ -n "$dir" ] || die "not running: use start"
    halt "$dir"
    # HA tests hold the server down for a while (longer than a lease).
    if [ -n "${MQS_RESTART_PAUSE_MS:-}" ]; then
        sleep "$(awk "BEGIN{print ${MQS_RESTART_PAUSE_MS}/1000}")"
    fi
    launch "$dir"
    log "restarted (dir $dir)"
    echo "$URI"
}

status() {
    local dir
    dir=$(current_dir || true)
    if [ -n "$dir" ] && running "$dir"; then
        log "running (dir $dir)"
        echo "$URI"
        return 0
    fi
    log "not running"
    return 1
}

cmd=${1:-}
case "$cmd" in
start | stop | status | restart)
    tools
    # One start/stop at a time per port (parallel CI jobs on one machine).
    exec 9>"$LOCK"
    flock -w 120 9 || die "could not lock $LOCK within 120s"
    "$cmd"
    ;;
uri) echo "$URI" ;;
*)
    echo "usage: $0 start|stop|status|restart|uri" >&2
    exit 2
    ;;
esac
