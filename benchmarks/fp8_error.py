"""fp8 vs bf16 on one FLUX.1-dev transformer step at 1024x1024: output error and step time (issue 19).

Usage:
    python benchmarks/fp8_error.py [--tiny] [--repeats 10] [--torch | --no-torch] [--torchao-compile]
                                   [--torchao-all-linears] [--layers D,S] [--grid HxW] [--text T]
                                   [--torchao-anywhere]

Weights are normal(0, 0.02), as `jdiff bench` draws them (ANCHORS.md's "PyTorch fp8 anchor" uses the same).
With torch and diffusers importable (default: used when they are), the weights are drawn once for diffusers'
FluxTransformer2DModel in bf16 and converted to jdiff through FLUX's conversion plan in memory, so both
engines run the SAME weights and inputs; otherwise jdiff draws its own.

Prints one JSON line per measurement, then a summary line:
  * jdiff bf16 and jdiff fp8 (`quantization="fp8"`'s recipe, `jdiff.layers.quant`): median ms of `repeats`
    jitted warm calls (block_until_ready), compile seconds, and rel_err_vs_bf16 = ||y_fp8 - y_bf16|| / ||y_bf16||
    (float64 norms);
  * with torch: diffusers bf16 (eager), rel_err of jdiff bf16 vs it (a check that the weights and inputs
    match: bf16 noise, ~1e-2), and, when torchao imports, torchao's
    `Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())` on the same linears jdiff quantizes
    (`--torchao-all-linears`: every nn.Linear, torchao's default filter), eager or `--torchao-compile`d, with
    its rel_err against diffusers bf16 and jdiff fp8's distance to it. torchao missing: a message, and the
    rest still runs.

Each engine's error is against its own bf16 output; jdiff fp8's against diffusers bf16 is printed too (a
common reference: the two bf16 outputs differ by bf16 noise, ~0.02 at 5 blocks, which deep random-weight
stacks amplify). The recipes are the same (`jdiff.layers.quant`), so jdiff fp8 and torchao fp8 differ by
about that noise as well.

The fp8 error that counts (ANCHORS.md): jdiff's is no worse than torchao's on the same weights and inputs.

On a CPU (or to save time), `--layers 2,3 --grid 16x16 --text 32` keeps FLUX.1-dev's widths with 2 double and
3 single blocks and a 16x16 token grid; `--torchao-anywhere` lets torchao's recipe run where its hardware check
refuses (it asks for CUDA SM 8.9+; `torch._scaled_mm` itself runs on CPU), e.g.
`python benchmarks/fp8_error.py --layers 2,3 --grid 16x16 --text 32 --torchao-anywhere --repeats 1 --warmup 0`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch shares the device

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdiff import compiler_options
from jdiff.bench.jdiff_engine import _jdiff_random, quantized_fp8
from jdiff.bench.workloads import _resolve, position_ids, timed_calls
from jdiff.models.flux.plan import SPEC
from jdiff.pipelines.flux import _rope_tables
from jdiff.weights.config import from_dict


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _median_ms(times: list[float]) -> float:
    return round(1e3 * float(np.median(times)), 2)


def jdiff_from_torch(model, cfg):
    """(graphdef, params) of jdiff's FLUX transformer holding `model`'s weights (FLUX's conversion plan, in
    memory: each target materialized from the state dict, as the loader does from safetensors)."""
    from jdiff.weights.loading import fill, param_shapes
    from jdiff.weights.plan import materialize, resolve

    sd = model.state_dict()
    graphdef, state = SPEC.abstract(cfg)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    by_target = {
        a.target: a for a in resolve(SPEC.plan, param_shapes(state), shapes, component="transformer")
    }

    def read(key):
        return sd[key].detach().float().cpu().numpy()

    module = fill(
        graphdef,
        state,
        lambda name: materialize(by_target[name], read),
        dtype_of=lambda name: SPEC.plan.target_dtype(name, jnp.bfloat16),
    )
    return nnx.split(module)


def time_jdiff(graphdef, params, inputs, warmup: int, repeats: int):
    @compiler_options.jit
    def step(params, x, txt, pooled, t, g, cos, sin):
        return nnx.merge(graphdef, params)(x, txt, pooled, t, (cos, sin), guidance=g)

    t0 = time.perf_counter()
    compiled = step.lower(params, *inputs).compile()
    compile_s = time.perf_counter() - t0
    out, _, times = timed_calls(lambda: jax.block_until_ready(compiled(params, *inputs)), warmup, repeats)
    return np.asarray(out.astype(jnp.float32)), compile_s, times, gemm_calls(compiled.as_text()), compiled


def outputs(compiled, params, draws) -> list[np.ndarray]:
    """The step's float32 output for each further input draw."""
    return [np.asarray(compiled(params, *d).astype(jnp.float32)) for d in draws]


def gemm_calls(hlo: str) -> dict:
    """How the compiled step's matmuls lowered: cuBLASLt fp8 GEMM custom calls vs other cuBLAS ones (GPU);
    fp8 dots left as `dot` (XLA's fallback: the operands widened) show under `dot`."""
    return {
        "cublaslt_f8": hlo.count('custom_call_target="__cublas$lt$matmul$f8"'),
        "cublas_other": len(re.findall(r'custom_call_target="__cublas\$(?!lt\$matmul\$f8)', hlo)),
        "dot": len(re.findall(r"\bdot\(", hlo)),
    }


def fp8_filter(all_linears: bool):
    """torchao's module filter: jdiff's fp8 set (`SPEC.fp8` on torch names, layer indices dropped) or all."""
    import torch

    rules = [re.compile(p) for p in SPEC.fp8]

    def keep(module, name: str) -> bool:
        if not isinstance(module, torch.nn.Linear):
            return False
        return all_linears or any(r.fullmatch(re.sub(r"\.\d+\.", ".", name, count=1)) for r in rules)

    return keep


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="toy config (CPU smoke test of the script)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--torch", dest="torch", action="store_true", default=None, help="require torch side")
    ap.add_argument("--no-torch", dest="torch", action="store_false", help="jdiff only")
    ap.add_argument(
        "--torchao-compile", action="store_true", help="torch.compile the torchao model (minutes)"
    )
    ap.add_argument("--torchao-all-linears", action="store_true", help="torchao on every nn.Linear")
    ap.add_argument(
        "--draws", type=int, default=1, help="input draws the errors are averaged over (timing: the first)"
    )
    ap.add_argument("--layers", help="D,S: double and single blocks instead of FLUX.1-dev's 19,38")
    ap.add_argument("--grid", help="HxW: latent token grid instead of 64x64 (1024x1024)")
    ap.add_argument("--text", type=int, help="text tokens instead of 512")
    ap.add_argument(
        "--torchao-anywhere", action="store_true", help="skip torchao's CUDA SM 8.9+ check (e.g. on CPU)"
    )
    args = ap.parse_args(argv)

    _, config, sz = _resolve("flux_step", args.tiny)
    if args.layers:
        double, single = (int(n) for n in args.layers.split(","))
        config = {**config, "num_layers": double, "num_single_layers": single}
    if args.grid:
        h, w = (int(n) for n in args.grid.lower().split("x"))
        sz = {**sz, "h": h, "w": w}
    if args.text:
        sz = {**sz, "text": args.text}
    cfg = from_dict(SPEC.config_cls, config)
    use_torch = args.torch
    if use_torch is None:
        try:
            import diffusers
            import torch

            use_torch = True
        except ImportError:
            use_torch = False
            emit(note="torch/diffusers not importable: jdiff's own random weights, no torch side")

    rng = np.random.default_rng(1)
    s, t = sz["h"] * sz["w"], sz["text"]
    # Each draw: latent tokens, text embeddings, pooled embedding (the timestep and guidance stay 0.5 / 3.5).
    draws_np = [
        (
            rng.standard_normal((1, s, cfg.in_channels), np.float32),
            rng.standard_normal((1, t, cfg.joint_attention_dim), np.float32),
            rng.standard_normal((1, cfg.pooled_projection_dim), np.float32),
        )
        for _ in range(max(1, args.draws))
    ]
    bf16 = jnp.bfloat16
    cos, sin = (jnp.asarray(a) for a in _rope_tables(t, sz["h"], sz["w"], tuple(cfg.axes_dims_rope)))

    def jdiff_inputs(x_np, txt_np, pooled_np):
        return (
            jnp.asarray(x_np, bf16),
            jnp.asarray(txt_np, bf16),
            jnp.asarray(pooled_np, bf16),
            jnp.full((1,), 0.5, jnp.float32),
            jnp.full((1,), 3.5, jnp.float32),
            cos,
            sin,
        )

    inputs, *more = [jdiff_inputs(*d) for d in draws_np]

    y_torch = tmodel = None
    ys_torch: list[np.ndarray] = []
    if use_torch:
        import diffusers
        import torch

        from jdiff.bench.diffusers_engine import _torch_random

        dev = "cuda" if torch.cuda.is_available() else "cpu"
        tmodel = _torch_random(diffusers.FluxTransformer2DModel, config, dev, torch.bfloat16)
        txt_ids, img_ids = position_ids(t, sz["h"], sz["w"], 3)
        f32 = dict(device=dev, dtype=torch.float32)

        def torch_inputs(x_np, txt_np, pooled_np):
            return dict(
                hidden_states=torch.tensor(x_np, device=dev).to(torch.bfloat16),
                encoder_hidden_states=torch.tensor(txt_np, device=dev).to(torch.bfloat16),
                pooled_projections=torch.tensor(pooled_np, device=dev).to(torch.bfloat16),
                timestep=torch.full((1,), 0.5, device=dev, dtype=torch.bfloat16),
                guidance=torch.full((1,), 3.5, **f32),
                txt_ids=torch.tensor(txt_ids, **f32),
                img_ids=torch.tensor(img_ids, **f32),
                return_dict=False,
            )

        txs = [torch_inputs(*d) for d in draws_np]

        def torch_call(m, tx=txs[0]):
            def call():
                with torch.no_grad():
                    out = m(**tx)[0]
                if dev == "cuda":
                    torch.cuda.synchronize()
                return out

            return call

        out, _, times = timed_calls(torch_call(tmodel), args.warmup, args.repeats)
        y_torch = out.float().cpu().numpy()
        ys_torch = [y_torch] + [torch_call(tmodel, tx)().float().cpu().numpy() for tx in txs[1:]]
        emit(engine="diffusers", mode="bf16 eager", ms=_median_ms(times))
        graphdef, params = jdiff_from_torch(tmodel, cfg)
    else:
        graphdef, params = _jdiff_random(SPEC, cfg, bf16)

    y_bf16, compile_s, times, gemms, step = time_jdiff(graphdef, params, inputs, args.warmup, args.repeats)
    ys_bf16 = [y_bf16, *outputs(step, params, more)]
    row = dict(engine="jdiff", mode="bf16", ms=_median_ms(times), compile_s=round(compile_s, 1), gemms=gemms)
    if y_torch is not None:
        row["rel_err_vs_diffusers_bf16"] = round(rel_err(y_bf16, y_torch), 5)
    emit(**row)

    t0 = time.perf_counter()
    graphdef8, params8 = quantized_fp8(SPEC, graphdef, params)
    jax.block_until_ready(params8)
    quantize_s = time.perf_counter() - t0
    del params
    y_fp8, compile_s, times, gemms, step = time_jdiff(graphdef8, params8, inputs, args.warmup, args.repeats)
    ys_fp8 = [y_fp8, *outputs(step, params8, more)]
    jdiff_errs = [rel_err(a, b) for a, b in zip(ys_fp8, ys_bf16, strict=True)]
    jdiff_err = float(np.mean(jdiff_errs))
    emit(
        engine="jdiff",
        mode="fp8",
        ms=_median_ms(times),
        compile_s=round(compile_s, 1),
        quantize_s=round(quantize_s, 1),
        rel_err_vs_bf16=round(jdiff_err, 5),
        rel_err_vs_bf16_per_draw=[round(e, 5) for e in jdiff_errs],
        rel_err_vs_diffusers_bf16=None
        if y_torch is None
        else round(float(np.mean([rel_err(a, b) for a, b in zip(ys_fp8, ys_torch, strict=True)])), 5),
        finite=bool(np.isfinite(y_fp8).all()),
        gemms=gemms,
    )
    del params8

    torchao_err = None
    if tmodel is not None:
        try:
            from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

            if args.torchao_anywhere:
                import torchao.quantization.quant_api as quant_api

                quant_api._check_hardware_support = lambda *a, **k: None
        except ImportError as e:
            emit(note=f"torchao not importable ({e}); skipped its recipe (pip install torchao)")
        else:
            import torch

            try:
                quantize_(
                    tmodel,
                    Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()),
                    filter_fn=fp8_filter(args.torchao_all_linears),
                )
                model = torch.compile(tmodel) if args.torchao_compile else tmodel
                t0 = time.perf_counter()
                out, first_s, times = timed_calls(torch_call(model), args.warmup, args.repeats)
                ys_ao = [out.float().cpu().numpy()]
                ys_ao += [torch_call(model, tx)().float().cpu().numpy() for tx in txs[1:]]
                torchao_errs = [rel_err(a, b) for a, b in zip(ys_ao, ys_torch, strict=True)]
                torchao_err = float(np.mean(torchao_errs))
                emit(
                    engine="torchao",
                    mode="fp8 PerRow " + ("compiled" if args.torchao_compile else "eager"),
                    linears="all" if args.torchao_all_linears else "jdiff's fp8 set",
                    ms=_median_ms(times),
                    first_call_s=round(first_s, 1),
                    rel_err_vs_bf16=round(torchao_err, 5),
                    rel_err_vs_bf16_per_draw=[round(e, 5) for e in torchao_errs],
                    jdiff_fp8_vs_torchao_fp8=round(
                        float(np.mean([rel_err(a, b) for a, b in zip(ys_fp8, ys_ao, strict=True)])), 5
                    ),
                )
            except Exception as e:  # torchao's fp8 needs CUDA SM 8.9+; report and go on
                emit(note=f"torchao's recipe failed here: {type(e).__name__}: {e}")
    emit(
        summary=True,
        tiny=args.tiny,
        draws=len(draws_np),
        config={k: config[k] for k in ("num_layers", "num_single_layers")},
        sizes=sz,
        device=jax.devices()[0].device_kind,
        jdiff_fp8_rel_err=round(jdiff_err, 5),
        torchao_fp8_rel_err=None if torchao_err is None else round(torchao_err, 5),
        jdiff_no_worse_than_torchao=None if torchao_err is None else jdiff_err <= torchao_err,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
