#!/usr/bin/env bash
# The real topology on one machine: a room, two parties and an analyst as separate processes,
# the room on its own loopback addresses (gRPC on 127.0.0.2, Flight SQL on 127.0.0.3), every
# connection over mutual TLS with certificates from `accord dev-certs`. Runs the whole flow:
# keys, agreement, both signatures, submit, both uploads, a query, audit verification, and
# the refusals a misconfigured client meets. Bounded in time; exits non-zero on any failure.
#
#   deploy/local/run.sh              # uses target/debug/accord (built if missing)
#   ACCORD=/usr/local/bin/accord ROWS=2000 deploy/local/run.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
ACCORD="${ACCORD:-$root/target/debug/accord}"
ROWS="${ROWS:-300}"            # a multiple of 4
[ $((ROWS % 4)) = 0 ] || { echo "ROWS must be a multiple of 4" >&2; exit 2; }
LIMIT="${LIMIT:-240}"          # seconds for the whole run
if [ ! -x "$ACCORD" ]; then
  (cd "$root" && cargo build -p accord-cli)
fi
work="$(mktemp -d)"
room_pid=""
cleanup() {
  if [ -n "$room_pid" ] && kill -0 "$room_pid" 2>/dev/null; then
    kill "$room_pid" 2>/dev/null || true
    wait "$room_pid" 2>/dev/null || true
  fi
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
# The whole run is bounded: a watchdog ends it (and so the room, via the trap) after $LIMIT s.
# (Its own sleep is killed with it, so nothing keeps the script's output open afterwards.)
(
  trap 'kill "$sp" 2>/dev/null; exit 0' TERM
  sleep "$LIMIT" </dev/null >/dev/null 2>&1 &
  sp=$!
  wait "$sp"
  echo "deploy/local/run.sh: TIMEOUT after ${LIMIT}s" >&2
  kill -TERM $$
) &
watchdog=$!
trap 'exit 124' TERM INT
trap 'kill "$watchdog" 2>/dev/null || true; cleanup' EXIT

step() { printf '\n== %s (%ss)\n' "$1" "$SECONDS"; }
fail() { echo "deploy/local/run.sh: FAILED: $*" >&2; exit 1; }
run() { timeout 120 "$ACCORD" "$@"; }

ROOM=127.0.0.2:7700
FLIGHT=127.0.0.3:7701
URL="https://$ROOM"
C="$work/certs"

step "certificates (accord dev-certs): a local CA, the room, drinks, snacks and the analyst"
run dev-certs "$C" --san 127.0.0.2 --san 127.0.0.3 >/dev/null
tls() { echo --ca "$C/ca.crt" --client-cert "$C/$1.crt" --client-key "$C/$1.key"; }

step "keys"
drinks_pk=$(run keygen --out "$work/drinks.key" 2>/dev/null)
snacks_pk=$(run keygen --out "$work/snacks.key" 2>/dev/null)
analyst_pk=$(run keygen --out "$work/analyst.key" 2>/dev/null)

step "customer files ($ROWS rows each, half of them shared)"
{
  echo "email,consent,loyalty_tier,region,monthly_spend"
  for i in $(seq 1 "$ROWS"); do
    tier=$([ $((i % 2)) = 0 ] && echo gold || echo silver)
    echo "c$i@example.org,true,$tier,north,$((i % 400))"
  done
} >"$work/drinks.csv"
{
  echo "email,consent,favourite,weekly_spend"
  for i in $(seq $((ROWS / 2 + 1)) $((ROWS + ROWS / 2))); do
    echo "c$i@example.org,true,crisps,$((i % 90))"
  done
} >"$work/snacks.csv"

step "room key: created in the room's data directory, published by the operator"
room_pk=$(run room key --data-dir "$work/room" 2>/dev/null)
echo "room key: $room_pk"

step "agreement: written (naming the room), signed by both parties, checked"
from=$(date -u -d '-1 hour' +%Y-%m-%dT%H:%M:%SZ)
until=$(date -u -d '+7 days' +%Y-%m-%dT%H:%M:%SZ)
cat >"$work/agreement.toml" <<TOML
schema_version = 1
id = "local-tls"
version = 1
purpose = "Joint promotions, tried on one machine over mutual TLS"
valid_from = $from
valid_until = $until
min_group_size = 10
identifier = "email"

[parties.drinks]
public_key = "$drinks_pk"
max_rows = $((ROWS * 2))
consent_column = "consent"
contributes = [
  { column = "loyalty_tier", role = "dimension" },
  { column = "region", role = "dimension" },
  { column = "monthly_spend", role = "metric", min = 0, max = 500 },
]

[parties.snacks]
public_key = "$snacks_pk"
max_rows = $((ROWS * 2))
consent_column = "consent"
contributes = [
  { column = "favourite", role = "dimension" },
  { column = "weekly_spend", role = "metric", min = 0, max = 100 },
]

[[analysts]]
name = "ana@drinks.example"
party = "drinks"
public_key = "$analyst_pk"

[room]
operator = "Local test operator"
public_key = "$room_pk"

[privacy]
aggregates = ["count", "sum", "avg"]
exact_results = true
TOML
run agreement sign "$work/agreement.toml" --party drinks --key "$work/drinks.key" >/dev/null
run agreement sign "$work/agreement.toml" --party snacks --key "$work/snacks.key" >/dev/null
run agreement verify "$work/agreement.toml" >/dev/null

step "room on $ROOM (gRPC) and $FLIGHT (Flight SQL), TLS with client certificates required"
"$ACCORD" room serve --data-dir "$work/room" --listen "$ROOM" --flight-sql "$FLIGHT" \
  --tls-cert "$C/room.crt" --tls-key "$C/room.key" --client-ca "$C/ca.crt" \
  >"$work/room.out" 2>"$work/room.log" &
room_pid=$!
for _ in $(seq 1 100); do
  grep -q "room listening on" "$work/room.out" 2>/dev/null && break
  kill -0 "$room_pid" 2>/dev/null || { cat "$work/room.log" >&2; fail "the room did not start"; }
  sleep 0.1
done
grep -q "room listening on https://$ROOM" "$work/room.out" || fail "the room is not listening on https://$ROOM"

step "refusals: no client certificate, an unknown CA, plain http"
if out=$(run agreement submit "$work/agreement.toml" --room "$URL" --ca "$C/ca.crt" 2>&1); then
  fail "a client without a certificate was let in"
fi
echo "$out" | grep -q "requires a client certificate" || fail "unexpected message: $out"
if out=$(run agreement submit "$work/agreement.toml" --room "$URL" $(tls drinks | sed "s#$C/ca.crt#$C/drinks.crt#") 2>&1); then
  fail "a client trusting another CA connected"
fi
echo "$out" | grep -q "unknown CA" || fail "unexpected message: $out"
if out=$(run agreement submit "$work/agreement.toml" --room "http://$ROOM" 2>&1); then
  fail "plain http reached a TLS room"
fi
echo "$out" | grep -q "https://" || fail "unexpected message: $out"

step "submit (drinks' client certificate)"
run agreement submit "$work/agreement.toml" --room "$URL" $(tls drinks)

step "both uploads, as two processes"
common=(--room "$URL" --agreement "$work/agreement.toml")
timeout 180 "$ACCORD" party upload "${common[@]}" --party drinks --key "$work/drinks.key" \
  --state "$work/drinks-state" --input "$work/drinks.csv" --wait $(tls drinks) >"$work/drinks.out" 2>&1 &
d=$!
timeout 180 "$ACCORD" party upload "${common[@]}" --party snacks --key "$work/snacks.key" \
  --state "$work/snacks-state" --input "$work/snacks.csv" --wait $(tls snacks) >"$work/snacks.out" 2>&1 &
s=$!
wait "$d" || { cat "$work/drinks.out" >&2; fail "drinks' upload"; }
wait "$s" || { cat "$work/snacks.out" >&2; fail "snacks' upload"; }

step "the analyst's query"
out=$(run query --room "$URL" --agreement "$work/agreement.toml" --key "$work/analyst.key" $(tls analyst) \
  --format csv --sql "SELECT drinks_loyalty_tier, COUNT(*) AS n FROM overlap GROUP BY drinks_loyalty_tier ORDER BY drinks_loyalty_tier")
echo "$out"
# The overlap is c$((ROWS/2+1))..c$ROWS: ROWS/2 customers, half gold (even) and half silver.
expected="drinks_loyalty_tier,n
gold,$((ROWS / 4))
silver,$((ROWS / 4))"
[ "$out" = "$expected" ] || fail "unexpected answer; expected:
$expected"
if run query --room "$URL" --agreement "$work/agreement.toml" --key "$work/analyst.key" $(tls analyst) \
  --sql "SELECT drinks_region FROM overlap" >/dev/null 2>&1; then
  fail "a row-level query was answered"
fi

step "audit verification"
# Parties and auditors read the log; an analyst may not (it holds every query's SQL).
run audit verify --room "$URL" --agreement "$work/agreement.toml" \
  --party drinks --key "$work/drinks.key" $(tls drinks)
if out=$(run audit verify --room "$URL" --agreement "$work/agreement.toml" \
    --key "$work/analyst.key" $(tls analyst) 2>&1); then
  fail "an analyst read the audit log: $out"
fi

kill "$room_pid"; wait "$room_pid" 2>/dev/null || true; room_pid=""
step "done: the whole flow over mutual TLS on separate loopback addresses"
