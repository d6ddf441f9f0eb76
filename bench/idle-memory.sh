#!/usr/bin/env bash
# Resident memory per idle, authenticated, subscribed socket on one gateway
# node: RSS delta / sockets, with N sockets (default 15,000) each in 1 of 1,000
# rooms plus its user channel. The load tester runs in its own process (each
# process here may hold at most 20,000 open files).
#
#   bench/idle-memory.sh [SOCKETS] [ws|sse]
#
# With `sse`, the sockets are idle SSE streams (GET /sse, contract section 9)
# opened by bench/sse-idle.py, each its own user in 1 of 1,000 rooms too.
#
# SETTLE (seconds, default 5) is how long the sockets sit idle before the
# sample. Right after a resume each socket keeps a few bytes per channel until
# its first heartbeat (see outbox.rs, floors); the steady state of an idle
# socket is measured with a short heartbeat and a SETTLE past it:
#   GATEWAY_WEBSOCKET_HEARTBEAT_SECONDS=5 SETTLE=8 bench/idle-memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SOCKETS=${1:-15000}
TRANSPORT=${2:-ws}
SETTLE=${SETTLE:-5}
PORT=${PORT:-18181}
cargo build --release -q -p gateway -p gateway-loadtest
GATEWAY_SERVER_LISTEN=127.0.0.1:$PORT GATEWAY_LOG_LEVEL=warn GATEWAY_LIMITS_CONNECT_RATE=0 \
    ./target/release/gateway serve >/tmp/idle-memory-gateway.log 2>&1 &
GW=$!
trap 'kill $GW 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.1; done
rss() { awk '/VmRSS/ {print $2}' "/proc/$GW/status"; }
BEFORE=$(rss)
if [[ $TRANSPORT == sse ]]; then
    SECRET=$(awk -F'"' '/^hs_secret =/ {print $2}' gateway.toml)
    GATEWAY_SECRET=$SECRET python3 bench/sse-idle.py "$PORT" "$SOCKETS" 1000 $((SETTLE + 20)) >/tmp/idle-memory-loadtest.log 2>&1 &
else
    ./target/release/gateway-loadtest connect --quiet --target "ws://127.0.0.1:$PORT/ws" \
        --sockets "$SOCKETS" --rooms 1000 --concurrency 200 --duration 20s --out /tmp/idle-memory-run >/tmp/idle-memory-loadtest.log 2>&1 &
fi
LT=$!
# Sample the node while every socket is up and idle.
PEAK=0; OPEN=0
for _ in $(seq 600); do
    OPEN=$(curl -s "http://127.0.0.1:$PORT/metrics" | awk '$1=="gateway_sockets_open" {print $2}')
    if [[ ${OPEN:-0} -ge $SOCKETS ]]; then sleep "$SETTLE"; PEAK=$(rss); OPEN=$(curl -s "http://127.0.0.1:$PORT/metrics" | awk '$1=="gateway_sockets_open" {print $2}'); break; fi
    sleep 0.2
done
wait $LT || true
if [[ $PEAK -eq 0 ]]; then echo "sockets never reached $SOCKETS (open: $OPEN); see /tmp/idle-memory-loadtest.log"; exit 1; fi
echo "transport=$TRANSPORT sockets=$OPEN rss_before_kib=$BEFORE rss_with_sockets_kib=$PEAK"
awk -v a="$BEFORE" -v b="$PEAK" -v n="$OPEN" 'BEGIN { printf "per_socket=%.2f KiB (%.0f bytes)\n", (b-a)/n, (b-a)*1024/n }'
