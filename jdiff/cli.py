"""The `jdiff` command line: `generate` and `convert` (INTERFACE.md).

Exit codes: 0 success; 2 invalid input or usage (one line on stderr, no traceback); 1 anything else.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from jdiff.errors import InputError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints the whole usage otherwise)
        self.exit(2, f"jdiff: error: {message} (see `{self.prog} --help`)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="jdiff", description="JAX diffusion inference: generate images, convert weights.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    g = sub.add_parser("generate", help="generate images from a prompt")
    g.add_argument(
        "--model", default=None, help="diffusers-format or converted directory (default: embedded)"
    )
    g.add_argument("--prompt", required=True)
    g.add_argument("--negative-prompt", default=None)
    g.add_argument(
        "--true-cfg-scale", type=float, default=1.0, help="FLUX: true CFG scale with a negative prompt"
    )
    g.add_argument("--height", type=int, default=None)
    g.add_argument("--width", type=int, default=None)
    g.add_argument("--num-frames", type=int, default=None)
    g.add_argument("--steps", type=int, default=None, help="number of denoising steps")
    g.add_argument("--guidance-scale", type=float, default=None)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--num-outputs", type=int, default=1, help="outputs per prompt")
    g.add_argument("--image", default=None, help="conditioning image (image-to-video / edit models)")
    g.add_argument(
        "--output", default=None, help="output file: .png .jpg .webp (default: outputs/<prompt>.png)"
    )
    g.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    g.add_argument("--mesh", default=None, help="e.g. data=2,fsdp=1,context=4,tensor=1")
    g.add_argument("--sequence-parallel", choices=["ulysses", "ring"], default="ulysses")
    g.add_argument("--no-progress", action="store_true", help="hide the denoising progress bar")

    c = sub.add_parser("convert", help="convert a diffusers-format directory to a jdiff checkpoint")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    c.add_argument(
        "--dry-run", action="store_true", help="check keys and shapes from headers only; write nothing"
    )
    return p


def _default_output(prompt: str, seed: int) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:48] or "image"
    return Path("outputs") / f"{slug}-{seed}.png"


def _generate(args) -> int:
    import jdiff

    if args.image is not None:
        raise InputError(
            "--image needs an image-conditioned model; the supported FLUX.1 models are text-to-image"
        )
    output = Path(args.output) if args.output else _default_output(args.prompt, args.seed)
    gen = jdiff.DiffGenerator.from_pretrained(
        args.model, dtype=args.dtype, mesh=args.mesh, sequence_parallel=args.sequence_parallel
    )
    result = gen.generate(
        args.prompt,
        negative_prompt=args.negative_prompt,
        true_cfg_scale=args.true_cfg_scale,
        height=args.height,
        width=args.width,
        num_frames=args.num_frames,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        seed=args.seed,
        num_outputs_per_prompt=args.num_outputs,
        output_path=output,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    timings = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items())
    print(timings, file=sys.stderr)
    for path in result.paths:
        print(path)
    return 0


def _convert(args) -> int:
    from jdiff.convert.run import convert, dry_run

    if args.dry_run:
        report = dry_run(args.src)
        for line in report.lines:
            print(line)
        if report.problems:
            for problem in report.problems:
                print(f"problem: {problem}")
            print(f"jdiff: error: {len(report.problems)} problem(s) in {args.src}", file=sys.stderr)
            return 2
        print(f"ok: every tensor of {args.src} maps onto jdiff's parameters")
        return 0
    dst = convert(args.src, args.dst, dtype=args.dtype)
    print(dst)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"generate": _generate, "convert": _convert}[args.command](args)
    except InputError as e:
        print(f"jdiff: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
