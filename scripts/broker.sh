#!/usr/bin/env bash
# The local broker: `broker.sh start` runs tansu (sqlite storage under
# .postback/broker) on 127.0.0.1:${KAFKA_PORT:-9092} and creates the topics in
# config/topics.txt; `broker.sh stop` stops it.
source "$(dirname "$0")/lib.sh"
PORT="${KAFKA_PORT:-9092}"
DIR="$STATE/broker"
PIDFILE="$DIR/tansu.pid"

running() { [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

start() {
  "$ROOT/scripts/install-tansu.sh"
  mkdir -p "$DIR"
  if running; then
    say "broker already running (pid $(cat "$PIDFILE"))"
  else
    say "starting tansu on 127.0.0.1:$PORT (data in $DIR)"
    # exec: the recorded pid is tansu's own, so `stop` reaches it.
    (cd "$DIR" && exec nohup "$(tansu_bin)" broker \
        --storage-engine "sqlite://tansu.db" \
        --listener-url "tcp://127.0.0.1:$PORT" \
        --advertised-listener-url "tcp://127.0.0.1:$PORT" \
        >"$DIR/tansu.log" 2>&1) &
    echo $! >"$PIDFILE"
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
      sleep 0.5
      running || die "port $PORT is already taken by another process; set KAFKA_PORT"
    fi
    for _ in $(seq 1 100); do
      (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
      running || die "tansu exited; see $DIR/tansu.log"
      sleep 0.1
    done
  fi
  "$ROOT/scripts/build.sh" postback-ctl
  "$ROOT/target/release/postback-ctl" --bootstrap "127.0.0.1:$PORT" topics --file "$ROOT/config/topics.txt" >/dev/null
  say "topics ready (config/topics.txt)"
}

stop() {
  if running; then
    local pid
    pid="$(cat "$PIDFILE")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    say "broker stopped"
  fi
  rm -f "$PIDFILE"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *) die "usage: broker.sh start|stop" ;;
esac
