#!/bin/sh
# activemq.sh - throw-away Apache ActiveMQ 5.17 brokers (Debian 12's
# `activemq` package) for the client interop tests and CI.
#
#   activemq.sh start NAME PORT [--fresh]
#                          start instance NAME with one STOMP 1.2 listener on
#                          127.0.0.1:PORT, wait until it answers a STOMP
#                          CONNECT with CONNECTED, print tcp://127.0.0.1:PORT.
#                          An instance that ran before (stopped or killed)
#                          keeps its KahaDB store, so this is also "restart";
#                          --fresh wipes that store first. Already running on
#                          PORT: just print the URI.
#   activemq.sh stop NAME  graceful stop (SIGTERM: the broker closes its
#                          connections and store), SIGKILL after
#                          $MQCLIENT_ACTIVEMQ_STOP_TIMEOUT s; data is kept
#   activemq.sh kill NAME  SIGKILL at once (a crash, for failover tests);
#                          data is kept, a later start recovers the journal
#   activemq.sh uri NAME   print the URI (exit 1 if not running)
#   activemq.sh status [NAME]
#                          no NAME: list the instances ("NAME PORT running
#                          PID" or "NAME PORT stopped"); NAME: exit 0 if it
#                          is running, 1 if not
#   activemq.sh stop-all   stop every instance and remove the base directory
#
# Only URIs go to stdout; progress and errors go to stderr.
#
# Each instance lives in $MQCLIENT_ACTIVEMQ_DIR/NAME (default base
# /tmp/mqc-activemq; everything mode 0700/0600): conf/activemq.xml (written
# here), conf/log4j.properties, data/kahadb (the store), data/activemq.log
# (the broker's log), console.log (the JVM's stdout/stderr), tmp/ (the JVM's
# java.io.tmpdir), pid, port.
#
# The broker: no authentication, no JMX connector, no web console, no
# advisory topics, no OpenWire/AMQP/MQTT listener (the STOMP connector is
# the only socket it opens); persistent messages go to KahaDB with a disk
# sync per write (ActiveMQ's default, so a RECEIPT means stored, also across
# `kill`); dead letters go to the queue DLQ.<destination> (STOMP
# /queue/DLQ.<name>), non-persistent ones included; a client id already in
# use is taken over by the new connection (link stealing), so a client
# that reconnects before the broker noticed its old connection died is not
# refused. See tests/db/README.md for how it differs from mqbroker.
#
# Environment: MQCLIENT_ACTIVEMQ_DIR (/tmp/mqc-activemq),
# MQCLIENT_ACTIVEMQ_HOME (/usr/share/activemq), MQCLIENT_ACTIVEMQ_JAVA
# (java), MQCLIENT_ACTIVEMQ_HEAP (256m, the JVM's -Xmx),
# MQCLIENT_ACTIVEMQ_START_TIMEOUT (60 s), MQCLIENT_ACTIVEMQ_STOP_TIMEOUT
# (30 s), MQCLIENT_ACTIVEMQ_PERSIST_REDELIVERED (0; 1: the broker stores
# the redelivered flag before each queue dispatch, so a message delivered
# but not acked before a crash comes back with redelivered:true, as with
# mqbroker; off by default, as in a stock ActiveMQ).
set -eu
umask 077

BASE="${MQCLIENT_ACTIVEMQ_DIR:-/tmp/mqc-activemq}"
AMQ_HOME="${MQCLIENT_ACTIVEMQ_HOME:-/usr/share/activemq}"
JAVA="${MQCLIENT_ACTIVEMQ_JAVA:-java}"
HEAP="${MQCLIENT_ACTIVEMQ_HEAP:-256m}"
START_TIMEOUT="${MQCLIENT_ACTIVEMQ_START_TIMEOUT:-60}"
STOP_TIMEOUT="${MQCLIENT_ACTIVEMQ_STOP_TIMEOUT:-30}"
PYTHON=/usr/bin/python3
case "${MQCLIENT_ACTIVEMQ_PERSIST_REDELIVERED:-0}" in
1 | true) PERSIST_REDELIVERED=true ;;
*) PERSIST_REDELIVERED=false ;;
esac
# Marks a directory as made by this script, so stop-all never removes a
# directory someone pointed MQCLIENT_ACTIVEMQ_DIR at by mistake.
MARK=.mqc-activemq-base

log() { printf 'activemq.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

is_uint() {
    case "$1" in
    '' | *[!0-9]*) return 1 ;;
    esac
    return 0
}

check_name() {
    case "$1" in
    '' | .* | *[!A-Za-z0-9._-]*)
        die "bad instance name '$1': use letters, digits, '.', '_' and '-' (not starting with '.')" ;;
    esac
}

check_port() {
    if ! is_uint "$1" || [ "$1" -lt 1 ] || [ "$1" -gt 65535 ]; then
        die "bad port '$1': a TCP port number (1-65535) is needed"
    fi
}

# The PID of instance $1's broker if it is alive (not a zombie) and really
# is that broker (its command line names the instance directory: a PID
# reused by another process after a crash must not be signalled).
broker_pid() {
    bp_dir="$BASE/$1"
    [ -f "$bp_dir/pid" ] || return 1
    bp_pid=$(cat "$bp_dir/pid")
    is_uint "$bp_pid" || return 1
    [ -r "/proc/$bp_pid/cmdline" ] || return 1
    tr '\0' '\n' <"/proc/$bp_pid/cmdline" 2>/dev/null |
        grep -qxF -- "-Dactivemq.base=$bp_dir" || return 1
    bp_state=$(sed 's/.*) //' "/proc/$bp_pid/stat" 2>/dev/null | cut -d' ' -f1)
    [ -n "$bp_state" ] && [ "$bp_state" != Z ] || return 1
    printf '%s\n' "$bp_pid"
}

# Exit 0 once 127.0.0.1:$1 answers a STOMP 1.2 CONNECT with CONNECTED
# (a listening socket is not enough: the broker accepts before it is up).
stomp_ready() {
    "$PYTHON" - "$1" <<'EOF'
import socket, sys
try:
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1)
    s.settimeout(2)
    s.sendall(b"CONNECT\naccept-version:1.2\nhost:localhost\n\n\0")
    buf = b""
    while b"\0" not in buf and len(buf) < 4096:
        d = s.recv(4096)
        if not d:
            break
        buf += d
    ok = buf.lstrip(b"\r\n").startswith(b"CONNECTED\n")
    if ok:
        s.sendall(b"DISCONNECT\n\n\0")
    s.close()
    sys.exit(0 if ok else 1)
except OSError:
    sys.exit(1)
EOF
}

port_in_use() {
    command -v ss >/dev/null 2>&1 || return 1
    ss -Hltn "sport = :$1" 2>/dev/null | grep -q .
}

# Wait (up to 10 s) until nothing listens on port $1 any more. A killed JVM
# is a zombie (what broker_pid looks at) before its last threads are gone
# and its sockets closed, so a start right after would find the port busy.
wait_port_free() {
    wp_i=0
    while port_in_use "$1"; do
        wp_i=$((wp_i + 1))
        [ $wp_i -lt 200 ] || {
            log "warning: port $1 is still in use 10 s after the broker ended"
            return 0
        }
        sleep 0.05
    done
}

# SIGKILL $2 (instance $1's broker) and wait until it is gone.
kill_wait() {
    kill -KILL "$2" 2>/dev/null || true
    kw_i=0
    while broker_pid "$1" >/dev/null; do
        kw_i=$((kw_i + 1))
        [ $kw_i -lt 200 ] || die "instance $1 (pid $2) survived SIGKILL for 10 s"
        sleep 0.05
    done
}

write_conf() {
    d=$1 name=$2 port=$3
    # The STOMP frame limits: bodies up to 100 MiB (ActiveMQ's own data
    # limit), so the size tests are limited by the client, not by this.
    cat >"$d/conf/activemq.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by tests/db/activemq.sh for instance $name; rewritten at each start. -->
<beans xmlns="http://www.springframework.org/schema/beans"
       xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
       xsi:schemaLocation="http://www.springframework.org/schema/beans http://www.springframework.org/schema/beans/spring-beans.xsd
                           http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">
  <broker xmlns="http://activemq.apache.org/schema/core"
          brokerName="$name" useJmx="false" advisorySupport="false"
          schedulerSupport="false" persistent="true" useShutdownHook="true"
          dataDirectory="$d/data" tmpDataDirectory="$d/data/tmp_storage">
    <destinationPolicy>
      <policyMap>
        <policyEntries>
          <!-- Dead letters of X go to the queue DLQ.X (not ActiveMQ.DLQ). -->
          <policyEntry queue="&gt;" persistJMSRedelivered="$PERSIST_REDELIVERED">
            <deadLetterStrategy>
              <individualDeadLetterStrategy queuePrefix="DLQ." useQueueForQueueMessages="true"
                                            processNonPersistent="true"/>
            </deadLetterStrategy>
          </policyEntry>
          <policyEntry topic="&gt;">
            <deadLetterStrategy>
              <individualDeadLetterStrategy topicPrefix="DLQ." useQueueForTopicMessages="true"
                                            processNonPersistent="true"/>
            </deadLetterStrategy>
          </policyEntry>
        </policyEntries>
      </policyMap>
    </destinationPolicy>
    <managementContext>
      <managementContext createConnector="false"/>
    </managementContext>
    <persistenceAdapter>
      <kahaDB directory="$d/data/kahadb"/>
    </persistenceAdapter>
    <systemUsage>
      <systemUsage>
        <memoryUsage><memoryUsage limit="64 mb"/></memoryUsage>
        <storeUsage><storeUsage limit="1 gb"/></storeUsage>
        <tempUsage><tempUsage limit="512 mb"/></tempUsage>
      </systemUsage>
    </systemUsage>
    <transportConnectors>
      <!-- allowLinkStealing only works as a URI option (the connector's
           attribute of that name is ignored for STOMP). -->
      <transportConnector name="stomp"
          uri="stomp://127.0.0.1:$port?allowLinkStealing=true&amp;wireFormat.maxFrameSize=104857600&amp;wireFormat.maxDataLength=104857600"/>
    </transportConnectors>
  </broker>
</beans>
EOF
    # The package logs through slf4j + log4j 1.2: a file log in data/.
    cat >"$d/conf/log4j.properties" <<EOF
log4j.rootLogger=INFO, logfile
log4j.logger.org.springframework=WARN
log4j.logger.org.apache.xbean=WARN
log4j.appender.logfile=org.apache.log4j.FileAppender
log4j.appender.logfile.file=$d/data/activemq.log
log4j.appender.logfile.append=true
log4j.appender.logfile.layout=org.apache.log4j.PatternLayout
log4j.appender.logfile.layout.ConversionPattern=%d | %-5p | %m | %c | %t%n
EOF
}

fail_start() {
    d=$1
    shift
    log "--- $d/console.log (tail) ---"
    tail -n 20 "$d/console.log" >&2 2>/dev/null || true
    log "--- $d/data/activemq.log (tail) ---"
    tail -n 30 "$d/data/activemq.log" >&2 2>/dev/null || true
    die "$*"
}

start() {
    name=$1 port=$2 fresh=$3
    d="$BASE/$name"
    if pid=$(broker_pid "$name"); then
        old=$(cat "$d/port" 2>/dev/null || true)
        [ "$old" = "$port" ] ||
            die "instance $name is already running on port $old (pid $pid); stop it first"
        log "instance $name already running (pid $pid)"
        printf 'tcp://127.0.0.1:%s\n' "$port"
        return 0
    fi
    [ -f "$AMQ_HOME/bin/activemq.jar" ] ||
        die "$AMQ_HOME/bin/activemq.jar not found: apt-get install activemq default-jre-headless (scripts/install-deps.sh), or set MQCLIENT_ACTIVEMQ_HOME"
    command -v "$JAVA" >/dev/null 2>&1 ||
        die "java not found: apt-get install default-jre-headless, or set MQCLIENT_ACTIVEMQ_JAVA"
    [ -x "$PYTHON" ] || die "$PYTHON not found (needed to check that the broker answers STOMP)"
    # A broker of ours killed a moment ago (perhaps by the test itself) may
    # still hold the port for a few milliseconds: give it a second.
    i=0
    while port_in_use "$port"; do
        i=$((i + 1))
        [ $i -lt 20 ] || die "port $port is already in use by another process; pick a free port"
        sleep 0.05
    done

    if [ ! -d "$BASE" ]; then
        mkdir -p "$BASE"
        : >"$BASE/$MARK"
    fi
    [ -f "$BASE/$MARK" ] || die "$BASE exists but was not made by activemq.sh; set MQCLIENT_ACTIVEMQ_DIR elsewhere"
    chmod 700 "$BASE"
    if [ "$fresh" = 1 ] && [ -d "$d" ]; then
        log "removing the old data of instance $name"
        rm -rf "$d"
    fi
    mkdir -p "$d/conf" "$d/data" "$d/tmp"
    chmod 700 "$d"
    write_conf "$d" "$name" "$port"
    printf '%s\n' "$port" >"$d/port"
    rm -f "$d/pid"
    log "starting instance $name on 127.0.0.1:$port (data in $d)"
    # Foreground broker (the launcher's `start` task) in a background job;
    # stdin/stdout closed so a caller's $(...) does not wait for it.
    # -XX:-UsePerfData: no /tmp/hsperfdata_* outside the instance directory.
    # SerialGC and a small heap: a test broker on a 2-core machine.
    t0=$(date +%s)
    # shellcheck disable=SC2086 # word splitting of the options is wanted
    "$JAVA" -Xms64m "-Xmx$HEAP" -XX:+UseSerialGC -XX:-UsePerfData \
        -Djava.awt.headless=true \
        "-Djava.io.tmpdir=$d/tmp" \
        "-Dactivemq.classpath=$d/conf" \
        "-Dactivemq.home=$AMQ_HOME" \
        "-Dactivemq.base=$d" \
        "-Dactivemq.conf=$d/conf" \
        "-Dactivemq.data=$d/data" \
        "-Dlog4j.configuration=file:$d/conf/log4j.properties" \
        -jar "$AMQ_HOME/bin/activemq.jar" start "xbean:file:$d/conf/activemq.xml" \
        </dev/null >>"$d/console.log" 2>&1 &
    pid=$!
    printf '%s\n' "$pid" >"$d/pid"
    while :; do
        if ! broker_pid "$name" >/dev/null; then
            # Right after the fork the child may not have exec'd java yet
            # (its cmdline is still this shell's): a live, non-zombie pid
            # gets 10 s to become the broker before it counts as gone.
            st=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)
            if [ -z "$st" ] || [ "$st" = Z ] || [ $(($(date +%s) - t0)) -ge 10 ]; then
                fail_start "$d" "instance $name (pid $pid) exited during start-up (logs above)"
            fi
        fi
        if stomp_ready "$port"; then
            break
        fi
        if [ $(($(date +%s) - t0)) -ge "$START_TIMEOUT" ]; then
            kill_wait "$name" "$pid"
            fail_start "$d" "instance $name did not answer STOMP on 127.0.0.1:$port within $START_TIMEOUT s (killed; logs above)"
        fi
        sleep 0.1
    done
    log "instance $name ready (pid $pid, $(($(date +%s) - t0)) s)"
    printf 'tcp://127.0.0.1:%s\n' "$port"
}

stop() {
    name=$1 sig=$2
    d="$BASE/$name"
    if ! pid=$(broker_pid "$name"); then
        rm -f "$d/pid"
        log "instance $name is not running"
        return 0
    fi
    port=$(cat "$d/port" 2>/dev/null || echo 0)
    if [ "$sig" = KILL ]; then
        kill_wait "$name" "$pid"
        wait_port_free "$port"
        rm -f "$d/pid"
        log "instance $name killed"
        return 0
    fi
    # SIGTERM runs the broker's shutdown hook: connections closed, store
    # flushed and closed.
    kill -TERM "$pid" 2>/dev/null || true
    i=0
    while broker_pid "$name" >/dev/null; do
        i=$((i + 1))
        if [ $i -ge $((STOP_TIMEOUT * 20)) ]; then
            log "instance $name (pid $pid) did not stop within $STOP_TIMEOUT s: SIGKILL"
            kill_wait "$name" "$pid"
            break
        fi
        sleep 0.05
    done
    wait_port_free "$port"
    rm -f "$d/pid"
    log "instance $name stopped"
}

status() {
    if [ -n "${1:-}" ]; then
        broker_pid "$1" >/dev/null
        return
    fi
    [ -d "$BASE" ] || return 0
    for d in "$BASE"/*/; do
        [ -d "$d" ] || continue
        n=$(basename "$d")
        p=$(cat "$d/port" 2>/dev/null || echo '?')
        if pid=$(broker_pid "$n"); then
            printf '%s %s running %s\n' "$n" "$p" "$pid"
        else
            printf '%s %s stopped\n' "$n" "$p"
        fi
    done
}

stop_all() {
    [ -d "$BASE" ] || {
        log "no instances"
        return 0
    }
    [ -f "$BASE/$MARK" ] || die "$BASE was not made by activemq.sh; not touching it"
    for d in "$BASE"/*/; do
        [ -d "$d" ] || continue
        stop "$(basename "$d")" TERM
    done
    rm -rf "$BASE"
    log "all instances stopped, $BASE removed"
}

usage() {
    printf 'usage: %s start NAME PORT [--fresh] | stop NAME | kill NAME | uri NAME |\n       status [NAME] | stop-all\n' "$0" >&2
    exit 2
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
start)
    if [ $# -lt 2 ] || [ $# -gt 3 ]; then usage; fi
    check_name "$1"
    check_port "$2"
    fresh=0
    if [ $# -eq 3 ]; then
        [ "$3" = --fresh ] || die "unknown argument '$3'"
        fresh=1
    fi
    is_uint "$START_TIMEOUT" || die "MQCLIENT_ACTIVEMQ_START_TIMEOUT must be a number of seconds"
    start "$1" "$2" "$fresh"
    ;;
stop | kill)
    [ $# -eq 1 ] || usage
    check_name "$1"
    is_uint "$STOP_TIMEOUT" || die "MQCLIENT_ACTIVEMQ_STOP_TIMEOUT must be a number of seconds"
    if [ "$cmd" = kill ]; then stop "$1" KILL; else stop "$1" TERM; fi
    ;;
uri)
    [ $# -eq 1 ] || usage
    check_name "$1"
    broker_pid "$1" >/dev/null || die "instance $1 is not running"
    printf 'tcp://127.0.0.1:%s\n' "$(cat "$BASE/$1/port")"
    ;;
status)
    [ $# -le 1 ] || usage
    [ $# -eq 0 ] || check_name "$1"
    status "${1:-}"
    ;;
stop-all)
    [ $# -eq 0 ] || usage
    is_uint "$STOP_TIMEOUT" || die "MQCLIENT_ACTIVEMQ_STOP_TIMEOUT must be a number of seconds"
    stop_all
    ;;
*)
    usage
    ;;
esac
