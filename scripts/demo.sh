#!/usr/bin/env bash
# The demo: a local HA pair on loopback (127.0.0.1 = esc-1, 127.0.0.2 = esc-2),
# a client writing deployments through the primary, a power failure of the
# primary (SIGKILL), the standby taking over, and a check that every
# acknowledged write survived. Leaves nothing behind.
#
#   scripts/demo.sh            # builds (release) and runs
#
# Issue 2 stage: promotion is the operator's `escadm ha promote`, run by
# this script the moment the primary dies; automatic takeover arrives with
# the role authority (issue 4).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p escd -p escadm
BIN=$PWD/target/release
WORK=$(mktemp -d /tmp/esc-demo.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

SECRET=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
PASS=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
port() { python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "$1"; }
R1=$(port 127.0.0.1); A1=$(port 127.0.0.1); H1=$(port 127.0.0.1); R2=$(port 127.0.0.2); A2=$(port 127.0.0.2); H2=$(port 127.0.0.2)
conf() { # name ip repl api peer role health
  mkdir -p "$WORK/$1"
  cat > "$WORK/$1/esc.toml" <<TOML
node_name = "$1"
[replication]
listen = "$2:$3"
peer = "$5"
mode = "sync"
initial_role = "$6"
secret = "$SECRET"
async_lag_entries_max = 10000
heartbeat_interval_ms = 50
peer_timeout_ms = 500
batch_entries_max = 1024
[store]
data_dir = "data"
snapshot_every_entries = 100000
log_retain_entries = 10000
group_commit_entries_max = 1024
[api]
listen = "$2:$4"
health_listen = "$2:$7"
user = "admin"
password = "$PASS"
body_bytes_max = 1048576
concurrency_max = 1024
TOML
}
conf esc-1 127.0.0.1 "$R1" "$A1" "127.0.0.2:$R2" primary "$H1"
conf esc-2 127.0.0.2 "$R2" "$A2" "127.0.0.1:$R1" standby "$H2"
start() { ESC_LOG=warn "$BIN/escd" --home "$WORK/$1" --log-dir "$WORK/$1/log" 2>"$WORK/$1/stderr" & PIDS+=($!); }
start esc-1; P1=${PIDS[0]}
start esc-2
role() { "$BIN/escadm" --home "$WORK/$1" status --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"]["role"])' 2>/dev/null || echo down; }
for _ in $(seq 100); do [ "$(role esc-1)" = primary ] && break; sleep 0.1; done

echo "== pair up: esc-1 $(role esc-1), esc-2 $(role esc-2)"
ACKED="$WORK/acked"; : > "$ACKED"
writer() { # writes through whichever node is primary; records acknowledged names
  local i=0 url
  while [ -e "$WORK/run" ]; do
    i=$((i+1))
    for url in "127.0.0.1:$A1" "127.0.0.2:$A2"; do
      code=$(curl -s -o /dev/null -w '%{http_code}' -m 2 -u "admin:$PASS" \
        -H "Idempotency-Key: demo-$1-$i" -d "{\"name\":\"demo-$1-$i\",\"image\":\"vnf\"}" \
        "http://$url/v0/deployments" || true)
      if [ "$code" = 201 ]; then echo "demo-$1-$i" >> "$ACKED"; break; fi
    done
  done
}
touch "$WORK/run"
for w in 1 2 3 4; do writer "$w" & done
show() { printf '%6.1fs  esc-1=%-8s esc-2=%-8s acknowledged writes=%s\n' "$1" "$(role esc-1)" "$(role esc-2)" "$(wc -l < "$ACKED")"; }
for t in $(seq 1 10); do show "$(echo "$t*0.3" | bc)"; sleep 0.3; done
echo "== power failure of the primary esc-1 (SIGKILL)"
kill -9 "$P1"; T0=$(date +%s%N); wait "$P1" 2>/dev/null || true
# As an operator would: once esc-2 sees its link to esc-1 gone (it then
# knows whether it held every committed write), promote it.
peer_gone() { "$BIN/escadm" --home "$WORK/esc-2" status --json | python3 -c 'import json,sys; sys.exit(0 if not json.load(sys.stdin)["status"]["replication"]["peer"]["connected"] else 1)'; }
for _ in $(seq 500); do peer_gone && break; sleep 0.01; done
"$BIN/escadm" --home "$WORK/esc-2" ha promote --reason "demo: esc-1 lost power" >/dev/null
N0=$(wc -l < "$ACKED")
until [ "$(wc -l < "$ACKED")" -gt "$N0" ]; do sleep 0.01; done
T1=$(date +%s%N)
echo "== esc-2 took over; first write acknowledged $(( (T1-T0)/1000000 )) ms after the kill"
for t in $(seq 1 6); do show "$(echo "3+$t*0.3" | bc)"; sleep 0.3; done
rm -f "$WORK/run"; wait_writers() { for j in $(jobs -p); do case " ${PIDS[*]} " in *" $j "*) ;; *) wait "$j" 2>/dev/null || true;; esac; done; }; wait_writers
MISSING=0
while read -r name; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -u "admin:$PASS" "http://127.0.0.2:$A2/v0/deployments/$name")
  [ "$code" = 200 ] || { MISSING=$((MISSING+1)); echo "missing: $name"; }
done < "$ACKED"
echo "== verdict: $(wc -l < "$ACKED") acknowledged writes, $MISSING missing on the new primary"
"$BIN/escadm" --home "$WORK/esc-2" status --v | head -6
[ "$MISSING" = 0 ]
