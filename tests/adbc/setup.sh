#!/usr/bin/env bash
# Installs the real ADBC Flight SQL driver from PyPI into a venv under target/, for the
# `adbc_flight_sql_over_tls` test (tests/tls_e2e.rs). Prints the venv's python path.
# Usage: tests/adbc/setup.sh   (idempotent; a second run only checks the imports)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="$root/target/adbc-venv"
py="${PYTHON:-python3}"
if ! command -v "$py" >/dev/null 2>&1; then
  echo "tests/adbc/setup.sh: $py not found; install Python 3.9+ (e.g. apt-get install python3 python3-venv)" >&2
  exit 1
fi
if ! "$venv/bin/python" -c 'import adbc_driver_flightsql.dbapi, pyarrow' >/dev/null 2>&1; then
  rm -rf "$venv"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    'adbc-driver-flightsql==1.*' 'adbc-driver-manager==1.*' 'pyarrow>=14'
  "$venv/bin/python" -c 'import adbc_driver_flightsql.dbapi, pyarrow'
fi
echo "$venv/bin/python"
