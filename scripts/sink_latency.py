"""Latency from appending a line to a followed file to seeing it in a straight-through file
sink's output (no checkpoint directory): appends 450 lines/s for 20 s and reports p50, p99 and
max. Usage, in a directory holding the pipeline below as p.yaml:

    name: latency
    sources:
      s:
        file: {paths: [in.jsonl], follow: true}
        schema: {ts: int, k: string}
        event_time: {field: ts}
    sinks:
      out: {input: s, file: out.jsonl}

    python3 scripts/sink_latency.py ./target/release/watershed
"""
import json, os, subprocess, sys, time, threading
binary = sys.argv[1]
open("in.jsonl", "w").close()
if os.path.exists("out.jsonl"): os.remove("out.jsonl")
proc = subprocess.Popen([binary, "run", "--log", "warn", "--metrics-addr", "off", "p.yaml"], stderr=subprocess.DEVNULL)
time.sleep(1.5)
sent = {}
def writer():
    with open("in.jsonl", "a") as f:
        start = time.time()
        for i in range(20 * 450):
            target = start + i / 450
            d = target - time.time()
            if d > 0: time.sleep(d)
            sent[i] = time.time()
            f.write(json.dumps({"ts": int(sent[i] * 1000), "k": str(i)}) + "\n"); f.flush()
t = threading.Thread(target=writer); t.start()
seen = {}; pos = 0; buf = b""
deadline = time.time() + 40
while time.time() < deadline and len(seen) < 20 * 450:
    if os.path.exists("out.jsonl"):
        with open("out.jsonl", "rb") as f:
            f.seek(pos); data = f.read(); pos += len(data)
        buf += data
        *lines, buf = buf.split(b"\n")
        now = time.time()
        for l in lines:
            if l: seen[int(json.loads(l)["k"])] = now
    time.sleep(0.002)
t.join(); proc.terminate(); proc.wait()
lat = sorted((seen[k] - sent[k]) * 1000 for k in seen)
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
print(f"{len(lat)} lines: p50 {q(0.5):.1f} ms, p99 {q(0.99):.1f} ms, max {lat[-1]:.1f} ms")
