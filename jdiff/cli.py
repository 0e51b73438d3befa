"""The `jdiff` command line: `generate`, `convert`, `serve` and `bench`.

Exit codes: 0 success; 2 invalid input or usage, an output that cannot be written included (one line on
stderr, no traceback); 1 anything else.

Start-up: this module imports only the standard library and `jdiff.errors`, so `--help` and `--version` answer
at once; jax, flax and the models are imported by the command that needs them. What can be checked without
them (the output's directory, suffix and writer) is checked before the model loads.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
import warnings
from pathlib import Path

from jdiff import load_options
from jdiff.errors import InputError
from jdiff.server import options as serve_options

PRESET = "the model's preset"
SIZES = "1024 for FLUX.1, 64 for the embedded model, a small model's own sample size"
DTYPE_HELP = "weights and activations (default: bfloat16 on GPU/TPU, float32 on CPU)"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints the whole usage otherwise)
        self.exit(2, f"jdiff: error: {message} (see `{self.prog} --help`)\n")


class _Formatter(argparse.HelpFormatter):
    """Appends "(default: X)" to every option whose help does not already say its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        unset = default is None or default is False or default == argparse.SUPPRESS
        if "default" in text or unset or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


SCHEDULER_HELP = (
    "sample with this diffusers scheduler class instead of the model's, on its scheduler config "
    "(e.g. DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler)"
)


def _version() -> str:
    from jdiff import __version__

    return __version__


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="jdiff",
        description="JAX diffusion inference: generate images and videos, convert weights, serve, benchmark.",
        formatter_class=_Formatter,
    )
    p.add_argument("--version", action="version", version=f"jdiff {_version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    g = sub.add_parser("generate", help="generate images from a prompt", formatter_class=_Formatter)
    g.add_argument(
        "--model", default=None, help="diffusers-format or converted directory (default: embedded)"
    )
    g.add_argument("--prompt", required=True, help="what to draw")
    g.add_argument(
        "--negative-prompt",
        default=None,
        help="what to avoid: FLUX needs --true-cfg-scale > 1 for it, Wan a guidance scale > 1 (default: none; "
        "Wan: its preset's)",
    )
    g.add_argument(
        "--true-cfg-scale",
        type=float,
        default=None,
        help="FLUX: true classifier-free guidance with --negative-prompt, on above 1 (default: 1, off)",
    )
    g.add_argument("--height", type=int, default=None, help=f"pixels (default: {PRESET}; {SIZES})")
    g.add_argument("--width", type=int, default=None, help=f"pixels (default: {PRESET}; {SIZES})")
    g.add_argument("--num-frames", type=int, default=None, help=f"video models, 4k+1 (default: {PRESET})")
    g.add_argument("--steps", type=int, default=None, help=f"denoising steps (default: {PRESET})")
    g.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help=f"FLUX.1-dev's embedded guidance, Wan's CFG scale; FLUX.1-schnell has none (default: {PRESET})",
    )
    g.add_argument(
        "--seed", type=int, default=0, help="output i of n uses seed + i; the same seed draws the same image"
    )
    g.add_argument("--num-outputs", type=int, default=1, help="outputs per prompt")
    g.add_argument(
        "--image",
        action="append",
        default=None,
        metavar="PATH",
        help="input image (image-to-video, edit and reference-image models); repeat for several",
    )
    g.add_argument(
        "--output",
        default=None,
        help="output file: .png .jpg .jpeg .webp, or .mp4 for video; several outputs add -0, -1, ... "
        "(default: outputs/<prompt>-<seed>.png or .mp4)",
    )
    g.add_argument("--dtype", choices=["float32", "bfloat16"], default=None, help=DTYPE_HELP)
    g.add_argument("--mesh", default=None, help="e.g. data=2,fsdp=1,context=4,tensor=1 (default: one device)")
    load_options.add_arguments(g)  # --offload, --quantization
    g.add_argument(
        "--sequence-parallel",
        choices=["ulysses", "ring"],
        default="ulysses",
        help="attention over the mesh's context axis",
    )
    g.add_argument("--scheduler", default=None, metavar="NAME", help=SCHEDULER_HELP)
    g.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="PATH[:SCALE]",
        help="a LoRA adapter (safetensors file or folder; diffusers/PEFT or kohya names) and its scale "
        "(default 1); repeatable",
    )
    g.add_argument("--no-progress", action="store_true", help="hide the denoising progress bar")
    g.add_argument("--step-cache", choices=["first_block", "teacache"], help="see docs/step_cache.md")
    g.add_argument("--step-cache-threshold", type=float, help="default: the model's for the cache")
    _multihost_flags(g)

    c = sub.add_parser(
        "convert",
        help="convert a diffusers-format directory to a jdiff checkpoint",
        formatter_class=_Formatter,
    )
    c.add_argument("src", help="the diffusers-format directory (holding model_index.json)")
    c.add_argument("dst", help="a new directory for the checkpoint (must not exist)")
    c.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default="bfloat16",
        help="stored weight dtype; bfloat16 halves the size and moves outputs by a few 1/255 steps, float32 "
        "keeps them exact",
    )
    c.add_argument(
        "--dry-run", action="store_true", help="check keys and shapes from headers only; write nothing"
    )
    s = sub.add_parser(
        "serve", help="serve the model over an OpenAI-style HTTP API", formatter_class=_Formatter
    )
    s.add_argument(
        "--model", default=None, help="diffusers-format or converted directory (default: embedded)"
    )
    s.add_argument("--host", default="127.0.0.1", help="address to listen on")
    s.add_argument("--port", type=int, default=30000, help="port to listen on")
    s.add_argument("--dtype", choices=["float32", "bfloat16"], default=None, help=DTYPE_HELP)
    s.add_argument("--mesh", default=None, help="e.g. data=2,fsdp=1,context=4,tensor=1 (default: one device)")
    load_options.add_arguments(s)  # --offload, --quantization
    s.add_argument(
        "--sequence-parallel",
        choices=["ulysses", "ring"],
        default="ulysses",
        help="attention over the mesh's context axis",
    )
    s.add_argument("--scheduler", default=None, metavar="NAME", help=SCHEDULER_HELP)
    s.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="load a LoRA adapter that requests name in their `loras` field; repeatable (more: POST /v1/loras)",
    )
    s.add_argument("--max-batch", type=int, default=4, help="most outputs per generate call (1: no batching)")
    s.add_argument(
        "--batch-wait-ms", type=float, default=5.0, help="how long a request may wait to fill its batch"
    )
    s.add_argument(
        "--warmup",
        default="default",
        help="sizes WxH,... to compile at start for every batch size ('default': the preset's; 'none')",
    )
    s.add_argument("--timeout", type=float, default=600.0, help="seconds before a request gets a 504")
    s.add_argument("--max-pixels", type=int, default=None, help="largest width x height (default: by device)")
    s.add_argument("--max-queue", type=int, default=256, help="requests that may wait; more get a 429")
    s.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], default="info", help="server log level"
    )
    _multihost_flags(s)
    serve_options.add_arguments(s)  # --api-key, --max-frames, --shutdown-grace

    b = sub.add_parser(
        "bench",
        help="benchmark jdiff (and diffusers with --compare diffusers) at real sizes; `jdiff bench --help`",
        add_help=False,
    )
    b.add_argument("bench_args", nargs=argparse.REMAINDER, help="see `jdiff bench --help`")
    return p


def _default_output(prompt: str, seed: int, suffix: str) -> Path:
    from jdiff.io.outputs import default_output_name

    return default_output_name(prompt, seed, suffix)


def _multihost_flags(parser: argparse.ArgumentParser) -> None:
    m = parser.add_argument_group(
        "multi-host (every process runs the same command; process 0 writes outputs)"
    )
    m.add_argument("--coordinator", default=None, help="HOST:PORT of process 0 (or JDIFF_COORDINATOR)")
    m.add_argument("--num-processes", type=int, default=None, help="(or JDIFF_NUM_PROCESSES)")
    m.add_argument("--process-id", type=int, default=None, help="(or JDIFF_PROCESS_ID)")


def _model_makes_video(model: str | None) -> bool | None:
    """Whether the model directory holds a video pipeline, from its model_index.json alone (no jax needed);
    None when it cannot be read (loading it will say why)."""
    if model is None:
        return False  # the embedded model draws images
    try:
        name = json.loads((Path(model) / "model_index.json").read_text()).get("_class_name", "")
    except (OSError, ValueError, AttributeError):
        return None
    return str(name).startswith(("Wan", "HunyuanVideo"))  # the video families' pipeline classes


def _writes_outputs(args) -> bool:
    """Process 0 writes the outputs; in a multi-host run the others skip the output checks."""
    pid = args.process_id if args.process_id is not None else os.environ.get("JDIFF_PROCESS_ID")
    return pid in (None, "", 0, "0")


def _check_output(args) -> Path | None:
    """The output path, checked before the model loads: suffix, writable directory, mp4 writer.

    None when the model directory cannot be read yet (its loading error comes first; `generate` checks again).
    """
    from jdiff.io.outputs import IMAGE_SUFFIXES, VIDEO_SUFFIXES, check_output_file

    video = _model_makes_video(args.model)
    if video is None:
        return Path(args.output) if args.output else None
    output = (
        Path(args.output)
        if args.output
        else _default_output(args.prompt, args.seed, ".mp4" if video else ".png")
    )
    if _writes_outputs(args):
        check_output_file(output, VIDEO_SUFFIXES if video else IMAGE_SUFFIXES)
    return output


def _lora_arg(value: str) -> tuple[str, float]:
    """`--lora PATH[:SCALE]` -> (path, scale); a path may itself hold ':' when no number follows the last."""
    path, sep, scale = value.rpartition(":")
    if sep:
        try:
            s = float(scale)
        except ValueError:
            return value, 1.0
        if not math.isfinite(s):
            raise InputError(f"--lora {value}: the scale must be a finite number")
        return path, s
    return value, 1.0


def _serve_lora_arg(value: str) -> tuple[str, str]:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise InputError(f"--lora takes NAME=PATH (e.g. style=./style.safetensors), got {value!r}")
    return name, path


def _generate(args) -> int:
    output = _check_output(args)  # before jax is even imported: a bad path costs nothing
    loras = [_lora_arg(v) for v in args.lora]

    import jdiff
    from jdiff.parallel import distributed

    distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    # Process 0's request is the one every process runs (they may have been started with other arguments),
    # its terminal included: the progress callback is compiled into the denoising program, which must be the
    # same program on every process (only process 0 draws the bar).
    args.progress = not args.no_progress and sys.stderr.isatty()
    args = argparse.Namespace(**distributed.broadcast(vars(args)))

    gen = jdiff.DiffGenerator.from_pretrained(
        args.model,
        dtype=args.dtype,
        mesh=args.mesh,
        sequence_parallel=args.sequence_parallel,
        scheduler=args.scheduler,
        **load_options.load_kwargs(args),
    )
    scales = {gen.load_lora(path, f"lora{i}"): scale for i, (path, scale) in enumerate(loras)}
    suffix = ".mp4" if gen.pipeline.is_video else ".png"
    if output is None:
        output = Path(args.output) if args.output else _default_output(args.prompt, args.seed, suffix)
    extra = {} if args.true_cfg_scale is None else {"true_cfg_scale": args.true_cfg_scale}
    if args.image:
        extra["image"] = args.image[0] if len(args.image) == 1 else args.image
    result = gen.generate(
        args.prompt,
        negative_prompt=args.negative_prompt,
        **extra,
        height=args.height,
        width=args.width,
        num_frames=args.num_frames,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        seed=args.seed,
        num_outputs_per_prompt=args.num_outputs,
        output_path=output,
        progress=args.progress,
        loras=scales or None,
        step_cache=args.step_cache,
        step_cache_threshold=args.step_cache_threshold,
    )
    timings = ", ".join(
        f"{k} {v:g}" if k.startswith("steps_") else f"{k} {v:.2f}s" for k, v in result.timings.items()
    )
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
    dst = convert(args.src, args.dst, dtype=args.dtype, report=lambda line: print(line, flush=True))
    print(dst)
    return 0


def _warmup_sizes(spec: str, preset: dict) -> list[tuple[int, int]]:
    """'default' | 'none' | 'WxH,...' -> [(height, width), ...]."""
    if spec == "none":
        return []
    if spec == "default":
        return [(preset["height"], preset["width"])]
    sizes = []
    for item in spec.split(","):
        m = re.fullmatch(r"(\d+)x(\d+)", item.strip())
        if not m:
            raise InputError(
                f"--warmup takes sizes like 1024x768,512x512 (or 'default' / 'none'), got {item!r}"
            )
        sizes.append((int(m[2]), int(m[1])))
    return sizes


def _serve(args) -> int:
    import jdiff
    from jdiff.server import serve
    from jdiff.server.app import ApiError, default_max_pixels, parse_size

    for name, value, lo in (
        ("--max-batch", args.max_batch, 1),
        ("--max-queue", args.max_queue, 1),
        ("--port", args.port, 0),
    ):
        if value < lo:
            raise InputError(f"{name} must be >= {lo}, got {value}")
    if not 0 <= args.batch_wait_ms < math.inf or not 0 < args.timeout < math.inf:
        raise InputError("--batch-wait-ms must be >= 0 and --timeout > 0 (finite numbers)")
    if args.port > 65535:
        raise InputError(f"--port must be <= 65535, got {args.port}")
    options = serve_options.app_options(args)
    explicit = args.warmup not in ("default", "none")
    warmup = _warmup_sizes(args.warmup, {}) if explicit else None  # a typo fails before the model loads
    loras = [_serve_lora_arg(v) for v in args.lora]
    from jdiff.parallel import distributed

    multihost = distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    gen = jdiff.DiffGenerator.from_pretrained(
        args.model,
        dtype=args.dtype,
        mesh=args.mesh,
        sequence_parallel=args.sequence_parallel,
        scheduler=args.scheduler,
        **load_options.load_kwargs(args),
    )
    for name, path in loras:  # every process: the followers run the same requests
        gen.load_lora(path, name)
    if multihost and not distributed.is_main():
        distributed.follow(gen)  # process 0 serves HTTP; this one runs the same generate calls
        return 0
    if multihost:
        gen = distributed.Leader(gen)
    if warmup is None:
        warmup = _warmup_sizes(args.warmup, gen.pipeline.preset)
    for height, width in warmup:  # same checks as requests get, as one CLI line
        try:
            parse_size(f"{width}x{height}", gen.pipeline, args.max_pixels or default_max_pixels(gen.pipeline))
        except ApiError as e:
            raise InputError(f"--warmup {width}x{height}: {e.message}") from None
    started = serve(
        gen,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms,
        timeout_s=args.timeout,
        max_pixels=args.max_pixels,
        max_queue=args.max_queue,
        warmup=warmup,
        **options,
    )
    if multihost:
        gen.close()
    return 0 if started else 1


def _quiet_libraries() -> None:
    """Keeps library chatter off a normal run's terminal (jdiff's own warnings still print).

    - transformers' "PyTorch was not found ..." advisory (printed when it is imported without torch);
    - jax's "os.fork() was called ..." RuntimeWarning: imageio-ffmpeg starts ffmpeg as a subprocess to write
      mp4 files, which is a fork followed at once by exec, the safe case that warning cannot tell apart.
    """
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)


class _WarningLines(logging.Handler):
    """jdiff's warnings (logger `jdiff`) as `jdiff: warning: ...` lines on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"jdiff: {record.levelname.lower()}: {record.getMessage()}", file=sys.stderr, flush=True)


def _run(command, args) -> int:
    """Runs a command with jdiff's warnings printed as one line each (and only there, not twice)."""
    log = logging.getLogger("jdiff")
    handler = _WarningLines(logging.WARNING)
    log.addHandler(handler)
    propagate, log.propagate = log.propagate, False
    try:
        return command(args)
    finally:
        log.removeHandler(handler)
        log.propagate = propagate


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    _quiet_libraries()
    try:
        if argv[:1] == ["bench"]:  # its own parser: every option after `bench` is the benchmark's
            from jdiff.bench import main as bench

            return bench(argv[1:])
        args = _parser().parse_args(argv)
        if args.command == "serve":  # the server logs jdiff's warnings with everything else
            return _serve(args)
        return _run({"generate": _generate, "convert": _convert}[args.command], args)
    except InputError as e:
        print(f"jdiff: error: {e}", file=sys.stderr)
        _stop_other_processes(str(e), 2)
        return 2
    except BaseException as e:
        _stop_other_processes(f"{type(e).__name__}: {e}", 130 if isinstance(e, KeyboardInterrupt) else 1)
        raise


def _stop_other_processes(message: str, exit_code: int) -> None:
    """In a multi-process run, ends every process now (they would wait for this one in a collective)."""
    distributed = sys.modules.get("jdiff.parallel.distributed")
    if distributed is not None and distributed.joined():
        import traceback

        if exit_code not in (0, 2):
            traceback.print_exc()
        distributed.abort(message, exit_code)


if __name__ == "__main__":
    sys.exit(main())
