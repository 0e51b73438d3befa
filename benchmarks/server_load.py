"""Open-loop load on the HTTP server: request-level vs step-level continuous batching under Poisson arrivals.

Usage:
    python benchmarks/server_load.py [--model PATH | --workload flux_pipeline [--tiny]] [--dtype bfloat16]
        [--size 1024x1024] [--steps 4,8,20,28] [--loads 0.5,0.8,1.0,1.2] [--requests 64] [--slots 4]
        [--chunk-steps 4] [--seed 0] [--serial] [--modes request,continuous,serial] [--capacity IPS]

One model is loaded in this process (a model directory, the embedded default, or a benchmark workload's
directory with random weights at real size, `jdiff.bench.jdiff_pipeline.random_model_dir`). For each batching
mode an app (`jdiff.server.create_app`) is served by uvicorn on a local port, and every (step count, batch size)
program the mode can run is compiled before measuring. Capacity is request-level batching's throughput with
every request queued at once (images/s over a burst of 4 x slots requests of mixed step counts). Then, for each
load factor, `--requests` requests arrive as a Poisson process at that fraction of capacity (the same arrival
times, step counts, prompts and seeds for both modes), each with a step count drawn uniformly from `--steps`.
Prints one markdown row per mode and load: arrival rate, p50 / p99 latency (arrival to response) and images/s
(finished requests over the span from the first arrival to the last response).

The issue's target (issue 21): at 80% load continuous batching's p99 at least 1.5x lower, throughput at
saturation (120%) not lower. `--serial` adds continuous batching with batch-1 model calls that skip idle
slots (`jdiff serve --serial-slots`); `--modes serial --capacity 1.5` runs one mode alone, its loads taken as
fractions of an earlier run's capacity. A CPU smoke run: `--requests 6 --steps 2,3 --loads 0.8 --slots 2`.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import threading
import time

import httpx
import numpy as np
import uvicorn

PROMPTS = ["a red circle on a black background", "a lighthouse at dusk", "a bowl of fruit", "a green square"]


def load_generator(args):
    import jdiff

    if args.workload is None:
        return jdiff.DiffGenerator.from_pretrained(args.model, dtype=args.dtype)
    from jdiff.api import DiffGenerator
    from jdiff.bench.jdiff_pipeline import random_model_dir

    model = random_model_dir(args.workload, args.tiny, args.dtype)
    pipeline = model.family.pipeline(model, dtype=model.dtype, placement=None)
    return DiffGenerator(pipeline, model_path=model.root, dtype=args.dtype)


class Server:
    """`app` served by uvicorn in a thread on a free port."""

    def __init__(self, app):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def __enter__(self):
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        while httpx.get(self.url + "/health").status_code != 200:
            time.sleep(0.2)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(120)
        self.sock.close()


async def send(client: httpx.AsyncClient, url: str, body: dict, at: float, t0: float) -> dict:
    await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
    start = time.perf_counter()
    r = await client.post(url + "/v1/images/generations", json=body, timeout=3600)
    end = time.perf_counter()
    return {"ok": r.status_code == 200, "latency": end - start, "end": end - t0, "start": start - t0,
            "batch": int(r.headers.get("x-batch-outputs", "0"))}  # fmt: skip


async def run(url: str, bodies: list[dict], arrivals: list[float]) -> list[dict]:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(limits=limits) as client:
        t0 = time.perf_counter()
        return await asyncio.gather(
            *(send(client, url, b, a, t0) for b, a in zip(bodies, arrivals, strict=True))
        )


def summary(results: list[dict]) -> dict:
    ok = [r for r in results if r["ok"]]
    lat = np.array([r["latency"] for r in ok])
    span = max(r["end"] for r in ok) - min(r["start"] for r in results) if ok else float("nan")
    return {
        "done": len(ok),
        "failed": len(results) - len(ok),
        "p50": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        "p99": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
        "ips": len(ok) / span if ok else 0.0,
        "batch": float(np.mean([r["batch"] for r in ok])) if ok else float("nan"),
    }


def workload(args, n: int, rng: np.random.Generator) -> list[dict]:
    return [
        {"prompt": PROMPTS[i % len(PROMPTS)], "seed": int(rng.integers(1 << 31)), "size": args.size,
         "num_inference_steps": int(rng.choice(args.steps))}
        for i in range(n)
    ]  # fmt: skip


def warm(url: str, args) -> None:
    """Compiles what each mode runs: every step count at every batch size request-level batching may form
    (n = batch fills one call), and the continuous slots' chunk program."""
    sizes = sorted({1, 2, 4, args.slots} & set(range(1, args.slots + 1)))
    for steps in args.steps:
        for n in sizes:
            body = {"prompt": "warm", "seed": 1, "size": args.size, "num_inference_steps": steps, "n": n}
            r = httpx.post(url + "/v1/images/generations", json=body, timeout=3600)
            r.raise_for_status()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model directory (default: the embedded model)")
    p.add_argument(
        "--workload", default=None, help="a jdiff.bench workload (e.g. flux_pipeline), random weights"
    )
    p.add_argument("--tiny", action="store_true", help="the workload's toy config")
    p.add_argument("--dtype", default=None, help="default: the model's (bfloat16 for --workload)")
    p.add_argument("--size", default=None, help="WxH (default: the model's)")
    p.add_argument("--steps", default="4,8,20,28", help="step counts, drawn uniformly per request")
    p.add_argument("--loads", default="0.5,0.8,1.0,1.2", help="arrival rates as fractions of capacity")
    p.add_argument("--requests", type=int, default=64, help="requests per load level")
    p.add_argument("--slots", type=int, default=4, help="continuous slots = request-level max batch")
    p.add_argument("--chunk-steps", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--serial", action="store_true", help="also measure continuous batching with --serial-slots"
    )
    p.add_argument(
        "--modes",
        default=None,
        help="which to run, of request,continuous,serial (default: request,continuous, + serial with --serial)",
    )
    p.add_argument(
        "--capacity",
        type=float,
        default=None,
        help="images/s that the loads are fractions of (default: measured, request-level burst), so that one "
        "mode can be run alone against an earlier run's capacity",
    )
    args = p.parse_args()
    args.steps = [int(s) for s in args.steps.split(",")]
    loads = [float(x) for x in args.loads.split(",")]
    if args.workload is not None and args.dtype is None:
        args.dtype = "bfloat16"

    from jdiff.server import create_app

    gen = load_generator(args)
    if args.size is None:
        args.size = f"{gen.pipeline.preset['width']}x{gen.pipeline.preset['height']}"
    common = dict(max_batch=args.slots, batch_wait_ms=5, timeout_s=3600, max_queue=100000, warmup=[])
    modes = {
        "request": dict(batching="request"),
        "continuous": dict(batching="continuous", slots=args.slots, chunk_steps=args.chunk_steps,
                           max_steps=max(args.steps)),
    }  # fmt: skip
    modes["continuous, serial"] = {**modes["continuous"], "serial_slots": True}
    names = {"request": "request", "continuous": "continuous", "serial": "continuous, serial"}
    chosen = (
        args.modes.split(",")
        if args.modes
        else ["request", "continuous", *(["serial"] if args.serial else [])]
    )
    if unknown := sorted(set(chosen) - set(names)):
        p.error(f"unknown mode(s) {unknown}; choose from {sorted(names)}")
    modes = {names[m]: modes[names[m]] for m in chosen}
    rng = np.random.default_rng(args.seed)
    burst = workload(args, 4 * args.slots, rng)
    plans = []
    for load in loads:
        bodies = workload(args, args.requests, rng)
        plans.append((load, bodies, np.cumsum(rng.exponential(1.0, args.requests)).tolist()))

    rows, capacity = [], args.capacity
    for mode, options in modes.items():
        with Server(create_app(gen, **common, **options)) as server:
            warm(server.url, args)
            sat = summary(asyncio.run(run(server.url, burst, [0.0] * len(burst))))
            if capacity is None:  # the first mode's (request-level batching's) saturated throughput
                capacity = sat["ips"]
                print(f"capacity ({mode}, burst of {len(burst)}): {capacity:.3f} images/s", flush=True)
            rows.append((mode, "burst", float("inf"), sat))
            for load, bodies, unit in plans:
                rate = load * capacity
                arrivals = [t / rate for t in unit]
                rows.append(
                    (mode, f"{load:.0%}", rate, summary(asyncio.run(run(server.url, bodies, arrivals))))
                )
                print(mode, rows[-1][1], rows[-1][3], flush=True)

    print(
        f"\nsize {args.size}, steps {args.steps}, {args.slots} slots / max batch, chunk {args.chunk_steps} steps\n"
    )
    print("| batching | load | arrivals/s | done | failed | p50 s | p99 s | images/s | mean batch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mode, load, rate, s in rows:
        print(
            f"| {mode} | {load} | {rate:.3f} | {s['done']} | {s['failed']} | {s['p50']:.3f} | {s['p99']:.3f} "
            f"| {s['ips']:.3f} | {s['batch']:.2f} |"
        )


if __name__ == "__main__":
    main()
