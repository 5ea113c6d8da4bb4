"""Load test of `cnnlab serve` on loopback: mixed facade photos and clothing images, a few at a time.

    python benchmarks/load.py                               # shipped models; writes BENCHMARKS.md
    python benchmarks/load.py --fashion RUN --facade RUN --no-write

Starts the server in a process of its own, as a user would (`cnnlab serve --port 0`), then sends
`--requests` uploads from `--concurrency` threads, alternating real facade photos (the mini-facade set)
and real Fashion-MNIST test images. Prints p50/p95/max latency per endpoint and requests/s, and writes
them into BENCHMARKS.md between the load markers. Any failed request makes it exit 1 without writing.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import httpx
from common import ROOT, machine, write_block
from PIL import Image

from cnnlab.data import fashion

FACADES = ROOT.parent / "shared" / "data" / "cs194-26_mini_facade" / "train"
ENDPOINTS = ("fashion", "facade")


def start_server(args: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    """`cnnlab serve --port 0 ARGS` in the background; returns it and its URL once it listens."""
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "cnnlab", "serve", "--port", "0", *args], stdout=err, stderr=err)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        found = re.search(r"Uvicorn running on (http://\S+)", log.read_text())
        if found:
            return proc, found.group(1)
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"the server did not start:\n{log.read_text()}")


def png(pixels) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def uploads(n: int) -> list[tuple[str, bytes]]:
    """(endpoint, file) pairs: facade photos and Fashion-MNIST test images, alternating."""
    photos = sorted(FACADES.glob("*.jpg"))[:8]
    if not photos:
        raise SystemExit(f"no facade photos in {FACADES}")
    garments = fashion.read_split(fashion.locate(None, allow_download=False), "t10k").x[:50, 0].numpy()
    return [
        ("facade", photos[i // 2 % len(photos)].read_bytes()) if i % 2 else ("fashion", png(garments[i // 2 % 50]))
        for i in range(n)
    ]


def hammer(url: str, work: list[tuple[str, bytes]], concurrency: int) -> tuple[list[tuple[str, float]], float, int]:
    """Send every upload, `concurrency` at a time; returns (endpoint, seconds) per success, wall time, failures."""
    clients = [httpx.Client(base_url=url, timeout=60) for _ in range(concurrency)]

    def one(i: int) -> tuple[str, float, bool]:
        endpoint, data = work[i]
        start = time.perf_counter()
        r = clients[i % concurrency].post(f"/api/{endpoint}", files={"file": ("upload", data)})
        return endpoint, time.perf_counter() - start, r.status_code == 200

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(len(work))))
    wall = time.perf_counter() - start
    for c in clients:
        c.close()
    return [(e, s) for e, s, ok in results if ok], wall, sum(not ok for _, _, ok in results)


def row(name: str, alone: list[float], loaded: list[float]) -> str:
    q = statistics.quantiles(loaded, n=100, method="inclusive")
    return (
        f"| {name} | {statistics.median(alone) * 1e3:.0f} | {len(loaded)} | {q[49] * 1e3:.0f} | {q[94] * 1e3:.0f} "
        f"| {max(loaded) * 1e3:.0f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fashion", help="run folder or shipped model name (default: the shipped one)")
    ap.add_argument("--facade", help="run folder or shipped model name (default: the shipped one)")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2, help="passed to cnnlab serve")
    ap.add_argument("--no-write", action="store_true", help="print only, do not update BENCHMARKS.md")
    args = ap.parse_args()

    serve_args = [f"--workers={args.workers}"]
    serve_args += [f"--{task}={ref}" for task, ref in (("fashion", args.fashion), ("facade", args.facade)) if ref]
    work = uploads(args.requests)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(serve_args, Path(tmp) / "server.log")
        try:
            health = httpx.get(f"{url}/api/health").json()
            missing = {t: m["error"] for t, m in health["models"].items() if not m["ready"]}
            if missing:
                raise SystemExit(f"no model for {missing}; pass --fashion/--facade RUN")
            hammer(url, work[:8], args.concurrency)  # warm-up: first calls allocate and tune
            alone, _, failed_alone = hammer(url, work[:40], 1)
            done, wall, failures = hammer(url, work, args.concurrency)
            failures += failed_alone
        finally:
            proc.terminate()
            proc.wait(30)
    names = {t: m["name"] for t, m in health["models"].items()}
    lines = [
        f"Measured {date.today()} on {machine()} with "
        f"`python benchmarks/load.py`: {args.requests} uploads over loopback, {args.concurrency} at a time, "
        f"alternating facade photos (256x256 JPEG) and Fashion-MNIST test images; `cnnlab serve "
        f"--workers {args.workers}`, models {names['classify']} and {names['segment']}; 1-minute load average "
        f"{load:.1f} before the run (the machine is shared).",
        "",
        "| endpoint | alone: p50 ms | under load: requests | p50 ms | p95 ms | max ms |",
        "|---|---|---|---|---|---|",
        *(row(f"/api/{e}", [s for n, s in alone if n == e], [s for n, s in done if n == e]) for e in ENDPOINTS),
        row("all", [s for _, s in alone], [s for _, s in done]),
        "",
        f"{len(done) / wall:.1f} requests/s under load, {failures} failed. Alone: 20 requests per endpoint sent one "
        f"at a time; what load adds is waiting for one of the {args.workers} workers and sharing the CPU.",
    ]
    table = "\n".join(lines)
    print(table)
    if failures:
        raise SystemExit(1)
    if not args.no_write:
        write_block("load", table)


if __name__ == "__main__":
    main()
