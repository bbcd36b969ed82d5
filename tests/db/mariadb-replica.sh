#!/usr/bin/env bash
# Throw-away MariaDB primary + replica (GTID replication, semi-synchronous)
# for the switchover test (tests/replication/test_mariadb_switchover.py).
#
#   mariadb-replica.sh start       create both servers, start replication;
#                                  print the primary node's URI
#   mariadb-replica.sh switchover  what an operator does for a planned
#                                  switchover: the primary goes read_only,
#                                  the replica executes everything it had
#                                  (MASTER_GTID_WAIT), its replication is
#                                  stopped and removed (RESET SLAVE ALL) and
#                                  it becomes writable; print its URI
#   mariadb-replica.sh uri-primary print the URI of the node that started as
#                                  the primary (MQS_MARIADB_PRIMARY_PORT)
#   mariadb-replica.sh uri-replica print the URI of the node that started as
#                                  the replica (MQS_MARIADB_REPLICA_PORT)
#   mariadb-replica.sh status      each node's role, GTID position and
#                                  semi-sync state (stderr); exit 0 if one
#                                  node is writable
#   mariadb-replica.sh stop        stop both servers and delete their data
#
# "primary" and "replica" name the nodes by how they started: after a
# switchover the replica node is the writable one and the primary node stays
# read-only and detached (one switchover per start; status shows the roles).
# Only URIs go to stdout, so `URI=$(tests/db/mariadb-replica.sh start)`
# works; progress and errors go to stderr. Every wait is bounded.
#
# Conventions of tests/db/mariadb.sh: 127.0.0.1 only, everything (data,
# sockets, logs) in one mktemp directory owned by mysql, root over the Unix
# socket, user mqs/mqs-secret with all rights on mqstore*, database mqstore,
# production durability (innodb_flush_log_at_trx_commit=1, sync_binlog=1).
#
# Replication: GTID (MASTER_USE_GTID=slave_pos) from the primary's first
# binlog event, so the replica gets the users and databases through
# replication. Semi-synchronous (built into MariaDB >= 10.3.3), lossless:
# rpl_semi_sync_master_wait_point=AFTER_SYNC, so a COMMIT returns to its
# client only once the replica has the transaction in its relay log. The
# primary waits at most MQS_MARIADB_SEMISYNC_TIMEOUT_MS for that
# acknowledgement, then falls back to asynchronous replication (it never
# hangs on a dead replica; status shows the fallback). Only the primary has
# semi-sync master enabled: the replica, once it is the primary, has no
# replica of its own to wait for. The replica runs read_only (the
# replication thread is exempt; mqs has no SUPER / READ ONLY ADMIN).
#
# The two servers start back to back, usually within the same second or
# one apart: the case that once made mqstore's MySQL backend take them for
# one server (its crash detector's "session epoch" was the start time in
# whole seconds, +-1 s; it now includes @@server_id). The switchover test
# then fails on a takeover before the lease could end, so keep it that way.
# MQS_MARIADB_EPOCH_GAP=N (default 0) waits until N s after the primary's
# start before starting the replica.
#
# Environment: MQS_MARIADB_PRIMARY_PORT (53350), MQS_MARIADB_REPLICA_PORT
# (53351), MQS_MARIADB_SEMISYNC_TIMEOUT_MS (1000). Needs root (the servers
# drop to --user=mysql) and the mariadb-server + mariadb-client packages.
set -euo pipefail

PORT_P=${MQS_MARIADB_PRIMARY_PORT:-53350}
PORT_R=${MQS_MARIADB_REPLICA_PORT:-53351}
SEMI_MS=${MQS_MARIADB_SEMISYNC_TIMEOUT_MS:-1000}
for v in "$PORT_P" "$PORT_R" "$SEMI_MS"; do
    case "$v" in
    '' | *[!0-9]*)
        echo "mariadb-replica.sh: MQS_MARIADB_PRIMARY_PORT, MQS_MARIADB_REPLICA_PORT and MQS_MARIADB_SEMISYNC_TIMEOUT_MS must be numbers" >&2
        exit 2
        ;;
    esac
done
[ "$PORT_P" != "$PORT_R" ] || { echo "mariadb-replica.sh: the two ports must differ" >&2; exit 2; }
DB=mqstore
USER_NAME=mqs
PASSWORD=mqs-secret
REPL_USER=mqs_repl
REPL_PASSWORD=mqs-repl-secret
# Remembers which mktemp directory belongs to the pair on these ports.
POINTER=/tmp/mqs-mariadb-replica-${PORT_P}.dir
LOCK=/tmp/mqs-mariadb-replica-${PORT_P}.lock
START_TIMEOUT=60
STOP_TIMEOUT=60
SYNC_TIMEOUT=20     # replica connected and caught up after start
SWITCH_TIMEOUT=10   # read_only on the primary, MASTER_GTID_WAIT on the replica
EPOCH_GAP=${MQS_MARIADB_EPOCH_GAP:-0} # seconds between the two servers' start times

log() { printf 'mariadb-replica.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

uri_of() { # port
    echo "mysql://${USER_NAME}:${PASSWORD}@127.0.0.1:$1/${DB}"
}

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
    [ "$(id -u)" -eq 0 ] || die "must run as root (the servers are started with --user=mysql)"
}

# Directory of the pair, or nothing.
current_dir() {
    local dir
    [ -f "$POINTER" ] || return 0
    dir=$(cat "$POINTER")
    case "$dir" in /tmp/mqs-mariadb-replica.*) ;; *) return 0 ;; esac
    [ -d "$dir" ] && echo "$dir"
}

need_dir() {
    D=$(current_dir || true)
    [ -n "$D" ] || die "no primary + replica pair is running: use '$0 start'"
}

port_of() { if [ "$1" = p ]; then echo "$PORT_P"; else echo "$PORT_R"; fi; }
other() { if [ "$1" = p ]; then echo r; else echo p; fi; }
name_of() { if [ "$1" = p ]; then echo "primary node"; else echo "replica node"; fi; }

server_pid() { # node
    local pid
    [ -f "$D/$1/mariadbd.pid" ] || return 1
    pid=$(cat "$D/$1/mariadbd.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

ping_root() { # node
    "$ADMIN" --no-defaults --protocol=socket --socket="$D/$1/mariadbd.sock" -uroot \
        --connect-timeout=2 ping >/dev/null 2>&1
}

# Root over the node's socket; the client gives up on an unreachable server
# after 5 s (every statement that can wait longer is bounded in its SQL).
root_sql() { # node sql
    "$CLIENT" --no-defaults --protocol=socket --socket="$D/$1/mariadbd.sock" -uroot \
        --connect-timeout=5 --batch --skip-column-names -e "$2"
}

running() { # node
    server_pid "$1" >/dev/null && ping_root "$1"
}

# Start mariadbd of a node on its initialized data and wait until it answers.
launch() { # node
    local n=$1 i pid
    log "starting the $(name_of "$n") on 127.0.0.1:$(port_of "$n")"
    # setsid: the server must outlive this script and its process group.
    setsid "$SERVER" --defaults-file="$D/$n/my.cnf" --user=mysql \
        </dev/null >>"$D/$n/mariadbd.log" 2>&1 9>&- &
    pid=$!
    for ((i = 0; i < START_TIMEOUT * 10; i++)); do
        ping_root "$n" && return 0
        if ! kill -0 "$pid" 2>/dev/null && ! server_pid "$n" >/dev/null; then
            tail -n 30 "$D/$n/mariadbd.log" >&2 || true
            die "mariadbd ($(name_of "$n")) exited during startup (log above)"
        fi
        sleep 0.1
    done
    tail -n 30 "$D/$n/mariadbd.log" >&2 || true
    die "mariadbd ($(name_of "$n")) did not answer within ${START_TIMEOUT}s (log above)"
}

# Stop the server of a node, keeping its data.
halt() { # node
    local n=$1 pid i
    pid=$(server_pid "$n") || return 0
    log "stopping the $(name_of "$n") (pid $pid)"
    "$ADMIN" --no-defaults --protocol=socket --socket="$D/$n/mariadbd.sock" -uroot \
        --connect-timeout=5 shutdown >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    log "mariadbd ($(name_of "$n")) did not stop in ${STOP_TIMEOUT}s, killing it"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.2
}

teardown() {
    # Both at once: each shutdown takes a second or two.
    local job
    halt r &
    job=$!
    halt p
    wait "$job" || true
    case "$D" in
    /tmp/mqs-mariadb-replica.*) rm -rf -- "$D" ;;
    *) log "not removing unexpected directory $D" ;;
    esac
}

STARTING=
on_exit() {
    local rc=$?
    if [ -n "$STARTING" ]; then
        log "start failed; cleaning up $STARTING"
        D=$STARTING
        teardown
        rm -f "$POINTER"
    fi
    exit "$rc"
}

write_cnf() { # node server_id
    local n=$1 id=$2
    cat >"$D/$n/my.cnf" <<EOF
[mariadbd]
datadir=$D/$n/data
socket=$D/$n/mariadbd.sock
pid-file=$D/$n/mariadbd.pid
log-error=$D/$n/mariadbd.log
port=$(port_of "$n")
bind-address=127.0.0.1
skip-name-resolve
character-set-server=utf8mb4
innodb_flush_log_at_trx_commit=1
max_allowed_packet=64M
innodb_buffer_pool_size=128M
max_connections=200
# replication (tests/db/mariadb-replica.sh)
server_id=$id
log_bin=$D/$n/binlog
relay_log=$D/$n/relay
binlog_format=ROW
sync_binlog=1
log_slave_updates=ON
gtid_strict_mode=ON
rpl_semi_sync_master_wait_point=AFTER_SYNC
rpl_semi_sync_master_timeout=$SEMI_MS
EOF
    if [ "$n" = p ]; then
        # No waiting for a replica that is not there yet: the setup's own
        # commits go through at once; switched on once the replica is in.
        cat >>"$D/$n/my.cnf" <<EOF
rpl_semi_sync_master_enabled=ON
rpl_semi_sync_master_wait_no_slave=OFF
EOF
    else
        cat >>"$D/$n/my.cnf" <<EOF
rpl_semi_sync_slave_enabled=ON
read_only=ON
skip_slave_start
EOF
    fi
}

# Seconds since the epoch at which the node's server started.
start_time() { # node
    root_sql "$1" "SELECT UNIX_TIMESTAMP() - VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'UPTIME'"
}

status_var() { # node name
    root_sql "$1" "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = '$2'"
}

# One field of SHOW SLAVE STATUS on a node (empty when it is no replica).
slave_field() { # node field
    "$CLIENT" --no-defaults --protocol=socket --socket="$D/$1/mariadbd.sock" -uroot \
        --connect-timeout=5 --batch -e "SHOW SLAVE STATUS\G" 2>/dev/null |
        awk -v f="$2" -F': ' '$1 ~ "^ *"f"$" { v = $2 } END { print v }'
}

start() {
    local t0 st gap i io sql clients semi pos rc
    D=$(current_dir || true)
    if [ -n "$D" ]; then
        if running p && running r; then
            log "already running in $D"
            uri_of "$PORT_P"
            return 0
        fi
        log "removing stale pair directory $D"
        teardown
        rm -f "$POINTER"
    fi
    for p in "$PORT_P" "$PORT_R"; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            die "port $p on 127.0.0.1 is taken by another process; set MQS_MARIADB_PRIMARY_PORT / MQS_MARIADB_REPLICA_PORT to free ports"
        fi
    done

    t0=$(date +%s.%N)
    D=$(mktemp -d /tmp/mqs-mariadb-replica.XXXXXX)
    # Until both servers are ready, any exit (error, die, signal) must not
    # leave a half-started server or its directory behind.
    STARTING=$D
    trap 'on_exit' EXIT
    mkdir "$D/p" "$D/r"
    chown mysql:mysql "$D" "$D/p" "$D/r"
    chmod 750 "$D"
    echo p >"$D/primary"

    # One mariadb-install-db, copied to the replica: both start from the
    # same empty system tables, and everything after (users, databases,
    # mqstore's schema) reaches the replica through replication.
    printf '[mariadbd]\ndatadir=%s\nskip-log-bin\n' "$D/p/data" >"$D/install.cnf"
    log "initializing $D/p/data"
    if ! "$INSTALL_DB" --defaults-file="$D/install.cnf" --user=mysql --skip-test-db \
        --auth-root-authentication-method=socket >"$D/install.log" 2>&1; then
        cat "$D/install.log" >&2
        false
    fi
    cp -a "$D/p/data" "$D/r/data"
    write_cnf p 1
    write_cnf r 2
    chown mysql:mysql "$D/p/my.cnf" "$D/r/my.cnf"

    echo "$D" >"$POINTER"
    launch p
    root_sql p "
        CREATE DATABASE IF NOT EXISTS \`$DB\` CHARACTER SET utf8mb4;
        CREATE DATABASE IF NOT EXISTS \`mqstore_e2e\` CHARACTER SET utf8mb4;
        CREATE USER IF NOT EXISTS '$USER_NAME'@'127.0.0.1' IDENTIFIED BY '$PASSWORD';
        CREATE USER IF NOT EXISTS '$USER_NAME'@'localhost' IDENTIFIED BY '$PASSWORD';
        GRANT ALL PRIVILEGES ON \`mqstore%\`.* TO '$USER_NAME'@'127.0.0.1', '$USER_NAME'@'localhost';
        GRANT PROCESS, CONNECTION ADMIN ON *.* TO '$USER_NAME'@'127.0.0.1', '$USER_NAME'@'localhost';
        CREATE USER IF NOT EXISTS '$REPL_USER'@'127.0.0.1' IDENTIFIED BY '$REPL_PASSWORD';
        GRANT REPLICATION SLAVE ON *.* TO '$REPL_USER'@'127.0.0.1';
    " || die "creating users and databases on the primary failed"

    # MQS_MARIADB_EPOCH_GAP (see the header); 0 = at once.
    st=$(start_time p)
    gap=$((st + EPOCH_GAP - $(date +%s)))
    if [ "$gap" -gt 0 ]; then
        log "waiting ${gap}s so the replica's start time differs from the primary's"
        sleep "$gap"
    fi
    launch r
    root_sql r "
        CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=$PORT_P,
            MASTER_USER='$REPL_USER', MASTER_PASSWORD='$REPL_PASSWORD',
            MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1,
            MASTER_HEARTBEAT_PERIOD=1;
        START SLAVE;
    " || die "starting replication on the replica failed"

    # Ready once the replica runs both threads, executed everything, and
    # the primary counts it as its semi-sync replica.
    pos=$(root_sql p "SELECT @@GLOBAL.gtid_binlog_pos")
    rc=$(root_sql r "SELECT MASTER_GTID_WAIT('$pos', $SYNC_TIMEOUT)") ||
        die "MASTER_GTID_WAIT on the replica failed"
    if [ "$rc" != 0 ]; then
        log "replica: IO $(slave_field r Slave_IO_Running), SQL $(slave_field r Slave_SQL_Running), last error: $(slave_field r Last_IO_Error) $(slave_field r Last_SQL_Error)"
        die "the replica did not reach the primary's GTID position $pos within ${SYNC_TIMEOUT}s (logs in $D)"
    fi
    for ((i = 0; ; i++)); do
        io=$(slave_field r Slave_IO_Running)
        sql=$(slave_field r Slave_SQL_Running)
        clients=$(status_var p Rpl_semi_sync_master_clients)
        [ "$io" = Yes ] && [ "$sql" = Yes ] && [ "${clients:-0}" -ge 1 ] && break
        [ $i -lt $((SYNC_TIMEOUT * 20)) ] ||
            die "replication is not semi-synchronous after ${SYNC_TIMEOUT}s (IO $io, SQL $sql, semi-sync clients ${clients:-?}; logs in $D)"
        sleep 0.05
    done
    # From now on a lost replica costs each COMMIT up to the timeout until
    # the primary falls back to asynchronous replication.
    root_sql p "SET GLOBAL rpl_semi_sync_master_wait_no_slave = ON"
    # A write the replica acknowledges switches semi-sync on.
    root_sql p "CREATE DATABASE IF NOT EXISTS mqstore_ping; DROP DATABASE mqstore_ping"
    semi=$(status_var p Rpl_semi_sync_master_status)
    [ "$semi" = ON ] ||
        die "the primary's semi-sync status is '$semi' after a write (want ON; logs in $D)"
    # The setup's commits before the replica came count as unacknowledged:
    # switchover reports only the ones after.
    status_var p Rpl_semi_sync_master_yes_tx >"$D/semi_yes0"
    status_var p Rpl_semi_sync_master_no_tx >"$D/semi_no0"
    STARTING=
    log "ready in $(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $t0}") s: primary 127.0.0.1:$PORT_P (pid $(server_pid p)), replica 127.0.0.1:$PORT_R (pid $(server_pid r)), semi-sync ON, GTID $pos, data in $D"
    uri_of "$PORT_P"
}

stop() {
    D=$(current_dir || true)
    if [ -z "$D" ]; then
        log "not running"
        rm -f "$POINTER"
        return 0
    fi
    teardown
    rm -f "$POINTER"
    log "stopped, removed $D"
}

switchover() {
    local p r t0 pos rc ms semi
    need_dir
    p=$(cat "$D/primary")
    r=$(other "$p")
    running "$p" || die "the current primary ($(name_of "$p"), 127.0.0.1:$(port_of "$p")) is not running"
    running "$r" || die "the replica ($(name_of "$r"), 127.0.0.1:$(port_of "$r")) is not running"
    [ -n "$(slave_field "$r" Slave_IO_Running)" ] ||
        die "the $(name_of "$r") does not replicate (a switchover was done already: one per start)"
    # Whether the primary was still semi-synchronous, and how many commits
    # it made since start without a replica's acknowledgement (timeouts).
    semi="semi-sync $(status_var "$p" Rpl_semi_sync_master_status), $(($(status_var "$p" Rpl_semi_sync_master_yes_tx) - $(cat "$D/semi_yes0" 2>/dev/null || echo 0))) commits acknowledged by the replica, $(($(status_var "$p" Rpl_semi_sync_master_no_tx) - $(cat "$D/semi_no0" 2>/dev/null || echo 0))) not"
    t0=$(date +%s%N)

    # 1. No more writes on the primary. SET GLOBAL read_only waits for
    #    running write transactions to end (bounded by lock_wait_timeout);
    #    afterwards only SUPER / READ ONLY ADMIN users could write, and mqs
    #    is neither.
    if ! root_sql "$p" "SET SESSION lock_wait_timeout = $SWITCH_TIMEOUT; SET GLOBAL read_only = ON"; then
        die "could not make the primary read-only within ${SWITCH_TIMEOUT}s; nothing changed"
    fi
    pos=$(root_sql "$p" "SELECT @@GLOBAL.gtid_binlog_pos")
    log "primary read-only at GTID $pos ($semi)"

    # 2. The replica executes everything the primary committed.
    rc=$(root_sql "$r" "SELECT MASTER_GTID_WAIT('$pos', $SWITCH_TIMEOUT)" || echo error)
    if [ "$rc" != 0 ]; then
        # Undo step 1: the old primary goes on serving, nothing was lost.
        root_sql "$p" "SET GLOBAL read_only = OFF" || true
        die "the replica did not reach GTID $pos within ${SWITCH_TIMEOUT}s (MASTER_GTID_WAIT: $rc; IO $(slave_field "$r" Slave_IO_Running), SQL $(slave_field "$r" Slave_SQL_Running), $(slave_field "$r" Last_SQL_Error)); the primary is writable again"
    fi

    # 3. The replica leaves replication for good and takes the writes. The
    #    old primary has no replica to wait for any more.
    root_sql "$r" "
        STOP SLAVE;
        RESET SLAVE ALL;
        SET GLOBAL rpl_semi_sync_slave_enabled = OFF;
        SET GLOBAL read_only = OFF;
    " || die "promoting the $(name_of "$r") failed after it caught up (the primary stays read-only: fix by hand, logs in $D)"
    root_sql "$p" "SET GLOBAL rpl_semi_sync_master_enabled = OFF" || true
    echo "$r" >"$D/primary"
    ms=$((($(date +%s%N) - t0) / 1000000))
    log "switchover done in ${ms} ms: $(name_of "$r") 127.0.0.1:$(port_of "$r") is the primary (GTID $pos), $(name_of "$p") is read-only and detached"
    uri_of "$(port_of "$r")"
}

status() {
    local n rc=1 ro io role
    need_dir
    for n in p r; do
        if ! running "$n"; then
            log "$(name_of "$n") 127.0.0.1:$(port_of "$n"): down"
            continue
        fi
        ro=$(root_sql "$n" "SELECT @@GLOBAL.read_only")
        io=$(slave_field "$n" Slave_IO_Running)
        if [ -n "$io" ]; then
            role="replica (IO $io, SQL $(slave_field "$n" Slave_SQL_Running), behind $(slave_field "$n" Seconds_Behind_Master) s)"
        elif [ "$ro" = 0 ]; then
            role="primary (semi-sync $(status_var "$n" Rpl_semi_sync_master_status), $(status_var "$n" Rpl_semi_sync_master_clients) semi-sync replicas)"
            rc=0
        else
            role="read-only, detached"
        fi
        log "$(name_of "$n") 127.0.0.1:$(port_of "$n"): $role, GTID $(root_sql "$n" "SELECT @@GLOBAL.gtid_current_pos"), start time $(start_time "$n")"
    done
    log "data in $D"
    return $rc
}

cmd=${1:-}
case "$cmd" in
start | stop | status | switchover)
    tools
    # One command at a time per pair (parallel CI jobs on one machine).
    exec 9>"$LOCK"
    flock -w 120 9 || die "could not lock $LOCK within 120s"
    "$cmd"
    ;;
uri-primary) uri_of "$PORT_P" ;;
uri-replica) uri_of "$PORT_R" ;;
*)
    echo "usage: $0 start|switchover|uri-primary|uri-replica|status|stop" >&2
    exit 2
    ;;
esac
