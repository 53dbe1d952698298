#!/usr/bin/env bash
# Brings the pipeline up locally and runs its main job: the broker (Apache Kafka),
# the collector, the enricher, the deduplicator, one dispatcher per platform,
# the platform sandbox they upload to, sample traffic, and what landed where.
#   scripts/run.sh          stay up until Ctrl-C
#   scripts/run.sh --once   send the sample traffic, check it, stop (smoke test)
# Ports: KAFKA_PORT (9092), COLLECTOR_PORT (8080, its API) and
# COLLECTOR_OPS_PORT (9098), ENRICHER_PORT (9091),
# DEDUPLICATOR_PORT (9093), SANDBOX_PORT (8090), dispatchers' ops ports
# META_PORT (9094), GOOGLE_ADS_PORT (9095), TIKTOK_PORT (9096), the status
# service STATUS_PORT (8070, its panel) and STATUS_OPS_PORT (9097), the
# sample shop SHOP_PORT (3000).
source "$(dirname "$0")/lib.sh"
ONCE=0
[[ "${1:-}" == "--once" ]] && ONCE=1
KAFKA_PORT="${KAFKA_PORT:-9092}"
COLLECTOR_PORT="${COLLECTOR_PORT:-8080}"
COLLECTOR_OPS_PORT="${COLLECTOR_OPS_PORT:-9098}"
SANDBOX_PORT="${SANDBOX_PORT:-8090}"
ENRICHER_PORT="${ENRICHER_PORT:-9091}"
DEDUPLICATOR_PORT="${DEDUPLICATOR_PORT:-9093}"
META_PORT="${META_PORT:-9094}"
GOOGLE_ADS_PORT="${GOOGLE_ADS_PORT:-9095}"
TIKTOK_PORT="${TIKTOK_PORT:-9096}"
STATUS_PORT="${STATUS_PORT:-8070}"
STATUS_OPS_PORT="${STATUS_OPS_PORT:-9097}"
# The sample shop: its origin must be an allowed origin of the demo site key
# (config/collector.local.toml allows localhost and 127.0.0.1 on 3000).
SHOP_PORT="${SHOP_PORT:-3000}"
BOOTSTRAP="127.0.0.1:$KAFKA_PORT"
LOGS="$STATE/logs"
mkdir -p "$LOGS"
export KAFKA_PORT

"$ROOT/scripts/kafka.sh" install
say "building postback (release)"
"$ROOT/scripts/build.sh"
pids=()
PIDFILE="$STATE/run.pids"
: >"$PIDFILE"
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  "$ROOT/scripts/broker.sh" stop
  rm -f "$PIDFILE"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# If this script is killed outright (no trap runs), a watchdog stops the
# services it started; the broker has a watchdog of its own.
setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done
  [[ -f "$2" ]] && xargs -r kill 2>/dev/null <"$2"' watchdog $$ "$PIDFILE" >/dev/null 2>&1 </dev/null &
BROKER_OWNER_PID=$$ "$ROOT/scripts/broker.sh" start

start_service() { # start_service NAME BINARY ARGS...
  local name="$1"; shift
  "$@" >"$LOGS/$name.log" 2>&1 &
  pids+=("$!")
  echo "$!" >>"$PIDFILE"
  say "started $name (pid $!, log $LOGS/$name.log)"
}

# Each service gets only the overrides it has keys for: configuration is
# strict, so an unknown key (a typo, or another service's) is an error.
POSTBACK_KAFKA__BOOTSTRAP_SERVERS="$BOOTSTRAP" POSTBACK_HTTP__LISTEN="127.0.0.1:$COLLECTOR_PORT" \
  POSTBACK_OPS__LISTEN="127.0.0.1:$COLLECTOR_OPS_PORT" \
  start_service collector "$ROOT/target/release/postback-collector" --config "$ROOT/config/collector.local.toml"

POSTBACK_KAFKA__BOOTSTRAP_SERVERS="$BOOTSTRAP" POSTBACK_OPS__LISTEN="127.0.0.1:$ENRICHER_PORT" \
  start_service enricher "$ROOT/target/release/postback-enricher" --config "$ROOT/config/enricher.local.toml"
POSTBACK_KAFKA__BOOTSTRAP_SERVERS="$BOOTSTRAP" POSTBACK_OPS__LISTEN="127.0.0.1:$DEDUPLICATOR_PORT" \
  POSTBACK_STATE__DIR="$STATE/deduplicator" \
  start_service deduplicator "$ROOT/target/release/postback-deduplicator" --config "$ROOT/config/deduplicator.local.toml"
POSTBACK_HTTP__LISTEN="127.0.0.1:$SANDBOX_PORT" \
  start_service sandbox "$ROOT/target/release/postback-sandbox" --config "$ROOT/tools/sandbox/sandbox.example.toml"
SANDBOX="http://127.0.0.1:$SANDBOX_PORT"
for platform in meta google_ads tiktok; do
  case "$platform" in
    meta) port="$META_PORT" ;; google_ads) port="$GOOGLE_ADS_PORT" ;; tiktok) port="$TIKTOK_PORT" ;;
  esac
  POSTBACK_KAFKA__BOOTSTRAP_SERVERS="$BOOTSTRAP" POSTBACK_OPS__LISTEN="127.0.0.1:$port" \
    POSTBACK_META__BASE_URL="$SANDBOX" POSTBACK_GOOGLE_ADS__BASE_URL="$SANDBOX" \
    POSTBACK_GOOGLE_ADS__TOKEN_URL="$SANDBOX/token" POSTBACK_TIKTOK__BASE_URL="$SANDBOX" \
    start_service "dispatcher-$platform" "$ROOT/target/release/postback-dispatcher" \
      --platform "$platform" --config "$ROOT/config/dispatcher.local.toml"
done

# A fresh projection each run, like the broker's topics.
rm -f "$STATE"/status.db "$STATE"/status.db-*
POSTBACK_KAFKA__BOOTSTRAP_SERVERS="$BOOTSTRAP" POSTBACK_HTTP__LISTEN="127.0.0.1:$STATUS_PORT" \
  POSTBACK_OPS__LISTEN="127.0.0.1:$STATUS_OPS_PORT" POSTBACK_STORE__URL="sqlite://$STATE/status.db" \
  start_service status "$ROOT/target/release/postback-status" --config "$ROOT/config/status.local.toml"
SHOP="http://localhost:$SHOP_PORT"
SHOP_LISTEN="127.0.0.1:$SHOP_PORT" SHOP_COLLECTOR_URL="http://127.0.0.1:$COLLECTOR_PORT" \
  SHOP_SITE_KEY="pk_local_demo" SHOP_API_KEY="sk_local_demo_0123456789abcdef" SHOP_PIXELS_URL="$SANDBOX" \
  start_service shop "$ROOT/target/release/postback-shop"

wait_ready() { # wait_ready NAME URL
  for _ in $(seq 1 100); do
    curl -sf "$2/readyz" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  die "$1 not ready; see $LOGS/$1.log"
}
URL="http://127.0.0.1:$COLLECTOR_PORT"
wait_ready collector "http://127.0.0.1:$COLLECTOR_OPS_PORT"
wait_ready enricher "http://127.0.0.1:$ENRICHER_PORT"
wait_ready deduplicator "http://127.0.0.1:$DEDUPLICATOR_PORT"
wait_ready sandbox "$SANDBOX"
wait_ready dispatcher-meta "http://127.0.0.1:$META_PORT"
wait_ready dispatcher-google_ads "http://127.0.0.1:$GOOGLE_ADS_PORT"
wait_ready dispatcher-tiktok "http://127.0.0.1:$TIKTOK_PORT"
wait_ready status "http://127.0.0.1:$STATUS_OPS_PORT"
for _ in $(seq 1 100); do curl -sf "$SHOP/healthz" >/dev/null 2>&1 && break; sleep 0.2; done
curl -sf "$SHOP/healthz" >/dev/null 2>&1 || die "shop not ready; see $LOGS/shop.log"
STATUS_URL="http://127.0.0.1:$STATUS_PORT"
READ_KEY="rk_local_demo_0123456789abcdef"

status=0
"$ROOT/scripts/sample-traffic.sh" "$URL" "$BOOTSTRAP" || status=$?

say "conversions.raw (decoded; personal data is still raw on this topic only):"
"$ROOT/target/release/postback-ctl" --bootstrap "$BOOTSTRAP" tail conversions.raw --timeout-secs 3 \
  | tail -n 3 | cut -c1-400
say "conversions.enriched (hashed identifiers, consent and eligibility per platform):"
"$ROOT/target/release/postback-ctl" --bootstrap "$BOOTSTRAP" tail conversions.enriched --timeout-secs 5 \
  | tail -n 2 | cut -c1-600
say "conversions.rejected (dead letters):"
"$ROOT/target/release/postback-ctl" --bootstrap "$BOOTSTRAP" tail conversions.rejected --timeout-secs 3 \
  | tail -n 2 | cut -c1-400
say "dispatch.meta (one record per conversion and platform; the browser and server reports of"
say "order-1001 come out merged once the 10 s merge window closes):"
dispatched="$("$ROOT/target/release/postback-ctl" --bootstrap "$BOOTSTRAP" tail dispatch.meta --count 1 --timeout-secs 30)"
echo "$dispatched" | cut -c1-600
if [[ -z "$dispatched" ]]; then
  say "nothing reached dispatch.meta; see $LOGS/deduplicator.log"
  status=$((status + 1))
fi
say "waiting for the dispatchers to deliver to all three platforms (the sandbox's accepted events):"
accepted_everywhere() { # prints the sandbox's accepted counts; true when every platform has one
  curl -s "$SANDBOX/admin/stats" | python3 -c '
import json, sys
events = json.load(sys.stdin)["events"]
platforms = ("meta", "google_ads", "tiktok")
print(" ".join("%s=%d" % (p, events[p]["accepted"]) for p in platforms))
sys.exit(0 if all(events[p]["accepted"] > 0 for p in platforms) else 1)' 2>/dev/null
}
delivered=0
for _ in $(seq 1 60); do
  if counts="$(accepted_everywhere)"; then delivered=1; break; fi
  sleep 1
done
say "  accepted by the sandbox: ${counts:-nothing}"
if [[ "$delivered" -ne 1 ]]; then
  say "not every platform received a conversion; see $LOGS/dispatcher-*.log"
  status=$((status + 1))
fi
say "conversions.status (every stage's word per platform: eligible, not_eligible, duplicate, then the"
say "dispatchers' delivered / rejected / retrying / expired / failed with the platform's request id):"
"$ROOT/target/release/postback-ctl" --bootstrap "$BOOTSTRAP" tail conversions.status --timeout-secs 3 \
  | grep '"stage":"dispatcher"' | tail -n 6 | cut -c1-400 || true
say "the status service: each conversion's front-end and server-side state per platform"
say "(GET $STATUS_URL/v1/conversions with the demo read key):"
projected=0
for _ in $(seq 1 30); do
  if curl -sf -H "Authorization: Bearer $READ_KEY" "$STATUS_URL/v1/conversions?server_side=delivered&limit=3" \
    | python3 -c '
import json, sys
page = json.load(sys.stdin)["conversions"]
for c in page:
    states = ", ".join("%s: front-end %s, server-side %s" % (p, s["front_end"], s["server_side"]) for p, s in sorted(c["platforms"].items()))
    print("  %s %s (%s): %s" % (c["event_name"], c["event_id"], "+".join(c["sources"]), states))
sys.exit(0 if page else 1)'; then projected=1; break; fi
  sleep 1
done
if [[ "$projected" -ne 1 ]]; then
  say "the status service shows no delivered conversion; see $LOGS/status.log"
  status=$((status + 1))
fi
say "the sample shop ($SHOP): its page carries the tag, the collector serves it, its backend reports orders:"
tag_size=$(curl -sf -H 'Accept-Encoding: gzip' "$URL/v1/tag.js" | wc -c)
if curl -sf "$SHOP/" | grep -q "/v1/tag.js" && [[ "$tag_size" -gt 1000 ]]; then
  say "  the shop's page includes $URL/v1/tag.js ($tag_size bytes gzipped)"
else
  say "  the shop's page or the tag is missing; see $LOGS/shop.log"
  status=$((status + 1))
fi
order_page=$(curl -sfL -H 'User-Agent: Mozilla/5.0 (X11; Linux x86_64) run.sh' \
  --data 'quantity=1&server_report=on' "$SHOP/order" || true)
if grep -q 'collector answered 202' <<<"$order_page"; then
  say "  an order placed with curl: the shop's server report was accepted (202)"
else
  say "  the shop's server report was not accepted; see $LOGS/shop.log"
  status=$((status + 1))
fi
say "collector metrics:"
curl -s "http://127.0.0.1:$COLLECTOR_OPS_PORT/metrics" | grep -E '^postback_collector_events_total' || true
say "enricher metrics (eligibility by platform and reason):"
curl -s "http://127.0.0.1:$ENRICHER_PORT/metrics" | grep -E '^postback_enricher_(records|eligibility)_total' || true
say "deduplicator metrics:"
curl -s "http://127.0.0.1:$DEDUPLICATOR_PORT/metrics" \
  | grep -E '^postback_deduplicator_(reports|emitted|merges|duplicates)_total|^postback_deduplicator_held_conversions' || true
say "dispatcher metrics (events by outcome, requests by outcome):"
for port in "$META_PORT" "$GOOGLE_ADS_PORT" "$TIKTOK_PORT"; do
  curl -s "http://127.0.0.1:$port/metrics" \
    | grep -E '^postback_dispatcher_(events|requests)_total' | grep -v ' 0$' || true
done
say "platform sandbox (what it accepted, per platform):"
curl -s "$SANDBOX/admin/stats" >&2
echo >&2

if [[ "$status" -ne 0 ]]; then
  die "$status sample request(s) did not get the expected answer"
fi
if [[ "$ONCE" -eq 1 ]]; then
  say "smoke run passed"
  exit 0
fi
cat >&2 <<MSG

postback is running:
  collector   $URL   (POST /v1/events, POST /v1/collect; /metrics, /readyz on :$COLLECTOR_OPS_PORT)
  enricher    http://127.0.0.1:$ENRICHER_PORT   (/metrics, /readyz)
  dedup       http://127.0.0.1:$DEDUPLICATOR_PORT   (/metrics, /readyz; state in $STATE/deduplicator)
  dispatchers http://127.0.0.1:$META_PORT (meta), :$GOOGLE_ADS_PORT (google_ads), :$TIKTOK_PORT (tiktok)   (/metrics, /readyz)
  sandbox     $SANDBOX   (Meta, Google Ads, TikTok endpoints; /admin/events, /admin/stats)
  status      $STATUS_URL   (the panel: open it, read key $READ_KEY; GET /v1/conversions, /v1/summary; ops :$STATUS_OPS_PORT)
  shop        $SHOP/?gclid=demo-gclid&fbclid=demo-fbclid&ttclid=demo-ttclid
              (a sample shop with the browser tag and stand-in pixels: accept or reject
              the banner, buy, then find the order in the panel: $STATUS_URL)
  broker      $BOOTSTRAP
  logs        $LOGS
Press Ctrl-C to stop.
MSG
wait
