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

    parser.add_argument(
        "--batching",
        choices=("request", "continuous"),
        default="request",
        help="request: batch whole requests of the same settings; continuous: step-level batching in slots, "
        "requests joining and leaving every --chunk-steps steps (models that support it; docs/serving.md)",
    )
    parser.add_argument(
        "--slots",
        type=int,
        default=None,
        metavar="S",
        help="continuous batching: slots per output size, all computed every step (default: --max-batch)",
    )
    parser.add_argument(
        "--chunk-steps",
        type=int,
        default=4,
        metavar="K",
        help="continuous batching: steps per compiled chunk; requests join and leave between chunks (default 4)",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=None,
        metavar="N",
        help="continuous batching: most steps a slotted request may take; more run request-level "
        "(default: 64, or the model's default steps if more)",
    )

    parser.add_argument(
        "--serial-slots",
        action="store_true",
        help="continuous batching: run the model one slot at a time (batch 1), skipping idle slots: no cost "
        "for idle slots; for models that keep the device busy at batch 1 (large images)",
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
    for name, value in (
        ("--slots", args.slots),
        ("--chunk-steps", args.chunk_steps),
        ("--max-steps", args.max_steps),
    ):
        if value is not None and value < 1:
            raise InputError(f"{name} must be >= 1, got {value}")
    batching = dict(
        batching=args.batching,
        slots=args.slots,
        chunk_steps=args.chunk_steps,
        max_steps=args.max_steps,
        serial_slots=args.serial_slots,
    )
    return {"api_key": key, "shutdown_grace_s": grace, "max_frames": args.max_frames, **batching}


__all__ = ["API_KEY_ENV", "add_arguments", "app_options"]
