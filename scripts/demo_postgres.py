#!/usr/bin/env python3
"""Writes SQL that loads the demo's reference data into PostgreSQL, for
examples/demo-postgres.yaml. Run it against your database with psql:

    python3 scripts/demo_postgres.py | psql -v ON_ERROR_STOP=1 "postgresql://USER@HOST/DB"

then run the pipeline (see the pipeline file's header). The user needs the REPLICATION
attribute and the right to create a schema in the database; the server `wal_level = logical`.

What the SQL does, in this order:
  1. creates the schema `watershed_demo` with the four tables (cve, cpe_match, kev,
     vendor_recommendation), each with a `changed_at timestamptz` column and REPLICA IDENTITY
     FULL (so a delete's old row carries its `changed_at`);
  2. creates the publication and the logical replication slot `watershed_demo` (pgoutput):
     the pipeline streams everything written after this point;
  3. inserts the snapshot (examples/demo/reference/snapshot.jsonl), `changed_at` the
     snapshot's time;
  4. applies the changes (examples/demo/reference/changes.jsonl) one transaction per source
     transaction, in commit order, `changed_at` each change's commit time: an insert, an
     update of every column (but those Debezium marks unchanged-TOASTed), a delete preceded
     by an update of `changed_at` alone (its event time). Heartbeats and replayed records are left out: the stream needs neither.

The pipeline takes each change's event time from `changed_at` (`event_time.field`), so its
results equal the file demo's, whenever it runs.

`--drop-first` starts with dropping what an earlier load created (the slot, the publication
and the schema `watershed_demo`; nothing else).
"""

import argparse
import json
import os
import sys
from datetime import datetime, timezone

SCHEMA = "watershed_demo"
SLOT = "watershed_demo"
UNAVAILABLE = "__debezium_unavailable_value"

TABLES = {
    "cve": (
        ["cve_id"],
        [
            ("cve_id", "text"),
            ("published", "timestamptz"),
            ("last_modified", "timestamptz"),
            ("cvss3_score", "numeric"),
            ("severity", "text"),
            ("description", "text"),
            ("cwe", "text"),
        ],
    ),
    "cpe_match": (
        ["id"],
        [
            ("id", "int"),
            ("cve_id", "text"),
            ("vendor", "text"),
            ("product", "text"),
            ("version", "text"),
            ("update", "text"),
            ("version_start_including", "text"),
            ("version_start_excluding", "text"),
            ("version_end_including", "text"),
            ("version_end_excluding", "text"),
            ("vulnerable", "boolean"),
        ],
    ),
    "kev": (
        ["cve_id"],
        [
            ("cve_id", "text"),
            ("vendor_project", "text"),
            ("product", "text"),
            ("vulnerability_name", "text"),
            ("date_added", "date"),
            ("due_date", "date"),
            ("required_action", "text"),
            ("known_ransomware", "text"),
        ],
    ),
    "vendor_recommendation": (
        ["id"],
        [
            ("id", "int"),
            ("cve_id", "text"),
            ("source", "text"),
            ("recommendation", "text"),
            ("url", "text"),
        ],
    ),
}


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(value, sql_type: str) -> str:
    if value is None:
        return "NULL"
    if sql_type == "boolean":
        return "true" if value else "false"
    if sql_type == "int":
        return str(int(value))
    if sql_type == "date":
        # Debezium's days since the epoch.
        return f"DATE '1970-01-01' + {int(value)}"
    text = str(value)
    return "'" + text.replace("'", "''") + "'"


def changed_at(ms: int) -> str:
    t = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return "'" + t.strftime("%Y-%m-%d %H:%M:%S.%f") + "+00'"


def payload(line: str):
    """The value of a Debezium record line (bare, `{payload}` or `{topic, key, value}`)."""
    record = json.loads(line)
    if "topic" in record and "value" in record:
        record = record["value"]
    if record is not None and "payload" in record:
        record = record["payload"]
    return record


def changes(path: str):
    """The change records of a Debezium file, tombstones and heartbeats left out."""
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            record = payload(line)
            if record is not None and "source" in record:
                yield record


def qualified(table: str) -> str:
    return f"{ident(SCHEMA)}.{ident(table)}"


def insert(table: str, rows, ms: int) -> str:
    _, columns = TABLES[table]
    names = ", ".join(ident(c) for c, _ in columns) + ", changed_at"
    values = ",\n  ".join(
        "(" + ", ".join(literal(row.get(c), t) for c, t in columns) + f", {changed_at(ms)})"
        for row in rows
    )
    return f"INSERT INTO {qualified(table)} ({names}) VALUES\n  {values};"


def where_key(table: str, row) -> str:
    key, columns = TABLES[table]
    types = dict(columns)
    return " AND ".join(f"{ident(k)} = {literal(row[k], types[k])}" for k in key)


def change_sql(op: str, table: str, before, after, ms: int) -> list[str]:
    _, columns = TABLES[table]
    if op in ("c", "r"):
        return [insert(table, [after], ms)]
    if op == "u":
        # An unchanged TOASTed value (Debezium's placeholder) stays as it is.
        sets = ", ".join(
            f"{ident(c)} = {literal(after.get(c), t)}"
            for c, t in columns
            if after.get(c) != UNAVAILABLE
        )
        return [
            f"UPDATE {qualified(table)} SET {sets}, changed_at = {changed_at(ms)} "
            f"WHERE {where_key(table, before or after)};"
        ]
    if op == "d":
        where = where_key(table, before)
        return [
            f"UPDATE {qualified(table)} SET changed_at = {changed_at(ms)} WHERE {where};",
            f"DELETE FROM {qualified(table)} WHERE {where};",
        ]
    raise ValueError(f"unknown op {op!r}")


def main() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    default = os.path.join(here, "..", "examples", "demo", "reference")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", default=default, help="the demo's reference folder")
    ap.add_argument(
        "--drop-first",
        action="store_true",
        help="drop the slot, publication and schema an earlier load created",
    )
    args = ap.parse_args()
    out = sys.stdout
    w = lambda s: out.write(s + "\n")
    w("-- The Watershed demo's reference data (scripts/demo_postgres.py).")
    if args.drop_first:
        w(
            f"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            f"WHERE slot_name = '{SLOT}' AND database = current_database();"
        )
        w(f"DROP PUBLICATION IF EXISTS {ident(SLOT)};")
        w(f"DROP SCHEMA IF EXISTS {ident(SCHEMA)} CASCADE;")
    w(f"CREATE SCHEMA {ident(SCHEMA)};")
    for table, (key, columns) in TABLES.items():
        cols = ",\n  ".join(f"{ident(c)} {t}" for c, t in columns)
        keys = ", ".join(ident(k) for k in key)
        w(
            f"CREATE TABLE {qualified(table)} (\n  {cols},\n  changed_at timestamptz NOT NULL,\n"
            f"  PRIMARY KEY ({keys})\n);"
        )
        w(f"ALTER TABLE {qualified(table)} REPLICA IDENTITY FULL;")
    w(
        f"CREATE PUBLICATION {ident(SLOT)} FOR TABLE "
        + ", ".join(qualified(t) for t in TABLES)
        + ";"
    )
    w(f"SELECT 'slot created' FROM pg_create_logical_replication_slot('{SLOT}', 'pgoutput');")

    # The snapshot, 500 rows a statement, one transaction.
    by_table: dict[str, list] = {t: [] for t in TABLES}
    snapshot_ms = None
    for record in changes(os.path.join(args.reference, "snapshot.jsonl")):
        by_table[record["source"]["table"]].append(record["after"])
        snapshot_ms = record["source"]["ts_ms"]
    w("BEGIN;")
    for table, rows in by_table.items():
        for i in range(0, len(rows), 500):
            w(insert(table, rows[i : i + 500], snapshot_ms))
    w("COMMIT;")

    # The changes, a transaction per source transaction, each record once.
    applied = set()
    current_tx = None
    for record in changes(os.path.join(args.reference, "changes.jsonl")):
        source = record["source"]
        identity = (source["table"], source.get("lsn"), record["op"], json.dumps(record.get("after")), json.dumps(record.get("before")))
        if identity in applied:
            continue  # a replayed record
        applied.add(identity)
        tx = source.get("txId")
        if tx != current_tx:
            if current_tx is not None:
                w("COMMIT;")
            w("BEGIN;")
            current_tx = tx
        for statement in change_sql(
            record["op"], source["table"], record.get("before"), record.get("after"), source["ts_ms"]
        ):
            w(statement)
    if current_tx is not None:
        w("COMMIT;")
    return 0


if __name__ == "__main__":
    sys.exit(main())
