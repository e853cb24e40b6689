"""Load on `trainlab serve`: N requests from C concurrent clients on 127.0.0.1, each POSTing
one image to /predict; prints latency percentiles (p50/p90/p99) and requests per second.

    python benchmarks/serve_load.py RUN_OR_MODEL IMAGE.png [--requests 200] [--clients 8]

The server is started as `trainlab serve RUN --port 0` in a child process and stopped with
SIGTERM at the end. `load()` is also what tests/test_serve.py's bounded load test runs."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from urllib.parse import urlsplit


def _client(url: str, body: bytes, n: int, out: list, errors: list) -> None:
    """n requests on one keep-alive connection; (seconds, top class) of each into out."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:
        for _ in range(n):
            t = time.perf_counter()
            conn.request("POST", "/predict", body, {"Content-Type": "image/png"})
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                errors.append(f"{resp.status}: {data[:200]!r}")
                continue
            out.append((time.perf_counter() - t, json.loads(data)["predictions"][0]["top"][0]["class"]))
    except Exception as e:  # noqa: BLE001 - counted, reported by the caller
        errors.append(f"{type(e).__name__}: {e}")
    finally:
        conn.close()


def load(url: str, body: bytes, requests: int = 200, clients: int = 8, limit: float = 300) -> dict:
    """Run the load; raise TimeoutError past `limit` seconds. Returns latencies (s), classes, errors, seconds."""
    out, errors = [], []
    per = [requests // clients + (i < requests % clients) for i in range(clients)]
    start = time.perf_counter()
    pool = ThreadPoolExecutor(clients)
    futures = [pool.submit(_client, url, body, n, out, errors) for n in per]
    done, pending = wait(futures, timeout=limit)
    pool.shutdown(wait=not pending, cancel_futures=True)
    if pending:
        raise TimeoutError(f"the load did not finish in {limit} s")
    seconds = time.perf_counter() - start
    return {"latencies": [t for t, _ in out], "classes": [c for _, c in out], "errors": errors, "seconds": seconds}


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * len(xs) + 0.5) - 1))]  # nearest rank


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="run folder, checkpoint or model.pt")
    ap.add_argument("image", help="the PNG every request sends")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=8)
    args = ap.parse_args()
    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in [str(src), os.environ.get("PYTHONPATH", "")] if p)}
    proc = subprocess.Popen([sys.executable, "-m", "trainlab", "serve", args.model, "--port", "0"],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        m = re.search(r"http://\S+/", line)
        if not m:
            print(f"the server did not start: {line!r}", file=sys.stderr)
            return 1
        threading.Thread(target=proc.stdout.read, daemon=True).start()  # the pipe never fills
        r = load(m.group(0), Path(args.image).read_bytes(), args.requests, args.clients)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    lat = [t * 1000 for t in r["latencies"]]
    print(f"{len(lat)} requests ok, {len(r['errors'])} failed, {args.clients} clients, {r['seconds']:.2f} s")
    if lat:
        print(f"latency ms: p50 {percentile(lat, 50):.1f}  p90 {percentile(lat, 90):.1f}  "
              f"p99 {percentile(lat, 99):.1f}  max {max(lat):.1f}")
        print(f"throughput: {len(lat) / r['seconds']:.1f} requests/s")
    for e in r["errors"][:5]:
        print("error:", e)
    return 0 if not r["errors"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
