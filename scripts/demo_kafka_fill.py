#!/usr/bin/env python3
"""Fills a Kafka broker with the demo's data, for examples/demo-kafka.yaml.

    KAFKA_BROKERS=127.0.0.1:9092 python3 scripts/demo_kafka_fill.py [--watershed PATH]

Puts the reference tables' Debezium change events (examples/demo/reference: the snapshot,
then the changes) on the topics a Debezium Postgres connector with `topic.prefix=demo`
would write — demo.public.<table>, keyed by the table's primary key as a JSON object,
tombstones after deletes, heartbeats on __debezium-heartbeat.demo — and the demo's 60,000
observations on demo.observations (two partitions), by running the demo's generator through
examples/demo-kafka-fill.yaml. Creates the topics first (one partition per table). Needs
`pip install confluent-kafka` and a built `watershed` (target/release/watershed by default).
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "examples" / "demo" / "reference"
PREFIX = "demo"
KEYS = {
    "cve": ["cve_id"],
    "cpe_match": ["id"],
    "kev": ["cve_id"],
    "vendor_recommendation": ["id"],
}


def records(path):
    """(topic, key, value) of every line: a bare envelope, a {topic, key, value} record or a
    heartbeat."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            rec = json.loads(line)
            if "value" in rec and "topic" in rec:
                key = rec.get("key")
                value = rec["value"]
                yield rec["topic"], key, value
                continue
            if "op" not in rec:
                if "ts_ms" in rec and "source" not in rec:
                    yield f"__debezium-heartbeat.{PREFIX}", {"serverName": PREFIX}, rec
                continue  # transaction metadata
            table = rec["source"]["table"]
            row = rec["after"] if rec["after"] is not None else rec["before"]
            key = {k: row[k] for k in KEYS[table]}
            yield f"{PREFIX}.{rec['source']['schema']}.{table}", key, rec


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--watershed", default=str(ROOT / "target" / "release" / "watershed"))
    args = parser.parse_args()
    brokers = os.environ.get("KAFKA_BROKERS")
    if not brokers:
        sys.exit("set KAFKA_BROKERS (host:port[,host:port])")
    try:
        from confluent_kafka import Producer
        from confluent_kafka.admin import AdminClient, NewTopic
    except ImportError:
        sys.exit("needs confluent-kafka: pip install confluent-kafka")

    topics = [NewTopic(f"{PREFIX}.public.{t}", 1, 1) for t in KEYS]
    topics += [NewTopic(f"__debezium-heartbeat.{PREFIX}", 1, 1), NewTopic("demo.observations", 2, 1)]
    admin = AdminClient({"bootstrap.servers": brokers})
    for topic, future in admin.create_topics(topics).items():
        try:
            future.result()
        except Exception as e:  # an existing topic is fine
            if "already exists" not in str(e).lower() and "TOPIC_ALREADY_EXISTS" not in str(e):
                sys.exit(f"creating {topic}: {e}")

    producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": True, "linger.ms": 20})
    sent = 0
    for name in ["snapshot.jsonl", "changes.jsonl"]:
        for topic, key, value in records(REFERENCE / name):
            k = None if key is None else json.dumps(key, separators=(",", ":"))
            v = None if value is None else json.dumps(value, separators=(",", ":"))
            while True:
                try:
                    producer.produce(topic, key=k, value=v)
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)
            sent += 1
    # The demo's change files end with the last change; a connector goes on sending heartbeats
    # while the database is quiet. One at 00:30, after the last observation (00:25), lets event
    # time pass the end of the data, as a live connector's next heartbeat would.
    heartbeat = json.dumps({"ts_ms": 1767227400000})
    producer.produce(f"__debezium-heartbeat.{PREFIX}", key=json.dumps({"serverName": PREFIX}), value=heartbeat)
    sent += 1
    if producer.flush(120) != 0:
        sys.exit("the broker did not acknowledge every reference record")
    print(f"reference: {sent} Debezium records on {PREFIX}.public.<table>", file=sys.stderr)

    env = dict(os.environ, KAFKA_BROKERS=brokers)
    fill = ROOT / "examples" / "demo-kafka-fill.yaml"
    done = subprocess.run(
        [args.watershed, "run", "--metrics-addr", "off", "--log", "warn", str(fill)], env=env
    )
    if done.returncode != 0:
        sys.exit(f"writing the observations failed ({done.returncode})")
    print("observations: 60000 on demo.observations", file=sys.stderr)


if __name__ == "__main__":
    main()
