"""Load on `jdiff serve`: requests/s and p50/p95 latency at 1, 4 and 16 concurrent clients, batching on vs off.

Usage: python benchmarks/server_clients.py [--model PATH] [--requests 32] [--concurrency 1,4,16]
       [--max-batch 8] [--batch-wait-ms 10] [--size WxH] [--steps N] [--url http://host:port]

For each mode it starts a local server (`python -m jdiff serve`, warmed up at the request size) on a free
port: batching on (`--max-batch`, `--batch-wait-ms`) and off (`--max-batch 1 --batch-wait-ms 0`). Each
client sends one request (n=1) at a time, back to back. With `--url` it measures that running server once,
as configured. Prints a markdown table; "batch" is the mean number of outputs per generate call the
requests were part of (the server's X-Batch-Outputs header).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np

PROMPTS = [
    f"a {c} {s} on a {b} background"
    for c, s, b in itertools.product(
        ["red", "green", "blue", "yellow"], ["circle", "square"], ["black", "white"]
    )
]


def post(url: str, body: dict) -> tuple[float, int]:
    """One request: (latency in s, outputs in the batch it ran in)."""
    req = urllib.request.Request(
        url + "/v1/images/generations", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as resp:
        resp.read()
        batch = int(resp.headers.get("X-Batch-Outputs", "1"))
    return time.perf_counter() - t0, batch


def load(url: str, clients: int, requests: int, extra: dict) -> dict:
    """`clients` threads send `requests` requests in all, each client one at a time."""
    counter, lock = itertools.count(), threading.Lock()
    latencies, batches, errors = [], [], []

    def client():
        while True:
            with lock:
                i = next(counter)
            if i >= requests:
                return
            try:
                lat, batch = post(url, {"prompt": PROMPTS[i % len(PROMPTS)], "seed": i, **extra})
            except (urllib.error.URLError, OSError) as e:
                errors.append(repr(e))
                continue
            with lock:
                latencies.append(lat)
                batches.append(batch)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1e3
    return {
        "clients": clients,
        "ok": len(latencies),
        "errors": len(errors),
        "rps": len(latencies) / wall,
        "p50": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        "p95": float(np.percentile(lat, 95)) if len(lat) else float("nan"),
        "batch": float(np.mean(batches)) if batches else float("nan"),
    }


def wait_healthy(url: str, proc: subprocess.Popen | None, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            sys.exit(f"the server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    sys.exit(f"{url} did not become healthy in {timeout:.0f}s")


def start_server(args, max_batch: int, wait_ms: float) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "jdiff", "serve", "--port", str(port), "--log-level", "warning"]
    cmd += ["--max-batch", str(max_batch), "--batch-wait-ms", str(wait_ms)]
    cmd += ["--warmup", args.size or "default"]
    if args.model:
        cmd += ["--model", args.model]
    proc = subprocess.Popen(cmd, env=os.environ)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc)
    return proc, url


def run_mode(url: str, args, extra: dict) -> list[dict]:
    for i in range(2):  # first-request costs (connections, caches) stay out of the figures
        post(url, {"prompt": PROMPTS[i], "seed": i, **extra})
    return [load(url, c, max(args.requests, 2 * c), extra) for c in args.concurrency]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model directory (default: the embedded model)")
    p.add_argument("--url", default=None, help="measure this running server instead of starting ones")
    p.add_argument("--requests", type=int, default=32, help="requests per concurrency level (>= 2 x clients)")
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated client counts")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--batch-wait-ms", type=float, default=10.0)
    p.add_argument("--size", default=None, help="WxH (default: the model's)")
    p.add_argument("--steps", type=int, default=None)
    args = p.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    extra = {k: v for k, v in (("size", args.size), ("num_inference_steps", args.steps)) if v is not None}

    rows = []
    if args.url:
        wait_healthy(args.url, None)
        rows += [("as running", r) for r in run_mode(args.url, args, extra)]
    else:
        modes = [(f"on ({args.max_batch}, {args.batch_wait_ms:g} ms)", args.max_batch, args.batch_wait_ms)]
        modes.append(("off", 1, 0.0))
        for name, max_batch, wait_ms in modes:
            proc, url = start_server(args, max_batch, wait_ms)
            try:
                rows += [(name, r) for r in run_mode(url, args, extra)]
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(120)

    print("| batching (max, wait) | clients | requests | req/s | p50 ms | p95 ms | mean batch | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        print(
            f"| {name} | {r['clients']} | {r['ok']} | {r['rps']:.1f} | {r['p50']:.0f} | {r['p95']:.0f} "
            f"| {r['batch']:.1f} | {r['errors']} |"
        )


if __name__ == "__main__":
    main()
