#!/usr/bin/env bash
# demo-bridge.sh - two brokers joined by a network bridge, on SQLite, with the
# mqclient CLI as producer and consumers. Broker A has a duplex network
# connector to broker B; both replay queue messages to where the consumers
# are (replayWhenNoConsumers=true). You watch:
#   1. a consumer on B, a producer sending 10 messages to A: they cross the
#      bridge; the consumer takes 5 and leaves, the other 5 wait on B;
#   2. the consumer moves to A: the 5 come back from B (replay);
#   3. the bridge's figures (`mqclient bridges`: /mq/bridges) before and
#      after, what each store holds, and the bridge's lines from both logs.
# It ends with received on B / on A / lost / duplicates and exits non-zero on
# a loss or a duplicate. About 15 s; every wait is bounded; stops its brokers
# and removes its temporary files.
#
#   scripts/demo-bridge.sh [--no-build] [--ports A,B] [--bin DIR]
#   (default ports 61623,61624; DIR with mqbroker and mqclient: build/bin)
set -euo pipefail
cd "$(dirname "$0")/.."

build=1 bin=build/bin pa=61623 pb=61624
while [ $# -gt 0 ]; do
  case $1 in
    --no-build) build=0 ;;
    --bin) bin=$2; shift ;;
    --ports) IFS=, read -r pa pb <<<"$2"; shift ;;
    --help|-h) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo-bridge.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ $build = 1 ]; then scripts/build.sh >/dev/null; fi
for p in mqbroker mqclient; do
  [ -x "$bin/$p" ] || { echo "demo-bridge.sh: $bin/$p is not built" >&2; exit 2; }
done
for p in "$pa" "$pb"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "demo-bridge.sh: port $p is in use on 127.0.0.1; pass --ports A,B" >&2
    exit 2
  fi
done

tmp=$(mktemp -d /tmp/mqbridge-demo.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

t0=$(date +%s.%N)
say() { # say WHO TEXT...
  local who=$1; shift
  local c=0
  case $who in A) c=36 ;; B) c=35 ;; demo) c=1 ;; FAIL) c=31 ;; esac
  if [ -t 1 ]; then who=$(printf '\033[%sm[%s]\033[0m' "$c" "$who"); else who="[$who]"; fi
  printf '%6.2fs %s %s\n' "$(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN{print a-b}')" \
    "$who" "$*"
}

Q=/queue/demo.bridge
POLICY='queue=>;replayWhenNoConsumers=true;enableAudit=false'
CONNECTOR="name=toB;uri=static:(tcp://127.0.0.1:$pb);duplex=true"

start_broker() { # start_broker NAME PORT ARGS...
  local name=$1 port=$2; shift 2
  "$bin/mqbroker" --store "sqlite://$tmp/$name.db" --listen "127.0.0.1:$port" \
    --broker-name "$name" --network-policy "$POLICY" "$@" >"$tmp/$name.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    grep -q 'master (token' "$tmp/$name.log" && return 0
    kill -0 "${pids[-1]}" 2>/dev/null || break
    sleep 0.1
  done
  say FAIL "broker $name did not start:"; cat "$tmp/$name.log"; exit 1
}

status() { # the bridge figures of broker A (mqclient bridges reads /mq/bridges)
  "$bin/mqclient" bridges "tcp://127.0.0.1:$pa" --timeout 500 2>/dev/null |
    while read -r line; do say A "$line"; done || true
}

pending() { # what each store holds for the demo queue (the store's own view)
  [ -x "$bin/mqstore" ] || return 0
  for n in A B; do
    p=$("$bin/mqstore" stats "sqlite://$tmp/$n.db" 2>/dev/null |
        awk '$2 == "demo.bridge" { print $4 }')
    say "$n" "store: ${p:-0} messages pending on ${Q}"
  done
}

say demo "broker B on :$pb (store $tmp/B.db): --network-policy '$POLICY'"
start_broker B "$pb"
say demo "broker A on :$pa (store $tmp/A.db): --network-connector '$CONNECTOR'"
start_broker A "$pa" --network-connector "$CONNECTOR"
for _ in $(seq 50); do
  "$bin/mqclient" bridges "tcp://127.0.0.1:$pa" --timeout 300 2>/dev/null |
    grep -q ' up ' && break
  sleep 0.2
done
status

say demo "1. consumer on B ($Q, takes 5 and leaves); producer on A sends 10"
("$bin/mqclient" recv "tcp://127.0.0.1:$pb" "$Q" --ack client-individual --sync-ack \
  --prefetch 1 --count 5 --timeout 15000 --rate 10 2>"$tmp/recv-b.err" |
  tee "$tmp/recv-b.out" | while read -r line; do say B "consumer got: $line"; done) &
cons=$!
pids+=($cons)
sleep 0.5 # its demand reaches A's bridge
"$bin/mqclient" send "tcp://127.0.0.1:$pa" "$Q" --persistent --body 'order %n' -n 10 \
  2>&1 | while read -r line; do say A "producer: $line"; done
wait "$cons" || true
status
say demo "the consumer left B; the messages it did not take wait on B"
pending

say demo "2. the consumer moves to A: B's bridge replays them back"
"$bin/mqclient" recv "tcp://127.0.0.1:$pa" "$Q" --ack client-individual --sync-ack \
  --count 5 --timeout 10000 2>"$tmp/recv-a.err" |
  tee "$tmp/recv-a.out" | while read -r line; do say A "consumer got: $line"; done || true
status
pending

say demo "3. what the brokers logged about the network"
for n in A B; do
  grep -iE 'bridge|network|broker name' "$tmp/$n.log" | sed 's/^[0-9TZ:.-]* //' | cut -c1-150 |
    while read -r line; do say "$n" "$line"; done || true
done

nb=$(grep -c . "$tmp/recv-b.out" || true)
na=$(grep -c . "$tmp/recv-a.out" || true)
all=$(cat "$tmp/recv-b.out" "$tmp/recv-a.out" | sort)
distinct=$(printf '%s\n' "$all" | grep . | sort -u | wc -l)
dups=$(( nb + na - distinct ))
lost=$(( 10 - distinct ))
say demo "sent 10; received on B $nb, on A $na; lost $lost; duplicates $dups"
if [ "$lost" -ne 0 ] || [ "$dups" -ne 0 ]; then
  say FAIL "messages lost or duplicated (logs: $tmp kept)"
  trap - EXIT
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  exit 1
fi
