"""Text-to-image with FLUX.1 from Python.

    python examples/flux_text_to_image.py --prompt "a purple circle on a orange background"   # embedded model
    python examples/flux_text_to_image.py --model /path/to/FLUX.1-dev --prompt "a lighthouse at dusk"

`--model` is a diffusers-format directory (the folder with model_index.json) or a `jdiff convert` output;
without it, the small model shipped inside jdiff draws (64x64 shapes on a CPU in seconds). Each prompt and
seed gets its own file under outputs/ unless `--output` names one.
"""

import argparse
import sys

import jdiff
from jdiff.io.outputs import default_output_name


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    ap.add_argument("--model", default=None, help="model directory (none: the embedded model)")
    ap.add_argument("--prompt", default="a purple circle on a orange background", help="what to draw")
    ap.add_argument("--seed", type=int, default=0, help="the same seed draws the same image")
    ap.add_argument("--output", default=None, help="image file (none: outputs/<prompt>-<seed>.png)")
    args = ap.parse_args()
    output = args.output or default_output_name(args.prompt, args.seed, ".png")

    try:
        gen = jdiff.DiffGenerator.from_pretrained(args.model)
        result = gen.generate(args.prompt, seed=args.seed, output_path=output, progress=sys.stderr.isatty())
    except jdiff.InputError as e:  # bad input or an unwritable output: one line, as the CLI
        print(f"flux_text_to_image: error: {e}", file=sys.stderr)
        return 2
    for warning in result.warnings:
        print(f"flux_text_to_image: warning: {warning}", file=sys.stderr)
    print(result.paths[0], {k: round(v, 2) for k, v in result.timings.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
