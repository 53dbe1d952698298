#!/usr/bin/env bash
# The local pipeline's broker: `broker.sh start` runs Apache Kafka (data under
# .postback/broker) on 127.0.0.1:${KAFKA_PORT:-9092} and creates the topics in
# config/topics.txt with their configs; `broker.sh stop` stops it.
# BROKER_OWNER_PID (optional): stop the broker when that process exits.
source "$(dirname "$0")/lib.sh"
PORT="${KAFKA_PORT:-9092}"
DIR="$STATE/broker"

start() {
  local owner=()
  [[ -n "${BROKER_OWNER_PID:-}" ]] && owner=(--owner-pid "$BROKER_OWNER_PID")
  "$ROOT/scripts/kafka.sh" start --dir "$DIR" --port "$PORT" "${owner[@]}"
  "$ROOT/scripts/build.sh"
  "$ROOT/target/release/postback-ctl" --bootstrap "127.0.0.1:$PORT" topics --file "$ROOT/config/topics.txt" >/dev/null
  say "topics ready (config/topics.txt)"
}

case "${1:-start}" in
  start) start ;;
  stop) "$ROOT/scripts/kafka.sh" stop --dir "$DIR" ;;
  *) die "usage: broker.sh start|stop" ;;
esac
