"""Loading speed and time to first image, each in a fresh process, weights in the page cache.

Usage:
  python benchmarks/load_speed.py --model DIR [--build flux_pipeline [--build-only]] [--tiny] [--diffusers]
                                  [--compare-host] [--threads 4,16] [--no-ttfi] [--no-components] [--repeats 2]
                                  [--out load_speed.json]
  python benchmarks/load_speed.py --host-read 2 [--scratch DIR]

--model DIR: a diffusers-format directory (e.g. FLUX.1-dev). With --build WORKLOAD and DIR absent, a
    directory of that `jdiff bench` end-to-end workload (flux_pipeline, z_image_pipeline, ...) is written
    there first: its real configs (--tiny: toy ones), tokenizers and scheduler (jdiff.bench.model_dir) and
    random bfloat16 weights saved by diffusers / transformers `save_pretrained` (the released layout:
    sharded safetensors), built on the GPU when there is one.
Measures, each a fresh `python` (page cache warmed first by reading every weight file once, whose
throughput is reported as the host's page-cache read speed):
  * jdiff `DiffGenerator.from_pretrained(DIR)` (all parameters ready), and `ModelDir.load` of each component
    alone, in seconds and GB/s of safetensors bytes, with the device fill (JDIFF_FAST_LOAD=1); with
    --compare-host also the host fill it replaces (JDIFF_FAST_LOAD=0);
  * with --diffusers (torch, diffusers): `DiffusionPipeline.from_pretrained(DIR, torch_dtype=bf16)
    .to("cuda")` (CPU where there is no GPU) on the same directory, and diffusers' time to first image
    (a script: load, generate, save the PNG);
  * time to first image: `python -m jdiff generate` (1024x1024, 28 steps for FLUX.1-dev; --tiny 64x64, 2
    steps) from process start to the PNG written, on an empty compilation cache (cold) and again on the
    cache that run filled (warm).
Prints a markdown table and writes the results as JSON (--out).

--host-read N: host-side figures only (no model): writes an N GB file and reads it from the page cache by
    read() into a buffer, and through a memory map copied by 1, 4 and 8 threads (numpy copies release the
    GIL), and into `jax.device_put` from 8 threads.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

GB = 1e9
PROMPT = "a photograph of an astronaut riding a horse on the moon, detailed, 35mm"


# ---- workers (run in a fresh process: `load_speed.py --worker KIND ...`) ---------------------------------


def _ready(tree) -> None:
    import jax

    jax.block_until_ready(jax.tree.leaves(tree))


def worker_jdiff(model: str, component: str | None) -> dict:
    t0 = time.perf_counter()
    import jax
    import jax.numpy as jnp

    import jdiff
    from jdiff import compilation_cache, registry

    jax.devices()  # backend start-up outside the load clock
    imported = time.perf_counter()
    if component is None:
        gen = jdiff.DiffGenerator.from_pretrained(model)
        _ready(gen.pipeline._params)
    else:
        compilation_cache.enable()
        dtype = jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
        _, module = registry.open_model(model).load(component, dtype=dtype)
        _ready(module)
    done = time.perf_counter()
    return {"import_s": imported - t0, "load_s": done - imported, "device": str(jax.devices()[0])}


def worker_diffusers(model: str, component: str | None) -> dict:
    t0 = time.perf_counter()
    import diffusers
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.zeros(1, device=device)  # CUDA context outside the load clock
    imported = time.perf_counter()
    pipe = diffusers.DiffusionPipeline.from_pretrained(model, torch_dtype=torch.bfloat16).to(device)
    if device == "cuda":
        torch.cuda.synchronize()
    done = time.perf_counter()
    del pipe
    return {"import_s": imported - t0, "load_s": done - imported, "device": device}


def worker_diffusers_image(model: str, size: int, steps: int, out: str) -> dict:
    import diffusers
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = diffusers.DiffusionPipeline.from_pretrained(model, torch_dtype=torch.bfloat16).to(device)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(PROMPT, height=size, width=size, num_inference_steps=steps).images[0]
    image.save(out)
    return {}


def _worker_main(argv: list[str]) -> None:
    kind, model, component = argv[0], argv[1], argv[2] if len(argv) > 2 and argv[2] != "-" else None
    if kind == "jdiff":
        res = worker_jdiff(model, component)
    elif kind == "diffusers":
        res = worker_diffusers(model, component)
    else:
        res = worker_diffusers_image(model, int(argv[3]), int(argv[4]), argv[5])
    print("RESULT " + json.dumps(res), flush=True)


# ---- driver ------------------------------------------------------------------------------------------------


def _run(cmd: list[str], env: dict | None = None, timeout: float = 1800) -> tuple[dict, float]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    return (json.loads(lines[-1][7:]) if lines else {}), wall


def weight_files(root: Path, component: str | None = None) -> list[Path]:
    folders = [root / component] if component else [p for p in sorted(root.iterdir()) if p.is_dir()]
    return [f for d in folders for f in sorted(d.glob("*.safetensors"))]


def warm_page_cache(files: list[Path], chunk: int = 64 << 20) -> dict:
    """Reads every file twice (the second read is from the page cache: its GB/s is the host's)."""
    out = {}
    for attempt in ("first", "cached"):
        t0, n = time.perf_counter(), 0
        buf = bytearray(chunk)
        for f in files:
            with open(f, "rb", buffering=0) as fh:
                while k := fh.readinto(buf):
                    n += k
        dt = time.perf_counter() - t0
        out[f"{attempt}_read_gbps"] = round(n / GB / dt, 2)
    out["bytes"] = n
    return out


def components(root: Path) -> list[str]:
    index = json.loads((root / "model_index.json").read_text())
    return [c for c, e in index.items() if isinstance(e, list) and weight_files(root, c)]


def build(workload: str, root: Path, tiny: bool) -> None:
    """A diffusers-format directory of `workload` with random bfloat16 weights (see the module docstring)."""
    import torch

    from jdiff.bench.diffusers_pipeline import random_models
    from jdiff.bench.model_dir import write_model_dir
    from jdiff.bench.workloads import _resolve

    _, config, _ = _resolve(workload, tiny)
    write_model_dir(workload, config, root)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for name, model in random_models(workload, config, device).items():
        model.save_pretrained(root / name, safe_serialization=True)
        del model
        torch.cuda.empty_cache() if device.type == "cuda" else None


def measure(args) -> dict:
    root = Path(args.model).absolute()
    me = [sys.executable, str(Path(__file__).absolute()), "--worker"]
    results: dict = {"model": str(root), "rows": []}
    results["page_cache"] = warm_page_cache(weight_files(root))
    total = results["page_cache"]["bytes"]
    print(
        f"weights: {total / GB:.2f} GB; host page-cache read {results['page_cache']['cached_read_gbps']} GB/s"
    )

    def add(what: str, engine: str, res: dict, wall: float, nbytes: int | None) -> None:
        row = {"what": what, "engine": engine, "process_s": round(wall, 2), **res}
        if nbytes and "load_s" in res:
            row["gbps"] = round(nbytes / GB / res["load_s"], 2)
            row["gb"] = round(nbytes / GB, 3)
        results["rows"].append(row)
        print(json.dumps(row), flush=True)

    # JDIFF_FAST_LOAD=1: the device fill on any backend (unset, a CPU run would take the host fill).
    modes = [("jdiff", {"JDIFF_FAST_LOAD": "1"})]
    modes += [(f"jdiff {t} threads", {"JDIFF_FAST_LOAD": "1", "JDIFF_LOAD_THREADS": t}) for t in args.threads]
    modes += [("jdiff host fill", {"JDIFF_FAST_LOAD": "0"})] if args.compare_host else []
    # Each jdiff mode gets its own compilation cache: the first load compiles the device fill's programs
    # (cold), later ones find them there (warm), as a user's first and later starts do.
    caches = Path(tempfile.mkdtemp(prefix="load-speed-cache-"))
    for i, (_, env) in enumerate(modes):
        env["JDIFF_CACHE_DIR"] = str(caches / str(i))
    for i in range(args.repeats):
        for engine, env in modes:
            what = "from_pretrained, " + ("cold" if i == 0 else "warm") + " compilation cache"
            add(what, engine, *_run([*me, "jdiff", str(root)], env), total)
        if args.diffusers:
            add("from_pretrained", "diffusers .to(device)", *_run([*me, "diffusers", str(root)]), total)
    for comp in components(root) if args.per_component else ():
        for engine, env in modes:
            n = sum(f.stat().st_size for f in weight_files(root, comp))
            add(f"load {comp}", engine, *_run([*me, "jdiff", str(root), comp], env), n)
    shutil.rmtree(caches, ignore_errors=True)
    if args.ttfi:
        size, steps = (64, 2) if args.tiny else (1024, 28)
        with tempfile.TemporaryDirectory() as scratch:
            cache = Path(scratch) / "cache"
            for phase in ("cold", "warm"):
                png = Path(scratch) / f"{phase}.png"
                cmd = [sys.executable, "-m", "jdiff", "generate", "--model", str(root), "--prompt", PROMPT]
                cmd += ["--height", str(size), "--width", str(size), "--steps", str(steps)]
                cmd += ["--output", str(png), "--no-progress"]
                start = time.time()
                _, wall = _run(cmd, {"JDIFF_CACHE_DIR": str(cache)})
                written = png.stat().st_mtime - start
                add(f"first image {size}^2 {steps} steps, {phase} cache", "jdiff generate",
                    {"first_image_s": round(written, 2)}, wall, None)  # fmt: skip
            if args.diffusers:
                png = Path(scratch) / "diffusers.png"
                start = time.time()
                _, wall = _run([*me, "image", str(root), "-", str(size), str(steps), str(png)])
                add(f"first image {size}^2 {steps} steps", "diffusers script",
                    {"first_image_s": round(png.stat().st_mtime - start, 2)}, wall, None)  # fmt: skip
    return results


def table(results: dict) -> str:
    lines = [
        "| what | engine | device | load s | GB | GB/s | first image s | process s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        load = f"{r['load_s']:.2f}" if "load_s" in r else "-"
        cells = [r["what"], r["engine"], r.get("device", "-"), load, r.get("gb", "-"), r.get("gbps", "-")]
        cells += [r.get("first_image_s", "-"), r["process_s"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


# ---- host-side read throughput ---------------------------------------------------------------------------


def host_read(size_gb: float, scratch: Path) -> dict:
    import jax
    import numpy as np

    path = scratch / "load_speed_probe.bin"
    n = int(size_gb * GB) // (64 << 20) * (64 << 20)
    block = np.random.default_rng(0).integers(0, 255, 64 << 20, dtype=np.uint8).tobytes()
    with open(path, "wb") as f:
        for _ in range(n // len(block)):
            f.write(block)
    out = {"bytes": n, "cpu_count": os.cpu_count(), **warm_page_cache([path])}

    def timed(label, fn, threads):
        # A fresh mapping each time: a loading process faults every page in once, as here.
        mm = np.memmap(path, dtype=np.uint8, mode="r")
        chunks = [mm[i : i + (64 << 20)] for i in range(0, n, 64 << 20)]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(fn, chunks))
        out[label] = round(n / GB / (time.perf_counter() - t0), 2)

    timed("mmap_copy_warmup_gbps", np.array, 4)  # the first pass over a new file maps slower: not counted
    for t in (1, 4, 8):
        timed(f"mmap_copy_{t}_threads_gbps", np.array, t)
    put = lambda c: jax.device_put(c, may_alias=False).block_until_ready()
    if jax.default_backend() != "cpu":  # a CPU "device" may alias the host buffer: no copy to time
        timed("mmap_device_put_8_threads_gbps", put, 8)
    out["device"] = str(jax.devices()[0])
    path.unlink()
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        return _worker_main(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="diffusers-format directory (written first with --build if absent)")
    ap.add_argument("--build", metavar="WORKLOAD", help="jdiff bench end-to-end workload, e.g. flux_pipeline")
    ap.add_argument("--tiny", action="store_true", help="toy configs (--build) and a 64x64 2-step image")
    ap.add_argument("--diffusers", action="store_true", help="also diffusers on the same directory")
    ap.add_argument("--compare-host", action="store_true", help="also jdiff's host fill (JDIFF_FAST_LOAD=0)")
    ap.add_argument("--no-ttfi", dest="ttfi", action="store_false", help="skip time to first image")
    ap.add_argument(
        "--no-components", dest="per_component", action="store_false", help="skip per-component loads"
    )
    ap.add_argument(
        "--threads", type=lambda v: v.split(","), default=[], help="also these JDIFF_LOAD_THREADS, e.g. 4,16"
    )
    ap.add_argument("--build-only", action="store_true", help="write the --build directory and stop")
    ap.add_argument("--repeats", type=int, default=2, help="whole-directory loads per engine")
    ap.add_argument("--out", default="load_speed.json")
    ap.add_argument(
        "--host-read", type=float, metavar="GB", help="host read throughput only, on an N GB file"
    )
    ap.add_argument("--scratch", default=tempfile.gettempdir(), help="where --host-read writes its file")
    args = ap.parse_args()
    if args.host_read:
        res = host_read(args.host_read, Path(args.scratch))
        print(json.dumps(res, indent=1))
        Path(args.out).write_text(json.dumps(res, indent=1))
        return None
    if not args.model:
        ap.error("--model is required")
    if args.build and not Path(args.model).exists():
        t0 = time.perf_counter()
        build(args.build, Path(args.model), args.tiny)
        print(f"built {args.model} in {time.perf_counter() - t0:.0f} s")
    if args.build_only:
        return None
    results = measure(args)
    print(table(results))
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")
    return None


if __name__ == "__main__":
    main()
