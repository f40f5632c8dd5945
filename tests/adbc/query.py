"""Runs one SQL query against an Accord room's Flight SQL listener with the real ADBC Flight
SQL driver (adbc-driver-flightsql from PyPI), over TLS, and prints the result as JSON.

Usage: query.py URI TOKEN CA_PEM [CLIENT_CERT CLIENT_KEY] -- SQL
Used by tests/tls_e2e.rs (adbc_flight_sql_over_tls); the options are the ones
docs/FLIGHT_SQL.md shows.
"""
import json
import sys

import adbc_driver_flightsql.dbapi as flightsql
from adbc_driver_flightsql import DatabaseOptions


def main(argv):
    sep = argv.index("--")
    args, sql = argv[1:sep], " ".join(argv[sep + 1:])
    uri, token, ca = args[0], args[1], args[2]
    db_kwargs = {
        DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {token}",
        DatabaseOptions.TLS_ROOT_CERTS.value: open(ca).read(),
    }
    if len(args) == 5:
        db_kwargs[DatabaseOptions.MTLS_CERT_CHAIN.value] = open(args[3]).read()
        db_kwargs[DatabaseOptions.MTLS_PRIVATE_KEY.value] = open(args[4]).read()
    with flightsql.connect(uri, db_kwargs=db_kwargs) as conn:
        with conn.cursor() as cur:
            cur.execute(sql)
            table = cur.fetch_arrow_table()
    print(json.dumps({"columns": table.column_names, "rows": table.to_pylist()}))


if __name__ == "__main__":
    try:
        main(sys.argv)
    except Exception as e:  # the test shows this text when it fails
        print(f"adbc error: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
