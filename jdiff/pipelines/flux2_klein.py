"""The FLUX.2-klein pipeline (4B / 9B, distilled or base), as diffusers' `Flux2KleinPipeline` runs it: FLUX.2's
stages (jdiff.pipelines.flux2) with Qwen3 as the text encoder and true CFG for the undistilled base.

Text: each prompt alone in the tokenizer's chat template (user turn, generation prompt, `enable_thinking=False`),
padded to max_sequence_length; Qwen3's hidden states 9, 18 and 27 stacked per token. Distilled or base comes
from `model_index.json`'s `is_distilled`, as in diffusers: the distilled model ignores guidance; the base runs
CFG with an empty negative prompt when guidance_scale > 1 (neg + g (pos - neg)).
"""

from __future__ import annotations

import numpy as np

from jdiff.pipelines.base import warn
from jdiff.pipelines.chat_template import render
from jdiff.pipelines.family import Family
from jdiff.pipelines.flux2 import Flux2Pipeline
from jdiff.pipelines.model_dir import ModelDir
from jdiff.pipelines.request import Request


class Flux2KleinPipeline(Flux2Pipeline):
    """FLUX.2-klein from a diffusers-format directory or a converted jdiff checkpoint."""

    family = "FLUX.2-klein"
    text_layers = (9, 18, 27)

    def __init__(self, model: ModelDir, *, dtype, placement=None):
        self.is_distilled = bool(model.index.get("is_distilled", False))
        super().__init__(model, dtype=dtype, placement=placement)

    def preset_name(self, model: ModelDir) -> str:
        return "flux2-klein" if model.index.get("is_distilled", False) else "flux2-klein-base"

    def chat(self, prompts: list[str]) -> list[str]:
        messages = [[{"role": "user", "content": p}] for p in prompts]
        return [
            render(self.chat_template, m, add_generation_prompt=True, enable_thinking=False) for m in messages
        ]

    def tokenize(self, texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        return self.tokenizer(texts, max_length)

    def _cfg(self, request: Request) -> bool:
        return (request.guidance_scale or 0.0) > 1 and not self.is_distilled

    def latents_out(self, final: np.ndarray) -> np.ndarray:
        """diffusers' Flux2KleinPipeline `output_type="latent"`: un-normalised with the batch-norm statistics
        and unpacked, [B, C, h, w]."""
        mean, var, eps = self._bn
        packed = final * np.sqrt(var + eps) + mean  # [B, h/2, w/2, K]
        b, h2, w2, k = packed.shape
        return (
            packed.reshape(b, h2, w2, k // 4, 2, 2)
            .transpose(0, 3, 1, 4, 2, 5)
            .reshape(b, k // 4, 2 * h2, 2 * w2)
        )

    def check(self, request: Request) -> None:
        super().check(request)
        if self.is_distilled and "guidance_scale" in request.given and (request.guidance_scale or 0.0) > 1:
            warn(
                request.warnings,
                f"guidance_scale {request.guidance_scale:g} is ignored: this klein is step-distilled",
            )


FAMILY = Family(
    name="flux2-klein",
    pipeline_classes=("Flux2KleinPipeline",),
    pipeline=Flux2KleinPipeline,
    components={
        "Flux2Transformer2DModel": "jdiff.models.flux2.plan",
        "Qwen3ForCausalLM": "jdiff.models.qwen3.plan",
        "Qwen3Model": "jdiff.models.qwen3.plan",
        "AutoencoderKLFlux2": "jdiff.models.flux2.vae_plan",
    },
    preset=lambda index, transformer: (
        "flux2-klein" if index.get("is_distilled", False) else "flux2-klein-base"
    ),
)

__all__ = ["FAMILY", "Flux2KleinPipeline"]
