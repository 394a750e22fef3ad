"""Drives BitVelocity's Iceberg REST catalog with the clients users use: pyiceberg's
RestCatalog (a bearer key, and OAuth2 client credentials) and DuckDB's iceberg extension
(`ATTACH ... TYPE iceberg` with a TOKEN secret and with an OAuth2 secret), plus raw HTTP
for what clients never send on purpose (stale or forged commits).

Prints one JSON object of observations: rows read (as text, ordered by their first
column), error classes of refused calls, and rows of the table pyiceberg wrote, read back
through every SQL door. The Rust test compares them with PostgreSQL and with what it asked.
"""

import argparse
import json
import os
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import requests

from doors import flight_case, flight_connect, http_case, pg_case, pg_connect, text


def rows_of(table, columns):
    """An Arrow table's rows as text, ordered by the first column."""
    data = table.select(columns).to_pylist()
    rows = [[text(r[c]) for c in columns] for r in data]
    return sorted(rows, key=lambda r: (r[0] is None, int(r[0]) if r[0] is not None else 0))


def error_class(call):
    """Runs `call`; its exception's class name, or "ok"."""
    try:
        call()
        return "ok"
    except Exception as e:  # noqa: BLE001 - the class is the observation
        return type(e).__name__


def pyiceberg_reads(cat, reads):
    out = {}
    for r in reads:
        t = cat.load_table(r["table"])
        out[r["table"]] = rows_of(t.scan().to_arrow(), r["columns"])
    return out


def duck_connect():
    import duckdb
    import duckdb_ext

    ext_dir = os.path.join(list(duckdb_ext.__path__)[0], "extensions")
    duck = duckdb.connect(
        config={"extension_directory": ext_dir, "autoinstall_known_extensions": False}
    )
    duck.execute("LOAD httpfs")
    duck.execute("LOAD iceberg")
    return duck


def duck_reads(duck, alias, reads):
    out = {}
    for r in reads:
        cols = ", ".join(r["columns"])
        try:
            got = duck.execute(f"SELECT {cols} FROM {alias}.{r['table']}").fetchall()
            rows = [[text(v) for v in row] for row in got]
            out[r["table"]] = sorted(rows, key=lambda x: int(x[0]))
        except Exception as e:  # noqa: BLE001 - the refusal is the observation
            out[r["table"]] = {"error": type(e).__name__, "message": str(e)[:300]}
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--http", required=True, help="base URL of the HTTP door")
    p.add_argument("--flight", required=True)
    p.add_argument("--pgwire", required=True)
    p.add_argument("--users", required=True, help="JSON: {name: key}")
    p.add_argument("--reads", required=True, help="JSON: [{table, columns}] to read")
    p.add_argument("--scratch", required=True, help="a folder outside the warehouse")
    p.add_argument("--warehouse-url", required=True, help="file:///<dir> or s3://bucket/prefix")
    a = p.parse_args()
    with open(a.users) as f:
        users = json.load(f)
    with open(a.reads) as f:
        reads = json.load(f)
    uri = f"{a.http}/iceberg"
    eve, ana, sam, max_ = users["eve"], users["ana"], users["sam"], users["max"]
    out = {}

    from pyiceberg.catalog.rest import RestCatalog
    from pyiceberg.schema import Schema
    from pyiceberg.types import LongType, NestedField, StringType

    # Raw HTTP: no credentials, an unknown route, a wrong warehouse.
    out["config_without_credentials"] = requests.get(f"{uri}/v1/config", timeout=30).status_code
    bearer = lambda key: {"Authorization": f"Bearer {key}"}  # noqa: E731
    out["unknown_route"] = requests.get(f"{uri}/v1/nope", headers=bearer(eve), timeout=30).status_code
    out["wrong_warehouse"] = requests.get(
        f"{uri}/v1/config", params={"warehouse": "other"}, headers=bearer(eve), timeout=30
    ).status_code
    out["oauth_wrong_secret"] = requests.post(
        f"{uri}/v1/oauth/tokens",
        data={"grant_type": "client_credentials", "client_id": "eve", "client_secret": ana},
        timeout=30,
    ).status_code

    # pyiceberg as the engineer: a key as bearer, then OAuth2 client credentials.
    by_token = RestCatalog("bitvelocity", uri=uri, token=eve)
    by_oauth = RestCatalog("bitvelocity", uri=uri, credential=f"eve:{eve}")
    out["engineer_namespaces"] = sorted(".".join(n) for n in by_token.list_namespaces())
    loaded = requests.get(
        f"{uri}/v1/namespaces/silver/tables/customers", headers=bearer(eve), timeout=30
    ).json()
    out["load_config_keys"] = sorted(loaded["config"])
    out["pyiceberg_token"] = pyiceberg_reads(by_token, reads)
    out["pyiceberg_oauth"] = pyiceberg_reads(by_oauth, reads)

    # pyiceberg as the analyst (silver only): bronze is forbidden, existing or not.
    analyst = RestCatalog("bitvelocity", uri=uri, token=ana)
    out["analyst_namespaces"] = sorted(".".join(n) for n in analyst.list_namespaces())
    out["analyst_silver_tables"] = sorted(
        ".".join(t) for t in analyst.list_tables("silver")
    )
    out["analyst_bronze_existing"] = error_class(lambda: analyst.load_table("bronze.customers"))
    out["analyst_bronze_unknown"] = error_class(lambda: analyst.load_table("bronze.no_such"))
    out["analyst_bronze_listing"] = error_class(lambda: analyst.list_tables("bronze"))
    out["analyst_silver_unknown"] = error_class(lambda: analyst.load_table("silver.no_such"))
    out["analyst_creates_namespace"] = error_class(lambda: analyst.create_namespace("sandbox"))

    # Writes: refused in the platform's namespaces, accepted in the sandbox.
    schema = Schema(
        NestedField(1, "id", LongType(), required=False),
        NestedField(2, "note", StringType(), required=False),
    )
    # A role that may write everything still may not write the platform's namespaces.
    admin = RestCatalog("bitvelocity", uri=uri, token=max_)
    out["admin_create_in_silver"] = error_class(lambda: admin.create_table("silver.mine", schema))
    out["admin_drop_silver_table"] = error_class(lambda: admin.drop_table("silver.customers"))
    out["admin_create_bronze_namespace"] = error_class(lambda: admin.create_namespace("bronze"))
    out["admin_silver_properties"] = error_class(
        lambda: admin.update_namespace_properties("silver", updates={"x": "y"})
    )
    out["create_in_silver"] = error_class(lambda: by_token.create_table("silver.mine", schema))
    out["create_in_bronze"] = error_class(lambda: by_token.create_table("bronze.mine", schema))
    out["drop_silver_table"] = error_class(lambda: by_token.drop_table("silver.customers"))
    by_token.create_namespace("sandbox")
    out["create_outside_warehouse"] = error_class(
        lambda: by_token.create_table(
            "sandbox.elsewhere", schema, location=f"file://{a.scratch}/elsewhere"
        )
    )
    notes = by_token.create_table("sandbox.notes", schema)
    arrow_schema = pa.schema([("id", pa.int64()), ("note", pa.string())])
    batch = lambda rows: pa.Table.from_pylist(  # noqa: E731
        [{"id": i, "note": n} for i, n in rows], schema=arrow_schema
    )
    notes.append(batch([(1, "a"), (2, "b"), (3, None)]))
    notes.append(batch([(4, "d")]))
    # Two writers from the same snapshot: the second's assert-ref-snapshot-id fails (409),
    # and pyiceberg, which retries on 409, then appends on top of the first's snapshot.
    first = by_token.load_table("sandbox.notes")
    second = by_token.load_table("sandbox.notes")
    stale = second.metadata.current_snapshot_id
    first.append(batch([(5, "e")]))
    out["stale_commit"] = requests.post(
        f"{uri}/v1/namespaces/sandbox/tables/notes",
        headers=bearer(eve),
        json={
            "requirements": [{"type": "assert-ref-snapshot-id", "ref": "main", "snapshot-id": stale}],
            "updates": [{"action": "set-properties", "updates": {"stale": "yes"}}],
        },
        timeout=30,
    ).json()["error"]["type"]
    out["stale_append_retried"] = error_class(lambda: second.append(batch([(6, "f")])))
    # A data file outside the table (outside the warehouse, and another table's file).
    outside = os.path.join(a.scratch, "outside.parquet")
    pq.write_table(batch([(7, "outside")]), outside)
    out["add_file_outside_warehouse"] = error_class(
        lambda: by_token.load_table("sandbox.notes").add_files([f"file://{outside}"])
    )
    # A file planted inside the warehouse, but in another table's folder (written with the
    # storage access the catalog handed out, as any client could).
    io = by_token.load_table("sandbox.notes").io
    planted = f"{a.warehouse_url}/silver/customers/data/planted.parquet"
    if planted.startswith("file://"):
        os.makedirs(os.path.dirname(planted.removeprefix("file://")), exist_ok=True)
    with io.new_output(planted).create(overwrite=True) as f:
        pq.write_table(batch([(8, "planted")]), f)
    out["add_other_tables_file"] = error_class(
        lambda: by_token.load_table("sandbox.notes").add_files([planted])
    )
    # Raw commits: a wrong table uuid, and a manifest list outside the table.
    current = requests.get(f"{uri}/v1/namespaces/sandbox/tables/notes", headers=bearer(eve), timeout=30).json()
    meta = current["metadata"]
    commit_url = f"{uri}/v1/namespaces/sandbox/tables/notes"
    out["wrong_uuid"] = requests.post(
        commit_url,
        headers=bearer(eve),
        json={
            "requirements": [{"type": "assert-table-uuid", "uuid": "00000000-0000-0000-0000-000000000000"}],
            "updates": [{"action": "set-properties", "updates": {"x": "y"}}],
        },
        timeout=30,
    ).json()["error"]["type"]
    out["manifest_list_outside"] = requests.post(
        commit_url,
        headers=bearer(eve),
        json={
            "requirements": [{"type": "assert-table-uuid", "uuid": meta["table-uuid"]}],
            "updates": [
                {
                    "action": "add-snapshot",
                    "snapshot": {
                        "snapshot-id": 4242,
                        "parent-snapshot-id": meta["current-snapshot-id"],
                        "sequence-number": meta["last-sequence-number"] + 1,
                        "timestamp-ms": int(time.time() * 1000),
                        "manifest-list": "file:///etc/passwd",
                        "summary": {"operation": "append"},
                        "schema-id": meta["current-schema-id"],
                    },
                }
            ],
        },
        timeout=30,
    ).status_code
    out["analyst_reads_sandbox"] = error_class(lambda: analyst.load_table("sandbox.notes"))
    out["pyiceberg_notes"] = rows_of(by_token.load_table("sandbox.notes").scan().to_arrow(), ["id", "note"])

    # The table pyiceberg wrote, through every SQL door.
    case = {"name": "notes", "sql": "SELECT id, note FROM sandbox.notes ORDER BY id"}
    out["http_notes"] = http_case(a.http, eve, case)
    conn = flight_connect(a.flight, "eve", eve)
    out["flight_notes"] = flight_case(conn, case)
    conn.close()
    conn = pg_connect(a.pgwire, "eve", eve)
    out["pgwire_notes"] = pg_case(conn, case)
    conn.close()
    out["analyst_http_notes"] = http_case(a.http, ana, case)

    # DuckDB: a TOKEN secret and an OAuth2 secret as the engineer, a TOKEN as the analyst.
    duck = duck_connect()
    duck.execute(f"CREATE SECRET eve_token (TYPE iceberg, TOKEN '{eve}')")
    duck.execute(
        f"""CREATE SECRET eve_oauth (TYPE iceberg, CLIENT_ID 'eve', CLIENT_SECRET '{eve}',
            OAUTH2_SERVER_URI '{uri}/v1/oauth/tokens')"""
    )
    duck.execute(f"CREATE SECRET ana_token (TYPE iceberg, TOKEN '{ana}')")
    for alias, secret in [("lake_token", "eve_token"), ("lake_oauth", "eve_oauth"), ("lake_ana", "ana_token")]:
        duck.execute(
            f"ATTACH 'bitvelocity' AS {alias} (TYPE iceberg, ENDPOINT '{uri}', SECRET {secret})"
        )
    notes_read = [{"table": "sandbox.notes", "columns": ["id", "note"]}]
    out["duckdb_token"] = duck_reads(duck, "lake_token", reads + notes_read)
    out["duckdb_oauth"] = duck_reads(duck, "lake_oauth", reads)
    out["duckdb_analyst"] = duck_reads(duck, "lake_ana", reads)

    # Tampering after the commit, with the storage access a writer has: metadata rewritten
    # to name silver's location, or to point at silver's manifest list. The doors read
    # neither (a sandbox-only reader sees no silver row), and a purge deletes none of
    # silver's files.
    silver_list = by_token.load_table("silver.customers").metadata.current_snapshot().manifest_list
    sandboxer = {"name": "sandboxer", "sql": "SELECT count(*) FROM sandbox.notes"}
    out["sandboxer_notes"] = http_case(a.http, sam, sandboxer)
    for name, tamper in [
        ("tampered_location", lambda m: m.update(location=silver_location)),
        ("tampered_manifest_list", lambda m: [
            s.update({"manifest-list": silver_list})
            for s in m["snapshots"] if s["snapshot-id"] == m["current-snapshot-id"]
        ]),
    ]:
        silver_location = by_token.load_table("silver.customers").metadata.location
        t = by_token.create_table(f"sandbox.{name}", schema)
        t.append(batch([(1, "x")]))
        t = by_token.load_table(f"sandbox.{name}")
        path = t.metadata_location
        with io.new_input(path).open() as f:
            meta = json.loads(f.read())
        tamper(meta)
        with io.new_output(path).create(overwrite=True) as f:
            f.write(json.dumps(meta).encode())
        case = {"name": name, "sql": f"SELECT * FROM sandbox.{name}"}
        out[f"{name}_http"] = http_case(a.http, sam, case)
        # A commit on top of tampered metadata is refused before any file it names is read.
        out[f"{name}_commit"] = requests.post(
            f"{uri}/v1/namespaces/sandbox/tables/{name}",
            headers=bearer(eve),
            json={"requirements": [], "updates": [{"action": "set-properties", "updates": {"k": "v"}}]},
            timeout=30,
        ).status_code
        by_token.purge_table(f"sandbox.{name}")
    out["silver_list_after_purges"] = io.new_input(silver_list).exists()
    out["silver_rows_after_purges"] = len(by_token.load_table("silver.customers").scan().to_arrow())
    io.delete(planted)

    # Cleaning up: a namespace with tables is not dropped; a purged table is gone.
    out["drop_nonempty_namespace"] = error_class(lambda: by_token.drop_namespace("sandbox"))
    scratch = by_token.create_table("sandbox.scratch", schema)
    scratch.append(batch([(1, "x")]))
    data_files = [t.file.file_path for t in scratch.scan().plan_files()]
    by_token.purge_table("sandbox.scratch")
    out["scratch_exists_after_purge"] = by_token.table_exists("sandbox.scratch")
    out["scratch_data_files"] = len(data_files)
    out["scratch_data_files_left"] = sum(io.new_input(f).exists() for f in data_files)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
