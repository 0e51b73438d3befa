"""Reproduces jdiff's embedded default model from scratch: a small FLUX.1 trained on the shapes world.

    python examples/train_tiny.py --out runs/tiny --phase train    # JAX only: a GPU or TPU (hours on a CPU)
    python examples/train_tiny.py --out runs/tiny --phase export   # needs torch + diffusers: diffusers format
    python examples/train_tiny.py --out runs/tiny                  # both
    python examples/train_tiny.py --out runs/quick --quick         # every phase in minutes on a CPU
    python examples/train_tiny.py --phase eval                     # re-measure the shipped model's accuracy

`train` writes runs/tiny/train/ (jdiff parameters as .npz, latent statistics); `export` writes
runs/tiny/model/, a diffusers-format FluxPipeline directory (bf16 safetensors, configs, tokenizers, scheduler,
and jdiff_preset.json), evaluates it with jdiff on the CPU and prints the accuracies. The shipped model is
that directory, copied to jdiff/assets/tiny-flux/. `eval` judges any such directory (`--model`; default the
shipped one): 48 captions x 2 seeds, each image read back by a pixel-statistics judge (jdiff/tiny/evaluate.py),
at the model's size or `--size WxH`.

`--quick` runs the same code on a toy budget (20 VAE steps, 400 flow steps, batches of 8, a 24-image
evaluation): it shows that training, export and evaluation work on this machine, not the shipped quality
(its accuracy stays near chance: 1/7 colour, 1/3 shape). The defaults are what trained the shipped model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdiff.tiny import shapes
from jdiff.tiny import train as T
from jdiff.weights.config import to_dict

PRESET = {
    "height": 64,
    "width": 64,
    "num_inference_steps": 20,
    "guidance_scale": 0.0,
    "max_sequence_length": 32,
    # At other sizes it draws resized, cut-off or repeated shapes (shape accuracy 50-88% against 92% at 64x64,
    # `--phase eval --size WxH`, docs/devlog.md): jdiff warns there.
    "trained_size_only": True,
}


def _flat(module: nnx.Module) -> dict[str, np.ndarray]:
    return {".".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(module))}


def _train(name, module, objective, tx, steps: int, seed: int, aux, chunk: int):
    """Takes `steps` optimizer steps, `chunk` per dispatch, printing the mean loss of each chunk."""
    graphdef, params = nnx.split(module)
    opt_state = tx.init(params)
    run = T.trainer(objective, graphdef, tx)
    key, start = jax.random.key(seed), time.time()
    for first in range(0, steps, chunk):
        num = min(chunk, steps - first)
        params, opt_state, losses = run(params, opt_state, key, first, aux, num=num)
        print(
            f"{name} steps {first + num}/{steps} loss {float(losses.mean()):.4f} ({time.time() - start:.0f}s)",
            flush=True,
        )
    return nnx.merge(graphdef, params)


def run_train(
    out: Path,
    seed: int,
    vae_steps: int,
    flow_steps: int,
    batch: int,
    chunk: int = 500,
    stats_images: int = 2048,
) -> None:
    work = out / "train"
    work.mkdir(parents=True, exist_ok=True)
    captions = shapes.all_captions()
    carr = T.as_arrays(shapes.caption_arrays(captions))
    clip_tok, t5_tok = T.build_tokenizers(work)
    cfgs = T.tiny_configs(len(clip_tok), len(t5_tok))
    transformer, vae, clip, t5 = T.models(cfgs, seed)
    table = T.caption_table(clip, t5, clip_tok, t5_tok, [c.text for c in captions])
    print(f"devices {jax.devices()}; {len(captions)} captions", flush=True)

    t0 = time.time()
    vae = _train(
        "vae",
        vae,
        T.vae_objective(batch // 2, 1e-4),
        T.optimizer(1e-3, vae_steps),
        vae_steps,
        seed + 1,
        carr,
        chunk,
    )
    shift, scale = T.latent_stats(vae, carr, jax.random.key(seed + 3), n=stats_images)
    print(f"latent shift {shift:.4f} scale {scale:.4f}", flush=True)
    vae_graphdef, vae_params = nnx.split(vae)
    aux = (carr, vae_params, table, T.rope(cfgs.transformer), jnp.asarray([shift, scale], jnp.float32))
    objective = T.flow_objective(batch, vae_graphdef)
    transformer = _train(
        "flow", transformer, objective, T.optimizer(5e-4, flow_steps), flow_steps, seed + 2, aux, chunk
    )
    print(f"trained in {time.time() - t0:.0f}s", flush=True)

    for name, module in (
        ("transformer", transformer),
        ("vae", vae),
        ("text_encoder", clip),
        ("text_encoder_2", t5),
    ):
        np.savez(work / f"{name}.npz", **_flat(module))
    cfg_json = {f.name: to_dict(getattr(cfgs, f.name)) for f in dataclasses.fields(cfgs)}
    cfg_json["vae"].update(scaling_factor=scale, shift_factor=shift)
    (work / "configs.json").write_text(json.dumps(cfg_json, indent=2))
    print(f"wrote {work}", flush=True)


def run_export(out: Path) -> Path:
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from jdiff.models.autoencoder_kl import plan as autoencoder_kl
    from jdiff.models.clip import plan as clip
    from jdiff.models.flux import plan as flux
    from jdiff.models.t5 import plan as t5
    from jdiff.weights.plan import export

    work = out / "train"
    cfgs = json.loads((work / "configs.json").read_text())
    tr, vae, cl, t5c = cfgs["transformer"], cfgs["vae"], cfgs["clip"], cfgs["t5"]
    torch_models = {
        "transformer": (FluxTransformer2DModel(**tr), flux.PLAN),
        "vae": (AutoencoderKL(**vae), autoencoder_kl.PLAN),
        "text_encoder": (CLIPTextModel(CLIPTextConfig(**cl, bos_token_id=0, pad_token_id=1)), clip.PLAN),
        "text_encoder_2": (T5EncoderModel(T5Config(**t5c, decoder_start_token_id=0)), t5.PLAN),
    }
    for name, (model, plan) in torch_models.items():
        state = export(plan, dict(np.load(work / f"{name}.npz")))
        own = model.state_dict()
        if plan.optional_prefix and not any(k.startswith(plan.optional_prefix) for k in own):
            state = {k.removeprefix(plan.optional_prefix): v for k, v in state.items()}
        state = {k: v for k, v in state.items() if k in own or not plan.is_ignored(k)}
        if "shared.weight" in state and "encoder.embed_tokens.weight" in own:
            state["encoder.embed_tokens.weight"] = state["shared.weight"]  # tied in T5
        model.load_state_dict(
            {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, strict=True
        )
        model.to(torch.bfloat16).eval()
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False),
        text_encoder=torch_models["text_encoder"][0],
        tokenizer=AutoTokenizer.from_pretrained(work / "tokenizer"),
        text_encoder_2=torch_models["text_encoder_2"][0],
        tokenizer_2=AutoTokenizer.from_pretrained(work / "tokenizer_2"),
        vae=torch_models["vae"][0],
        transformer=torch_models["transformer"][0],
    )
    model_dir = out / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    pipe.save_pretrained(model_dir)
    (model_dir / "jdiff_preset.json").write_text(json.dumps(PRESET, indent=2) + "\n")
    print(f"wrote {model_dir}", flush=True)
    return model_dir


def run_eval(
    model_dir: Path | None,
    captions: int = 48,
    seeds: tuple[int, ...] = (0, 1),
    size: tuple[int, int] | None = None,
    dtype: str = "float32",
    quantization: str | None = None,
    **cache,
) -> dict:
    """Accuracy of colour, shape and background over `captions` fixed captions x `seeds` (None: the shipped
    model), at the model's own size or `size` (height, width); `cache`: step_cache / step_cache_threshold
    (the scores then include the fraction of steps skipped); `dtype` and `quantization` as `from_pretrained`."""
    import jdiff
    from jdiff.tiny.evaluate import eval_captions, evaluate

    gen = jdiff.DiffGenerator.from_pretrained(model_dir, dtype=dtype, quantization=quantization)
    kw = ({} if size is None else {"height": size[0], "width": size[1]}) | cache
    timings = []

    def generate(prompts, seed):
        result = gen.generate(prompts, seed=seed, output_type="np", **kw)
        timings.append(result.timings)
        return result.images

    scores = evaluate(generate, eval_captions(captions), list(seeds))
    if "steps_skipped" in timings[0]:  # per output: the fraction of steps that took the cached residual
        steps = sum(t["steps_skipped"] + t["steps_computed"] for t in timings)
        scores["skipped"] = sum(t["steps_cached_per_output"] for t in timings) / steps
    print(f"accuracy {scores}", flush=True)
    return scores


QUICK = dict(vae_steps=20, flow_steps=400, batch=8, chunk=20, stats_images=256)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    ap.add_argument("--out", type=Path, help="run folder for train/ and model/ (phases train, export, all)")
    ap.add_argument("--phase", choices=["train", "export", "all", "eval"], default="all", help="what to run")
    ap.add_argument("--model", type=Path, help="eval: the model directory to judge (none: the shipped one)")
    ap.add_argument("--seed", type=int, default=0, help="initialisation and data seed")
    ap.add_argument("--vae-steps", type=int, default=4000, help="VAE optimizer steps")
    ap.add_argument(
        "--flow-steps", type=int, default=30000, help="transformer (rectified flow) optimizer steps"
    )
    ap.add_argument("--batch", type=int, default=128, help="images per flow step (the VAE takes half)")
    ap.add_argument("--size", help="eval: WxH to draw at (default: the model's own, 64x64)")
    ap.add_argument("--step-cache", choices=["first_block", "teacache"], help="eval: with this step cache")
    ap.add_argument("--step-cache-threshold", type=float, help="eval: its threshold (default: the model's)")
    ap.add_argument(
        "--dtype", choices=["float32", "bfloat16"], default="float32", help="eval: weights' dtype"
    )
    ap.add_argument("--quantization", choices=["fp8"], help="eval: from_pretrained(quantization=)")
    ap.add_argument(
        "--quick", action="store_true", help=f"a toy budget that runs in minutes on a CPU: {QUICK}"
    )
    args = ap.parse_args()
    if args.phase != "eval" and args.out is None:
        ap.error(f"--phase {args.phase} needs --out (the run folder)")
    budget = dict(vae_steps=args.vae_steps, flow_steps=args.flow_steps, batch=args.batch)
    if args.quick:
        budget = QUICK
    if args.phase == "eval":
        size = tuple(int(v) for v in reversed(args.size.split("x"))) if args.size else None  # (h, w)
        cache = {"step_cache": args.step_cache, "step_cache_threshold": args.step_cache_threshold}
        load = {"dtype": args.dtype, "quantization": args.quantization}
        run_eval(args.model, *((24, (0,)) if args.quick else (48, (0, 1))), size=size, **load, **cache)
        return
    if args.phase in ("train", "all"):
        run_train(args.out, args.seed, **budget)
    if args.phase in ("export", "all"):
        run_eval(run_export(args.out), *((24, (0,)) if args.quick else ()))


if __name__ == "__main__":
    main()
