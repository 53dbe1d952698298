#!/usr/bin/env bash
# Apache Kafka for this machine: the broker the local pipeline, the tests and
# the benchmarks run on. One combined broker+controller node (KRaft) on
# loopback, its jars fetched once from Maven Central (scripts/kafka/pom.xml)
# into .postback/kafka/<version>/libs, run with the machine's Java 17+.
#
#   kafka.sh install                     fetch the jars (once; a second run downloads nothing)
#   kafka.sh run   --dir D [options]     format D if new, then run the broker in the foreground
#   kafka.sh start --dir D [options]     the same in the background; returns once it serves
#   kafka.sh stop  --dir D               SIGTERM (a clean shutdown), SIGKILL after 30 s
#
# Options: --port P (client listener, PLAINTEXT; default 9092),
#   --controller-port C (default: a free port), --sasl-ssl-port S (also open
#   a SASL_SSL listener: TLS with a CA made here, users for PLAIN and
#   SCRAM-SHA-256/512), --owner-pid PID (start: stop the broker when PID
#   exits, so a killed script never leaves a JVM behind).
# D/broker.env describes the listeners (bootstrap, CA, user, password); the
# test fixture reads it. KAFKA_HEAP_OPTS overrides the heap (-Xms256m -Xmx1g).
source "$(dirname "$0")/lib.sh"

POM="$ROOT/scripts/kafka/pom.xml"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM")"
LIBS="$STATE/kafka/$KAFKA_VERSION/libs"
# Pinned: Maven 3.8 would otherwise pick an old dependency plugin.
DEPENDENCY_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.7.1"

java_bin() {
  if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
    echo "$JAVA_HOME/bin/java"
  elif command -v java >/dev/null 2>&1; then
    command -v java
  else
    die "Java 17 or newer is required to run Apache Kafka, and none was found (install a JDK, e.g. Debian's openjdk-17-jre-headless, or set JAVA_HOME)"
  fi
}

check_java() {
  local java version
  java="$(java_bin)"
  version="$("$java" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')"
  [[ "$version" =~ ^[0-9]+$ ]] || die "cannot tell the version of $java"
  ((version >= 17)) || die "Apache Kafka $KAFKA_VERSION needs Java 17 or newer; $java is Java $version (set JAVA_HOME)"
}

install() {
  [[ -f "$LIBS/.complete" ]] && return 0
  # Test processes may start brokers at once: one fetches, the others wait.
  mkdir -p "$STATE/kafka"
  exec 9>"$STATE/kafka/.install.lock"
  flock 9
  [[ -f "$LIBS/.complete" ]] && return 0
  command -v mvn >/dev/null 2>&1 ||
    die "Maven is required to fetch Apache Kafka $KAFKA_VERSION from Maven Central, and mvn was not found (Debian: apt-get install maven)"
  check_java
  say "fetching Apache Kafka $KAFKA_VERSION from Maven Central into $LIBS (first time only)"
  rm -rf "$LIBS"
  mkdir -p "$LIBS"
  mvn -B -q -Dstyle.color=never -f "$POM" "$DEPENDENCY_PLUGIN:copy-dependencies" \
    -DincludeScope=runtime -DoutputDirectory="$LIBS" ||
    die "Maven could not fetch Apache Kafka $KAFKA_VERSION (is Maven Central reachable? see the output above)"
  ls "$LIBS"/kafka_2.13-"$KAFKA_VERSION".jar >/dev/null 2>&1 || die "the Kafka jar is missing from $LIBS"
  touch "$LIBS/.complete"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

DIR="" PORT=9092 CONTROLLER_PORT="" SASL_SSL_PORT="" OWNER_PID=""
parse() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --dir) DIR="$2"; shift 2 ;;
      --port) PORT="$2"; shift 2 ;;
      --controller-port) CONTROLLER_PORT="$2"; shift 2 ;;
      --sasl-ssl-port) SASL_SSL_PORT="$2"; shift 2 ;;
      --owner-pid) OWNER_PID="$2"; shift 2 ;;
      *) die "kafka.sh: unknown option $1" ;;
    esac
  done
  [[ -n "$DIR" ]] || die "kafka.sh: --dir is required"
  mkdir -p "$DIR"
  DIR="$(cd "$DIR" && pwd)"
}

# A CA, a broker certificate for 127.0.0.1/localhost signed by it (PKCS12
# for the broker, PEM CA for clients), and a password for the SASL users.
make_tls() {
  local tls="$DIR/tls"
  [[ -f "$tls/broker.p12" ]] && return 0
  command -v openssl >/dev/null 2>&1 || die "openssl is required for the SASL_SSL listener's certificates"
  mkdir -p "$tls"
  (
    cd "$tls"
    openssl rand -hex 24 >password
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=postback test CA" \
      -keyout ca.key -out ca.pem 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout broker.key -out broker.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >broker.ext
    openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile broker.ext -out broker.pem 2>/dev/null
    openssl pkcs12 -export -in broker.pem -inkey broker.key -certfile ca.pem \
      -passout "pass:$(cat password)" -out broker.p12
  ) || die "cannot make the test certificates in $tls"
}

write_config() {
  local listeners="PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT"
  local advertised="PLAINTEXT://127.0.0.1:$PORT"
  local protocols="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
  if [[ -n "$SASL_SSL_PORT" ]]; then
    listeners+=",SASL_SSL://127.0.0.1:$SASL_SSL_PORT"
    advertised+=",SASL_SSL://127.0.0.1:$SASL_SSL_PORT"
    protocols+=",SASL_SSL:SASL_SSL"
  fi
  # The single-node settings consumer groups and transactions need: the
  # defaults (replication factor 3, min ISR 2) cannot be met by one broker.
  cat >"$DIR/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=$listeners
advertised.listeners=$advertised
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=$protocols
log.dirs=$DIR/data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.cleaner.dedupe.buffer.size=2097152
log.cleaner.backoff.ms=1000
PROPS
  if [[ -n "$SASL_SSL_PORT" ]]; then
    local password
    password="$(cat "$DIR/tls/password")"
    cat >>"$DIR/server.properties" <<PROPS
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_postback="$password";
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PKCS12
listener.name.sasl_ssl.ssl.keystore.location=$DIR/tls/broker.p12
listener.name.sasl_ssl.ssl.keystore.password=$password
listener.name.sasl_ssl.ssl.key.password=$password
PROPS
  fi
  {
    echo "KAFKA_BOOTSTRAP=127.0.0.1:$PORT"
    if [[ -n "$SASL_SSL_PORT" ]]; then
      echo "KAFKA_SASL_SSL_BOOTSTRAP=127.0.0.1:$SASL_SSL_PORT"
      echo "KAFKA_SSL_CA_LOCATION=$DIR/tls/ca.pem"
      echo "KAFKA_SASL_USERNAME=postback"
      echo "KAFKA_SASL_PASSWORD=$(cat "$DIR/tls/password")"
    fi
  } >"$DIR/broker.env"
}

# Formats the data dir once; SCRAM users can only be added at format time.
format() {
  [[ -f "$DIR/data/meta.properties" ]] && return 0
  local java cluster scram=()
  java="$(java_bin)"
  cluster="$("$java" -cp "$LIBS/*" kafka.tools.StorageTool random-uuid)"
  if [[ -n "$SASL_SSL_PORT" ]]; then
    local password
    password="$(cat "$DIR/tls/password")"
    scram=(--add-scram "SCRAM-SHA-256=[name=postback,password=$password]"
      --add-scram "SCRAM-SHA-512=[name=postback,password=$password]")
  fi
  "$java" -Dlog4j2.configurationFile="$ROOT/scripts/kafka/log4j2.yaml" -cp "$LIBS/*" \
    kafka.tools.StorageTool format -t "$cluster" -c "$DIR/server.properties" "${scram[@]}" \
    >"$DIR/format.log" 2>&1 || die "cannot format $DIR/data: $(cat "$DIR/format.log")"
}

prepare() {
  install
  check_java
  [[ -n "$CONTROLLER_PORT" ]] || CONTROLLER_PORT="$(free_port)"
  [[ -z "$SASL_SSL_PORT" ]] || make_tls
  write_config
  format
}

jvm_args() {
  # shellcheck disable=SC2086 # KAFKA_HEAP_OPTS is a list of flags
  echo ${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g} -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
    -Djava.awt.headless=true -Dlog4j2.configurationFile="$ROOT/scripts/kafka/log4j2.yaml"
}

run() {
  parse "$@"
  prepare
  # exec: the caller's process becomes the broker, so its pid, its signals
  # and a parent-death signal set by the caller all reach the JVM itself.
  # shellcheck disable=SC2046
  exec "$(java_bin)" $(jvm_args) -cp "$LIBS/*" kafka.Kafka "$DIR/server.properties"
}

pid_of() { [[ -f "$DIR/broker.pid" ]] && cat "$DIR/broker.pid"; }
running() { local pid; pid="$(pid_of)" && kill -0 "$pid" 2>/dev/null; }

start() {
  parse "$@"
  if running; then
    say "Kafka already running on $(sed -n 's/^KAFKA_BOOTSTRAP=//p' "$DIR/broker.env") (pid $(pid_of))"
    return 0
  fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    die "port $PORT is already taken by another process; choose another (KAFKA_PORT)"
  fi
  prepare
  say "starting Apache Kafka $KAFKA_VERSION on 127.0.0.1:$PORT${SASL_SSL_PORT:+ (SASL_SSL on 127.0.0.1:$SASL_SSL_PORT)} (data in $DIR/data)"
  : >"$DIR/broker.log"
  # shellcheck disable=SC2046
  nohup "$(java_bin)" $(jvm_args) -cp "$LIBS/*" kafka.Kafka "$DIR/server.properties" \
    >"$DIR/broker.log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$DIR/broker.pid"
  if [[ -n "$OWNER_PID" ]]; then
    # A watchdog outside the owner's process group: when the owner goes
    # (Ctrl-C, a failed step, kill -9), the broker goes with it.
    setsid bash -c 'while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 1; done
      kill "$2" 2>/dev/null; for _ in $(seq 1 30); do kill -0 "$2" 2>/dev/null || exit 0; sleep 1; done
      kill -9 "$2" 2>/dev/null' watchdog "$OWNER_PID" "$pid" >/dev/null 2>&1 </dev/null &
  fi
  for _ in $(seq 1 600); do
    grep -q "Kafka Server started" "$DIR/broker.log" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || die "Kafka exited at start; its log ($DIR/broker.log) ends with:
$(tail -n 20 "$DIR/broker.log")"
    sleep 0.1
  done
  die "Kafka did not start within 60 s; see $DIR/broker.log"
}

stop() {
  parse "$@"
  if running; then
    local pid
    pid="$(pid_of)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    say "Kafka stopped"
  fi
  rm -f "$DIR/broker.pid"
}

command="${1:-}"
shift || true
case "$command" in
  install) install ;;
  run) run "$@" ;;
  start) start "$@" ;;
  stop) stop "$@" ;;
  *) die "usage: kafka.sh install | run|start --dir D [--port P] [--controller-port C] [--sasl-ssl-port S] [--owner-pid PID] | stop --dir D" ;;
esac
