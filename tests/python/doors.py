"""Runs the same SQL cases through BitVelocity's front doors with the clients users use.

For each door given (HTTP with `requests`, Arrow Flight SQL with the ADBC driver, which
prepares every statement and binds parameters), and for each user, every case's answer is
printed as JSON: {"door": {"user": {"case": {"rows": [[text, ...], ...]} or
{"error": {"kind": ..., "message": ...}}}}}. Values are printed as text (None as null) so the
caller compares them with PostgreSQL's text forms. A Flight SQL catalog probe
(`adbc_get_info`, `adbc_get_objects`, `adbc_get_table_schema`) is printed under "catalog".
"""

import argparse
import json
import sys

import requests


# The certificate authority the doors' TLS is verified against (None: plaintext).
TLS_CA = None


def text(v):
    if v is None:
        return None
    if isinstance(v, bool):
        return "t" if v else "f"
    return str(v)


def http_case(base, key, case):
    headers = {"Content-Type": "application/json"}
    if isinstance(key, dict):
        key = key["jwt"]
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    body = {"sql": case["sql"], "params": case.get("params", [])}
    if case.get("consistent"):
        body["consistent"] = True
    r = requests.post(
        f"{base}/v1/sql", json=body, headers=headers, timeout=60, verify=TLS_CA or True
    )
    doc = r.json()
    if "error" in doc:
        return {"error": {"kind": doc["error"]["code"], "message": doc["error"]["message"]}}
    names = [c["name"] for c in doc["columns"]]
    return {
        "rows": [[text(row[n]) for n in names] for row in doc["rows"]],
        "position": r.headers.get("x-bitvelocity-position"),
    }


# ADBC status codes as the doors' error kinds.
ADBC_KINDS = {
    "UNAUTHENTICATED": "unauthenticated",
    "UNAUTHORIZED": "permission_denied",
    "INVALID_ARGUMENT": "bad_request",
    "INVALID_STATE": "bad_request",
    "TIMEOUT": "timeout",
    "IO": "io",
}


def adbc_error(e):
    code = getattr(e, "status_code", None)
    name = getattr(code, "name", str(code))
    return {"error": {"kind": ADBC_KINDS.get(name, name), "message": str(e)}}


def credentials(user, key):
    """A user's (name, key, token): a JSON object {"jwt": ...} is a bearer token instead."""
    if isinstance(key, dict):
        return user, None, key["jwt"]
    return user, key, None


def flight_connect(uri, user, key):
    import adbc_driver_flightsql.dbapi as flight_sql

    user, key, token = credentials(user, key)
    kwargs = {}
    if TLS_CA:
        with open(TLS_CA) as f:
            kwargs["adbc.flight.sql.client_option.tls_root_certs"] = f.read()
    if token is not None:
        kwargs["adbc.flight.sql.authorization_header"] = f"Bearer {token}"
    elif key is not None:
        kwargs.update({"username": user, "password": key})
    return flight_sql.connect(uri, db_kwargs=kwargs, autocommit=True)


# The call header asking the Flight SQL door for a consistent read.
CONSISTENT_HEADER = "adbc.flight.sql.rpc.call_header.x-bitvelocity-consistent"


def flight_case(conn, case):
    import adbc_driver_manager

    consistent = bool(case.get("consistent"))
    if consistent:
        conn.adbc_connection.set_options(**{CONSISTENT_HEADER: "true"})
    try:
        cur = conn.cursor()
        params = case.get("params")
        if params:
            cur.execute(case["sql"], parameters=tuple(params))
        else:
            cur.execute(case["sql"])
        rows = cur.fetchall()
        cur.close()
        return {"rows": [[text(v) for v in row] for row in rows]}
    except adbc_driver_manager.Error as e:
        return adbc_error(e)
    finally:
        if consistent:
            conn.adbc_connection.set_options(**{CONSISTENT_HEADER: "false"})


def flight_catalog(conn):
    import adbc_driver_manager

    try:
        info = {k: text(v) for k, v in conn.adbc_get_info().items() if isinstance(k, str)}
        objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
        tables = sorted(
            f"{s['db_schema_name']}.{t['table_name']}"
            for c in objects
            for s in (c["catalog_db_schemas"] or [])
            for t in (s["db_schema_tables"] or [])
        )
        catalogs = sorted(c["catalog_name"] for c in objects)
        schema = conn.adbc_get_table_schema("customers", db_schema_filter="silver")
        return {
            "vendor": info.get("vendor_name"),
            "catalogs": catalogs,
            "tables": tables,
            "customers_columns": [f.name for f in schema],
        }
    except adbc_driver_manager.Error as e:
        return adbc_error(e)


# PostgreSQL SQLSTATE classes as the doors' error kinds.
def pg_kind(state):
    if state in ("28P01", "28000"):
        return "unauthenticated"
    if state == "42501":
        return "permission_denied"
    if state == "53300":
        return "busy"
    if state == "57014":
        return "timeout"
    return "query_error"


def pg_connect(hostport, user, key):
    import psycopg

    host, port = hostport.rsplit(":", 1)
    user, key, token = credentials(user, key)
    kwargs = dict(host=host, port=int(port), dbname="bitvelocity", user=user or "nobody")
    if TLS_CA:
        kwargs.update(sslmode="verify-full", sslrootcert=TLS_CA)
    else:
        kwargs.update(sslmode="disable")
    if (token or key) is not None:
        kwargs["password"] = token or key
    # Autocommit: a refused statement must not leave the session in a failed transaction.
    return psycopg.connect(autocommit=True, connect_timeout=10, **kwargs)


def pg_case(conn, case):
    import psycopg

    sql = case["sql"]
    params = case.get("params") or None
    if params:
        # psycopg binds `%s` server-side (extended protocol); the cases use `$n` in order.
        for i in range(len(params), 0, -1):
            sql = sql.replace(f"${i}", "%s")
    consistent = bool(case.get("consistent"))
    try:
        with conn.cursor() as cur:
            if consistent:
                cur.execute("SET bitvelocity.consistent_reads = on")
            cur.execute(sql, params)
            rows = cur.fetchall()
        return {"rows": [[text(v) for v in row] for row in rows]}
    except psycopg.Error as e:
        return {"error": {"kind": pg_kind(e.sqlstate), "message": str(e)}}
    finally:
        if consistent:
            with conn.cursor() as cur:
                cur.execute("SET bitvelocity.consistent_reads = off")


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        out += bytes([b | 0x80]) if n else bytes([b])
        if not n:
            return out


def pb_bytes(field, data):
    return varint((field << 3) | 2) + varint(len(data)) + data


def hand_made_ticket(uri, user, key, sql=b"SELECT count(*) FROM bronze.customers", magic=b"BVq1"):
    """A DoGet ticket made by the client, not by the server, reading bronze.customers:
    the statement it carries is authorized like any other (a handle grants nothing). With
    magic BVc1 the ticket itself asks for a consistent read (no call header is sent)."""
    import struct

    import pyarrow.flight as fl

    handle = magic + struct.pack("<I", len(sql)) + sql
    any_msg = pb_bytes(
        1, b"type.googleapis.com/arrow.flight.protocol.sql.TicketStatementQuery"
    ) + pb_bytes(2, pb_bytes(1, handle))
    if TLS_CA:
        with open(TLS_CA, "rb") as f:
            client = fl.FlightClient(uri, tls_root_certs=f.read())
    else:
        client = fl.FlightClient(uri)
    try:
        header = client.authenticate_basic_token(user, key)
        options = fl.FlightCallOptions(headers=[header])
        table = client.do_get(fl.Ticket(any_msg), options=options).read_all()
        return {"rows": [[text(v) for v in row.values()] for row in table.to_pylist()]}
    except fl.FlightUnauthorizedError as e:
        return {"error": {"kind": "permission_denied", "message": str(e)}}
    except fl.FlightUnauthenticatedError as e:
        return {"error": {"kind": "unauthenticated", "message": str(e)}}
    finally:
        client.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cases", required=True, help="JSON file: [{name, sql, params?}]")
    p.add_argument("--users", required=True, help="JSON file: {name: key}; a null key sends none")
    p.add_argument("--http", help="base URL of the HTTP door")
    p.add_argument("--flight", help="grpc:// URI of the Flight SQL door")
    p.add_argument("--pgwire", help="host:port of the PostgreSQL wire door")
    p.add_argument("--tls-ca", help="PEM certificate to verify every door's TLS with")
    args = p.parse_args()
    global TLS_CA
    TLS_CA = args.tls_ca
    with open(args.cases) as f:
        cases = json.load(f)
    with open(args.users) as f:
        users = json.load(f)
    out = {}
    if args.http:
        out["http"] = {
            user: {c["name"]: http_case(args.http, key, c) for c in cases}
            for user, key in users.items()
        }
    if args.flight:
        out["flight"] = {}
        for user, key in users.items():
            # A refused connection (no or wrong credentials) is every case's answer.
            try:
                conn = flight_connect(args.flight, user, key)
            except Exception as e:  # noqa: BLE001 - the refusal is the answer
                out["flight"][user] = {c["name"]: adbc_error(e) for c in cases}
                continue
            answers = {c["name"]: flight_case(conn, c) for c in cases}
            answers["catalog"] = flight_catalog(conn)
            if isinstance(key, str):
                answers["hand_made_ticket"] = hand_made_ticket(args.flight, user, key)
                answers["hand_made_consistent_ticket"] = hand_made_ticket(
                    args.flight, user, key, b"SELECT id, email FROM customers ORDER BY id", b"BVc1"
                )
            conn.close()
            out["flight"][user] = answers
    if args.pgwire:
        import psycopg

        out["pgwire"] = {}
        for user, key in users.items():
            try:
                conn = pg_connect(args.pgwire, user, key)
            except psycopg.OperationalError as e:
                # No password at all fails in the client before any SQLSTATE; any other
                # failure without one (refused connection, TLS, a crash) is not a refusal.
                if e.sqlstate:
                    kind = pg_kind(e.sqlstate)
                elif "password authentication failed for user" in str(e):
                    # The server's 28P01 (libpq reports a login's error without its code).
                    kind = "unauthenticated"
                elif key is None and "no password supplied" in str(e):
                    kind = "unauthenticated"
                else:
                    kind = "connect_failed"
                refused = {"error": {"kind": kind, "message": str(e)}}
                out["pgwire"][user] = {c["name"]: refused for c in cases}
                continue
            out["pgwire"][user] = {c["name"]: pg_case(conn, c) for c in cases}
            conn.close()
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
