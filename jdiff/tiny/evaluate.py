"""Judging a text-to-image model on the shapes world: generate fixed prompts and read the images back."""

from __future__ import annotations

import itertools

import numpy as np

from jdiff.tiny import shapes


def eval_captions(n: int = 48, seed: int = 1234) -> list[shapes.Caption]:
    """A fixed, balanced sample of captions (every colour and shape; named and unnamed backgrounds)."""
    rng = np.random.default_rng(seed)
    out = []
    for c, s in itertools.islice(itertools.cycle(itertools.product(range(7), range(3))), n):
        named = rng.random() < 0.6
        bg = int(rng.choice([b for b in range(8) if b != c])) if named else shapes.BLACK
        out.append(shapes.Caption(c, s, bg, named))
    return out


def evaluate(generate, captions: list[shapes.Caption], seeds: list[int]) -> dict[str, float]:
    """Accuracy of colour, shape and background over captions x seeds.

    Args:
        generate: (list of prompts, seed) -> images [B, H, W, 3] in [0, 1].
    """
    hits = np.zeros(3)
    total = 0
    for seed in seeds:
        images = generate([c.text for c in captions], seed)
        for cap, img in zip(captions, images, strict=True):
            got = shapes.judge(img)
            hits += np.array(got) == (cap.colour, cap.shape, cap.background)
            total += 1
    colour, shape, background = hits / total
    return {"colour": float(colour), "shape": float(shape), "background": float(background), "n": total}
