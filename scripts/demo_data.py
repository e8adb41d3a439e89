#!/usr/bin/env python3
"""Builds the CVE-enrichment demo data under examples/demo/ from the real files in shared/data.

    python3 scripts/demo_data.py --data ../shared/data --out examples/demo

Outputs (see examples/demo/README.md, which this script also writes):
  vocabulary.csv                observation vocabulary: vendor,product,version,port,weight
  reference/snapshot.jsonl      Debezium 3.6.3 (PostgreSQL, pgoutput) initial snapshot, op "r",
                                bare value envelopes, tables cve, cpe_match, kev, vendor_recommendation
  reference/changes.jsonl       later changes as {"topic","key","value"} records in commit order,
                                with heartbeats, tombstones and a replayed pair of records

Standard library only and deterministic: every collection is sorted before it is written, there
is no randomness and no clock is read, so two runs write the same bytes.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import functools
import glob
import io
import json
import os
import re
import sys
import xml.etree.ElementTree as ET

# --------------------------------------------------------------------------------------------
# Fixed parameters of the demo
# --------------------------------------------------------------------------------------------

SIZE_LIMIT = 12_000_000  # bytes, whole output folder

SERVER = "demo"  # topic.prefix
DB = "vulndb"
SCHEMA = "public"
DEBEZIUM_VERSION = "3.6.3.Final"
TABLES = ["cve", "cpe_match", "kev", "vendor_recommendation"]

SNAPSHOT_TS_MS = 1767225540000  # 2025-12-31T23:59:00Z
SNAPSHOT_LSN = 24000000
SNAPSHOT_TXID = 1812
SNAPSHOT_EMIT_DELAY_MS = 50  # envelope ts_ms of the first snapshot record = source.ts_ms + 50
SNAPSHOT_EMIT_STEP_US = 20  # processing time between two snapshot records

CHANGES_START_MS = 1767225600000  # 2026-01-01T00:00:00Z
CHANGES_END_MS = 1767226800000  # 2026-01-01T00:20:00Z
HEARTBEAT_INTERVAL_MS = 30_000

HELD_BACK_KEV_DATES = 15  # the latest N distinct KEV dateAdded values arrive as changes
CVE_UPDATES = 10
TOAST_UPDATES = {1, 4, 7}  # these updates carry the unchanged-TOAST placeholder as description
UNAVAILABLE = "__debezium_unavailable_value"

DESCRIPTION_MAX = 300
NVD_RECS_PER_CVE = 2
VERSIONS_PER_PRODUCT = 6
WEIGHT_SCAN = 3
WEIGHT_EXTRA = 1

# Network-facing products of the vocabulary besides those seen in the nmap reports, with their
# default port. Products with CISA KEV entries in the NVD subset are listed so that the demo
# has KEV hits. Products absent from the CPE match table are skipped.
PRODUCTS = {
    ("openbsd", "openssh"): 22,
    ("openssl", "openssl"): 443,
    ("apache", "http_server"): 80,
    ("f5", "nginx"): 443,
    ("nginx", "nginx"): 443,
    ("oracle", "mysql"): 3306,
    ("mysql", "mysql"): 3306,
    ("mariadb", "mariadb"): 3306,
    ("postgresql", "postgresql"): 5432,
    ("exim", "exim"): 25,
    ("postfix", "postfix"): 25,
    ("beasts", "vsftpd"): 21,
    ("proftpd", "proftpd"): 21,
    ("solarwinds", "serv-u"): 21,
    ("crushftp", "crushftp"): 443,
    ("thekelleys", "dnsmasq"): 53,
    ("isc", "bind"): 53,
    ("memcached", "memcached"): 11211,
    ("redis", "redis"): 6379,
    ("apache", "tomcat"): 8080,
    ("apache", "struts"): 8080,
    ("apache", "activemq"): 61616,
    ("jenkins", "jenkins"): 8080,
    ("samba", "samba"): 445,
    ("dovecot", "dovecot"): 143,
    ("squid-cache", "squid"): 3128,
    ("haproxy", "haproxy"): 80,
    ("openvpn", "openvpn"): 1194,
    ("elasticsearch", "elasticsearch"): 9200,
    ("microsoft", "internet_information_services"): 80,
    ("microsoft", "internet_information_server"): 80,
    ("microsoft", "exchange_server"): 443,
    ("microsoft", "sharepoint_server"): 443,
    ("oracle", "weblogic_server"): 7001,
    ("pulsesecure", "pulse_connect_secure"): 443,
    ("ivanti", "connect_secure"): 443,
    ("citrix", "netscaler_gateway"): 443,
    ("fortinet", "fortiproxy"): 443,
    ("vmware", "vcenter_server"): 443,
    ("atlassian", "confluence"): 8090,
    ("gitlab", "gitlab"): 443,
    ("progress", "moveit_transfer"): 443,
    ("synacor", "zimbra_collaboration_suite"): 443,
    ("roundcube", "webmail"): 443,
    ("igniterealtime", "openfire"): 9090,
    ("rejetto", "http_file_server"): 80,
    ("php", "php"): 80,
    ("drupal", "drupal"): 80,
    ("wordpress", "wordpress"): 80,
}

# The common network services of the demo: kept in preference to others of the same size.
CORE_PRODUCTS = {
    ("openbsd", "openssh"), ("openssl", "openssl"), ("apache", "http_server"), ("f5", "nginx"),
    ("nginx", "nginx"), ("oracle", "mysql"), ("postgresql", "postgresql"), ("exim", "exim"),
    ("postfix", "postfix"), ("beasts", "vsftpd"), ("proftpd", "proftpd"), ("thekelleys", "dnsmasq"),
    ("isc", "bind"), ("memcached", "memcached"), ("redis", "redis"), ("apache", "tomcat"),
    ("samba", "samba"), ("dovecot", "dovecot"), ("squid-cache", "squid"),
    ("microsoft", "internet_information_services"),
}

# CVSS v3 qualitative severity scale.
SEVERITY_SCALE = [(9.0, "CRITICAL"), (7.0, "HIGH"), (4.0, "MEDIUM"), (0.1, "LOW"), (0.0, "NONE")]

EPOCH = dt.date(1970, 1, 1)


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def cve_sort_key(cve_id: str):
    m = re.fullmatch(r"CVE-(\d+)-(\d+)", cve_id)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0, cve_id)


# Version order of the NVD match rule: a version splits into runs of ASCII digits and of ASCII
# letters (anything else separates); each run is a pre-release marker, a zero (0, `final`,
# `ga`, `release`), a word (patch tags, letter releases) or a nonzero number, ranked in that
# order; versions compare run by run, the shorter padded with zeros.
_PRE = {"dev": 0, "snapshot": 0, "alpha": 1, "beta": 2, "pre": 3, "preview": 3, "rc": 4}
_RELEASE_WORDS = {"final", "ga", "release"}
_ZERO = (1, 0)


@functools.lru_cache(maxsize=None)
def version_keys(v: str) -> tuple:
    keys = []
    for m in re.finditer(r"[0-9]+|[A-Za-z]+", v):
        run = m.group(0)
        if run[0].isdigit():
            n = int(run)
            keys.append((3, n) if n else _ZERO)
            continue
        word = run.lower()
        digit_follows = m.end() < len(v) and v[m.end()] in "0123456789"
        if word in _PRE:
            keys.append((0, _PRE[word]))
        elif digit_follows and word in ("a", "b"):
            keys.append((0, 1 if word == "a" else 2))
        elif word in _RELEASE_WORDS:
            keys.append(_ZERO)
        else:
            keys.append((2, word))
    return tuple(keys)


def _cmp_keys(ka: tuple, kb: tuple) -> int:
    n = max(len(ka), len(kb))
    ka = ka + (_ZERO,) * (n - len(ka))
    kb = kb + (_ZERO,) * (n - len(kb))
    return (ka > kb) - (ka < kb)


def compare_versions(a: str, b: str) -> int:
    return _cmp_keys(version_keys(a), version_keys(b))


def strip_zeros(k: tuple) -> tuple:
    while k and k[-1] == _ZERO:
        k = k[:-1]
    return k


@functools.lru_cache(maxsize=None)
def normal_keys(v: str) -> tuple:
    """The keys without trailing zeros: equal versions have equal normal keys."""
    return strip_zeros(version_keys(v))


version_key = functools.cmp_to_key(compare_versions)


def has_version_content(v: str) -> bool:
    return any(c.isascii() and c.isalnum() for c in v)


# The CPE `update` field (`cpe:2.3:a:openbsd:openssh:5.9:p1`: version `5.9`, update `p1`), as
# the pipeline's version rule (src/operators/version_range.rs) reads it. The observed version is
# one string, in which the update follows the version (nmap reports OpenSSH `5.9p1`), so a
# specific update completes the row's version: an exact version `5.9` with update `p1` admits
# the observed `5.9p1` only, and an end bound `7.2` with update `p1` ends at `7.2p1`. `*`
# (what NVD writes for names without an update) and `-` (no update) add nothing: the row's
# version is compared as written, so `5.9` with `*` admits `5.9` and not `5.9p1`. Reading `*`
# as "any update" would need the observed string split into version and update, and that split
# differs by product (OpenSSL's `1.0.2k` is version `1.0.2k`, not `1.0.2` update `k`).
def specific_update(update) -> str | None:
    u = (update or "").strip()
    return None if u in ("", "*", "-") else u


def update_keys(version: str, update) -> tuple:
    """The keys of a row's version followed by its update, as the pipeline compares them."""
    u = specific_update(update)
    return version_keys(version) + (version_keys(u) if u else ())


def with_update(version: str, update) -> str:
    """The observed version string of a version and update: `5.9` + `p1` is `5.9p1`,
    `8.1` + `r1.0` is `8.1r1.0`, `4.1` + `update_2` is `4.1-update_2`; compares equal to the
    row's version followed by its update."""
    u = specific_update(update)
    if u is None:
        return version
    # Written together only where the digit/letter boundary separates them.
    joined = version + u if version[-1:].isdigit() and u[:1].isalpha() and "_" not in u else f"{version}-{u}"
    assert version_keys(joined) == update_keys(version, u), (version, u)
    return joined


def nvd_time_to_zoned(value: str) -> str:
    """NVD 1.1 `2017-03-01T15:59Z` -> Debezium ZonedTimestamp of a timestamptz(6) column."""
    t = dt.datetime.strptime(value, "%Y-%m-%dT%H:%MZ")
    return t.strftime("%Y-%m-%dT%H:%M:%S.000000Z")


def us_to_zoned(us: int) -> str:
    t = dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=us)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def ms_to_zoned(ms: int) -> str:
    return us_to_zoned(ms * 1000)


def epoch_days(date_text: str) -> int:
    return (dt.date.fromisoformat(date_text) - EPOCH).days


def severity_of(score: float) -> str:
    for floor, name in SEVERITY_SCALE:
        if score >= floor:
            return name
    return "NONE"


def score_text(score) -> str | None:
    # numeric(3,1) with decimal.handling.mode=string: BigDecimal.toPlainString()
    return None if score is None else f"{float(score):.1f}"


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def read_nmap(scan_dir: str):
    """(vendor, product, version, port) of every versioned part-`a` service CPE."""
    found = set()
    files = sorted(glob.glob(os.path.join(scan_dir, "*.xml")))
    for path in files:
        root = ET.parse(path).getroot()
        for port in root.iter("port"):
            portid = port.get("portid")
            service = port.find("service")
            if service is None or portid is None:
                continue
            for cpe in service.findall("cpe"):
                parts = (cpe.text or "").strip().split(":")
                # cpe:/a:vendor:product:version
                if len(parts) >= 5 and parts[0] == "cpe" and parts[1] == "/a" and parts[4]:
                    found.add((parts[2], parts[3], parts[4], int(portid)))
    return sorted(found), [os.path.basename(p) for p in files]


def read_cpe_matches(path: str):
    """Vulnerable part-`a` rows by (vendor, product), deduplicated on the columns we keep:
    (cve, version, the four bounds, update), the update as NVD writes it (`*`, `-` or one)."""
    by_product: dict[tuple[str, str], set] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            if r["vulnerable"] != "True" or r["part"] != "a":
                continue
            row = (
                r["cve_id"],
                r["version"],
                r["versionStartIncluding"] or None,
                r["versionStartExcluding"] or None,
                r["versionEndIncluding"] or None,
                r["versionEndExcluding"] or None,
                r["update"],
            )
            by_product.setdefault((r["vendor"], r["product"]), set()).add(row)
    return by_product


def read_kev(path: str):
    with open(path, encoding="utf-8") as f:
        catalog = json.load(f)
    return {v["cveID"]: v for v in catalog["vulnerabilities"]}, catalog.get("catalogVersion")


def read_nvd(path: str, wanted: set[str]):
    """One pass over the NVD 1.1 feed; the fields of the `cve` table and the references."""
    with open(path, encoding="utf-8") as f:
        feed = json.load(f)
    out = {}
    for item in feed["CVE_Items"]:
        cve = item["cve"]
        cve_id = cve["CVE_data_meta"]["ID"]
        if cve_id not in wanted:
            continue
        description = next(
            (d["value"] for d in cve["description"]["description_data"] if d.get("lang") == "en"),
            "",
        )
        cwe = None
        for pt in cve["problemtype"]["problemtype_data"]:
            for d in pt["description"]:
                if cwe is None and re.fullmatch(r"CWE-\d+", d.get("value", "")):
                    cwe = d["value"]
        v3 = item.get("impact", {}).get("baseMetricV3", {}).get("cvssV3", {})
        v2 = item.get("impact", {}).get("baseMetricV2", {}).get("cvssV2", {})
        refs = []
        for tag in ("Vendor Advisory", "Patch"):
            for ref in cve["references"]["reference_data"]:
                if tag in ref.get("tags", []) and ref["url"] not in [u for _, u in refs]:
                    refs.append((ref.get("name") or ref["url"], ref["url"]))
        out[cve_id] = {
            "cve_id": cve_id,
            "published": nvd_time_to_zoned(item["publishedDate"]),
            "last_modified": nvd_time_to_zoned(item["lastModifiedDate"]),
            "cvss3_score": score_text(v3.get("baseScore")),
            "severity": v3.get("baseSeverity"),
            "description": description[:DESCRIPTION_MAX],
            "cwe": cwe,
            "refs": refs[:NVD_RECS_PER_CVE],
            "cvss2_score": v2.get("baseScore"),
        }
    del feed
    return out


def read_cve5_scores(cve5_dir: str):
    """CVSS v3.x base scores that CNAs and CISA-ADP published in CVE JSON 5 records."""
    scores = {}
    for path in sorted(glob.glob(os.path.join(cve5_dir, "CVE-*.json"))):
        with open(path, encoding="utf-8") as f:
            rec = json.load(f)
        cve_id = rec["cveMetadata"]["cveId"]
        containers = [("cna", rec["containers"].get("cna", {}))]
        containers += [("adp", a) for a in rec["containers"].get("adp", [])]
        for origin, c in containers:
            for m in c.get("metrics", []) or []:
                for k in ("cvssV3_1", "cvssV3_0"):
                    if k in m and "baseScore" in m[k]:
                        who = c.get("providerMetadata", {}).get("shortName", origin)
                        scores.setdefault(cve_id, (float(m[k]["baseScore"]), m[k].get("baseSeverity"), who))
    return scores


# --------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------


class Matcher:
    """The CVEs of one product's rows that an observed version matches, by the NVD match rule:
    bounds, when present, decide; else `*` matches any version, `-` only a missing one, and an
    exact version an equal one (trailing zeros insignificant). A specific update completes an
    exact version and the end bounds (see `specific_update`). Exact rows are looked up by
    their normal keys."""

    def __init__(self, rows):
        self.exact: dict[tuple, set] = {}
        self.ranges = []
        self.any: set = set()
        self.dash: set = set()
        for row in rows:
            cve, v, si, se, ei, ee, update = row
            if si or se or ei or ee:
                keys = (
                    normal_keys(si) if si else None,
                    normal_keys(se) if se else None,
                    strip_zeros(update_keys(ei, update)) if ei else None,
                    strip_zeros(update_keys(ee, update)) if ee else None,
                )
                self.ranges.append((cve, keys))
                continue
            v = (v or "").strip()
            if v in ("", "*"):
                self.any.add(cve)
            elif v == "-":
                self.dash.add(cve)
            elif has_version_content(v):
                self.exact.setdefault(strip_zeros(update_keys(v, update)), set()).add(cve)

    def cves(self, version: str) -> set:
        out = set(self.any)
        if version.strip() in ("", "-"):
            out |= self.dash
        if not has_version_content(version):
            return out
        k = normal_keys(version)
        out |= self.exact.get(k, set())
        for cve, (si, se, ei, ee) in self.ranges:
            if cve in out:
                continue
            if (
                (si is None or _cmp_keys(k, si) >= 0)
                and (se is None or _cmp_keys(k, se) > 0)
                and (ei is None or _cmp_keys(k, ei) <= 0)
                and (ee is None or _cmp_keys(k, ee) < 0)
            ):
                out.add(cve)
        return out


def pick_versions(rows, kev_ids):
    """Up to VERSIONS_PER_PRODUCT vulnerable versions named in the product's rows (exact
    versions and inclusive range bounds): those matching the most KEV CVEs first, then those
    matching the most CVEs, spread over release series (major.minor)."""
    names = set()
    for _, v, si, _, ei, _, update in rows:
        for x in (v, ei):
            if x and x not in ("*", "-"):
                names.add(with_update(x, update))
        if si and si not in ("*", "-"):
            names.add(si)
    stats = {}
    matcher = Matcher(rows)
    for v in names:
        cves = matcher.cves(v)
        if cves:
            stats[v] = (len(cves & kev_ids), len(cves))
    ranked = sorted(stats.items(), key=lambda kv: (-kv[1][0], -kv[1][1], version_key(kv[0]), kv[0]))

    def series(v):
        return (version_keys(v) + (_ZERO, _ZERO))[:2]

    picked: list[str] = []
    per_series: dict = {}
    passes = [(lambda s: s[0] > 0, 2), (lambda s: True, 1), (lambda s: True, VERSIONS_PER_PRODUCT)]
    for accept, limit in passes:
        for v, st in ranked:
            if len(picked) == VERSIONS_PER_PRODUCT:
                return picked
            if any(compare_versions(v, q) == 0 for q in picked) or not accept(st) or per_series.get(series(v), 0) >= limit:
                continue
            picked.append(v)
            per_series[series(v)] = per_series.get(series(v), 0) + 1
    return picked


def unmatched_versions(rows):
    """Two versions of a next major release, newer than every version and range bound the
    product's rows mention, checked to match no row (none where a row covers all versions)."""
    mentioned = set()
    for _, v, si, se, ei, ee, _ in rows:
        for x in (v, si, se, ei, ee):
            if x and x not in ("*", "-"):
                mentioned.add(x)
    numeric = [m.group(0) for m in (re.match(r"\d+(?:\.\d+)*", x) for x in mentioned) if m]
    if not numeric:
        return []
    top = max(numeric, key=lambda x: (version_key(x), x))
    nums = [int(n) for n in top.split(".")]
    if len(nums) == 1:
        candidates = [str(nums[0] + 1), str(nums[0] + 2)]
    else:
        rest = [0] * (len(nums) - 2)
        candidates = [".".join(map(str, [nums[0] + 1, minor] + rest)) for minor in (0, 1)]
    matcher = Matcher(rows)
    return [c for i, c in enumerate(candidates) if c not in candidates[:i] and not matcher.cves(c)]


_VERSIONS_CACHE: dict = {}


def product_versions(vp, cpe_rows, kev_ids):
    if vp not in _VERSIONS_CACHE:
        prod_rows = sorted(cpe_rows[vp], key=lambda r: (cve_sort_key(r[0]), tuple(x or "" for x in r[1:])))
        _VERSIONS_CACHE[vp] = (pick_versions(prod_rows, kev_ids), unmatched_versions(prod_rows))
    return _VERSIONS_CACHE[vp]


def build_vocabulary(products, scan_rows, cpe_rows, kev_ids):
    rows = {}
    for vendor, product, version, port in scan_rows:
        if (vendor, product) in products:
            rows[(vendor, product, version, port)] = WEIGHT_SCAN
    scanned = {(v, p, ver) for v, p, ver, _ in scan_rows}
    for vp in sorted(products):
        port = products[vp]
        hits, misses = product_versions(vp, cpe_rows, kev_ids)
        for version in hits + misses:
            if (vp[0], vp[1], version) in scanned:
                continue
            rows.setdefault((vp[0], vp[1], version, port), WEIGHT_EXTRA)
    return sorted((k + (w,) for k, w in rows.items()), key=lambda r: (r[0], r[1], version_key(r[2]), r[2], r[3]))


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def build_tables(products, cpe_rows, nvd, kev):
    cpe_match = []
    for vp in sorted(products):
        for row in cpe_rows[vp]:
            cpe_match.append((vp, row))
    cpe_match.sort(key=lambda t: (cve_sort_key(t[1][0]), t[0], tuple(x or "" for x in t[1][1:])))
    cpe_table = []
    for i, ((vendor, product), (cve_id, version, si, se, ei, ee, update)) in enumerate(cpe_match, 1):
        cpe_table.append(
            {
                "id": i,
                "cve_id": cve_id,
                "vendor": vendor,
                "product": product,
                "version": version,
                "update": update,
                "version_start_including": si,
                "version_start_excluding": se,
                "version_end_including": ei,
                "version_end_excluding": ee,
                "vulnerable": True,
            }
        )
    cve_ids = sorted({r["cve_id"] for r in cpe_table}, key=cve_sort_key)
    cve_table = []
    for cve_id in cve_ids:
        n = nvd[cve_id]
        cve_table.append({k: n[k] for k in ("cve_id", "published", "last_modified", "cvss3_score", "severity", "description", "cwe")})
    kev_rows = []
    for cve_id in cve_ids:
        if cve_id in kev:
            k = kev[cve_id]
            kev_rows.append(
                {
                    "cve_id": cve_id,
                    "vendor_project": k["vendorProject"],
                    "product": k["product"],
                    "vulnerability_name": k["vulnerabilityName"],
                    "date_added": epoch_days(k["dateAdded"]),
                    "due_date": epoch_days(k["dueDate"]),
                    "required_action": k["requiredAction"],
                    "known_ransomware": k["knownRansomwareCampaignUse"],
                }
            )
    # Held back: KEV entries added on the latest HELD_BACK_KEV_DATES distinct dates.
    dates = sorted({r["date_added"] for r in kev_rows})
    held_dates = set(dates[-HELD_BACK_KEV_DATES:])
    held = sorted((r for r in kev_rows if r["date_added"] in held_dates), key=lambda r: (r["date_added"], cve_sort_key(r["cve_id"])))
    held_ids = {r["cve_id"] for r in held}
    kev_snapshot = [r for r in kev_rows if r["cve_id"] not in held_ids]

    def kev_rec(cve_id):
        notes = kev[cve_id].get("notes") or ""
        urls = [u.rstrip(".,)") for u in re.findall(r"https?://[^\s;]+", notes)]
        return {"cve_id": cve_id, "source": "kev", "recommendation": kev[cve_id]["requiredAction"], "url": urls[0] if urls else None}

    recs = []
    for cve_id in cve_ids:
        if cve_id in kev and cve_id not in held_ids:
            recs.append(kev_rec(cve_id))
        for name, url in nvd[cve_id]["refs"]:
            recs.append({"cve_id": cve_id, "source": "nvd", "recommendation": name, "url": url})
    rec_table = [{"id": i, **r} for i, r in enumerate(recs, 1)]
    next_id = len(rec_table) + 1
    held_recs = []
    for r in held:
        held_recs.append({"id": next_id, **kev_rec(r["cve_id"])})
        next_id += 1
    return {
        "cve": cve_table,
        "cpe_match": cpe_table,
        "kev": kev_snapshot,
        "vendor_recommendation": rec_table,
    }, held, held_recs, next_id


# --------------------------------------------------------------------------------------------
# Debezium envelopes
# --------------------------------------------------------------------------------------------


def source_block(table, ts_ms, ts_us, snapshot, sequence, tx_id, lsn):
    return {
        "version": DEBEZIUM_VERSION,
        "connector": "postgresql",
        "name": SERVER,
        "ts_ms": ts_ms,
        "snapshot": snapshot,
        "db": DB,
        "sequence": sequence,
        "ts_us": ts_us,
        "ts_ns": ts_us * 1000,
        "schema": SCHEMA,
        "table": table,
        "txId": tx_id,
        "lsn": lsn,
        "xmin": None,
        "origin": None,
        "origin_lsn": None,
    }


def envelope(before, after, source, op, emit_us, emit_ns_extra):
    return {
        "before": before,
        "after": after,
        "source": source,
        "transaction": None,
        "op": op,
        "ts_ms": emit_us // 1000,
        "ts_us": emit_us,
        "ts_ns": emit_us * 1000 + emit_ns_extra,
    }


def snapshot_lines(tables):
    flat = [(t, row) for t in TABLES for row in tables[t]]
    lines = []
    sequence = dumps([None, str(SNAPSHOT_LSN)])
    for i, (table, row) in enumerate(flat):
        rows = tables[table]
        first_in_table = row is rows[0]
        last_in_table = row is rows[-1]
        last_table = table == TABLES[-1]
        if i == 0:
            marker = "first"
        elif i == len(flat) - 1:
            marker = "last"
        elif last_in_table and not last_table:
            marker = "last_in_data_collection"
        elif first_in_table:
            marker = "first_in_data_collection"
        else:
            marker = "true"
        src = source_block(table, SNAPSHOT_TS_MS, SNAPSHOT_TS_MS * 1000, marker, sequence, SNAPSHOT_TXID, SNAPSHOT_LSN)
        emit_us = (SNAPSHOT_TS_MS + SNAPSHOT_EMIT_DELAY_MS) * 1000 + i * SNAPSHOT_EMIT_STEP_US
        lines.append(dumps(envelope(None, row, src, "r", emit_us, (i * 613) % 1000)))
    return lines


KEY_COLUMNS = {"cve": ["cve_id"], "cpe_match": ["id"], "kev": ["cve_id"], "vendor_recommendation": ["id"]}


def delete_before(table, row):
    """The `before` of a delete under default replica identity: key columns real, the other
    NOT NULL text columns empty strings, nullable columns null."""
    if table != "vendor_recommendation":
        raise ValueError(table)
    return {"id": row["id"], "cve_id": "", "source": "", "recommendation": "", "url": None}


def build_changes(tables, held, held_recs, next_rec_id, nvd, cve5_scores, vocab_versions):
    """Transactions in commit order, each a list of (table, op, key, before, after)."""
    snapshot_kev_ids = {r["cve_id"] for r in tables["kev"]}
    cves = tables["cve"]

    # CVE re-scores. First the CVEs whose CVSS v3 score from their CNA or CISA-ADP (CVE JSON 5
    # records) differs from NVD's; then, as stand-ins, CVEs with no CVSS v3 score in NVD that
    # get their CVSS v2 base score, picked among those the vocabulary hits, one per product.
    rescore = []
    for row in cves:
        s = cve5_scores.get(row["cve_id"])
        if s and score_text(s[0]) != row["cvss3_score"]:
            rescore.append((row, s[0], s[1], s[2]))
    rescore = rescore[:CVE_UPDATES]
    vocab_hits = {}
    for r in tables["cpe_match"]:
        if (r["vendor"], r["product"], with_update(r["version"], r["update"])) in vocab_versions:
            vocab_hits.setdefault(r["cve_id"], (r["vendor"], r["product"]))
    used_products = set()
    by_id = {row["cve_id"]: row for row in cves}
    chosen = {row["cve_id"] for row, *_ in rescore}
    stand_ins = []
    for cve_id in sorted(vocab_hits, key=cve_sort_key):
        row = by_id[cve_id]
        v2 = nvd[cve_id]["cvss2_score"]
        if cve_id in chosen or row["cvss3_score"] is not None or v2 is None or vocab_hits[cve_id] in used_products:
            continue
        used_products.add(vocab_hits[cve_id])
        stand_ins.append((row, float(v2), None, "nvd-cvss-v2"))
    # Spread the stand-ins over the CVE range rather than taking the oldest ones.
    need = CVE_UPDATES - len(rescore)
    if stand_ins and need > 0:
        step = len(stand_ins) / need
        stand_ins = [stand_ins[int(i * step)] for i in range(min(need, len(stand_ins)))]
        rescore += stand_ins
    updates = []
    for i, (row, score, sev, who) in enumerate(rescore):
        after = dict(row)
        after["cvss3_score"] = score_text(score)
        after["severity"] = (sev or severity_of(score)).upper()
        toast = i in TOAST_UPDATES
        if toast:
            after["description"] = UNAVAILABLE
        updates.append((after, who, toast))

    nvd_recs = [r for r in tables["vendor_recommendation"] if r["source"] == "nvd"]
    n = len(nvd_recs)
    deleted = [nvd_recs[n // 3], nvd_recs[(2 * n) // 3]]
    moved = nvd_recs[n // 2]

    kev_txs = []
    for k, rec in zip(held, held_recs):
        kev_txs.append(
            [
                ("kev", "c", {"cve_id": k["cve_id"]}, None, k),
                ("vendor_recommendation", "c", {"id": rec["id"]}, None, rec),
            ]
        )
    other = []
    for after, _, _ in updates:
        other.append([("cve", "u", {"cve_id": after["cve_id"]}, None, after)])
    other.insert(3, [("vendor_recommendation", "d", {"id": deleted[0]["id"]}, delete_before("vendor_recommendation", deleted[0]), None)])
    moved_new = dict(moved)
    moved_new["id"] = next_rec_id
    other.insert(
        6,
        [
            ("vendor_recommendation", "d", {"id": moved["id"]}, delete_before("vendor_recommendation", moved), None),
            ("vendor_recommendation", "c", {"id": moved_new["id"]}, None, moved_new),
        ],
    )
    other.insert(10, [("vendor_recommendation", "d", {"id": deleted[1]["id"]}, delete_before("vendor_recommendation", deleted[1]), None)])

    # Interleave: the first transaction is a single-row update; then about two KEV additions
    # between two other changes.
    txs = []
    ki = oi = 0
    while ki < len(kev_txs) or oi < len(other):
        if oi < len(other) and (ki >= len(kev_txs) or len(txs) % 3 == 0):
            txs.append(other[oi])
            oi += 1
        else:
            txs.append(kev_txs[ki])
            ki += 1
    info = {
        "rescored": [(a["cve_id"], who, t) for a, who, t in updates],
        "deleted": [d["id"] for d in deleted],
        "moved": (moved["id"], moved_new["id"]),
        "held_kev": [k["cve_id"] for k in held],
        "snapshot_kev": len(snapshot_kev_ids),
    }
    return txs, info


def commit_times(count):
    """Commit times spread over the change window: an irregular fixed gap pattern, with one
    long quiet stretch in the middle during which only heartbeats arrive."""
    pattern = [17, 43, 8, 61, 29, 5, 88, 36, 12, 52, 3, 71, 24, 40, 9]
    gaps = [pattern[i % len(pattern)] * 1000 + (i * 379) % 1000 for i in range(count)]
    if count > 4:
        gaps[count // 2] = 240_000
    first = 4_217
    last_allowed = CHANGES_END_MS - CHANGES_START_MS - 45_000
    span = sum(gaps[1:])
    scale = min(1.0, (last_allowed - first) / span) if span else 1.0
    times, t = [], CHANGES_START_MS + first
    for i in range(count):
        if i:
            t += max(1500, int(gaps[i] * scale))
        times.append(t)
    return times


def change_lines(txs):
    times = commit_times(len(txs))
    lsn_end = SNAPSHOT_LSN  # the snapshot's position
    tx_id = SNAPSHOT_TXID + 2
    records = []  # (sort time, seq, line)
    tx_lines = []
    seq = 0
    first_streamed = True
    for i, (tx, commit_ms) in enumerate(zip(txs, times)):
        tx_id += 1 + (i * 7) % 3
        lsn = lsn_end + 56 + (i * 40) % 200  # BEGIN
        sequence_head = None if first_streamed else str(lsn_end)
        first_streamed = False
        commit_us = commit_ms * 1000 + (i * 7919) % 1000
        emit_us = commit_us + 3000 + (i * 1733) % 4000
        lines = []
        pk_change = len(tx) == 2 and tx[0][1] == "d" and tx[1][1] == "c"
        for j, (table, op, key, before, after) in enumerate(tx):
            if not (pk_change and j == 1):
                lsn += 64 + (len(dumps(after or before)) + 7) // 8 * 8
            if table == "cve" and op == "u":
                after = dict(after, last_modified=us_to_zoned(commit_us))
            src = source_block(table, commit_ms, commit_us, "false", dumps([sequence_head, str(lsn)]), tx_id, lsn)
            value = envelope(before, after, src, op, emit_us, (i * 311 + j * 97) % 1000)
            topic = f"{SERVER}.{SCHEMA}.{table}"
            lines.append(dumps({"topic": topic, "key": key, "value": value}))
            if op == "d":
                lines.append(dumps({"topic": topic, "key": key, "value": None}))
            emit_us += 150 + (j * 53) % 200
        lsn_end = lsn + 48 + 24  # COMMIT record and its end
        tx_lines.append((commit_ms, lines))
        for line in lines:
            records.append((commit_ms, seq, line))
            seq += 1

    # Heartbeats on the 30 s grid, where no change was committed in the preceding 30 s.
    heartbeats = []
    for t in range(CHANGES_START_MS, CHANGES_END_MS + 1, HEARTBEAT_INTERVAL_MS):
        if not any(t - HEARTBEAT_INTERVAL_MS < c <= t for c in times):
            heartbeats.append(t)
    for t in heartbeats:
        line = dumps({"topic": f"__debezium-heartbeat.{SERVER}", "key": {"serverName": SERVER}, "value": {"ts_ms": t}})
        records.append((t, seq, line))
        seq += 1

    # A connector restart in the longest quiet stretch: the last transaction before it (two
    # records) is read again from the replication slot and sent once more, with new envelope
    # processing times; it lands just before the next transaction.
    longest = max(range(len(times) - 1), key=lambda i: (times[i + 1] - times[i], -i))
    replay_ms = times[longest + 1] - 1
    replayed = []
    for line in tx_lines[longest][1][:2]:
        rec = json.loads(line)
        if rec["value"] is not None:
            shift_us = (replay_ms - rec["value"]["source"]["ts_ms"]) * 1000 - 900_000
            rec["value"]["ts_us"] += shift_us
            rec["value"]["ts_ms"] = rec["value"]["ts_us"] // 1000
            rec["value"]["ts_ns"] += shift_us * 1000
        replayed.append(dumps(rec))
    for line in replayed:
        records.append((replay_ms, seq, line))
        seq += 1
    records.sort(key=lambda r: (r[0], r[1]))
    stats = {
        "times": times,
        "heartbeats": len(heartbeats),
        "replayed_tx_commit_ms": times[longest],
        "replayed_at_ms": replay_ms,
    }
    return [r[2] for r in records], stats


# --------------------------------------------------------------------------------------------
# README
# --------------------------------------------------------------------------------------------


def readme_text(summary) -> str:
    s = summary
    dropped = ", ".join(f"{v}:{p}" for v, p in s["dropped"]) or "none"
    kept = ", ".join(f"{v}:{p}" for v, p in sorted(s["products"]))
    return f"""# CVE-enrichment demo data

Generated by `scripts/demo_data.py` from the real files in the project's shared data folder
(see its `MANIFEST.md`; paths below are relative to it). The event format follows the
Debezium 3.6.3 captures in `debezium/captured-3.6.3/`. Regenerate from the repository root with

    python3 scripts/demo_data.py --data ../shared/data --out examples/demo

The script is deterministic: the same inputs give the same bytes. A run's CVE matches can be
checked against this script's own implementation of the match rule with

    python3 scripts/check_demo_matches.py --reference examples/demo/reference --output watershed-out/observations.jsonl

## Files

`vocabulary.csv` ({s['vocab_rows']} rows; `vendor,product,version,port,weight`): what the
observation stream is made of ("host X runs vendor/product/version on port P"). Rows of weight
{WEIGHT_SCAN} are the versioned part-`a` service CPEs (`cpe:/a:vendor:product:version`) of the
nmap reports in `scans/nmap-xml-python-libnmap/*.xml`, with their port. Rows of weight
{WEIGHT_EXTRA} add, for each product, up to {VERSIONS_PER_PRODUCT} vulnerable versions named in
the product's rows of the CPE match table (exact versions and inclusive range bounds, with the
row's CPE update written after the version where it has one, as a scanner reports it: version
`5.9` update `p1` is `5.9p1`, `8.1` update `r1.0` is `8.1r1.0`): those
matching the most CISA KEV CVEs first, then those matching the most CVEs, at most one or two per
release series; and two versions of a next major release, newer than every version and range
bound of the product, which match no CVE, so that not every observation is a hit. Products with
a row that covers all versions ({s['no_miss']}) get no such version. Ports are the usual default
port of each product. With exact-version and range matching, {s['vocab_hit']} of the rows match
at least one CVE and {s['vocab_kev']} match a KEV CVE ({s['kev_hit']} of the {s['kev_all']} KEV
CVEs are hit). The nmap reports name MySQL `mysql:mysql`, whose NVD rows stop at 6.0; NVD
lists MySQL 5.7.16 only under `oracle:mysql`, so the scanned MySQL matches no CVE here.
Products: {kept}.

`reference/snapshot.jsonl` ({s['snapshot_lines']} lines): the initial snapshot of the reference
database, one Debezium 3.6.3 PostgreSQL (pgoutput) change-event value per line, as the
JsonConverter writes it with `schemas.enable=false` and `decimal.handling.mode=string`: bare
envelopes `{{"before":null,"after":{{…}},"source":{{…}},"transaction":null,"op":"r",…}}`, topic prefix
`{SERVER}`, database `{DB}`, schema `{SCHEMA}`, tables in the order {', '.join(TABLES)}. All rows
share the snapshot's `txId` {SNAPSHOT_TXID}, `lsn` {SNAPSHOT_LSN} and `source.ts_ms`
{SNAPSHOT_TS_MS} (2025-12-31T23:59:00Z). `source.snapshot` is `first` on the first record,
`first_in_data_collection` on the first row of each later table, `last_in_data_collection` on
the last row of each table but the last, `last` on the last record and `true` elsewhere.

| table | rows | columns (PostgreSQL type) |
|---|---|---|
| cve | {s['rows']['cve']} | cve_id text PK, published timestamptz, last_modified timestamptz, cvss3_score numeric(3,1) null, severity text null, description text, cwe text null |
| cpe_match | {s['rows']['cpe_match']} | id bigint PK, cve_id text, vendor text, product text, version text, update text, version_start_including text null, version_start_excluding text null, version_end_including text null, version_end_excluding text null, vulnerable boolean |
| kev | {s['rows']['kev']} | cve_id text PK, vendor_project text, product text, vulnerability_name text, date_added date, due_date date, required_action text, known_ransomware text |
| vendor_recommendation | {s['rows']['vendor_recommendation']} | id bigint PK, cve_id text, source text, recommendation text, url text null |

`update` is the CPE update field, matched as the pipeline's version rule reads it
(`src/operators/version_range.rs`). The observed version is one string with the update after
the version, as nmap reports OpenSSH `5.9p1`, and a specific update completes the row's
version: version `5.9` update `p1` admits the observed `5.9p1` (also written `5.9.p1` or
`5.9P1`), not `5.9` nor `5.9p2`; with an end bound it moves the bound (`versionEndIncluding`
`7.2` update `p1`, NVD's "before 7.2p2", admits versions up to `7.2p1`). `*`, NVD's fill for
names without an update, and `-`, "no update", both leave the version as written: `5.9` with
update `*` or `-` admits `5.9` only. NVD lists `5.9` and `5.9` update `p1` as separate rows
where both are affected; reading `*` as "any update" would need the observed string split into
version and update, and that split differs by product (OpenSSL's `1.0.2k` is version `1.0.2k`,
not `1.0.2` update `k`). A `*` or `-` version and the start bounds ignore the update.

On the wire: timestamptz columns are ZonedTimestamp strings (`2017-03-01T15:59:00.000000Z`),
`date` columns are days since 1970-01-01, `numeric` is a decimal string (`"9.8"`).

`reference/changes.jsonl` ({s['change_lines']} lines): what the connector sends after the
snapshot, as Kafka records `{{"topic","key","value"}}` in commit order, with commit times
(`source.ts_ms`) from {ms_to_zoned(s['first_change_ms'])} to {ms_to_zoned(s['last_change_ms'])}
inside the demo's event-time range 2026-01-01T00:00:00Z to 2026-01-01T00:20:00Z:

* {s['held']} CISA KEV additions, in `dateAdded` order: the KEV entries of the selected CVEs
  whose `dateAdded` is one of the latest {HELD_BACK_KEV_DATES} distinct dates are held back from
  the snapshot and arrive here, each as one transaction of a `kev` create and the
  `vendor_recommendation` create of its required action;
* {s['updates']} `cve` updates (`op:"u"`, `before` null as with the default replica identity),
  each with a new `last_modified` (its commit time): {s['real_rescores']} CVEs whose CVSS v3 base
  score in their CVE JSON 5 record (`cve5/vulnrichment-kev/`, scored by the CNA or CISA-ADP)
  differs from NVD's are re-scored to it ({s['real_rescore_ids']}); the other
  {s['updates'] - s['real_rescores']} are stand-ins: CVEs the vocabulary hits that have no CVSS v3
  score in NVD get their NVD CVSS v2 base score in `cvss3_score` (a demo value, not an official
  v3 score), severity by the v3 scale. In {s['toast']} of the updates `description` is
  `{UNAVAILABLE}`, as for an unchanged TOASTed column;
* 2 `vendor_recommendation` deletes (`before` holds the key and empty strings for the other NOT
  NULL text columns, `after` null), each followed by its tombstone (same key, value null);
* 1 `vendor_recommendation` primary-key change ({s['moved'][0]} -> {s['moved'][1]}): delete,
  tombstone and create in one transaction, at one LSN;
* {s['heartbeats']} heartbeats (`__debezium-heartbeat.{SERVER}`, key `{{"serverName":"{SERVER}"}}`,
  value `{{"ts_ms":…}}`) on the 30 s grid wherever no change was committed in the preceding 30 s;
* a replay: the two records of the transaction committed at
  {ms_to_zoned(s['replayed_tx_commit_ms'])} appear a second time just before the next
  transaction, as after a connector restart (at-least-once delivery): same `source`, later
  envelope `ts_ms`.

LSNs strictly increase from change to change (except within the primary-key change); every
change of a transaction has the same `sequence[0]`, the end LSN of the previous transaction
(null for the first transaction after the snapshot, as the connector writes it), and `txId`
grows from transaction to transaction. `source.snapshot` is `"false"`.

## Derivation

* `cpe_match`: the rows of `nvd/nvd-subset-cpe-matches.csv` with `vulnerable=True` and part `a`
  whose (vendor, product) is in the vocabulary, deduplicated on the columns kept (the
  configuration node is dropped), sorted by CVE number, vendor, product, version, range bounds
  and update; `id` is the 1-based position in that order. `update` is field 7 of `cpe23Uri` as
  NVD writes it: {s['update_rows']['specific']} rows have a specific update
  ({s['update_rows']['exact']} with an exact version, {s['update_rows']['range']} with a range
  bound), {s['update_rows']['*']} have `*` and {s['update_rows']['-']} have `-`.
* `cve`: every CVE with a `cpe_match` row, from `nvd/nvdcve-1.1-subset-kev-and-network-products.json`:
  first English description cut to {DESCRIPTION_MAX} characters, first `CWE-n` of the problem
  type, CVSS v3 base score and severity (null where the record has none).
* `kev`: the entries of `kev/known_exploited_vulnerabilities.json` (catalog {s['kev_catalog']})
  for those CVEs, less the held-back ones.
* `vendor_recommendation`: for each of those CVEs, the KEV `requiredAction` (source `kev`, url
  the first URL of the KEV `notes`, or null) and up to {NVD_RECS_PER_CVE} NVD references tagged
  "Vendor Advisory" or "Patch" (source `nvd`, recommendation = the reference name).
* Size: the folder is kept under {SIZE_LIMIT // 1_000_000} MB by leaving out the products that
  bring the most rows per KEV CVE; left out here: {dropped}.
"""


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def generate(products, scan_rows, cpe_rows, nvd, kev, cve5_scores, kev_catalog, dropped):
    vocab = build_vocabulary(products, scan_rows, cpe_rows, set(kev))
    tables, held, held_recs, next_id = build_tables(products, cpe_rows, nvd, kev)
    snap = snapshot_lines(tables)
    vocab_versions = {(v, p, ver) for v, p, ver, _, _ in vocab}
    txs, info = build_changes(tables, held, held_recs, next_id, nvd, cve5_scores, vocab_versions)
    changes, cstats = change_lines(txs)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["vendor", "product", "version", "port", "weight"])
    w.writerows(vocab)
    kev_ids = set(kev)
    by_vp = {}
    for r in tables["cpe_match"]:
        by_vp.setdefault((r["vendor"], r["product"]), []).append(
            (r["cve_id"], r["version"], r["version_start_including"], r["version_start_excluding"],
             r["version_end_including"], r["version_end_excluding"], r["update"]))
    all_kev = {r["cve_id"] for r in tables["kev"]} | {r["cve_id"] for r in held}
    vocab_hit = vocab_kev = 0
    kev_hit = set()
    matchers = {vp: Matcher(rows) for vp, rows in by_vp.items()}
    for v, p, ver, _, _ in vocab:
        m = matchers[(v, p)].cves(ver) if (v, p) in matchers else set()
        vocab_hit += bool(m)
        vocab_kev += bool(m & kev_ids)
        kev_hit |= m & all_kev
    update_rows = {"specific": 0, "exact": 0, "range": 0, "*": 0, "-": 0}
    for r in tables["cpe_match"]:
        if specific_update(r["update"]) is None:
            update_rows[r["update"].strip() or "*"] += 1
            continue
        update_rows["specific"] += 1
        bounds = ("version_start_including", "version_start_excluding", "version_end_including", "version_end_excluding")
        if any(r[b] for b in bounds):
            update_rows["range"] += 1
        elif r["version"] not in ("*", "-"):
            update_rows["exact"] += 1
    no_miss = [f"{v}:{p}" for v, p in sorted(products) if not product_versions((v, p), cpe_rows, kev_ids)[1]]
    real = [(c, who) for c, who, _ in info["rescored"] if who != "nvd-cvss-v2"]
    summary = {
        "vocab_rows": len(vocab),
        "vocab_hit": vocab_hit,
        "vocab_kev": vocab_kev,
        "kev_hit": len(kev_hit),
        "kev_all": len(all_kev),
        "no_miss": ", ".join(no_miss) or "none",
        "real_rescores": len(real),
        "real_rescore_ids": ", ".join(f"{c} by {who}" for c, who in real) or "none",
        "products": products,
        "dropped": dropped,
        "snapshot_lines": len(snap),
        "change_lines": len(changes),
        "rows": {t: len(tables[t]) for t in TABLES},
        "update_rows": update_rows,
        "held": len(held),
        "updates": len(info["rescored"]),
        "toast": sum(1 for _, _, t in info["rescored"] if t),
        "moved": info["moved"],
        "heartbeats": cstats["heartbeats"],
        "first_change_ms": cstats["times"][0],
        "last_change_ms": cstats["times"][-1],
        "replayed_tx_commit_ms": cstats["replayed_tx_commit_ms"],
        "kev_catalog": kev_catalog,
        "info": info,
    }
    files = {
        "vocabulary.csv": buf.getvalue(),
        "reference/snapshot.jsonl": "".join(l + "\n" for l in snap),
        "reference/changes.jsonl": "".join(l + "\n" for l in changes),
    }
    files["README.md"] = readme_text(summary)
    return files, summary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/data", help="the shared data folder")
    ap.add_argument("--out", default="examples/demo", help="output folder")
    args = ap.parse_args(argv)

    scan_rows, scan_files = read_nmap(os.path.join(args.data, "scans", "nmap-xml-python-libnmap"))
    cpe_rows = read_cpe_matches(os.path.join(args.data, "nvd", "nvd-subset-cpe-matches.csv"))
    kev, kev_catalog = read_kev(os.path.join(args.data, "kev", "known_exploited_vulnerabilities.json"))
    cve5_scores = read_cve5_scores(os.path.join(args.data, "cve5", "vulnrichment-kev"))

    pinned = {(v, p) for v, p, _, _ in scan_rows if (v, p) in cpe_rows}
    products = {}
    for v, p, _, port in scan_rows:
        if (v, p) in pinned:
            products.setdefault((v, p), PRODUCTS.get((v, p), port))
    for vp, port in PRODUCTS.items():
        if vp in cpe_rows:
            products.setdefault(vp, port)
    wanted = {row[0] for vp in products for row in cpe_rows[vp]}
    nvd = read_nvd(os.path.join(args.data, "nvd", "nvdcve-1.1-subset-kev-and-network-products.json"), wanted)

    def usefulness(vp):
        """KEV CVEs (plus a bonus for the core services) per estimated output byte."""
        rows = cpe_rows[vp]
        cves = {r[0] for r in rows}
        kev_n = sum(1 for c in cves if c in kev)
        cost = len(rows) * 700 + len(cves) * 1900
        return ((kev_n + 0.5 + (1 if vp in CORE_PRODUCTS else 0)) / cost, vp)

    dropped = []
    while True:
        files, summary = generate(products, scan_rows, cpe_rows, nvd, kev, cve5_scores, kev_catalog, dropped)
        size = sum(len(text.encode("utf-8")) for text in files.values())
        if size <= SIZE_LIMIT:
            break
        candidates = [vp for vp in products if vp not in pinned]
        if not candidates:
            sys.exit(f"output is {size} bytes even with only the scanned products")
        worst = min(candidates, key=usefulness)
        print(f"{size} bytes > {SIZE_LIMIT}: leaving out {worst[0]}:{worst[1]}", file=sys.stderr)
        dropped.append(worst)
        del products[worst]
    # Put back, most useful first, each left-out product that still fits.
    for vp in sorted(dropped, key=usefulness, reverse=True):
        trial = dict(products)
        trial[vp] = PRODUCTS[vp]
        rest = [d for d in dropped if d != vp]
        t_files, t_summary = generate(trial, scan_rows, cpe_rows, nvd, kev, cve5_scores, kev_catalog, rest)
        if sum(len(text.encode("utf-8")) for text in t_files.values()) <= SIZE_LIMIT:
            print(f"putting back {vp[0]}:{vp[1]}", file=sys.stderr)
            products, dropped, files, summary = trial, rest, t_files, t_summary

    for name in sorted(files):
        path = os.path.join(args.out, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(files[name])
    sizes = {name: len(files[name].encode("utf-8")) for name in sorted(files)}
    print(f"scanned CPEs from {len(scan_files)} nmap reports: {scan_rows}")
    print(f"products ({len(products)}): {', '.join(v + ':' + p for v, p in sorted(products))}")
    print(f"left out: {', '.join(v + ':' + p for v, p in dropped) or 'none'}")
    print(f"rows: {summary['rows']}, vocabulary {summary['vocab_rows']}")
    print(f"cpe_match update: {summary['update_rows']}")
    print(f"held-back KEV: {summary['info']['held_kev']}")
    print(f"re-scored: {summary['info']['rescored']}")
    print(f"files: {sizes}, total {sum(sizes.values())}")


if __name__ == "__main__":
    main()
