"""A client for `jdiff serve` using only the standard library.

    jdiff serve &                                    # the embedded model on 127.0.0.1:30000
    python examples/client.py --prompt "a purple circle on a orange background" --n 2 --seed 7
    python examples/client.py --video --prompt "a boat on a lake"      # a video model: job, poll, download

Images come back base64-encoded in the JSON (`response_format` "b64_json"); each item carries the seed that
drew it, so any image can be drawn again. Errors are `{"error": {"message": ..., "type": ...}}`.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def call(url: str, body: dict | None = None, timeout: float = 600) -> bytes:
    """POSTs `body` as JSON (GET when None); returns the response bytes.

    Exits with one line (code 1) when the server answers with an error, cannot be reached, or is too slow.
    """
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if os.environ.get("JDIFF_API_KEY"):  # the key of a server started with --api-key
        headers["Authorization"] = "Bearer " + os.environ["JDIFF_API_KEY"]
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.read()
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = e.reason
        sys.exit(f"client: server said {e.code}: {message}")
    except urllib.error.URLError as e:  # nothing listening, unknown host, refused
        sys.exit(f"client: cannot reach {url}: {e.reason}; is `jdiff serve` running there (see --url)?")
    except (TimeoutError, OSError) as e:
        sys.exit(f"client: {url} did not answer within {timeout:g} s ({e}); the server may still be working")


def images(args) -> None:
    body = {"prompt": args.prompt, "n": args.n, "output_format": args.format, "response_format": "b64_json"}
    for key in ("size", "seed", "negative_prompt", "num_inference_steps", "guidance_scale"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    t0 = time.perf_counter()
    result = json.loads(call(f"{args.url}/v1/images/generations", body))
    args.out.mkdir(parents=True, exist_ok=True)
    for item in result["data"]:
        path = args.out / f"image-{item['seed']}.{'jpg' if args.format == 'jpeg' else args.format}"
        path.write_bytes(base64.b64decode(item["b64_json"]))
        print(path)
    for warning in result.get("warnings", []):  # what the model ignored, or may have drawn badly
        print(f"client: server warning: {warning}", file=sys.stderr)
    print(f"{len(result['data'])} image(s) in {time.perf_counter() - t0:.2f}s", file=sys.stderr)


def video(args) -> None:
    body = {"prompt": args.prompt}
    for key in ("size", "seed", "negative_prompt", "num_inference_steps", "guidance_scale", "num_frames"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    job = json.loads(call(f"{args.url}/v1/videos", body))
    print(f"job {job['id']}: {job['status']}", file=sys.stderr)
    while job["status"] in ("queued", "in_progress"):
        time.sleep(args.poll)
        job = json.loads(call(f"{args.url}/v1/videos/{job['id']}"))
    if job["status"] != "completed":
        sys.exit(f"client: job {job['id']} {job['status']}: {job['error']['message']}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{job['id']}.mp4"
    path.write_bytes(call(f"{args.url}/v1/videos/{job['id']}/content"))
    print(path)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--url", default="http://127.0.0.1:30000")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", dest="negative_prompt")
    p.add_argument("--n", type=int, default=1)
    p.add_argument("--size", help="WxH, e.g. 1024x768 (default: the model's)")
    p.add_argument("--seed", type=int)
    p.add_argument("--steps", dest="num_inference_steps", type=int)
    p.add_argument("--guidance-scale", dest="guidance_scale", type=float)
    p.add_argument("--format", choices=["png", "jpeg", "webp"], default="png")
    p.add_argument("--video", action="store_true", help="make a video (video models): job, poll, download")
    p.add_argument("--num-frames", dest="num_frames", type=int)
    p.add_argument("--poll", type=float, default=2.0, help="seconds between status polls (video)")
    p.add_argument("--out", type=Path, default=Path("outputs"))
    args = p.parse_args()
    print(json.loads(call(f"{args.url}/health", timeout=10))["status"], file=sys.stderr)
    (video if args.video else images)(args)


if __name__ == "__main__":
    main()
