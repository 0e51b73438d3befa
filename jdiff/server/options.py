"""`jdiff serve`'s options added with the server's operations features (kept here, out of `cli.py`).

`add_arguments(parser)` declares them; `app_options(args)` checks them and returns `serve` keywords.
"""

from __future__ import annotations

import argparse
import math
import os

from jdiff.errors import InputError

API_KEY_ENV = "JDIFF_API_KEY"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api-key",
        default=None,
        metavar="KEY",
        help=f"require 'Authorization: Bearer KEY' on every /v1/* request (default: ${API_KEY_ENV}, if set); "
        "/, /health, /liveness and /metrics stay open",
    )
    parser.add_argument(
        "--max-frames",
        type=int,
        default=None,
        metavar="N",
        help="most frames a video request may ask for, the model's default length included (default: 1025)",
    )
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=None,
        metavar="SECONDS",
        help="after SIGTERM, how long running work may go on before the server exits anyway "
        "(default: until it finishes)",
    )


def app_options(args: argparse.Namespace) -> dict:
    """`serve` keywords from the parsed options; raises `InputError` naming a bad one."""
    key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    if key is not None and (not key.strip() or key != key.strip() or not key.isprintable()):
        raise InputError(
            "--api-key / JDIFF_API_KEY must be printable, without spaces around it, and not empty"
        )
    grace = args.shutdown_grace
    if grace is not None and not 0 <= grace < math.inf:
        raise InputError(f"--shutdown-grace must be a finite number of seconds >= 0, got {grace}")
    if args.max_frames is not None and args.max_frames < 1:
        raise InputError(f"--max-frames must be >= 1, got {args.max_frames}")
    if args.max_pixels is not None and args.max_pixels < 1:
        raise InputError(f"--max-pixels must be >= 1, got {args.max_pixels}")
    return {"api_key": key, "shutdown_grace_s": grace, "max_frames": args.max_frames}


__all__ = ["API_KEY_ENV", "add_arguments", "app_options"]
