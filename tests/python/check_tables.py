"""Reads BitVelocity's bronze and silver tables with other engines and compares them with PostgreSQL.

pyiceberg (SqlCatalog over the warehouse's SQLite or PostgreSQL catalog) and DuckDB (iceberg_scan
of the current metadata file, through httpfs for an s3:// warehouse) each replay every bronze change log (latest change per key by _lsn,
_seq) and read every silver table (data files minus its position-delete files); both must
return exactly the rows `SELECT * FROM` returns in PostgreSQL.
Exit status 0 on success; prints one line per table, layer and engine.
"""

import argparse
import os
import struct
import sys
import uuid

import duckdb
import psycopg
from pyiceberg.catalog.sql import SqlCatalog

META = ["_op", "_lsn", "_txid", "_commit_ts", "_seq", "_unchanged_cols"]


def canon(v):
    if isinstance(v, uuid.UUID):
        return v.bytes
    if isinstance(v, memoryview):
        return bytes(v)
    if isinstance(v, list):
        return tuple(canon(x) for x in v)
    return v


def as_f32(v):
    """float4 values: readers turn them into Python floats differently; compare as float4."""
    return None if v is None else struct.unpack("f", struct.pack("f", v))[0]


def fix_reals(row, real_idx):
    return tuple(as_f32(v) if i in real_idx else v for i, v in enumerate(row))


def pg_rows(conn, table, columns, key, real_idx):
    types = dict(
        conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'public' AND table_name = %s",
            (table,),
        ).fetchall()
    )
    exprs = []
    for c in columns:
        if types[c] in ("json", "jsonb", "USER-DEFINED", "numeric"):
            exprs.append(f'"{c}"::text')
        else:
            exprs.append(f'"{c}"')
    rows = conn.execute(f"SELECT {', '.join(exprs)} FROM \"{table}\"").fetchall()
    out = {}
    for r in rows:
        r = fix_reals(tuple(canon(v) for v in r), real_idx)
        out[tuple(r[columns.index(k)] for k in key)] = r
    return out


def real_columns(conn, table, columns):
    types = dict(
        conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'public' AND table_name = %s",
            (table,),
        ).fetchall()
    )
    return {i for i, c in enumerate(columns) if types[c] == "real"}


def replay(records, columns, key, real_idx):
    state = {}
    last_deleted = None
    records.sort(key=lambda r: (r["_lsn"], r["_seq"]))
    for r in records:
        op = r["_op"]
        if op == "truncate":
            state.clear()
            continue
        row = fix_reals(tuple(canon(r[c]) for c in columns), real_idx)
        k = tuple(row[columns.index(c)] for c in key)
        if op == "delete":
            old = state.pop(k, None)
            last_deleted = (r["_lsn"], r["_seq"], old)
        else:
            unchanged = r["_unchanged_cols"] or []
            if unchanged:
                # A key change logs the old key's delete right before the update.
                moved = last_deleted[2] if last_deleted and last_deleted[:2] == (r["_lsn"], r["_seq"] - 1) else None
                prev = state.get(k, moved)
                row = tuple(prev[i] if c in unchanged else row[i] for i, c in enumerate(columns))
            state[k] = row
    return state


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--warehouse", required=True, help="file:///<dir> or s3://bucket/prefix")
    p.add_argument("--catalog", required=True, help="SQLAlchemy URI of the SQL catalog")
    p.add_argument("--pg", required=True)
    p.add_argument("--tables", required=True)
    p.add_argument("--time-travel", help="JSON: table, snapshot, column, rows {id: text} as of that snapshot")
    a = p.parse_args()
    props = {}
    s3 = a.warehouse.startswith("s3://")
    if s3:
        # The standard AWS environment, as the ingester reads it.
        props = {
            "s3.endpoint": os.environ["AWS_ENDPOINT_URL"],
            "s3.access-key-id": os.environ["AWS_ACCESS_KEY_ID"],
            "s3.secret-access-key": os.environ["AWS_SECRET_ACCESS_KEY"],
            "s3.region": os.environ.get("AWS_REGION", "us-east-1"),
        }
    catalog = SqlCatalog("bitvelocity", uri=a.catalog, warehouse=a.warehouse, **props)
    import duckdb_ext

    ext_dir = os.path.join(list(duckdb_ext.__path__)[0], "extensions")
    duck = duckdb.connect(config={"extension_directory": ext_dir, "autoinstall_known_extensions": False})
    duck.execute("LOAD iceberg")
    if s3:
        duck.execute("LOAD httpfs")
        endpoint = os.environ["AWS_ENDPOINT_URL"]
        duck.execute(
            f"""CREATE SECRET lake (TYPE s3, KEY_ID '{props["s3.access-key-id"]}', SECRET '{props["s3.secret-access-key"]}',
                ENDPOINT '{endpoint.split("://", 1)[1]}', URL_STYLE 'path', USE_SSL {str(endpoint.startswith("https")).lower()},
                REGION '{props["s3.region"]}')"""
        )
    failures = 0
    with psycopg.connect(a.pg) as conn:
        for name in a.tables.split(","):
            table = catalog.load_table(("bronze", name))
            key = table.properties["bitvelocity.key-columns"].split(",")
            arrow = table.scan().to_arrow()
            columns = [f for f in arrow.column_names if f not in META]
            real_idx = real_columns(conn, name, columns)
            want = pg_rows(conn, name, columns, key, real_idx)
            # numeric values: bronze holds decimals, PostgreSQL text; render bronze decimals as text.
            records = arrow.to_pylist()
            for r in records:
                for c in columns:
                    v = r[c]
                    if v is not None and type(v).__name__ == "Decimal":
                        r[c] = str(v)
            got = replay(records, columns, key, real_idx)
            ok = got == want
            print(f"pyiceberg {name}: {len(arrow)} changes, {len(got)} live rows, postgres {len(want)}: {'OK' if ok else 'MISMATCH'}")
            if not ok:
                failures += 1
                missing = [k for k in want if k not in got][:3]
                extra = [k for k in got if k not in want][:3]
                differ = [(want[k], got[k]) for k in want if k in got and got[k] != want[k]][:2]
                print(f"  missing {missing} extra {extra} differ {differ}"[:2000])

            # DuckDB reads the same change log (iceberg_scan of the current metadata file);
            # replayed like pyiceberg's, every value must equal PostgreSQL's, unchanged TOAST
            # values carried from earlier versions included.
            meta = table.metadata_location.removeprefix("file://")
            cur = duck.execute(f"SELECT * FROM iceberg_scan('{meta}')")
            names = [d[0] for d in cur.description]
            records = []
            for row in cur.fetchall():
                r = dict(zip(names, row))
                for c in columns:
                    if r[c] is not None and type(r[c]).__name__ == "Decimal":
                        r[c] = str(r[c])
                records.append(r)
            carried = sum(1 for r in records if r["_unchanged_cols"])
            drows = replay(records, columns, key, real_idx)
            ok = drows == want
            print(f"duckdb    {name}: {len(records)} changes ({carried} with unchanged TOAST), {len(drows)} live rows, postgres {len(want)}: {'OK' if ok else 'MISMATCH'}")
            if not ok:
                failures += 1
                differ = [(want[k], drows.get(k)) for k in want if drows.get(k) != want[k]][:2]
                extra = [k for k in drows if k not in want][:3]
                print(f"  extra {extra} differ {differ}"[:2000])
            failures += check_silver(catalog, duck, name, key, columns, real_idx, want)
    if a.time_travel and os.path.exists(a.time_travel):
        failures += check_time_travel(catalog, duck, a.time_travel)
    sys.exit(1 if failures else 0)


def check_time_travel(catalog, duck, path):
    """A silver snapshot from before a schema change reads with its own schema and old rows."""
    import json

    with open(path) as f:
        spec = json.load(f)
    want = {int(k): v for k, v in spec["rows"].items()}
    table = catalog.load_table(("silver", spec["table"]))
    col, snap = spec["column"], int(spec["snapshot"])
    failures = 0
    arrow = table.scan(snapshot_id=snap, selected_fields=("id", col)).to_arrow()
    got = {r["id"]: (None if r[col] is None else str(r[col])) for r in arrow.to_pylist()}
    ok = got == want
    print(f"pyiceberg time travel silver.{spec['table']} @ {snap}: {len(got)} rows, {col} as then: {'OK' if ok else 'MISMATCH'}")
    failures += not ok
    meta = table.metadata_location.removeprefix("file://")
    rows = duck.execute(
        f"SELECT id, CAST(\"{col}\" AS VARCHAR) FROM iceberg_scan('{meta}', snapshot_from_id={snap})"
    ).fetchall()
    got = {r[0]: r[1] for r in rows}
    ok = got == want
    print(f"duckdb    time travel silver.{spec['table']} @ {snap}: {len(got)} rows, {col} as then: {'OK' if ok else 'MISMATCH'}")
    failures += not ok
    return failures


def decimals_as_text(row):
    return tuple(str(v) if type(v).__name__ == "Decimal" else canon(v) for v in row)


def check_silver(catalog, duck, name, key, columns, real_idx, want):
    """silver.<name> as both engines read it (deletes applied) must equal PostgreSQL."""
    failures = 0
    table = catalog.load_table(("silver", name))
    arrow = table.scan().to_arrow()
    if arrow.column_names != columns:
        print(f"pyiceberg silver {name}: columns {arrow.column_names} != {columns}: MISMATCH")
        return 1
    readers = {
        "pyiceberg": [tuple(r[c] for c in columns) for r in arrow.to_pylist()],
        "duckdb   ": duck.execute(
            f"SELECT * FROM iceberg_scan('{table.metadata_location.removeprefix('file://')}')"
        ).fetchall(),
    }
    # The delete files pyiceberg's planner attached to the data files it reads.
    files = len({d.file_path for task in table.scan().plan_files() for d in task.delete_files})
    for engine, rows in readers.items():
        got = {}
        dup = 0
        for row in rows:
            vals = fix_reals(decimals_as_text(row), real_idx)
            k = tuple(vals[columns.index(c)] for c in key)
            dup += k in got
            got[k] = vals
        ok = got == want and dup == 0 and len(rows) == len(want)
        print(
            f"{engine} silver {name}: {len(rows)} rows ({files} delete files), postgres {len(want)}: {'OK' if ok else 'MISMATCH'}"
        )
        if not ok:
            failures += 1
            missing = [k for k in want if k not in got][:3]
            extra = [k for k in got if k not in want][:3]
            differ = [(want[k], got[k]) for k in want if k in got and got[k] != want[k]][:2]
            print(f"  duplicates {dup} missing {missing} extra {extra} differ {differ}"[:2000])
    return failures


if __name__ == "__main__":
    main()
