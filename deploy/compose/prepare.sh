#!/usr/bin/env bash
# Makes deploy/compose/work/: dev certificates (room valid for the compose service name `room`),
# keys for drinks, snacks and the analyst, owned by the image's non-root user (uid 65532).
# The agreement and the customer files are yours to put there (see deploy/local/run.sh for
# a complete example); then `docker compose -f deploy/compose.yaml --profile parties up`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
ACCORD="${ACCORD:-accord}"
mkdir -p "$here/work"
"$ACCORD" dev-certs "$here/work/certs" --san room
for who in drinks snacks analyst; do
  # keygen prints the public key: keep it for the agreement and the allow-list.
  [ -f "$here/work/$who.key" ] || "$ACCORD" keygen --out "$here/work/$who.key" > "$here/work/$who.pub"
done
# The room listens beyond loopback, so only listed party keys may register agreements.
cat "$here/work/drinks.pub" "$here/work/snacks.pub" > "$here/work/registration-allow.txt"
# The containers run as uid 65532 and refuse key files other users can read.
if [ "$(id -u)" = 0 ]; then chown -R 65532:65532 "$here/work"; fi
