"""How long the `jdiff` command takes to answer when there is no model work to do.

Usage: python benchmarks/cli_startup.py [--repeats 10]

Runs each command below `--repeats` times as a fresh process (`python -m jdiff ...`) and prints a markdown
table of the median and slowest wall time: `--help` and `--version`, every subcommand's `--help`, and two
requests refused before any model loads (an output under a regular file, and .mp4 from an image model). The
target is under 0.5 s each: the CLI imports jax, flax and the models only for the command that needs them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def commands(scratch: Path) -> dict[str, list[str]]:
    blocker = scratch / "file"
    blocker.write_text("")
    return {
        "--help": ["--help"],
        "--version": ["--version"],
        "generate --help": ["generate", "--help"],
        "convert --help": ["convert", "--help"],
        "serve --help": ["serve", "--help"],
        "bench --help": ["bench", "--help"],
        "generate, output under a file (exit 2)": [
            "generate",
            "--prompt",
            "x",
            "--output",
            str(blocker / "a.png"),
        ],
        "generate, .mp4 from an image model (exit 2)": ["generate", "--prompt", "x", "--output", "x.mp4"],
    }


def time_command(argv: list[str], repeats: int) -> tuple[list[float], int]:
    times, rc = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "jdiff", *argv], capture_output=True, env=os.environ)
        times.append(time.perf_counter() - t0)
        rc = proc.returncode
    return times, rc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.repeats} runs each\n")
    print("| command | exit code | median s | slowest s |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for name, argv in commands(Path(scratch)).items():
            times, rc = time_command(argv, args.repeats)
            print(
                f"| `jdiff {name}` | {rc} | {statistics.median(times):.3f} | {max(times):.3f} |", flush=True
            )


if __name__ == "__main__":
    main()
