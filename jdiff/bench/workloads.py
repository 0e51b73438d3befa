"""What `jdiff bench` measures: real configs (reference config.json keys), input sizes, and repeat counts.

Every workload also has a toy variant (`--tiny`): the same code path with smaller widths, depths and sizes.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

GIB = 2**30
ENGINES = ("jdiff", "diffusers", "diffusers-compile")

FLUX_DEV = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)  # fmt: skip
WAN_13B = dict(
    patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
)  # fmt: skip
FLUX_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    act_fn="silu", latent_channels=16, norm_num_groups=32, use_quant_conv=False, use_post_quant_conv=False,
)  # fmt: skip
WAN_VAE: dict = {}  # diffusers' AutoencoderKLWan defaults are the Wan2.1 VAE
# FLUX.1-dev's text_encoder/config.json (CLIP-L/14 text tower; eos_token_id 2 is its legacy argmax pooling).
CLIP_L = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, layer_norm_eps=1e-5,
    bos_token_id=0, eos_token_id=2, pad_token_id=1,
)  # fmt: skip
# FLUX.1-dev's text_encoder_2/config.json (T5-v1.1-XXL encoder, 4.7B parameters).
T5_XXL = dict(
    vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
    relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
    layer_norm_epsilon=1e-6,
)  # fmt: skip
# FLUX.1-dev's scheduler/scheduler_config.json.
FLUX_DEV_SCHEDULER = dict(
    num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
    base_image_seq_len=256, max_image_seq_len=4096,
)  # fmt: skip
# The pipeline's VAE needs the latent scaling of FLUX.1's vae/config.json (the decode-only workload does not).
FLUX_PIPELINE = dict(
    transformer=FLUX_DEV,
    text_encoder=CLIP_L,
    text_encoder_2=T5_XXL,
    vae={**FLUX_VAE, "scaling_factor": 0.3611, "shift_factor": 0.1159},
    scheduler=FLUX_DEV_SCHEDULER,
)
FLUX_TINY = dict(
    num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
    pooled_projection_dim=16, axes_dims_rope=(4, 6, 6),
)  # fmt: skip
FLUX_VAE_TINY = dict(block_out_channels=(32, 32, 32, 32), layers_per_block=1, norm_num_groups=8)
PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed"


@dataclass(frozen=True)
class Workload:
    """One benchmark: a diffusers config, input sizes, and how often to run it.

    For an end-to-end workload (`pipeline`), `config` maps each component of the model directory to its
    config, `tiny_config` each component to its overrides, and jdiff's cold and warm starts are measured too.
    """

    title: str
    config: dict
    sizes: dict
    tflop: float | None  # per call at the real sizes (2 FLOPs per multiply-add); None: not counted
    warmup: int
    repeats: int
    engines: tuple[str, ...] = ("jdiff", "diffusers")
    tiny_config: dict = field(default_factory=dict)
    tiny_sizes: dict = field(default_factory=dict)
    pipeline: bool = False
    tiny_title: str = ""  # what `--tiny` runs instead: its rows must not carry the real workload's name

    def label(self, tiny: bool) -> str:
        """The table's name for what ran."""
        return self.tiny_title if tiny else self.title


WORKLOADS = {
    "flux_step": Workload(
        "FLUX.1-dev transformer step, 1024x1024",
        FLUX_DEV,
        dict(h=64, w=64, text=512),
        74.4,
        warmup=2,
        repeats=10,
        engines=ENGINES,
        tiny_config=FLUX_TINY,
        tiny_sizes=dict(h=4, w=4, text=8),
        tiny_title="tiny FLUX transformer step (toy config), 64x64",
    ),
    "wan_forward": Workload(
        "Wan2.1-T2V-1.3B transformer forward, 832x480x81",
        WAN_13B,
        dict(f=21, h=60, w=104, text=512),
        282.7,
        warmup=2,
        repeats=5,
        tiny_config=dict(
            num_attention_heads=2, attention_head_dim=12, text_dim=32, freq_dim=16, ffn_dim=32, num_layers=2
        ),
        tiny_sizes=dict(f=3, h=4, w=4, text=8),
        tiny_title="tiny Wan transformer forward (toy config), 32x32x9",
    ),
    "flux_vae_decode": Workload(
        "FLUX VAE decode, 1024x1024",
        FLUX_VAE,
        dict(h=128, w=128),
        None,
        warmup=2,
        repeats=10,
        tiny_config=FLUX_VAE_TINY,
        tiny_sizes=dict(h=4, w=4),
        tiny_title="tiny FLUX VAE decode (toy config), 32x32",
    ),
    "wan_vae_decode": Workload(
        "Wan2.1 VAE decode, 21 latent frames -> 81 x 832x480",
        WAN_VAE,
        dict(f=21, h=60, w=104),
        None,
        warmup=1,
        repeats=3,
        tiny_config=dict(base_dim=8),
        tiny_sizes=dict(f=3, h=4, w=4),
        tiny_title="tiny Wan VAE decode (toy config), 3 latent frames -> 9 x 32x32",
    ),
    # Text encoders and VAE are not counted in the TFLOP: 28 steps x 74.4 TFLOP of denoising only, so the
    # TFLOP/s column is a lower bound on the rate the whole pipeline achieves.
    "flux_pipeline": Workload(
        "FLUX.1-dev text-to-image, 1024x1024, 28 steps",
        FLUX_PIPELINE,
        dict(height=1024, width=1024, steps=28, guidance=3.5, text=512),
        28 * 74.4,
        warmup=0,  # the cold first call is measured on its own; it warms everything up
        repeats=3,
        engines=ENGINES,
        tiny_config=dict(
            transformer=FLUX_TINY,
            # Real vocabularies: the embedded tokenizers' ids must fit; the pooled CLIP width and the T5 width
            # must match the tiny transformer's pooled_projection_dim and joint_attention_dim.
            text_encoder=dict(
                hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
            ),
            text_encoder_2=dict(d_model=32, d_kv=8, d_ff=32, num_layers=1, num_heads=4),
            vae=FLUX_VAE_TINY,
        ),
        tiny_sizes=dict(height=64, width=64, steps=2, guidance=3.5, text=8),
        pipeline=True,
        tiny_title="tiny FLUX text-to-image (toy config), 64x64, 2 steps",
    ),
}


def _resolve(name: str, tiny: bool) -> tuple[Workload, dict, dict]:
    """(workload, config, sizes), with the toy overrides applied under `tiny` (per component for pipelines)."""
    wl = WORKLOADS[name]
    if not tiny:
        return wl, wl.config, wl.sizes
    over = {
        k: {**wl.config[k], **v} if isinstance(wl.config.get(k), dict) else v
        for k, v in wl.tiny_config.items()
    }
    return wl, {**wl.config, **over}, wl.tiny_sizes


def timed_calls(call, warmup: int, repeats: int):
    """(first output, first call's seconds, seconds of each of `repeats` calls after `warmup` more).

    `call` must return only once the device has finished (a synchronising call).
    """
    t0 = time.perf_counter()
    out = call()
    first_s = time.perf_counter() - t0
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return out, first_s, times


def _median_ms(times: list[float]) -> float:
    return 1e3 * float(statistics.median(times))
