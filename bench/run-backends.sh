#!/usr/bin/env bash
# run-backends.sh - the PostgreSQL / MySQL bench tables: mqstore group commit
# against one-transaction-per-message, measured in the same run.
#
# For each URI (default: the throw-away servers of tests/db/postgres.sh and
# tests/db/mariadb.sh) and each producer count (1 4 16 64), 1 KiB messages:
#   1. mqstore-bench --modes group,each   (enqueue, then cursor read + ack
#                                          with --consumers threads)
#   2. mqs-raw-insert                     (same producers, one connection
#                                          each, one INSERT per transaction:
#                                          the raw database baseline)
# then mqstore-bench --async --modes group at 16 producers (what a broker
# does). Every phase is bounded by --duration seconds.
#
# Prints one markdown table per backend (stdout, and OUT/results.md), writes
# OUT/results.json (every tool's JSON, merged, with the ratios) and
# OUT/results.png (msg/s against producers; gnuplot). The tools' own output
# is kept in OUT/*.txt, OUT/*.json, their stderr in OUT/*.err.
#
# Only ratios inside one run mean anything on a shared machine: every row
# compares numbers measured back to back. The tables also give the CPU the
# bench process, the database server and the whole machine used, so a
# saturated machine shows.
#
# Usage: bench/run-backends.sh [OPTIONS] [URI...]    (--help)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=8
MESSAGES=150000
PRODUCERS="1 4 16 64"
CONSUMERS=4
QUEUES=4
SIZE=1024
ASYNC_PRODUCERS=16
DO_ASYNC=1
URI_OPTS=""
BUILD="${MQS_BUILD:-}"
OUT=""

usage() {
    cat <<EOF
Usage: bench/run-backends.sh [OPTIONS] [URI...]

mqstore group commit against commit=each and against the raw database doing
one INSERT per transaction, per backend and producer count, same run.
URIs default to the running test servers:
  \$(tests/db/postgres.sh uri)  \$(tests/db/mariadb.sh uri)

Options (defaults in brackets):
  --build DIR        build tree holding bin/mqstore-bench and
                     bin/mqs-raw-insert [\$MQS_BUILD, else the first of
                     build build-* that has both]
  --duration S       seconds per phase [$DURATION]
  --messages N       cap per phase and mode [$MESSAGES]: the ack phase acks
                     what the enqueue phase stored, and opening a cursor
                     currently costs a count over the whole backlog, so an
                     unbounded async enqueue would leave the ack phase
                     measuring that count instead of acks
  --producers LIST   producer counts, quoted, space-separated [$PRODUCERS]
  --consumers N      consumer threads of the ack phase [$CONSUMERS]
  --queues K         queues the messages are spread over [$QUEUES]
  --size B           message bytes [$SIZE]
  --async-producers N  producers of the extra --async row [$ASYNC_PRODUCERS]
  --no-async         skip the --async row
  --uri-opts STR     mqstore options appended to the URI for mqstore-bench,
                     e.g. 'pool_size=16' (ignored by mqs-raw-insert) [none]
  --out DIR          results folder [${TMPDIR:-/tmp}/mqstore-backends-<date>-<pid>]
  --quick            --duration 3 --producers '1 16': a smoke run
  --help             this text

Time: about (5 x producer counts + 2) x duration per backend plus set-up:
with the defaults ~3.5 min per backend.
Exit status: 0 ok, 1 a tool failed (its results are still tabled), 2 usage.
EOF
}

die_usage() { printf 'run-backends.sh: %s\nTry --help.\n' "$*" >&2; exit 2; }
log() { printf '== %s\n' "$*" >&2; }

URIS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --help|-h) usage; exit 0 ;;
        --build) BUILD="${2:?--build needs a value}"; shift ;;
        --duration) DURATION="${2:?}"; shift ;;
        --messages) MESSAGES="${2:?}"; shift ;;
        --producers) PRODUCERS="${2:?}"; shift ;;
        --consumers) CONSUMERS="${2:?}"; shift ;;
        --queues) QUEUES="${2:?}"; shift ;;
        --size) SIZE="${2:?}"; shift ;;
        --async-producers) ASYNC_PRODUCERS="${2:?}"; shift ;;
        --no-async) DO_ASYNC=0 ;;
        --uri-opts) URI_OPTS="${2:?}"; shift ;;
        --out) OUT="${2:?}"; shift ;;
        --quick) DURATION=3; PRODUCERS="1 16" ;;
        -*) die_usage "unknown option '$1'" ;;
        *) URIS+=("$1") ;;
    esac
    shift
done

is_uint() { case "$1" in ''|*[!0-9]*) return 1 ;; *) [ "$1" -gt 0 ] ;; esac; }
is_uint "$DURATION" || die_usage "--duration: whole seconds > 0"
[ "$DURATION" -le 600 ] || die_usage "--duration: at most 600"
is_uint "$MESSAGES" || die_usage "--messages: > 0"
for p in $PRODUCERS; do is_uint "$p" && [ "$p" -le 256 ] || die_usage "--producers: 1..256 each"; done
[ -n "$PRODUCERS" ] || die_usage "--producers: empty"
is_uint "$CONSUMERS" || die_usage "--consumers: > 0"
is_uint "$QUEUES" || die_usage "--queues: > 0"
is_uint "$SIZE" || die_usage "--size: > 0"
is_uint "$ASYNC_PRODUCERS" || die_usage "--async-producers: > 0"
command -v python3 >/dev/null || { echo "run-backends.sh: python3 is needed to merge the results" >&2; exit 1; }

if [ -z "$BUILD" ]; then
    for d in "$ROOT"/build "$ROOT"/build-*; do
        if [ -x "$d/bin/mqstore-bench" ] && [ -x "$d/bin/mqs-raw-insert" ]; then
            BUILD=$d
            break
        fi
    done
fi
[ -n "$BUILD" ] || die_usage "no build tree with bin/mqstore-bench and bin/mqs-raw-insert: give --build"
BENCH="$BUILD/bin/mqstore-bench"
RAW="$BUILD/bin/mqs-raw-insert"
[ -x "$BENCH" ] || die_usage "$BENCH not found"
[ -x "$RAW" ] || die_usage "$RAW not found (bench/raw needs libpq or a MySQL client library)"

if [ ${#URIS[@]} -eq 0 ]; then
    for s in postgres mariadb; do
        if u=$("$ROOT/tests/db/$s.sh" uri 2>/dev/null); then
            URIS+=("$u")
        else
            log "tests/db/$s.sh: no server running (tests/db/$s.sh start), skipped"
        fi
    done
    [ ${#URIS[@]} -gt 0 ] || { echo "run-backends.sh: no URI and no test server" >&2; exit 1; }
fi

[ -n "$OUT" ] || OUT="${TMPDIR:-/tmp}/mqstore-backends-$(date +%Y%m%d-%H%M%S)-$$"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# A tool may take its phases (mqstore-bench: 2 per mode) plus connecting,
# purging and the stall timeout; past that it is killed.
LIMIT=$((DURATION * 4 + 180))

with_opts() { # uri + mqstore options
    local u=$1
    [ -n "$URI_OPTS" ] || { printf '%s\n' "$u"; return; }
    case "$u" in *\?*) printf '%s&%s\n' "$u" "$URI_OPTS" ;; *) printf '%s?%s\n' "$u" "$URI_OPTS" ;; esac
}

# ---- CPU accounting (Linux /proc; best effort, "-" when unavailable) ----

machine_ticks() { # total idle, in clock ticks, over every CPU
    awk '/^cpu /{t=0; for(i=2;i<=NF;i++) t+=$i; print t, $5+$6; exit}' /proc/stat
}

# The server's pid: whoever listens on the URI's port on this machine.
server_pid() {
    local uri=$1 port
    port=$(printf '%s\n' "$uri" | sed -n 's|^[a-z]*://[^/]*:\([0-9][0-9]*\)\(/.*\)\{0,1\}$|\1|p' | head -n 1)
    if [ -z "$port" ]; then
        case "$uri" in postgres*) port=5432 ;; mysql*) port=3306 ;; esac
    fi
    command -v ss >/dev/null || return 0
    ss -ltnpH "sport = :$port" 2>/dev/null | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -n 1
}

# utime+stime (+ reaped children) of pid and of its live children: for
# PostgreSQL the postmaster and every backend, for MariaDB the one process.
# Processes come and go while /proc is read: a vanished one is skipped.
server_ticks() {
    local pid=$1
    [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || { echo ""; return; }
    printf '%s\n' /proc/[0-9]*/stat | awk -v root="$pid" '
        {
            if ((getline line < $0) <= 0) next
            close($0)
            sub(/^.*\) /, "", line); split(line, f, " ")
            # f[1]=state f[2]=ppid ... f[12]=utime f[13]=stime f[14]=cutime f[15]=cstime
            split($0, p, "/")
            if (p[3] == root) t += f[12] + f[13] + f[14] + f[15]
            else if (f[2] == root) t += f[12] + f[13]
        }
        END { print t + 0 }' || true
}

HZ=$(getconf CLK_TCK 2>/dev/null || echo 100)

# run NAME CMD...: runs one tool bounded by LIMIT, output to OUT/NAME.txt
# (.err for stderr), CPU figures to OUT/NAME.cpu (JSON).
FAILED=0
run() {
    local name=$1; shift
    local spid=$SERVER_PID m0 m1 s0 s1 rc=0 t0 t1
    log "$name: $(printf '%q ' "$@" | sed 's/:[^:@/]*@/:***@/g')"
    m0=$(machine_ticks || true); s0=$(server_ticks "$spid"); t0=$(date +%s.%N)
    local TIMEFORMAT='%3U %3S'
    { time timeout -k 10 "$LIMIT" "$@" >"$OUT/$name.txt" 2>"$OUT/$name.err" ; } 2>"$OUT/$name.time" || rc=$?
    t1=$(date +%s.%N); m1=$(machine_ticks || true); s1=$(server_ticks "$spid")
    if [ "$rc" -ne 0 ]; then
        FAILED=1
        log "$name: exit status $rc (see $OUT/$name.err):"
        tail -n 5 "$OUT/$name.err" >&2 || true
    fi
    python3 - "$OUT/$name.cpu" "$rc" "$t0" "$t1" "$m0" "$m1" "$s0" "$s1" "$HZ" \
        "$(tail -n 1 "$OUT/$name.time" 2>/dev/null)" <<'PY'
import json, sys
out, rc, t0, t1, m0, m1, s0, s1, hz, tm = sys.argv[1:]
hz = float(hz); wall = float(t1) - float(t0)
d = {"exit_status": int(rc), "wall_s": round(wall, 3)}
try:
    tot0, idle0 = map(float, m0.split()); tot1, idle1 = map(float, m1.split())
    d["machine_busy_pct"] = round(100.0 * (1 - (idle1 - idle0) / max(tot1 - tot0, 1)), 1)
except ValueError:
    pass
try:
    u, s = map(float, tm.split()); d["client_cpu_s"] = round(u + s, 3)
except ValueError:
    pass
if s0 and s1:
    d["server_cpu_s"] = round((float(s1) - float(s0)) / hz, 3)
json.dump(d, open(out, "w"))
PY
}

started=$(date +%s)
for uri in "${URIS[@]}"; do
    case "$uri" in
        postgres://*|postgresql://*) be=postgresql ;;
        mysql://*) be=mysql ;;
        *) log "skipping '$uri': only postgresql:// and mysql:// have a raw baseline"; FAILED=1; continue ;;
    esac
    SERVER_PID=$(server_pid "$uri" || true)
    buri=$(with_opts "$uri")
    log "$be: server pid ${SERVER_PID:-unknown}, phases of ${DURATION} s"
    for p in $PRODUCERS; do
        run "$be-p$p-mqstore" "$BENCH" --producers "$p" --consumers "$CONSUMERS" \
            --queues "$QUEUES" --size "$SIZE" --duration "$DURATION" \
            --messages "$MESSAGES" --modes group,each --json "$OUT/$be-p$p-mqstore.json" "$buri"
        run "$be-p$p-raw" "$RAW" --producers "$p" --size "$SIZE" \
            --duration "$DURATION" --messages "$MESSAGES" --json "$OUT/$be-p$p-raw.json" "$uri"
    done
    if [ "$DO_ASYNC" = 1 ]; then
        p=$ASYNC_PRODUCERS
        run "$be-p$p-async" "$BENCH" --async --producers "$p" --consumers "$CONSUMERS" \
            --queues "$QUEUES" --size "$SIZE" --duration "$DURATION" \
            --messages "$MESSAGES" --modes group --json "$OUT/$be-p$p-async.json" "$buri"
        # the async row's baseline: a raw run of its own unless one exists
        case " $PRODUCERS " in
            *" $p "*) ;;
            *) run "$be-p$p-raw" "$RAW" --producers "$p" --size "$SIZE" \
                   --duration "$DURATION" --messages "$MESSAGES" --json "$OUT/$be-p$p-raw.json" "$uri" ;;
        esac
    fi
done
log "runs done in $(( $(date +%s) - started )) s; merging into $OUT"

# ---- merge, tables, plot ----
python3 - "$OUT" "$DURATION" "$MESSAGES" "$CONSUMERS" "$QUEUES" "$SIZE" "$URI_OPTS" "$PRODUCERS" \
    "$DO_ASYNC" "$ASYNC_PRODUCERS" <<'PY'
import glob, json, os, re, subprocess, sys, time, shutil

out, duration, messages, consumers, queues, size, uri_opts, producers, do_async, async_p = sys.argv[1:]
producers = [int(p) for p in producers.split()]
async_p = int(async_p)

def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def phase(doc, mode, ph):
    for r in (doc or {}).get("throughput", []):
        if r["mode"] == mode and r["phase"] == ph:
            return r
    return None

def ratio(a, b):
    return a / b if a is not None and b else None

def fmt(v, spec="{:,.0f}"):
    return "-" if v is None else spec.format(v)

backends = []
for be in ("postgresql", "mysql"):
    if not glob.glob(os.path.join(out, be + "-p*")):
        continue
    rows, runs = [], {}
    def row(p, kind):
        key = f"{be}-p{p}-{kind}"
        doc = load(os.path.join(out, key + ".json"))
        raw = load(os.path.join(out, f"{be}-p{p}-raw.json"))
        cpu = load(os.path.join(out, key + ".cpu")) or {}
        rcpu = load(os.path.join(out, f"{be}-p{p}-raw.cpu")) or {}
        runs[key] = {"result": doc, "cpu": cpu}
        if kind != "async":
            runs[f"{be}-p{p}-raw"] = {"result": raw, "cpu": rcpu}
        g, e = phase(doc, "group", "enqueue"), phase(doc, "each", "enqueue")
        ga = phase(doc, "group", "ack")
        r = phase(raw, "raw", "insert")
        gr = g["msg_per_s"] if g else None
        er = e["msg_per_s"] if e else None
        rr = r["msg_per_s"] if r else None
        if doc is not None and raw is not None and kind != "async":
            # fill mqstore-bench's baseline hook with the same-run raw figure
            doc["baseline"] = raw.get("baseline")
            with open(os.path.join(out, key + ".json"), "w") as f:
                json.dump(doc, f, indent=1)
        return {
            "producers": p,
            "async": kind == "async",
            "group_msg_per_s": gr,
            "each_msg_per_s": er,
            "raw_msg_per_s": rr,
            "group_over_each": ratio(gr, er),
            "group_over_raw": ratio(gr, rr),
            "group_p99_ms": g["latency_ms"]["p99"] if g else None,
            "group_p50_ms": g["latency_ms"]["p50"] if g else None,
            "each_p99_ms": e["latency_ms"]["p99"] if e else None,
            "raw_p99_ms": r["latency_ms"]["p99"] if r else None,
            "group_msg_per_txn": (g["messages"] / g["transactions"]) if g and g["transactions"] else None,
            "ack_msg_per_s": ga["msg_per_s"] if ga else None,
            "ack_left": ga["left"] if ga else None,
            "ack_msg_per_txn": (ga["messages"] / ga["transactions"]) if ga and ga["transactions"] else None,
            "errors": sum(x["errors"] for x in (doc or {}).get("throughput", [])) + (r["errors"] if r else 0),
            "machine_busy_pct": cpu.get("machine_busy_pct"),
            "raw_machine_busy_pct": rcpu.get("machine_busy_pct"),
            "bench_cpu_s": cpu.get("client_cpu_s"),
            "server_cpu_s": cpu.get("server_cpu_s"),
            "raw_client_cpu_s": rcpu.get("client_cpu_s"),
            "raw_server_cpu_s": rcpu.get("server_cpu_s"),
            "missing": doc is None or raw is None,
        }
    for p in producers:
        rows.append(row(p, "mqstore"))
    if do_async == "1" and os.path.exists(os.path.join(out, f"{be}-p{async_p}-async.cpu")):
        rows.append(row(async_p, "async"))
    server = None
    for key, v in runs.items():
        if key.endswith("-raw") and v["result"]:
            server = v["result"].get("server")
            break
    uri = next((v["result"]["uri"] for v in runs.values() if v["result"]), None)
    backends.append({"backend": be, "uri": uri, "server": server, "rows": rows, "runs": runs})

host = {}
for b in backends:
    for v in b["runs"].values():
        if v["result"]:
            host = v["result"].get("host", {})
            break

lines = []
lines.append(f"Config: {size} B messages, phases of {duration} s or {int(messages):,} messages, ack phase with "
             f"{consumers} consumers over {queues} queues (sync mqs_ack; async row: mqs_ack_async); "
             f"host {host.get('cpus', '?')} CPUs, kernel {host.get('kernel', '?')}"
             + (f"; mqstore URI options: {uri_opts}" if uri_opts else "") + ".")
for b in backends:
    lines.append("")
    lines.append(f"### {b['backend']}: {b['uri']}")
    if b["server"]:
        lines.append(f"{b['server'].get('version')}: {b['server'].get('settings')}")
    lines.append("")
    lines.append("| producers | group msg/s | each msg/s | raw 1-INSERT/txn msg/s | group/each | group/raw "
                 "| group p99 ms | ack msg/s | group msg/txn | ack msg/txn | machine busy % (mqstore / raw) |")
    lines.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in b["rows"]:
        name = f"{r['producers']} async" if r["async"] else str(r["producers"])
        busy = f"{fmt(r['machine_busy_pct'], '{:.0f}')} / {fmt(r['raw_machine_busy_pct'], '{:.0f}')}"
        lines.append("| " + " | ".join([
            name, fmt(r["group_msg_per_s"]), fmt(r["each_msg_per_s"]), fmt(r["raw_msg_per_s"]),
            fmt(r["group_over_each"], "{:.2f}x"), fmt(r["group_over_raw"], "{:.2f}x"),
            fmt(r["group_p99_ms"], "{:.2f}"),
            fmt(r["ack_msg_per_s"]) + (" *" if r["ack_left"] else ""),
            fmt(r["group_msg_per_txn"], "{:.1f}"), fmt(r["ack_msg_per_txn"], "{:.1f}"), busy]) + " |")
    if any(r["ack_left"] for r in b["rows"]):
        lines.append("")
        lines.append("\\* the ack phase ran out of time with messages left (see the runs' `left`).")
    lines.append("")
    lines.append("CPU per run (s): bench process / database server, and the raw run's; the mqstore run "
                 "covers group + each, enqueue + ack.")
    lines.append("")
    lines.append("| run | wall s | mqstore-bench CPU | server CPU | raw client CPU | raw server CPU | errors |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|")
    for r in b["rows"]:
        kind = "async" if r["async"] else "mqstore"
        cpu = b["runs"][f"{b['backend']}-p{r['producers']}-{kind}"]["cpu"]
        lines.append("| " + " | ".join([
            f"p{r['producers']} {kind}", fmt(cpu.get("wall_s"), "{:.1f}"),
            fmt(r["bench_cpu_s"], "{:.2f}"), fmt(r["server_cpu_s"], "{:.2f}"),
            "-" if r["async"] else fmt(r["raw_client_cpu_s"], "{:.2f}"),
            "-" if r["async"] else fmt(r["raw_server_cpu_s"], "{:.2f}"),
            str(r["errors"]) + (" (missing output)" if r["missing"] else "")]) + " |")
text = "\n".join(lines) + "\n"
sys.stdout.write(text)
with open(os.path.join(out, "results.md"), "w") as f:
    f.write(text)

merged = {
    "tool": "run-backends.sh",
    "unix_time": int(time.time()),
    "host": host,
    "config": {"size": int(size), "duration_s": int(duration), "messages": int(messages), "producers": producers,
               "consumers": int(consumers), "queues": int(queues), "uri_opts": uri_opts or None,
               "async_producers": async_p if do_async == "1" else None},
    "backends": backends,
}
with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(merged, f, indent=1)

# Plot: msg/s against producers, one panel per backend, three lines.
png = os.path.join(out, "results.png")
if not shutil.which("gnuplot"):
    sys.stderr.write("gnuplot not found: no plot\n")
    sys.exit(0)
g = ["set terminal pngcairo size %d,520 noenhanced font 'sans,10'" % (560 * max(len(backends), 1) + 40),
     "set output '%s'" % png.replace("'", "''"),
     "set multiplot layout 1,%d title 'mqstore: group commit vs one transaction per message "
     "(%s B, %s s per point)'" % (max(len(backends), 1), size, duration),
     "set logscale x 2", "set logscale y 10", "set grid xtics ytics mytics",
     "set xlabel 'producers'", "set ylabel 'messages/s'", "set key bottom right",
     "set xrange [0.7:%g]" % (max(producers) * 1.4), "set yrange [*:*]"]
for b in backends:
    data = [r for r in b["rows"] if not r["async"]]
    g.append("$d%s << EOD" % b["backend"])
    for r in data:
        g.append("%d %s %s %s" % (r["producers"], *(
            "NaN" if r[k] is None else "%g" % r[k]
            for k in ("group_msg_per_s", "each_msg_per_s", "raw_msg_per_s"))))
    g.append("EOD")
    asy = [r for r in b["rows"] if r["async"]]
    plot = ["$d{0} using 1:2 with linespoints lw 2 pt 7 title 'mqstore commit=group'",
            "$d{0} using 1:3 with linespoints lw 2 pt 5 title 'mqstore commit=each'",
            "$d{0} using 1:4 with linespoints lw 2 pt 9 dt 2 title 'raw: 1 INSERT per transaction'",
            "$d{0} using 1:2:(sprintf('%.0f', $2)) with labels offset 0,1 notitle"]
    if asy and asy[0]["group_msg_per_s"]:
        g.append("$a%s << EOD\n%d %g\nEOD" % (b["backend"], asy[0]["producers"], asy[0]["group_msg_per_s"]))
        plot.append("$a{0} using 1:2 with points pt 3 ps 2 lw 2 title 'group, async (%d producers)'" % asy[0]["producers"])
        plot.append("$a{0} using 1:2:(sprintf('async %.0f', $2)) with labels offset 0,1.2 notitle")
    g.append("set title '%s'" % b["backend"])
    g.append("plot " + ", ".join(x.format(b["backend"]) for x in plot))
g.append("unset multiplot")
res = subprocess.run(["gnuplot"], input="\n".join(g) + "\n", text=True, capture_output=True)
if res.returncode != 0:
    sys.stderr.write("gnuplot failed: %s\n" % res.stderr.strip())
else:
    sys.stderr.write("plot: %s\n" % png)
PY
log "results: $OUT/results.md, $OUT/results.json, $OUT/results.png"
exit "$FAILED"
