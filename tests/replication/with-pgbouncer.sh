#!/bin/sh
# with-pgbouncer.sh VAR MODE PORT OPTIONS COMMAND [ARGS...]
#
# Start a private pgbouncer (pool_mode MODE: transaction | session) on
# 127.0.0.1:PORT in front of the PostgreSQL database named by $VAR (e.g.
# MQSTORE_TEST_PG_URI or MQSTORE_TEST_PG_E2E_URI, from tests/db/postgres.sh),
# run COMMAND ARGS... URI, where URI is the same database through pgbouncer
# with OPTIONS appended to its query ("-" for none), then stop pgbouncer and
# exit with COMMAND's status.
#
# $VAR unset: skip (77), or fail under CI=true or
# MQSTORE_REQUIRE_SERVERS=1 (as tests/run-uri.sh). The URI must be of the
# form postgresql://USER:PASSWORD@127.0.0.1:PORT/DB (what postgres.sh
# prints). The password goes into pgbouncer's auth_file only (mode 600, in a
# private temp dir), never on a command line.
#
# Its own pgbouncer, not postgres.sh's: each test gets the pool mode it needs
# and a port of its own (tests/replication/CMakeLists.txt hands them out).
set -eu
var=${1:?usage: with-pgbouncer.sh VAR MODE PORT OPTIONS COMMAND...}
mode=${2:?mode}
port=${3:?port}
opts=${4:?options or -}
shift 4
log() { printf 'with-pgbouncer.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

case "$mode" in transaction | session) ;; *) die "mode must be transaction or session" ;; esac
case $var in
'' | *[!A-Za-z0-9_]*) die "bad variable name '$var'" ;;
esac
eval "uri=\${$var:-}"
if [ -z "$uri" ]; then
    if [ "${CI:-}" = "true" ] || [ -n "${MQSTORE_REQUIRE_SERVERS:-}" ]; then
        die "$var is not set but a server run is required"
    fi
    echo "with-pgbouncer.sh: $var is not set: skipping"
    exit 77
fi
command -v pgbouncer >/dev/null 2>&1 || die "pgbouncer not found: apt-get install pgbouncer"

# postgresql://user:pw@127.0.0.1:port/db[?...]
rest=${uri#postgresql://}
[ "$rest" != "$uri" ] || rest=${uri#postgres://}
userinfo=${rest%%@*}
hostpart=${rest#*@}
user=${userinfo%%:*}
pass=${userinfo#*:}
hostport=${hostpart%%/*}
db=${hostpart#*/}
db=${db%%\?*}
host=${hostport%%:*}
pgport=${hostport##*:}
[ "$host" = 127.0.0.1 ] && [ -n "$user" ] && [ -n "$db" ] && [ "$pgport" != "$hostport" ] ||
    die "$var is not postgresql://USER:PASSWORD@127.0.0.1:PORT/DB"

if [ "$(id -u)" -eq 0 ]; then
    as_owner() { runuser -u postgres -- "$@"; }
    owner=postgres
else
    as_owner() { "$@"; }
    owner=$(id -un)
fi
if ss -Hltn "sport = :$port" 2>/dev/null | grep -q .; then
    die "port $port is in use"
fi
d=$(mktemp -d /tmp/mqs-pgb.XXXXXX)
chmod 700 "$d"
printf '"%s" "%s"\n' "$user" "$pass" >"$d/userlist.txt"
chmod 600 "$d/userlist.txt"
cat >"$d/pgbouncer.ini" <<EOF
[databases]
$db = host=127.0.0.1 port=$pgport dbname=$db

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir = $d
auth_type = scram-sha-256
auth_file = $d/userlist.txt
pool_mode = $mode
max_client_conn = 400
default_pool_size = 40
ignore_startup_parameters = extra_float_digits
server_login_retry = 0.2
pidfile = $d/pgbouncer.pid
logfile = $d/pgbouncer.log
log_connections = 0
log_disconnections = 0
EOF
[ "$owner" = "$(id -un)" ] || chown -R "$owner" "$d"

cleanup() {
    if [ -f "$d/pgbouncer.pid" ]; then
        pid=$(cat "$d/pgbouncer.pid")
        kill "$pid" 2>/dev/null || true
        i=0
        while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do
            i=$((i + 1))
            sleep 0.1
        done
    fi
    rm -rf "$d"
}
trap cleanup EXIT
trap 'exit 143' INT TERM

# The port is in the kernel's ephemeral range (32768-60999), so a client
# socket may hold it as its local port for a moment and pgbouncer's bind
# fails: then try the same port + 100, + 200.
started=0
for try in 0 1 2; do
    if [ "$try" -gt 0 ]; then
        port=$((port + 100))
        sed -i "s/^listen_port = .*/listen_port = $port/" "$d/pgbouncer.ini"
        log "retrying on 127.0.0.1:$port"
    fi
    rm -f "$d/pgbouncer.pid"
    (cd / && as_owner pgbouncer -d -q "$d/pgbouncer.ini") || {
        tail -n 5 "$d/pgbouncer.log" >&2 || true
        continue
    }
    i=0
    until [ -f "$d/pgbouncer.pid" ] && ss -Hltn "sport = :$port" 2>/dev/null | grep -q .; do
        i=$((i + 1))
        [ $i -lt 200 ] || break
        sleep 0.05
    done
    if [ $i -lt 200 ]; then
        started=1
        break
    fi
    tail -n 5 "$d/pgbouncer.log" >&2 || true
    [ -f "$d/pgbouncer.pid" ] && kill "$(cat "$d/pgbouncer.pid")" 2>/dev/null || true
    sleep 0.2
done
[ $started = 1 ] || die "pgbouncer does not listen on 127.0.0.1 (last port $port); its log is above"

log "pgbouncer ($mode pooling) on 127.0.0.1:$port in front of 127.0.0.1:$pgport"

puri="postgresql://$userinfo@127.0.0.1:$port/$db"
[ "$opts" = - ] || puri="$puri?$opts"
rc=0
"$@" "$puri" || rc=$?
exit $rc
