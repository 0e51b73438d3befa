"""jdiff against diffusers on one GPU: random real-size bf16 weights, batch 1 (SDXL: its CFG batch of 2),
each engine in its own process.

Workloads (real configs, no weights loaded; every floating parameter is normal(0, 0.02), with each engine's
float32-kept parameters in float32 as its loader would keep them):
  flux_step        FLUX.1-dev transformer, one step at 1024x1024 (4096 image + 512 text tokens, guidance)
  flux_step_fp8    the same with quantization="fp8" (block linears in float8 e4m3; jdiff only)
  z_image_step     Z-Image-Turbo transformer, one step at 1024x1024 (4096 image + 128 caption tokens, no CFG)
  z_image_step_fp8 the same with quantization="fp8" (jdiff only)
  flux2_klein_step FLUX.2-klein-4B transformer, one step at 1024x1024 (4096 image + 512 text tokens, no CFG)
  flux2_dev_step   FLUX.2-dev transformer, one step at 1024x1024 (4096 image + 512 text tokens, guidance)
  sdxl_unet_step   SDXL base UNet, one CFG step at 1024x1024 (batch 2 of 128x128 latents, 77 text tokens)
  qwen_image_step  Qwen-Image transformer, one call at 1024x1024, batch 1 (4096 image + 16 text tokens); a
                   true-CFG step (SGLang's per-step figure) is two such calls
  qwen_image_cfg_step
                   Qwen-Image true-CFG step at 1024x1024 as each pipeline runs it: jdiff one batch-2 call,
                   negative (5 text tokens) padded to the prompt's 16 with key lengths; diffusers two calls
  qwen_image_cfg_step_fp8
                   the same with quantization="fp8" (jdiff only)
  hunyuan_video15_step
                   HunyuanVideo-1.5 480p T2V transformer, one CFG step at 848x480x121 (31x30x53 latent) as each
                   pipeline runs it: jdiff one batch-2 call (text bucket 128, glyph 64, masked), diffusers two
                   batch-1 calls (text padded to 1000, glyph 256, 729 zero image tokens, masked)
  hunyuan_video15_vae_decode
                   HunyuanVideo-1.5 VAE decode of 31 latent frames to 121 frames at 848x480
  hunyuan_video15_vae_decode_720p_tiled
                   the same at 1280x720 (31x45x80 latent) in diffusers' default tiles (enable_tiling():
                   256 px, overlap 0.25) on both engines; its peak GiB is what tiling buys
  wan_forward      Wan2.1-T2V-1.3B transformer, one forward at 832x480x81 (21x60x104 latent, 512 text tokens)
  wan_forward_fp8  the same with quantization="fp8" (jdiff only)
  wan_forward_14b, wan_forward_14b_720p (and their _fp8)
                   Wan2.1-T2V-14B transformer, one forward at 832x480x81 / 1280x720x81 (32760 / 75600 tokens)
  flux_vae_decode  FLUX.1 AutoencoderKL decode of a 128x128x16 latent to 1024x1024
  wan_vae_decode   Wan2.1 AutoencoderKLWan decode of 21 latent frames to 81 frames at 832x480
  flux_pipeline    FLUX.1-dev text to image end to end (CLIP-L + T5-XXL, 28 steps, guidance 3.5, VAE decode)
                   at 1024x1024, decoded to float32 arrays (no PNG); tokenizers from the embedded tiny model
  flux_pipeline_fbcache
                   the same with the first-block step cache at 0.12 (diffusers: its FirstBlockCache hook)
  flux_pipeline_fp8
                   the same with quantization="fp8" (jdiff only)
  z_image_pipeline Z-Image-Turbo end to end at 1024x1024 (Qwen3-4B, its preset's 9 steps, no CFG, VAE decode)
  z_image_pipeline_fp8
                   the same with quantization="fp8" (jdiff only)
  flux2_klein_pipeline
                   FLUX.2-klein-4B end to end at 1024x1024 (Qwen3-4B, its preset's 4 steps, no CFG)
  sdxl_pipeline    SDXL base end to end at 1024x1024 (CLIP-L + bigG, 30 Euler steps, CFG 5, negative prompt)
  qwen_image_pipeline
                   Qwen-Image end to end at 1024x1024 (Qwen2.5-VL-7B, 50 steps, true CFG 4, negative prompt)
  qwen_image_pipeline_fp8
                   the same with quantization="fp8" (jdiff only)
  wan_pipeline     Wan2.1-T2V-1.3B end to end at 832x480x81 (UMT5-XXL, 50 UniPC steps, CFG 5, VAE decode)
  wan_pipeline_fp8, wan_pipeline_fp8_teacache
                   the same with quantization="fp8" (and TeaCache at 0.08; jdiff only)
The *_pipeline workloads are declared in jdiff.bench.pipeline_workloads; their tokenizers are built offline
(jdiff.bench.tokenizers); their TFLOP counts the denoiser only (steps x calls per step x the step formula).

Engines: jdiff (jitted; compile = lower + compile), diffusers (eager), diffusers-compile (torch.compile,
default mode, of the denoiser; the *_step and *_pipeline workloads only; its "compile" is the first call). For
the *_pipeline workloads "compile" is, for both compiled engines, what the first call takes beyond a steady one.
A *_pipeline workload with jdiff runs two workers on one fresh compilation cache directory: "cold" (empty
cache: first_s, then ms = median of 3 more calls, 2 for Qwen-Image) and "warm" (a new process on the filled cache:
warm_start_s = pipeline construction + first call). Weight building is outside every clock.

Usage:
  jdiff bench [--compare diffusers] [--only flux_step,wan_forward] [--engines jdiff diffusers]
              [--budget 520] [--out DIR] [--tiny]
      driver: runs every (workload, engine) as a subprocess on the same GPU, one after another, prints the
      table and writes compare.json and compare.log under DIR ($OUT, else the current directory).
  jdiff bench --tables run1/compare.json run2/compare.json
      the tables of several runs together (engines of one workload measured in separate runs).
  jdiff bench --engine jdiff --workload flux_step [--tiny]
      one measurement; prints one JSON line. For a *_pipeline workload, `--warm` is the warm phase (needs
      JDIFF_CACHE_DIR pointing at the cache its cold phase filled).
--tiny: toy configs and sizes, for a CPU smoke test of both engines; the table names what ran ("tiny FLUX
transformer step (toy config), 64x64"), not the real workload.
Exit codes: 0 every run done; 1 a run failed or the budget ran out; 2 an asked engine cannot be imported here
(torch, diffusers), or bad arguments.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jdiff.bench.workloads import ENGINES, WORKLOADS, _median_ms

# jax: allocate on demand (not 75% up front) so that nvidia-smi and peak_bytes_in_use both describe what
# the workload needs; the fraction only caps the pool.
JAX_ENV = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.95"}
# What the warm jdiff worker adds to the cold one's row, each as `warm_<key>`.
WARM_KEYS = (
    "start_s", "construct_s", "first_s", "cache_entries_before", "cache_hits", "cache_misses",
    "xla_compile_s", "trace_s", "peak_gib", "finite", "process_s",
)  # fmt: skip


def worker(args) -> None:
    t0 = time.perf_counter()
    pipeline = WORKLOADS[args.workload].pipeline
    compiled = args.engine == "diffusers-compile"
    if args.engine == "jdiff" and pipeline:
        from jdiff.bench.jdiff_pipeline import run_jdiff_pipeline

        res = run_jdiff_pipeline(args.workload, args.tiny, args.warm)
    elif args.engine == "jdiff":
        from jdiff.bench.jdiff_engine import run_jdiff

        res = run_jdiff(args.workload, args.tiny)
    elif pipeline:
        from jdiff.bench.diffusers_pipeline import run_diffusers_pipeline

        res = run_diffusers_pipeline(args.workload, args.tiny, compiled)
    else:
        from jdiff.bench.diffusers_engine import run_diffusers

        res = run_diffusers(args.workload, args.tiny, compiled)
    res = {"workload": args.workload, "engine": args.engine, "tiny": args.tiny, **res}
    if "times_ms" in res:
        res["ms"] = round(_median_ms([t / 1e3 for t in res["times_ms"]]), 2)
    res["process_s"] = round(time.perf_counter() - t0, 1)
    print("RESULT " + json.dumps(res), flush=True)


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table(results: list[dict], tiny: bool) -> str:
    """Markdown table: one row per (workload, engine), ratios = diffusers time / this time."""
    lines = [
        "| workload | engine | median ms | x vs diffusers eager | x vs torch.compile | TFLOP/s | compile s | "
        "peak GiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by = {(r["workload"], r["engine"]): r for r in results}
    for r in results:
        wl = WORKLOADS[r["workload"]]
        if "error" in r:
            lines.append(f"| {wl.label(tiny)} | {r['engine']} | failed: {r['error']} | | | | | |")
            continue
        ratios = []
        for ref in ("diffusers", "diffusers-compile"):
            other = by.get((r["workload"], ref))
            ok = other is not None and "ms" in other and r["engine"] != ref
            ratios.append(f"{other['ms'] / r['ms']:.2f}" if ok else "-")
        tflops = wl.tflop / r["ms"] * 1e3 if wl.tflop and not tiny else None
        lines.append(
            f"| {wl.label(tiny)} | {r['engine']} | {r['ms']:.1f} | {ratios[0]} | {ratios[1]} | {_fmt(tflops, '.0f')} | "
            f"{_fmt(r.get('compile_s'), '.1f')} | {_fmt(r.get('peak_gib'), '.1f')} |"
        )
    return "\n".join(lines)


def startup_table(results: list[dict], tiny: bool = False) -> str:
    """Markdown table of the end-to-end workloads' start-up (pipeline construction + first call, weights
    excluded): cold on empty compilation caches, warm in a second process on the caches the cold one filled."""
    lines = [
        "| workload | engine | cold start s | warm start s | steady s | XLA compile s (cold / warm) | "
        "cache hits (warm) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if not WORKLOADS[r["workload"]].pipeline or "error" in r:
            continue
        xla = f"{_fmt(r.get('xla_compile_s'), '.1f')} / {_fmt(r.get('warm_xla_compile_s'), '.1f')}"
        lines.append(
            f"| {WORKLOADS[r['workload']].label(tiny)} | {r['engine']} | {_fmt(r.get('start_s'), '.1f')} | "
            f"{_fmt(r.get('warm_start_s'), '.1f')} | {r['ms'] / 1e3:.2f} | {xla} | "
            f"{_fmt(r.get('warm_cache_hits'), 'd')} |"
        )
    return "\n".join(lines) if len(lines) > 2 else ""


def _run_worker(cmd: list[str], env: dict, timeout: float, log, label: str) -> dict:
    """Runs one worker subprocess; its RESULT line as a dict, or {"error": ...}."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        stdout, stderr, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        stdout, stderr, rc = e.stdout or "", e.stderr or "", "timeout"
        stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
        stderr = stderr.decode() if isinstance(stderr, bytes) else stderr
    log.write(f"== {label}: rc {rc}, {time.perf_counter() - t0:.1f} s\n{stdout}\n{stderr}\n")
    log.flush()
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    if rc == 0 and lines:
        return json.loads(lines[-1][len("RESULT ") :])
    tail = (stderr.strip().splitlines() or ["?"])[-1][:200]
    return {"error": f"rc {rc}: {tail}"}


def _measure(name: str, engine: str, tiny: bool, deadline: float, log) -> dict:
    """One table row: one worker, or for a pipeline workload's jdiff engine a cold and a warm one."""
    cmd = [sys.executable, "-m", "jdiff.bench", "--engine", engine, "--workload", name]
    cmd += ["--tiny"] if tiny else []
    env = {**os.environ, **(JAX_ENV if engine == "jdiff" else {}), "PYTHONUNBUFFERED": "1"}
    if not WORKLOADS[name].pipeline:
        res = _run_worker(cmd, env, deadline - time.monotonic(), log, f"{name} / {engine}")
        return {"workload": name, "engine": engine, **res} if "error" in res else res
    # Fresh compilation caches, so the first call is a cold start (torch.compile's caches too).
    scratch = Path(tempfile.mkdtemp(prefix="jdiff-bench-"))
    env.update(
        JDIFF_CACHE_DIR=str(scratch / "jax"),
        TORCHINDUCTOR_CACHE_DIR=str(scratch / "inductor"),
        TRITON_CACHE_DIR=str(scratch / "triton"),
    )
    try:
        res = _run_worker(cmd, env, deadline - time.monotonic(), log, f"{name} / {engine}")
        if "error" in res:
            return {"workload": name, "engine": engine, **res}
        if engine == "jdiff":
            warm = _run_worker(
                [*cmd, "--warm"], env, deadline - time.monotonic(), log, f"{name} / jdiff warm"
            )
            if "error" in warm:
                res["warm_error"] = warm["error"]
            else:
                res.update({f"warm_{k}": warm.get(k) for k in WARM_KEYS})
        return res
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# What each engine needs beyond jdiff's own dependencies.
ENGINE_MODULES = {
    "jdiff": (),
    "diffusers": ("torch", "diffusers"),
    "diffusers-compile": ("torch", "diffusers"),
}


def missing_modules(engines) -> list[str]:
    """The modules the asked engines need and this Python cannot import (found without importing them)."""
    missing = []
    for name in sorted({m for e in engines for m in ENGINE_MODULES[e]}):
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def driver(args) -> int:
    """Runs the plan; 0 when every asked (workload, engine) ran, 1 when any failed or was skipped, 2 when an
    asked engine cannot run here at all (before anything runs)."""
    names = args.only.split(",") if args.only else list(WORKLOADS)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        print(f"jdiff: error: unknown workload(s) {unknown}; known: {sorted(WORKLOADS)}", file=sys.stderr)
        return 2
    engines = args.engines or (ENGINES if args.compare == "diffusers" else ["jdiff"])
    missing = missing_modules(engines)
    if missing:
        asked = ", ".join(e for e in engines if set(ENGINE_MODULES[e]) & set(missing))
        print(
            f"jdiff: error: the {asked} engine(s) need {' and '.join(missing)}, which this Python cannot import; "
            "pip install torch diffusers (or run jdiff alone: drop --compare / --engines)",
            file=sys.stderr,
        )
        return 2
    out_dir = Path(args.out or os.environ.get("OUT") or ".")
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = [(n, e) for n in names for e in WORKLOADS[n].engines if e in engines]
    if not args.only:  # torch.compile takes minutes: last, so that a spent budget costs only it
        plan.sort(key=lambda ne: ne[1] == "diffusers-compile")
    deadline = time.monotonic() + args.budget
    results = []
    log = open(out_dir / "compare.log", "w")  # noqa: SIM115 (kept open across subprocesses)
    for name, engine in plan:
        left = deadline - time.monotonic()
        if left < 10:
            results.append({"workload": name, "engine": engine, "error": "skipped: budget spent"})
            continue
        print(f"== {name} / {engine} (budget left {left:.0f} s)", flush=True)
        res = _measure(name, engine, args.tiny, deadline, log)
        print(json.dumps(res), flush=True)
        results.append(res)
        (out_dir / "compare.json").write_text(json.dumps(results, indent=1))
    log.close()
    print(table(results, args.tiny))
    startup = startup_table(results, args.tiny)
    if startup:
        print("\n" + startup)
    failed = [f"{r['workload']} / {r['engine']}" for r in results if "error" in r]
    if failed:
        print(
            f"jdiff: error: {len(failed)} of {len(results)} run(s) failed or were skipped ({', '.join(failed)}); "
            f"the reasons are in the table and {out_dir / 'compare.log'}",
            file=sys.stderr,
        )
        return 1
    return 0


def print_tables(paths: list[str]) -> int:
    """Prints the tables of several drivers' compare.json together (a workload's engines measured in separate
    runs, e.g. torch.compile in a run of its own), so the ratio columns compare across them."""
    results = [r for p in paths for r in json.loads(Path(p).read_text())]
    tiny = {bool(r.get("tiny")) for r in results if "error" not in r}
    if len(tiny) > 1:
        print("jdiff: error: the files mix --tiny and real-size runs", file=sys.stderr)
        return 2
    tiny_run = tiny.pop() if tiny else False
    print(table(results, tiny_run))
    startup = startup_table(results, tiny_run)
    if startup:
        print("\n" + startup)
    return 0


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """The docstring as written, and "(default: X)" after every option that has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if unset or "default" in text or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="jdiff bench", description=__doc__, formatter_class=_Formatter)
    ap.add_argument("--engine", choices=ENGINES, help="worker mode: measure one engine on one workload")
    ap.add_argument("--workload", choices=list(WORKLOADS))
    ap.add_argument(
        "--warm", action="store_true", help="worker: jdiff pipeline's warm phase (JDIFF_CACHE_DIR)"
    )
    ap.add_argument("--only", help="driver: comma-separated workloads, run in this order (default: all)")
    ap.add_argument("--engines", nargs="*", choices=ENGINES, help="driver: engines to run (default: jdiff)")
    ap.add_argument(
        "--compare",
        choices=["diffusers"],
        help="driver: also run diffusers eager and torch.compile (needs them)",
    )
    ap.add_argument("--budget", type=float, default=520.0, help="driver: seconds for all subprocesses")
    ap.add_argument("--out", help="driver: output folder (default: $OUT, else .)")
    ap.add_argument("--tiny", action="store_true", help="toy configs and sizes (CPU smoke test)")
    ap.add_argument(
        "--tables",
        nargs="+",
        metavar="COMPARE_JSON",
        help="print the tables of earlier runs' compare.json files together (runs nothing)",
    )
    args = ap.parse_args(argv)
    if args.tables:
        return print_tables(args.tables)
    if args.engine:
        if not args.workload:
            ap.error("--engine needs --workload")
        if args.engine not in WORKLOADS[args.workload].engines:
            ap.error(f"{args.workload} is not measured with {args.engine}")
        if args.warm and not (args.engine == "jdiff" and WORKLOADS[args.workload].pipeline):
            ap.error("--warm is the warm-start phase of jdiff on a *_pipeline workload")
        worker(args)
        return 0
    return driver(args)
