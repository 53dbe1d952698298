#!/usr/bin/env bash
# Sends the sample conversions in examples/ to a running collector, the same
# requests docs/api/README.md shows, and checks each answer. Usage:
#   sample-traffic.sh [COLLECTOR_URL] [BOOTSTRAP]
# Event ids get a per-run suffix (RUN_ID, default the time), so a second run
# against the same broker and deduplicator state is new traffic, not 48 h
# of duplicates.
source "$(dirname "$0")/lib.sh"
URL="${1:-http://127.0.0.1:8080}"
BOOTSTRAP="${2:-127.0.0.1:9092}"
API_KEY="sk_local_demo_0123456789abcdef"
SITE_KEY="pk_local_demo"
failures=0
RUN_ID="${RUN_ID:-$(date +%s)}"
EXAMPLES="$(mktemp -d)"
trap 'rm -rf "$EXAMPLES"' EXIT
for f in "$ROOT"/examples/*.json "$ROOT"/examples/*.jsonl; do
  sed -E "s/(\"event_id\": *\")([^\"]+)\"/\1\2-$RUN_ID\"/g" "$f" >"$EXAMPLES/$(basename "$f")"
done

expect() { # expect CODE DESCRIPTION curl-args...
  local want="$1" what="$2"; shift 2
  local body code
  body="$(mktemp)"
  code="$(curl -sS -o "$body" -w '%{http_code}' "$@" || true)"
  if [[ "$code" == "$want" ]]; then
    printf '  %-40s %s  %s\n' "$what" "$code" "$(head -c 160 "$body")" >&2
  else
    printf '  %-40s %s (expected %s)  %s\n' "$what" "$code" "$want" "$(head -c 300 "$body")" >&2
    failures=$((failures + 1))
  fi
  rm -f "$body"
}

say "sending sample conversions to $URL"
expect 202 "server purchase (POST /v1/events)" \
  -X POST "$URL/v1/events" -H "Authorization: Bearer $API_KEY" \
  -H 'Content-Type: application/json' --data @"$EXAMPLES/purchase.json"
expect 202 "batch, one bad currency (2 accepted)" \
  -X POST "$URL/v1/events" -H "Authorization: Bearer $API_KEY" \
  -H 'Content-Type: application/json' --data @"$EXAMPLES/batch.json"
expect 202 "browser beacon (POST /v1/collect)" \
  -X POST "$URL/v1/collect?site_key=$SITE_KEY" -H 'Origin: https://shop.example' \
  -H 'Content-Type: text/plain' --data @"$EXAMPLES/beacon.json"
expect 403 "beacon from an origin not allowed" \
  -X POST "$URL/v1/collect?site_key=$SITE_KEY" -H 'Origin: https://evil.example' \
  -H 'Content-Type: text/plain' --data @"$EXAMPLES/beacon.json"
expect 400 "invalid event (missing event_id)" \
  -X POST "$URL/v1/events" -H "Authorization: Bearer $API_KEY" \
  -H 'Content-Type: application/json' --data '{"event_name": "Purchase"}'
expect 401 "wrong API key" \
  -X POST "$URL/v1/events" -H "Authorization: Bearer nope" \
  -H 'Content-Type: application/json' --data @"$EXAMPLES/purchase.json"

say "feeding examples/orders.jsonl to the ingest topic orders.ingest"
"$ROOT/target/release/postback-ctl" --bootstrap "$BOOTSTRAP" produce orders.ingest <"$EXAMPLES/orders.jsonl"

exit "$failures"
