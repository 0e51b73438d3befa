"""Runs `profile_step.py` once per XLA flag set, each in its own process (XLA reads XLA_FLAGS at start).

Usage: python benchmarks/xla_flag_sweep.py --workload flux_step --sets baseline,while,concurrent [--trace]
Prints one `SWEEP {...}` JSON line per set (median ms, compile s, idle gaps with --trace) and a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

_DEFAULT_CMDS = "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,DYNAMIC_SLICE_FUSION"
FLAG_SETS = {
    "baseline": "",
    # Loops (the scans over layers and steps) captured into the CUDA graphs too, as conditional nodes.
    "while": f"--xla_gpu_enable_command_buffer={_DEFAULT_CMDS},WHILE,CONDITIONAL",
    # ... and unrolled into the graph where the trip count is known.
    "while_unrolled": f"--xla_gpu_enable_command_buffer={_DEFAULT_CMDS},WHILE,CONDITIONAL "
    "--xla_gpu_command_buffer_unroll_loops=true",
    # Independent commands of a graph may run concurrently (e.g. FLUX's text and image streams).
    "concurrent": "--xla_gpu_command_buffer_scheduling_mode=CONCURRENT",
    "while_concurrent": f"--xla_gpu_enable_command_buffer={_DEFAULT_CMDS},WHILE,CONDITIONAL "
    "--xla_gpu_command_buffer_scheduling_mode=CONCURRENT",
    # No CUDA graphs at all: the launch overhead they save, by difference.
    "no_graphs": "--xla_gpu_enable_command_buffer=",
    # Compile time (issue 19: the Wan 14B forward compiles in 37-43 s, the 1.3B in 4.5 s; on the CPU both
    # compile in about 2 s, so the difference is GPU-only work, autotuning the first suspect): autotuning
    # off (level 0) or reduced (level 1, no correctness checks of candidates), by difference.
    "autotune_0": "--xla_gpu_autotune_level=0",
    "autotune_1": "--xla_gpu_autotune_level=1",
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", default="flux_step")
    ap.add_argument("--sets", default="baseline,while,concurrent")
    ap.add_argument("--trace", action="store_true", help="also trace each set (kernel time and idle gaps)")
    ap.add_argument("--repeats", type=int, default=10)
    args, extra = ap.parse_known_args()
    here = os.path.dirname(os.path.abspath(__file__))
    rows = []
    for name in args.sets.split(","):
        env = dict(os.environ)
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + FLAG_SETS[name]).strip()
        cmd = [sys.executable, os.path.join(here, "profile_step.py"), "--workload", args.workload]
        cmd += ["--repeats", str(args.repeats), "--label", f"_{name}", *extra]
        if not args.trace:
            cmd.append("--no-trace")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("PROFILE ")]
        if proc.returncode or not lines:
            row = {"set": name, "error": (proc.stderr or proc.stdout).strip().splitlines()[-3:]}
        else:
            res = json.loads(lines[-1][len("PROFILE ") :])
            row = {"set": name, **{k: v for k, v in res.items() if k not in ("top", "threads_ms")}}
        rows.append(row)
        print("SWEEP " + json.dumps(row), flush=True)
    for row in rows:
        print(
            f"{row['set']:>18}: {row.get('ms', 'failed')} ms, compile {row.get('compile_s', '-')} s, "
            f"idle {row.get('idle_ms_per_call', '-')} ms"
        )


if __name__ == "__main__":
    main()
