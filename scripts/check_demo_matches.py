#!/usr/bin/env python3
"""Checks the CVE matches of a demo run against an independent recomputation.

    python3 scripts/check_demo_matches.py --reference examples/demo/reference \
        --output watershed-out/observations.jsonl

For every observation in the enriched-observations output (`observations.jsonl`: one row per
(observation, CVE), or one row with `cve_id` null for an observation that matched none), the set
of CVEs must be exactly the set that `scripts/demo_data.py`'s `Matcher` (a Python
implementation of the NVD match rule, CPE update included, written apart from the Rust one)
finds for its vendor, product and version among the `cpe_match` rows of the reference snapshot.
The `cpe_match` table must not change after the snapshot (the demo's changes do not touch it),
so the rows are the same at every event time. The output has no observation id, so rows are
grouped by (ts, host, port, vendor, product, version); observations that share all of these
form one group, which must hold each expected CVE once per observation.

Prints the counts and up to ten differences; exits 1 if there is any. Standard library only.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import sys


def load_demo_data():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_data.py")
    spec = importlib.util.spec_from_file_location("demo_data", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_rules(reference: str):
    """The `cpe_match` rows of the snapshot by (vendor, product), as `Matcher` takes them."""
    rules = collections.defaultdict(list)
    with open(os.path.join(reference, "snapshot.jsonl"), encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if rec["source"]["table"] != "cpe_match" or not rec["after"]["vulnerable"]:
                continue
            a = rec["after"]
            rules[(a["vendor"], a["product"])].append(
                (
                    a["cve_id"],
                    a["version"],
                    a["version_start_including"],
                    a["version_start_excluding"],
                    a["version_end_including"],
                    a["version_end_excluding"],
                    a.get("update"),
                )
            )
    changes = os.path.join(reference, "changes.jsonl")
    if os.path.exists(changes):
        with open(changes, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if json.loads(line)["topic"].endswith(".cpe_match"):
                    sys.exit(f"{changes}:{n}: a cpe_match change; this check takes a static table")
    return rules


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", default="examples/demo/reference", help="folder of snapshot.jsonl and changes.jsonl")
    ap.add_argument("--output", default="watershed-out/observations.jsonl", help="the enriched observations")
    args = ap.parse_args(argv)

    dd = load_demo_data()
    matchers = {vp: dd.Matcher(rows) for vp, rows in read_rules(args.reference).items()}
    groups: dict[tuple, list] = collections.defaultdict(list)
    rows = 0
    with open(args.output, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            rows += 1
            groups[(r["ts"], r["host"], r["port"], r["vendor"], r["product"], r["version"])].append(r["cve_id"])

    cache: dict[tuple, frozenset] = {}
    bad = []
    observations = hits = pairs = 0
    for key, got in groups.items():
        vp, version = key[3:5], key[5]
        if (vp, version) not in cache:
            m = matchers.get(vp)
            cache[(vp, version)] = frozenset(m.cves(version) if m else ())
        want = cache[(vp, version)]
        counts = collections.Counter(got)
        if want:
            n = counts[next(iter(want))]
            ok = n > 0 and counts == collections.Counter({c: n for c in want})
        else:
            n = counts[None]
            ok = n > 0 and set(counts) == {None}
        if not ok:
            bad.append((key, sorted(want), sorted(counts.items(), key=lambda kv: str(kv[0]))))
            continue
        observations += n
        hits += n if want else 0
        pairs += n * len(want)

    print(f"{rows} rows, {len(groups)} groups: {observations} observations, {hits} with at least one CVE, {pairs} (observation, CVE) pairs")
    print(f"{len(cache)} distinct (vendor, product, version), {len(bad)} groups differ")
    for key, want, got in bad[:10]:
        print(f"  {key}: expected {want}, got {got}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
