"""Sends malformed and hostile requests to every door of a running `bitvelocity serve`.

Per door at least --count requests: bad SQL, huge literals, deeply nested expressions,
statements that write or read files, wrong content types, invalid JSON, unknown routes,
forged and expired tokens, garbage on the PostgreSQL socket, garbage Flight tickets and
commands, oversized Flight messages. Every one must be refused with an error (never
answered with data, never a dropped server). Prints {"door": {"sent": n, "unexpected":
[...]}} as JSON.
"""

import argparse
import json
import os
import random
import socket
import struct
import sys

import requests

from doors import varint

random.seed(7)


def sqls(i):
    """Statements that must all fail, by kind, cycling with i."""
    kinds = [
        f"SELEC {i} FROM customers",
        "SELECT length('" + "x" * 1_000_000 + "') FROM no_such_table",
        "SELECT " + "(" * 3000 + "1" + ")" * 3000,
        "SELECT " + " + ".join(["1"] * 20000) + " FROM nowhere_at_all",
        "COPY customers TO '/tmp/bitvelocity-hostile-leak.csv'",
        "CREATE EXTERNAL TABLE leak STORED AS CSV LOCATION '/etc/passwd'",
        "INSERT INTO customers (id) VALUES (1)",
        "DROP TABLE customers",
        "SELECT * FROM '/etc/passwd'",
        "SET datafusion.execution.target_partitions = 1000",
        "SELECT count(*) FROM bronze.customers",  # ungranted for the analyst
        "SELECT * FROM no_such_table",
    ]
    return kinds[i % len(kinds)]


def http_door(base, key, expired, count):
    unexpected = []
    sent = 0
    forged = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbmEiLCJyb2xlIjoiYW5hbHlzdCJ9." + "A" * 43
    for i in range(count):
        kind = i % 8
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        try:
            if kind == 0:
                r = requests.post(f"{base}/v1/sql", json={"sql": sqls(i)}, headers=headers)
            elif kind == 1:
                r = requests.post(f"{base}/v1/sql", data="{not json", headers=headers)
            elif kind == 2:
                h = dict(headers, **{"Content-Type": "text/plain"})
                r = requests.post(f"{base}/v1/sql", data="SELECT 1", headers=h)
            elif kind == 3:
                r = requests.get(f"{base}/v1/{random.randrange(10**6)}/../../etc/passwd")
            elif kind == 4:
                h = dict(headers, Authorization=f"Bearer {forged}")
                r = requests.post(f"{base}/v1/sql", json={"sql": "SELECT 1"}, headers=h)
            elif kind == 5:
                h = dict(headers, Authorization=f"Bearer {expired}")
                r = requests.post(f"{base}/v1/sql", json={"sql": "SELECT 1"}, headers=h)
            elif kind == 6:
                body = {"sql": "SELECT $1", "params": [{"nested": [1, 2]}]}
                r = requests.post(f"{base}/v1/sql", json=body, headers=headers)
            else:
                body = os.urandom(random.randrange(1, 4096))
                r = requests.post(f"{base}/v1/sql", data=body, headers=headers)
            sent += 1
            if r.status_code < 400:
                doc = r.json()
                # A streamed answer can only fail in-band (its status was sent first).
                if "error" not in doc:
                    unexpected.append(f"http #{i} kind {kind}: {r.status_code} {r.text[:200]}")
        except requests.RequestException as e:
            unexpected.append(f"http #{i} kind {kind}: {e}")
    return {"sent": sent, "unexpected": unexpected}


def pg_door(hostport, user, key, count):
    import psycopg

    host, port = hostport.rsplit(":", 1)
    unexpected = []
    sent = 0
    conn = None
    for i in range(count):
        kind = i % 4
        try:
            if kind == 0:
                # Garbage where a startup message goes.
                with socket.create_connection((host, int(port)), timeout=10) as s:
                    s.sendall(os.urandom(random.randrange(1, 8192)))
                    s.settimeout(5)
                    try:
                        s.recv(4096)
                    except (TimeoutError, ConnectionError, OSError):
                        pass
            elif kind == 1:
                # A startup message claiming an absurd length, then nothing.
                with socket.create_connection((host, int(port)), timeout=10) as s:
                    s.sendall(struct.pack("!ii", 0x7FFFFFFF, 196608))
                    s.settimeout(5)
                    try:
                        s.recv(4096)
                    except (TimeoutError, ConnectionError, OSError):
                        pass
            elif kind == 2:
                try:
                    psycopg.connect(
                        host=host, port=int(port), dbname="bitvelocity", user=user,
                        password="not-the-key", sslmode="disable", connect_timeout=10,
                    ).close()
                    unexpected.append(f"pgwire #{i}: a wrong password logged in")
                except psycopg.OperationalError:
                    pass
            else:
                if conn is None or conn.closed:
                    conn = psycopg.connect(
                        host=host, port=int(port), dbname="bitvelocity", user=user,
                        password=key, sslmode="disable", autocommit=True, connect_timeout=10,
                    )
                try:
                    with conn.cursor() as cur:
                        cur.execute(sqls(i).replace("%", "%%"))
                        cur.fetchall()
                    unexpected.append(f"pgwire #{i}: answered {sqls(i)[:80]}")
                except psycopg.Error:
                    pass
            sent += 1
        except Exception as e:  # noqa: BLE001 - any other failure is unexpected
            unexpected.append(f"pgwire #{i} kind {kind}: {type(e).__name__}: {e}")
    if conn is not None:
        conn.close()
    return {"sent": sent, "unexpected": unexpected}


def flight_door(uri, user, key, count):
    import pyarrow as pa
    import pyarrow.flight as fl

    unexpected = []
    sent = 0
    client = fl.FlightClient(uri)
    header = client.authenticate_basic_token(user, key)
    options = fl.FlightCallOptions(headers=[header], timeout=30)
    forged = fl.FlightCallOptions(headers=[(b"authorization", b"Bearer bv_forged")])
    for i in range(count):
        kind = i % 5
        try:
            if kind == 0:
                client.do_get(fl.Ticket(os.urandom(random.randrange(1, 512))), options=options).read_all()
            elif kind == 1:
                cmd = fl.FlightDescriptor.for_command(os.urandom(random.randrange(1, 512)))
                client.get_flight_info(cmd, options=options)
            elif kind == 2 and i % 50 == 2:
                # Past the server's 16 MiB message limit.
                client.do_get(fl.Ticket(b"x" * (17 << 20)), options=options).read_all()
            elif kind == 2:
                url = b"type.googleapis.com/arrow.flight.protocol.sql.NoSuchCommand"
                any_msg = b"\x0a" + varint(len(url)) + url + b"\x12\x00"
                client.do_get(fl.Ticket(any_msg), options=options).read_all()
            elif kind == 3:
                client.do_get(fl.Ticket(b"anything"), options=forged).read_all()
            else:
                # A well-formed Flight SQL statement that must be refused.
                sql = sqls(i).encode()
                inner = b"\x0a" + varint(len(sql)) + sql
                url = b"type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery"
                any_msg = b"\x0a" + varint(len(url)) + url + b"\x12" + varint(len(inner)) + inner
                info = client.get_flight_info(fl.FlightDescriptor.for_command(any_msg), options=options)
                client.do_get(info.endpoints[0].ticket, options=options).read_all()
            unexpected.append(f"flight #{i} kind {kind}: answered")
        except fl.FlightUnavailableError as e:
            unexpected.append(f"flight #{i} kind {kind}: the server is gone: {e}")
        except (fl.FlightError, pa.ArrowException):
            # Refused: Flight statuses, and INVALID_ARGUMENT / OUT_OF_RANGE as ArrowInvalid.
            pass
        except Exception as e:  # noqa: BLE001 - any other failure is unexpected
            unexpected.append(f"flight #{i} kind {kind}: {type(e).__name__}: {e}")
        sent += 1
    client.close()
    return {"sent": sent, "unexpected": unexpected}


def rest_door(base, key, expired, count):
    """Hostile Iceberg REST catalog requests from a reader without write grants: every
    one must be refused (4xx), none may change or reveal anything."""
    unexpected = []
    sent = 0
    rest = f"{base}/iceberg/v1"
    auth = {"Authorization": f"Bearer {key}"}
    for i in range(count):
        kind = i % 10
        try:
            if kind == 0:
                r = requests.get(f"{rest}/{random.randrange(10**6)}/nope", headers=auth)
            elif kind == 1:
                r = requests.post(f"{rest}/namespaces", data="{not json", headers=auth)
            elif kind == 2:
                body = os.urandom(random.randrange(1, 4096))
                r = requests.post(f"{rest}/namespaces/silver/tables/customers", data=body, headers=auth)
            elif kind == 3:
                body = {"requirements": [], "updates": [{"action": "set-location", "location": "file:///etc"}]}
                r = requests.post(f"{rest}/namespaces/silver/tables/customers", json=body, headers=auth)
            elif kind == 4:
                r = requests.get(f"{rest}/namespaces/..%2F..%2Fetc/tables/passwd", headers=auth)
            elif kind == 5:
                r = requests.get(f"{rest}/config", headers={"Authorization": f"Bearer {expired}"})
            elif kind == 6:
                form = {"grant_type": random.choice(["password", "client_credentials"]), "client_id": "x", "client_secret": "y"}
                r = requests.post(f"{rest}/oauth/tokens", data=form)
            elif kind == 7:
                r = requests.get(f"{rest}/namespaces/bronze/tables/customers", headers=auth)
            elif kind == 8:
                r = requests.delete(f"{rest}/namespaces/silver/tables/customers?purgeRequested=true", headers=auth)
            else:
                r = requests.get(f"{rest}/namespaces/a%1Fb/tables", headers=auth)
            sent += 1
            if r.status_code < 400:
                unexpected.append(f"rest #{i} kind {kind}: {r.status_code} {r.text[:200]}")
        except requests.RequestException as e:
            unexpected.append(f"rest #{i} kind {kind}: {e}")
    return {"sent": sent, "unexpected": unexpected}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--http", required=True)
    p.add_argument("--flight", required=True)
    p.add_argument("--pgwire", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--expired-jwt", required=True)
    p.add_argument("--count", type=int, default=1000)
    args = p.parse_args()
    out = {
        "http": http_door(args.http, args.key, args.expired_jwt, args.count),
        "rest": rest_door(args.http, args.key, args.expired_jwt, args.count),
        "pgwire": pg_door(args.pgwire, args.user, args.key, args.count),
        "flight": flight_door(args.flight, args.user, args.key, args.count),
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
