"""Text-to-image with FLUX.1 from Python.

    python examples/flux_text_to_image.py --model /path/to/FLUX.1-dev --prompt "a lighthouse at dusk"

`--model` is a diffusers-format directory (the folder with model_index.json) or a `jdiff convert` output.
"""

import argparse

import jdiff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", default="outputs/flux.png")
    args = ap.parse_args()

    gen = jdiff.DiffGenerator.from_pretrained(args.model)
    result = gen.generate(args.prompt, seed=args.seed, output_path=args.output, progress=True)
    print(result.paths[0], {k: round(v, 2) for k, v in result.timings.items()})


if __name__ == "__main__":
    main()
