"""jdiff against diffusers on one GPU: random real-size bf16 weights, batch 1, each engine in its own process.

Workloads (real configs, no weights loaded; every floating parameter is normal(0, 0.02), with each engine's
float32-kept parameters in float32 as its loader would keep them):
  flux_step        FLUX.1-dev transformer, one step at 1024x1024 (4096 image + 512 text tokens, guidance)
  wan_forward      Wan2.1-T2V-1.3B transformer, one forward at 832x480x81 (21x60x104 latent, 512 text tokens)
  flux_vae_decode  FLUX.1 AutoencoderKL decode of a 128x128x16 latent to 1024x1024
  wan_vae_decode   Wan2.1 AutoencoderKLWan decode of 21 latent frames to 81 frames at 832x480

Engines: jdiff (jitted; compile = lower + compile), diffusers (eager), diffusers-compile (torch.compile,
default mode; flux_step only; its "compile" is the first call).

Usage:
  jdiff bench [--compare diffusers] [--only flux_step,wan_forward] [--budget 520] [--out DIR] [--tiny]
      driver: runs every (workload, engine) as a subprocess on the same GPU, one after another, prints the
      table and writes compare.json and compare.log under DIR ($OUT, else the current directory).
  jdiff bench --engine jdiff --workload flux_step [--tiny]
      one measurement; prints one JSON line.
--tiny: toy configs and sizes, for a CPU smoke test of both engines.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

GIB = 2**30
ENGINES = ("jdiff", "diffusers", "diffusers-compile")
# jax: allocate on demand (not 75% up front) so that nvidia-smi and peak_bytes_in_use both describe what
# the workload needs; the fraction only caps the pool.
JAX_ENV = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.95"}

FLUX_DEV = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)  # fmt: skip
WAN_13B = dict(
    patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
)  # fmt: skip
FLUX_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    act_fn="silu", latent_channels=16, norm_num_groups=32, use_quant_conv=False, use_post_quant_conv=False,
)  # fmt: skip
WAN_VAE: dict = {}  # diffusers' AutoencoderKLWan defaults are the Wan2.1 VAE


@dataclass(frozen=True)
class Workload:
    """One benchmark: a diffusers config, input sizes, and how often to run it."""

    title: str
    config: dict
    sizes: dict
    tflop: float | None  # per call, from shared/ANCHORS.md (2 FLOPs per multiply-add); None: not counted
    warmup: int
    repeats: int
    engines: tuple[str, ...] = ("jdiff", "diffusers")
    tiny_config: dict = field(default_factory=dict)
    tiny_sizes: dict = field(default_factory=dict)


WORKLOADS = {
    "flux_step": Workload(
        "FLUX.1-dev transformer step, 1024x1024",
        FLUX_DEV,
        dict(h=64, w=64, text=512),
        74.4,
        warmup=2,
        repeats=10,
        engines=ENGINES,
        tiny_config=dict(
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=16,
            axes_dims_rope=(4, 6, 6),
        ),
        tiny_sizes=dict(h=4, w=4, text=8),
    ),
    "wan_forward": Workload(
        "Wan2.1-T2V-1.3B transformer forward, 832x480x81",
        WAN_13B,
        dict(f=21, h=60, w=104, text=512),
        282.7,
        warmup=2,
        repeats=5,
        tiny_config=dict(
            num_attention_heads=2, attention_head_dim=12, text_dim=32, freq_dim=16, ffn_dim=32, num_layers=2
        ),
        tiny_sizes=dict(f=3, h=4, w=4, text=8),
    ),
    "flux_vae_decode": Workload(
        "FLUX VAE decode, 1024x1024",
        FLUX_VAE,
        dict(h=128, w=128),
        None,
        warmup=2,
        repeats=10,
        tiny_config=dict(block_out_channels=(32, 32, 32, 32), layers_per_block=1, norm_num_groups=8),
        tiny_sizes=dict(h=4, w=4),
    ),
    "wan_vae_decode": Workload(
        "Wan2.1 VAE decode, 21 latent frames -> 81 x 832x480",
        WAN_VAE,
        dict(f=21, h=60, w=104),
        None,
        warmup=1,
        repeats=3,
        tiny_config=dict(base_dim=8),
        tiny_sizes=dict(f=3, h=4, w=4),
    ),
}


def _resolve(name: str, tiny: bool) -> tuple[Workload, dict, dict]:
    wl = WORKLOADS[name]
    if not tiny:
        return wl, wl.config, wl.sizes
    return wl, {**wl.config, **wl.tiny_config}, wl.tiny_sizes


def _median_ms(times: list[float]) -> float:
    return 1e3 * float(np.median(times))


# ---------------------------------------------------------------------------------------------- jdiff


def _jdiff_random(spec, cfg, dtype):
    """(graphdef, params): the model built abstractly, every leaf normal(0, 0.02) in the loader's dtype."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jdiff.models.loading import path_str

    graphdef, abstract = spec.abstract(cfg)
    leaves = nnx.to_flat_state(abstract)

    # One small jit per distinct (shape, dtype), each leaf written in place by a fused threefry: one jit over
    # all leaves compiles for minutes on a VAE's hundreds of leaves, and a non-fusible generator (rbg) would
    # add a temporary as large as the leaf to the peak memory measured later.
    @functools.partial(jax.jit, static_argnums=(2, 3))
    def leaf(key, i, shape, dt):
        return jax.random.normal(jax.random.fold_in(key, i), shape, dt) * jnp.asarray(0.02, dt)

    key = jax.random.key(0)
    values = [
        leaf(key, i, v.shape, spec.plan.target_dtype(path_str(p), dtype)) for i, (p, v) in enumerate(leaves)
    ]
    flat = [(p, v.replace(x)) for (p, v), x in zip(leaves, values, strict=True)]
    return graphdef, nnx.from_flat_state(flat)


def _jdiff_setup(name: str, config: dict, sz: dict):
    """(graphdef, params, apply(model, *inputs), inputs) for one workload."""
    import jax
    import jax.numpy as jnp

    from jdiff.models.config import from_dict

    bf16 = jnp.bfloat16
    keys = iter(jax.random.split(jax.random.key(1), 8))

    def rand(shape, dtype=bf16):
        return jax.random.normal(next(keys), shape, dtype)

    if name == "flux_step":
        from jdiff.convert.flux import SPEC
        from jdiff.pipelines.flux import _rope_tables

        cfg = from_dict(SPEC.config_cls, config)
        cos, sin = (
            jnp.asarray(a) for a in _rope_tables(sz["text"], sz["h"], sz["w"], tuple(cfg.axes_dims_rope))
        )
        inputs = (
            rand((1, sz["h"] * sz["w"], cfg.in_channels)),
            rand((1, sz["text"], cfg.joint_attention_dim)),
            rand((1, cfg.pooled_projection_dim)),
            jnp.full((1,), 0.5, jnp.float32),
            jnp.full((1,), 3.5, jnp.float32),
            cos,
            sin,
        )

        def apply(m, x, txt, pooled, t, g, cos, sin):
            return m(x, txt, pooled, t, (cos, sin), guidance=g)

    elif name == "wan_forward":
        from jdiff.convert.wan import SPEC
        from jdiff.models.wan.rope import wan_rope_tables

        cfg = from_dict(SPEC.config_cls, config)
        cos, sin = (jnp.asarray(a) for a in wan_rope_tables(cfg, sz["f"], sz["h"], sz["w"]))
        inputs = (
            rand((1, sz["f"], sz["h"], sz["w"], cfg.in_channels)),
            jnp.full((1,), 500.0, jnp.float32),
            rand((1, sz["text"], cfg.text_dim)),
            cos,
            sin,
        )

        def apply(m, x, t, ctx, cos, sin):
            return m(x, t, ctx, (cos, sin))

    elif name == "flux_vae_decode":
        from jdiff.convert.autoencoder_kl import SPEC

        cfg = from_dict(SPEC.config_cls, config)
        inputs = (rand((1, sz["h"], sz["w"], cfg.latent_channels)),)

        def apply(m, z):
            return m.decode(z)

    elif name == "wan_vae_decode":
        from jdiff.convert.wan_vae import SPEC

        cfg = from_dict(SPEC.config_cls, config)
        inputs = (rand((1, sz["f"], sz["h"], sz["w"], cfg.z_dim)),)

        def apply(m, z):
            return m.decode(z)

    else:
        raise KeyError(name)
    graphdef, params = _jdiff_random(SPEC, cfg, bf16)
    return graphdef, params, apply, inputs


def run_jdiff(name: str, tiny: bool) -> dict:
    import flax
    import jax
    import jax.numpy as jnp
    import jaxlib
    from flax import nnx

    from jdiff.layers.attention import default_implementation

    wl, config, sz = _resolve(name, tiny)
    dev = jax.devices()[0]

    def mem(key):
        stats = dev.memory_stats() or {}
        return stats.get(key, 0) / GIB if key in stats else None

    graphdef, params, apply, inputs = _jdiff_setup(name, config, sz)
    jax.block_until_ready((params, inputs))
    weights_gib = mem("bytes_in_use")

    @jax.jit
    def fn(params, *xs):
        return apply(nnx.merge(graphdef, params), *xs)

    workaround = None
    t0 = time.perf_counter()
    try:
        compiled = fn.lower(params, *inputs).compile()
    except NotImplementedError as e:
        # jdiff picks cuDNN attention for every bf16 call on GPU, and cuDNN takes head dims <= 256 only: the
        # FLUX VAE's single-head mid-block attention (head dim 512) fails. Measure it on the XLA path, which
        # is what a fix in `jdiff.layers.attention` would choose for it, and say so in the result.
        if "head dim" not in str(e):
            raise
        from jdiff.layers import attention

        attention.default_implementation = lambda dtype: "xla"
        workaround = f"attention forced to xla ({str(e).splitlines()[0]})"
        t0 = time.perf_counter()
        compiled = fn.lower(params, *inputs).compile()
    compile_s = time.perf_counter() - t0
    try:
        xla_temp_gib = round(compiled.memory_analysis().temp_size_in_bytes / GIB, 2)
    except Exception:  # memory_analysis is optional per backend
        xla_temp_gib = None

    def call():
        return jax.block_until_ready(compiled(params, *inputs))

    t0 = time.perf_counter()
    out = call()
    first_s = time.perf_counter() - t0
    for _ in range(wl.warmup):
        call()
    times = []
    for _ in range(wl.repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    versions = {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__}
    try:
        from jax._src.lib import cuda_versions

        versions["cudnn"] = cuda_versions.cudnn_get_version() if cuda_versions else None
    except Exception:  # version probing is best-effort: absent on CPU builds
        pass
    return {
        "device": dev.device_kind,
        "versions": versions,
        "attention": default_implementation(jnp.bfloat16) if workaround is None else "xla",
        "workaround": workaround,
        "xla_temp_gib": xla_temp_gib,
        "compile_s": round(compile_s, 2),
        "first_call_s": round(first_s, 3),
        "times_ms": [round(1e3 * t, 2) for t in times],
        "weights_gib": None if weights_gib is None else round(weights_gib, 2),
        "peak_gib": None if mem("peak_bytes_in_use") is None else round(mem("peak_bytes_in_use"), 2),
        "out_shape": list(out.shape),
        "finite": bool(jnp.isfinite(out).all()),
    }


# ------------------------------------------------------------------------------------------ diffusers


def _torch_random(cls, config: dict, device, dtype):
    """A diffusers model with every parameter normal(0, 0.02), in `dtype` except `_keep_in_fp32_modules`.

    Built in float32 on the device (default init, no host copy), then each parameter is replaced, so the
    float32 build is freed tensor by tensor. The float32 exceptions follow diffusers' loader: a parameter
    whose dotted name has one of those module names as a component; buffers are cast to `dtype` only for
    models without exceptions (diffusers' `from_pretrained` calls `model.to(dtype)` only then).
    """
    import torch

    with torch.device(device):
        model = cls(**config)
    keep = list(getattr(cls, "_keep_in_fp32_modules", None) or [])
    gen = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            dt = torch.float32 if any(m in name.split(".") for m in keep) else dtype
            p.data = torch.randn(p.shape, generator=gen, device=device, dtype=dt) * 0.02
        if not keep:
            for mod in model.modules():
                for bname, buf in list(mod.named_buffers(recurse=False)):
                    if buf.is_floating_point():
                        setattr(mod, bname, buf.to(dtype))
    return model.eval().requires_grad_(False)


def _torch_setup(name: str, config: dict, sz: dict, device):
    """(model, call(model)) for one workload; inputs in diffusers' layout and dtypes."""
    import diffusers
    import torch

    bf16 = torch.bfloat16
    gen = torch.Generator(device).manual_seed(1)

    def rand(*shape, dtype=bf16):
        return torch.randn(shape, generator=gen, device=device, dtype=dtype)

    if name == "flux_step":
        model = _torch_random(diffusers.FluxTransformer2DModel, config, device, bf16)
        h, w, t = sz["h"], sz["w"], sz["text"]
        img_ids = torch.zeros(h, w, 3, device=device)
        img_ids[..., 1] = torch.arange(h, device=device)[:, None]
        img_ids[..., 2] = torch.arange(w, device=device)[None, :]
        x = dict(
            hidden_states=rand(1, h * w, config["in_channels"]),
            encoder_hidden_states=rand(1, t, config["joint_attention_dim"]),
            pooled_projections=rand(1, config["pooled_projection_dim"]),
            timestep=torch.full(
                (1,), 0.5, device=device, dtype=bf16
            ),  # FluxPipeline: t / 1000, latents' dtype
            img_ids=img_ids.reshape(-1, 3),
            txt_ids=torch.zeros(t, 3, device=device),
            guidance=torch.full((1,), 3.5, device=device, dtype=torch.float32),
            return_dict=False,
        )
        return model, lambda m: m(**x)[0]
    if name == "wan_forward":
        model = _torch_random(diffusers.WanTransformer3DModel, config, device, bf16)
        x = dict(
            hidden_states=rand(1, config["in_channels"], sz["f"], sz["h"], sz["w"]),
            timestep=torch.full((1,), 500.0, device=device),
            encoder_hidden_states=rand(1, sz["text"], config["text_dim"]),
            return_dict=False,
        )
        return model, lambda m: m(**x)[0]
    if name == "flux_vae_decode":
        model = _torch_random(diffusers.AutoencoderKL, config, device, bf16)
        z = rand(1, config["latent_channels"], sz["h"], sz["w"])
        return model, lambda m: m.decode(z, return_dict=False)[0]
    if name == "wan_vae_decode":
        model = _torch_random(diffusers.AutoencoderKLWan, config, device, bf16)
        z = rand(1, config.get("z_dim", 16), sz["f"], sz["h"], sz["w"])
        return model, lambda m: m.decode(z, return_dict=False)[0]
    raise KeyError(name)


def run_diffusers(name: str, tiny: bool, compiled: bool) -> dict:
    import diffusers
    import torch

    wl, config, sz = _resolve(name, tiny)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    model, call = _torch_setup(name, config, sz, device)
    weights_gib = None
    if cuda:
        sync()
        torch.cuda.empty_cache()  # drop the float32 build's cached blocks before the peak counts
        torch.cuda.reset_peak_memory_stats()
        weights_gib = torch.cuda.memory_allocated() / GIB
    if compiled:
        model = torch.compile(model)

    def run():
        with torch.inference_mode():
            out = call(model)
        sync()
        return out

    t0 = time.perf_counter()
    out = run()
    first_s = time.perf_counter() - t0
    for _ in range(wl.warmup):
        run()
    times = []
    for _ in range(wl.repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if cuda else None,
        },
        "attention": "torch SDPA (diffusers native backend)",
        "compile_s": round(first_s, 2) if compiled else None,
        "first_call_s": round(first_s, 3),
        "times_ms": [round(1e3 * t, 2) for t in times],
        "weights_gib": None if weights_gib is None else round(weights_gib, 2),
        "peak_gib": round(torch.cuda.max_memory_allocated() / GIB, 2) if cuda else None,
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2) if cuda else None,
        "out_shape": list(out.shape),
        "finite": bool(torch.isfinite(out).all()),
    }


# --------------------------------------------------------------------------------------------- driver


def worker(args) -> None:
    t0 = time.perf_counter()
    if args.engine == "jdiff":
        res = run_jdiff(args.workload, args.tiny)
    else:
        res = run_diffusers(args.workload, args.tiny, compiled=args.engine == "diffusers-compile")
    res = {"workload": args.workload, "engine": args.engine, "tiny": args.tiny, **res}
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
            lines.append(f"| {wl.title} | {r['engine']} | failed: {r['error']} | | | | | |")
            continue
        ratios = []
        for ref in ("diffusers", "diffusers-compile"):
            other = by.get((r["workload"], ref))
            ok = other is not None and "ms" in other and r["engine"] != ref
            ratios.append(f"{other['ms'] / r['ms']:.2f}" if ok else "-")
        tflops = wl.tflop / r["ms"] * 1e3 if wl.tflop and not tiny else None
        lines.append(
            f"| {wl.title} | {r['engine']} | {r['ms']:.1f} | {ratios[0]} | {ratios[1]} | {_fmt(tflops, '.0f')} | "
            f"{_fmt(r.get('compile_s'), '.1f')} | {_fmt(r.get('peak_gib'), '.1f')} |"
        )
    return "\n".join(lines)


def driver(args) -> None:
    out_dir = Path(args.out or os.environ.get("OUT") or ".")
    out_dir.mkdir(parents=True, exist_ok=True)
    names = args.only.split(",") if args.only else list(WORKLOADS)
    engines = args.engines or (ENGINES if args.compare == "diffusers" else ["jdiff"])
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
        cmd = [sys.executable, "-m", "jdiff.bench", "--engine", engine, "--workload", name] + (
            ["--tiny"] if args.tiny else []
        )
        env = {**os.environ, **(JAX_ENV if engine == "jdiff" else {}), "PYTHONUNBUFFERED": "1"}
        print(f"== {name} / {engine} (budget left {left:.0f} s)", flush=True)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=left)
            stdout, stderr, rc = proc.stdout, proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as e:
            stdout, stderr, rc = e.stdout or "", e.stderr or "", "timeout"
            stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
            stderr = stderr.decode() if isinstance(stderr, bytes) else stderr
        log.write(f"== {name} / {engine}: rc {rc}, {time.perf_counter() - t0:.1f} s\n{stdout}\n{stderr}\n")
        log.flush()
        lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
        if rc == 0 and lines:
            res = json.loads(lines[-1][len("RESULT ") :])
        else:
            tail = (stderr.strip().splitlines() or ["?"])[-1][:200]
            res = {"workload": name, "engine": engine, "error": f"rc {rc}: {tail}"}
        print(json.dumps(res), flush=True)
        results.append(res)
        (out_dir / "compare.json").write_text(json.dumps(results, indent=1))
    log.close()
    print(table(results, args.tiny))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="jdiff bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--engine", choices=ENGINES, help="worker mode: measure one engine on one workload")
    ap.add_argument("--workload", choices=list(WORKLOADS))
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
    args = ap.parse_args(argv)
    if args.engine:
        if not args.workload:
            ap.error("--engine needs --workload")
        if args.engine not in WORKLOADS[args.workload].engines:
            ap.error(f"{args.workload} is not measured with {args.engine}")
        worker(args)
    else:
        driver(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
