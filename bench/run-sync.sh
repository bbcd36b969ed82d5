#!/usr/bin/env bash
# run-sync.sh - what a producer that waits for each RECEIPT gets, against the
# raw database, per backend, in one run.
#
# For each URI (default: the tests/db PostgreSQL and MariaDB servers if they
# run, and a SQLite file with synchronous=full) and each build:
#   1. mqstore-bench --sync: 1, 4, 16 producer threads each waiting for their
#      own commit (mqs_enqueue), 1 KiB, --duration s per run, --repeats runs,
#      interleaved with mqs-raw-insert (one INSERT per transaction from as
#      many connections) on the same URI, and with its batched form (ONE
#      connection, one INSERT of P rows per transaction: what the bare
#      database can do with the batches P waiting producers make);
#   2. the broker path: mqbroker on the URI and stomp-load with receipts,
#      1 KiB, scenarios 1 producer x window 1, 4 x 1, 16 x 16 (no consumers;
#      a fresh broker and queue per run, purged afterwards), compared with
#      raw's 1-producer INSERT p50 of step 1 of the same run.
# Several --build trees (e.g. before=... after=...) are run in one session
# of a noisy machine: `mqstore-bench --sync` one build after the other per
# backend; the broker runs taking turns, run by run (A B, then B A).
#
# Output: OUT/results.md (tables, stdout too), OUT/results.json (everything,
# with each tool's own JSON), OUT/results.png (gnuplot). Per-tool output and
# stderr: OUT/<build>/.
#
# Usage: bench/run-sync.sh [OPTIONS] [URI...]    (--help)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=6
REPEATS=3
PRODUCERS="1,4,16"
SIZE=1024
STOMP_SCENARIOS="1:1 4:1 16:16"
STOMP_DURATION=""
STOMP_CONSUMERS=0
DO_STOMP=1
DO_SQLITE=1
BUILDS=()
OUT=""

usage() {
    cat <<EOF
Usage: bench/run-sync.sh [OPTIONS] [URI...]

Synchronous producers (each waits for its own commit) against the raw
database doing one INSERT per transaction, and the broker path (mqbroker +
stomp-load with receipts) against raw's single-INSERT latency, same run.

URIs default to the running test servers (tests/db/postgres.sh uri,
tests/db/mariadb.sh uri) plus 'sqlite://OUT/sqlite-{build}.db?synchronous=full'.
'{build}' in a URI is replaced by the build's label, so builds whose schemas
differ can use databases of their own (e.g. postgresql://.../mqs_{build}).

Options (defaults in brackets):
  --build [LABEL=]DIR  a build tree with bin/mqstore-bench, bin/mqs-raw-insert,
                     bin/mqbroker, bin/stomp-load, bin/mqstore; repeat to
                     compare builds in one session (label: the folder's name)
                     [\$MQS_BUILD, else the first of build build-* with them]
  --duration S       seconds per run [$DURATION]
  --repeats N        runs per point [$REPEATS]
  --producers LIST   synchronous producer counts, comma-separated [$PRODUCERS]
  --size B           message bytes [$SIZE]
  --stomp LIST       stomp-load scenarios PRODUCERSxWINDOW as P:W, quoted,
                     space-separated ['$STOMP_SCENARIOS']
  --stomp-duration S seconds per stomp-load run [--duration]
  --stomp-consumers N  consumers during the stomp runs [$STOMP_CONSUMERS]
  --no-stomp         skip the broker path
  --no-sqlite        no default SQLite URI
  --out DIR          results folder [\${TMPDIR:-/tmp}/mqstore-sync-<date>-<pid>]
  --quick            --duration 2 --repeats 1: a smoke run
  --help             this text

Time per build and backend: about repeats x points x 2 x duration (sync)
+ repeats x scenarios x (duration + ~3 s) (stomp): with the defaults ~2.5 min.
Exit status: 0 ok, 1 a tool failed (its results are still tabled), 2 usage.
EOF
}

die_usage() { printf 'run-sync.sh: %s\nTry --help.\n' "$*" >&2; exit 2; }
log() { printf '== %s\n' "$*" >&2; }

URIS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --help|-h) usage; exit 0 ;;
        --build) BUILDS+=("${2:?--build needs a value}"); shift ;;
        --duration) DURATION="${2:?}"; shift ;;
        --repeats) REPEATS="${2:?}"; shift ;;
        --producers) PRODUCERS="${2:?}"; shift ;;
        --size) SIZE="${2:?}"; shift ;;
        --stomp) STOMP_SCENARIOS="${2:?}"; shift ;;
        --stomp-duration) STOMP_DURATION="${2:?}"; shift ;;
        --stomp-consumers) STOMP_CONSUMERS="${2:?}"; shift ;;
        --no-stomp) DO_STOMP=0 ;;
        --no-sqlite) DO_SQLITE=0 ;;
        --out) OUT="${2:?}"; shift ;;
        --quick) DURATION=2; REPEATS=1 ;;
        -*) die_usage "unknown option '$1'" ;;
        *) URIS+=("$1") ;;
    esac
    shift
done

is_uint() { case "$1" in ''|*[!0-9]*) return 1 ;; *) [ "$1" -ge "${2:-1}" ] ;; esac; }
is_uint "$DURATION" && [ "$DURATION" -le 600 ] || die_usage "--duration: whole seconds 1..600"
is_uint "$REPEATS" && [ "$REPEATS" -le 20 ] || die_usage "--repeats: 1..20"
is_uint "$SIZE" || die_usage "--size: > 0"
is_uint "$STOMP_CONSUMERS" 0 || die_usage "--stomp-consumers: >= 0"
[ -n "$STOMP_DURATION" ] || STOMP_DURATION=$DURATION
is_uint "$STOMP_DURATION" && [ "$STOMP_DURATION" -le 600 ] || die_usage "--stomp-duration: 1..600"
case "$PRODUCERS" in ''|*[!0-9,]*) die_usage "--producers: e.g. 1,4,16" ;; esac
for s in $STOMP_SCENARIOS; do
    case "$s" in [0-9]*:[0-9]*) ;; *) die_usage "--stomp: P:W pairs, e.g. '1:1 16:16'" ;; esac
done
command -v python3 >/dev/null || { echo "run-sync.sh: python3 is needed to merge the results" >&2; exit 1; }

TOOLS="mqstore-bench mqs-raw-insert mqbroker stomp-load mqstore"
has_tools() { local t; for t in $TOOLS; do [ -x "$1/bin/$t" ] || return 1; done; }
if [ ${#BUILDS[@]} -eq 0 ]; then
    if [ -n "${MQS_BUILD:-}" ]; then
        BUILDS=("$MQS_BUILD")
    else
        for d in "$ROOT"/build "$ROOT"/build-*; do
            if has_tools "$d"; then BUILDS=("$d"); break; fi
        done
    fi
    [ ${#BUILDS[@]} -gt 0 ] || die_usage "no build tree with bin/{${TOOLS// /,}}: give --build"
fi
LABELS=(); DIRS=()
for b in "${BUILDS[@]}"; do
    case "$b" in *=*) l=${b%%=*}; d=${b#*=} ;; *) d=$b; l=$(basename "$b") ;; esac
    case "$l" in ''|*[!A-Za-z0-9_.-]*) die_usage "--build: label '$l': letters, digits, _ . - only" ;; esac
    for x in "${LABELS[@]}"; do [ "$x" != "$l" ] || die_usage "--build: label '$l' given twice"; done
    d=$(cd "$d" 2>/dev/null && pwd) || die_usage "--build: no folder '$b'"
    has_tools "$d" || die_usage "--build $d: needs bin/{${TOOLS// /,}}"
    LABELS+=("$l"); DIRS+=("$d")
done

[ -n "$OUT" ] || OUT="${TMPDIR:-/tmp}/mqstore-sync-$(date +%Y%m%d-%H%M%S)-$$"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

if [ ${#URIS[@]} -eq 0 ]; then
    for s in postgres mariadb; do
        if u=$("$ROOT/tests/db/$s.sh" uri 2>/dev/null); then
            URIS+=("$u")
        else
            log "tests/db/$s.sh: no server running (tests/db/$s.sh start), skipped"
        fi
    done
    [ "$DO_SQLITE" = 0 ] || URIS+=("sqlite://$OUT/sqlite-{build}.db?synchronous=full")
fi
[ ${#URIS[@]} -gt 0 ] || die_usage "no URI"

backend_of() {
    case "$1" in
        postgres://*|postgresql://*) echo postgresql ;;
        mysql://*|mariadb://*) echo mysql ;;
        sqlite:*) echo sqlite ;;
        *) echo other ;;
    esac
}
mask() { printf '%s\n' "$1" | sed 's|://\([^:/@]*\):[^@/]*@|://\1:***@|'; }

FAILED=0
NPOINTS=$(( $(printf '%s' "$PRODUCERS" | tr -cd , | wc -c) + 1 ))
SYNC_LIMIT=$(( NPOINTS * REPEATS * (2 * DURATION + 100) + 60 ))
STOMP_LIMIT=$(( STOMP_DURATION + 90 ))

# run NAME LIMIT CMD...: output to OUT/NAME.txt, stderr to OUT/NAME.err
run() {
    local name=$1 limit=$2 rc=0; shift 2
    log "$name: $(printf '%q ' "$@" | sed 's|://\([^:/@]*\):[^@/]*@|://\1:***@|g')"
    timeout -k 10 "$limit" "$@" >"$OUT/$name.txt" 2>"$OUT/$name.err" || rc=$?
    if [ "$rc" -ne 0 ]; then
        FAILED=1
        log "$name: exit status $rc (see $OUT/$name.err):"
        tail -n 5 "$OUT/$name.err" >&2 || true
    fi
    return 0
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

BROKER_PID=""
stop_broker() {
    [ -n "$BROKER_PID" ] || return 0
    kill -TERM "$BROKER_PID" 2>/dev/null || true
    local i
    for i in $(seq 1 150); do
        kill -0 "$BROKER_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$BROKER_PID" 2>/dev/null; then
        log "mqbroker $BROKER_PID did not stop on SIGTERM in 15 s: SIGKILL"
        kill -KILL "$BROKER_PID" 2>/dev/null || true
    fi
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=""
}
trap 'stop_broker' EXIT
trap 'stop_broker; exit 130' INT TERM

# stomp_run BUILD_DIR URI NAME P W: a fresh broker, one stomp-load run,
# the broker stopped and the queue purged.
stomp_run() {
    local dir=$1 uri=$2 name=$3 p=$4 w=$5 port queue log i
    port=$(free_port)
    queue="sync-$$-$(date +%s%N)"
    log="$OUT/$name.broker.log"
    "$dir/bin/mqbroker" --store "$uri" --listen "127.0.0.1:$port" --max-dest-bytes 2g \
        --log-level info >"$log" 2>&1 </dev/null &
    BROKER_PID=$!
    for i in $(seq 1 300); do
        grep -q "listening on" "$log" 2>/dev/null && break
        kill -0 "$BROKER_PID" 2>/dev/null || break
        sleep 0.1
    done
    if ! grep -q "listening on" "$log" 2>/dev/null; then
        log "$name: mqbroker did not become master (see $log)"
        tail -n 5 "$log" >&2 || true
        FAILED=1
        stop_broker
        return 0
    fi
    run "$name" "$STOMP_LIMIT" "$dir/bin/stomp-load" --broker "127.0.0.1:$port" \
        --dest "/queue/$queue" --producers "$p" --window "$w" --consumers "$STOMP_CONSUMERS" \
        --size "$SIZE" --duration "$STOMP_DURATION" --timeout "$((STOMP_DURATION + 60))" \
        --drain-timeout 5 --json "$OUT/$name.json"
    stop_broker
    timeout 120 "$dir/bin/mqstore" purge "$uri" --queue "$queue" --yes \
        >>"$OUT/$name.txt" 2>>"$OUT/$name.err" || log "$name: purge of $queue failed"
}

started=$(date +%s)
for uri_t in "${URIS[@]}"; do
    be=$(backend_of "$uri_t")
    [ "$be" != other ] || { log "skipping '$(mask "$uri_t")': postgresql://, mysql:// or sqlite: only"; FAILED=1; continue; }
    for k in "${!LABELS[@]}"; do
        l=${LABELS[$k]}; d=${DIRS[$k]}; uri=${uri_t//\{build\}/$l}
        mkdir -p "$OUT/$l"
        run "$l/$be-sync" "$SYNC_LIMIT" "$d/bin/mqstore-bench" --sync --sync-producers "$PRODUCERS" \
            --repeats "$REPEATS" --duration "$DURATION" --size "$SIZE" \
            --raw "$d/bin/mqs-raw-insert" --json "$OUT/$l/$be-sync.json" \
            --plot "$OUT/$l/$be-sync.png" "$uri"
        printf '%s\n' "$(mask "$uri")" >"$OUT/$l/$be.uri"
    done
    [ "$DO_STOMP" = 1 ] || continue
    # The builds take turns run by run, in A B / B A order: a broker run
    # right after another one on the same database was up to 20% slower in
    # p50 here (the previous run's rows, vacuum, checkpoints), and builds
    # run back to back also took the session's drift as their difference.
    for s in $STOMP_SCENARIOS; do
        p=${s%%:*}; w=${s#*:}
        for r in $(seq 1 "$REPEATS"); do
            order=("${!LABELS[@]}")
            if [ $((r % 2)) = 0 ]; then
                mapfile -t order < <(printf '%s\n' "${!LABELS[@]}" | tac)
            fi
            for k in "${order[@]}"; do
                l=${LABELS[$k]}; d=${DIRS[$k]}; uri=${uri_t//\{build\}/$l}
                stomp_run "$d" "$uri" "$l/$be-stomp-p${p}w${w}-r$r" "$p" "$w"
            done
        done
    done
done
log "runs done in $(( $(date +%s) - started )) s; merging into $OUT"

LABELS_STR=$(IFS=,; echo "${LABELS[*]}")
python3 - "$OUT" "$LABELS_STR" "$STOMP_SCENARIOS" "$REPEATS" "$DURATION" "$STOMP_DURATION" \
    "$SIZE" "$STOMP_CONSUMERS" <<'PY'
import json, os, shutil, statistics, subprocess, sys, time

out, labels, scenarios, repeats, duration, sduration, size, sconsumers = sys.argv[1:]
labels = labels.split(",")
scenarios = [tuple(int(x) for x in s.split(":")) for s in scenarios.split()]
repeats = int(repeats)

def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def spread(v):
    v = [x for x in v if x is not None]
    if not v:
        return None
    return {"median": statistics.median(v), "min": min(v), "max": max(v)}

def ratio(a, b):
    return a / b if a is not None and b else None

def fmt(v, spec="{:,.0f}"):
    return "-" if v is None else spec.format(v)

def fmt_spread(s):
    return "-" if not s else f"{s['median']:,.0f} ({s['min']:,.0f}..{s['max']:,.0f})"

NAMES = {"postgresql": "PostgreSQL", "mysql": "MariaDB/MySQL", "sqlite": "SQLite"}
backends = []
for be in ("postgresql", "mysql", "sqlite"):
    if not any(os.path.exists(os.path.join(out, l, be + "-sync.json")) or
               os.path.exists(os.path.join(out, l, be + "-sync.err")) for l in labels):
        continue
    entry = {"backend": be, "builds": {}}
    for l in labels:
        sync = load(os.path.join(out, l, be + "-sync.json"))
        try:
            uri = open(os.path.join(out, l, be + ".uri")).read().strip()
        except OSError:
            uri = None
        rows = []
        raw1_p50 = None
        for pt in (sync or {}).get("points", []):
            st = pt["store"].get("group") or next(iter(pt["store"].values()))
            raw = pt.get("raw") or {}
            batch = pt.get("batch") or {}
            r = {
                "producers": pt["producers"],
                "store_msg_per_s": st["msg_per_s"], "raw_msg_per_s": raw.get("msg_per_s"),
                "store_over_raw": ratio(st["msg_per_s"]["median"], (raw.get("msg_per_s") or {}).get("median")),
                "store_p50_ms": st["p50_ms"], "store_p99_ms": st["p99_ms"],
                "raw_p50_ms": raw.get("p50_ms"), "raw_p99_ms": raw.get("p99_ms"),
                "msg_per_txn": st.get("msg_per_txn"),
                "batch_msg_per_s": batch.get("msg_per_s"),
                "store_over_batch": ratio(st["msg_per_s"]["median"],
                                          (batch.get("msg_per_s") or {}).get("median")),
                "errors": (st.get("errors") or 0) + (raw.get("errors") or 0) +
                          (batch.get("errors") or 0),
            }
            if pt["producers"] == 1:
                raw1_p50 = raw.get("p50_ms")
            rows.append(r)
        stomp = []
        for p, w in scenarios:
            runs = []
            for r in range(1, repeats + 1):
                doc = load(os.path.join(out, l, f"{be}-stomp-p{p}w{w}-r{r}.json"))
                if doc:
                    runs.append(doc)
            sr = [d["results"].get("send+receipt", {}) for d in runs]
            p50 = spread([x.get("p50_ms") for x in sr])
            p99 = spread([x.get("p99_ms") for x in sr])
            rate = spread([x.get("msgs_per_s") for x in sr])
            stomp.append({
                "producers": p, "window": w, "runs": len(runs),
                "msg_per_s": rate, "p50_ms": p50["median"] if p50 else None,
                "p99_ms": p99["median"] if p99 else None,
                "raw_1insert_p50_ms": raw1_p50,
                "p50_over_raw_p50": ratio(p50["median"] if p50 else None, raw1_p50),
                "ok": all(d.get("ok") for d in runs) and len(runs) == repeats,
                "errors": sum(d.get("errors", 0) for d in runs),
                "results": runs,
            })
        entry["builds"][l] = {"uri": uri, "server": (sync or {}).get("server"),
                              "sync_rows": rows, "stomp_rows": stomp, "sync": sync}
    backends.append(entry)

lines = [f"Synchronous producers: each waits for its own commit (mqs_enqueue, commit=group); "
         f"raw: mqs-raw-insert, one INSERT per transaction, one connection per producer, same URI, "
         f"same run; batch: mqs-raw-insert, ONE connection, one INSERT of P rows per transaction "
         f"(P = producers: the batches the store commits, without its fence or index; at 1: raw). "
         f"{size} B, {duration} s per run, {repeats} repeats: msg/s median (min..max); "
         f"p50/p99: median of the runs'. stomp-load: receipts on, persistent, {sduration} s per run, "
         f"{sconsumers} consumers, a fresh mqbroker per run; its p50 (SEND -> RECEIPT) is compared "
         f"with raw's 1-producer INSERT p50 of the same build and backend."]
for b in backends:
    name = NAMES.get(b["backend"], b["backend"])
    lines += ["", f"### {name}"]
    for l, x in b["builds"].items():
        lines.append(f"- {l}: {x['uri'] or '?'}" + (f" ({x['server']})" if x["server"] else ""))
    lines += ["", "| build | producers | store msg/s | raw msg/s | store/raw | store p50 / p99 ms "
              "| raw p50 / p99 ms | msg/txn | batch msg/s | store/batch |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for l, x in b["builds"].items():
        if not x["sync_rows"]:
            lines.append(f"| {l} | (no result: see {l}/{b['backend']}-sync.err) | | | | | | | | |")
        for r in x["sync_rows"]:
            lines.append("| " + " | ".join([
                l, str(r["producers"]), fmt_spread(r["store_msg_per_s"]), fmt_spread(r["raw_msg_per_s"]),
                fmt(r["store_over_raw"], "**{:.2f}x**"),
                f"{fmt(r['store_p50_ms'], '{:.3f}')} / {fmt(r['store_p99_ms'], '{:.3f}')}",
                f"{fmt(r['raw_p50_ms'], '{:.3f}')} / {fmt(r['raw_p99_ms'], '{:.3f}')}",
                fmt(r["msg_per_txn"], "{:.1f}"), fmt_spread(r["batch_msg_per_s"]),
                fmt(r["store_over_batch"], "{:.2f}x")]) + (" errors" if r["errors"] else "") + " |")
    if any(x["stomp_rows"] and any(s["runs"] for s in x["stomp_rows"]) for x in b["builds"].values()):
        lines += ["", "| build | stomp-load | msg/s | p50 ms | p99 ms | raw 1-INSERT p50 ms | p50 / raw p50 |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for l, x in b["builds"].items():
            for s in x["stomp_rows"]:
                lines.append("| " + " | ".join([
                    l, f"{s['producers']}p x w{s['window']}", fmt_spread(s["msg_per_s"]),
                    fmt(s["p50_ms"], "{:.3f}"), fmt(s["p99_ms"], "{:.3f}"),
                    fmt(s["raw_1insert_p50_ms"], "{:.3f}"), fmt(s["p50_over_raw_p50"], "**{:.2f}x**")])
                    + ("" if s["ok"] else f" ({s['runs']}/{repeats} runs ok)") + " |")
text = "\n".join(lines) + "\n"
sys.stdout.write(text)
open(os.path.join(out, "results.md"), "w").write(text)

json.dump({"tool": "run-sync.sh", "unix_time": int(time.time()),
           "config": {"builds": labels, "repeats": repeats, "duration_s": int(duration),
                      "stomp_duration_s": int(sduration), "size": int(size),
                      "stomp_scenarios": [{"producers": p, "window": w} for p, w in scenarios],
                      "stomp_consumers": int(sconsumers)},
           "backends": backends}, open(os.path.join(out, "results.json"), "w"), indent=1)

png = os.path.join(out, "results.png")
if not shutil.which("gnuplot") or not backends:
    sys.stderr.write("gnuplot not found or no results: no plot\n")
    sys.exit(0)
nb = len(backends)
allp = sorted({r["producers"] for b in backends for x in b["builds"].values() for r in x["sync_rows"]}
              | {s["producers"] for b in backends for x in b["builds"].values() for s in x["stomp_rows"]}) or [1]
g = ["set terminal pngcairo size %d,900 noenhanced font 'sans,9'" % (480 * nb + 40),
     "set output '%s'" % png.replace("'", "''"),
     "set multiplot layout 2,%d title 'synchronous producers: mqstore vs raw 1 INSERT/txn, "
     "and stomp-load with receipts (%s B, %s s x %d per point)'" % (nb, size, duration, repeats),
     "set logscale x 2", "set grid xtics ytics", "set key top left",
     "set xrange [%g:%g]" % (allp[0] * 0.7, allp[-1] * 1.4),
     "set xtics (%s)" % ", ".join(str(p) for p in allp)]
def block(name, rows):
    g.append("$%s << EOD" % name)
    for r in rows:
        g.append(" ".join("NaN" if v is None else "%g" % v for v in r))
    g.append("EOD")
for row in (0, 1):
    for b in backends:
        plots = []
        for i, (l, x) in enumerate(b["builds"].items()):
            key = "%s_%d" % (b["backend"], i)
            if row == 0:
                block("s" + key, [(r["producers"], r["store_msg_per_s"]["median"], r["store_msg_per_s"]["min"],
                                   r["store_msg_per_s"]["max"],
                                   (r["raw_msg_per_s"] or {}).get("median"), (r["raw_msg_per_s"] or {}).get("min"),
                                   (r["raw_msg_per_s"] or {}).get("max")) for r in x["sync_rows"]])
                plots.append("$s%s using 1:2:3:4 with yerrorlines lw 2 lc %d pt 7 title 'mqstore sync, %s'" % (key, i + 1, l))
                plots.append("$s%s using 1:5:6:7 with yerrorlines lw 1 lc %d dt 2 pt 6 title 'raw, %s'" % (key, i + 1, l))
                plots.append("$s%s using 1:2:(sprintf('%%.0f', $2)) with labels offset 0,0.8 tc lt %d notitle" % (key, i + 1))
            else:
                block("l" + key, [(r["producers"], r["store_p50_ms"], r["raw_p50_ms"]) for r in x["sync_rows"]])
                block("t" + key, [(s["producers"], s["p50_ms"], s["window"]) for s in x["stomp_rows"] if s["p50_ms"] is not None])
                plots.append("$l%s using 1:2 with linespoints lw 2 lc %d pt 7 title 'mqstore sync p50, %s'" % (key, i + 1, l))
                plots.append("$l%s using 1:3 with linespoints lw 1 lc %d dt 2 pt 6 title 'raw INSERT p50, %s'" % (key, i + 1, l))
                plots.append("$t%s using 1:2 with points lc %d pt 5 ps 1.5 title 'stomp-load p50, %s'" % (key, i + 1, l))
                plots.append("$t%s using 1:2:(sprintf('w%%d %%.2f', $3, $2)) with labels offset 0,0.9 tc lt %d notitle" % (key, i + 1))
        g.append("set title '%s: %s'" % (NAMES.get(b["backend"], b["backend"]),
                                         "msg/s, median and min..max" if row == 0 else "p50 ms per message"))
        g.append("set ylabel '%s'" % ("messages/s" if row == 0 else "ms"))
        g.append("set xlabel 'producers'")
        g.append("set yrange [0:*]")
        g.append("plot " + ", ".join(plots) if plots else "plot NaN notitle")
g.append("unset multiplot")
res = subprocess.run(["gnuplot"], input="\n".join(g) + "\n", text=True, capture_output=True)
if res.returncode != 0:
    sys.stderr.write("gnuplot failed: %s\n" % res.stderr.strip())
else:
    sys.stderr.write("plot: %s\n" % png)
PY
log "results: $OUT/results.md, $OUT/results.json, $OUT/results.png"
exit "$FAILED"
