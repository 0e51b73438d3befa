"""What `jdiff bench` measures: real configs (reference config.json keys), input sizes, and repeat counts.

Every workload also has a toy variant (`--tiny`): the same code path with smaller widths, depths and sizes.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from jdiff.models.autoencoder_kl.config import AutoencoderKLConfig
from jdiff.models.clip.config import CLIPTextConfig
from jdiff.models.flux.config import FluxConfig
from jdiff.models.flux2.config import Flux2Config
from jdiff.models.qwen_image.config import QwenImageConfig
from jdiff.models.t5.config import T5Config
from jdiff.models.unet.config import UNet2DConditionConfig
from jdiff.models.wan.config import WanTransformerConfig
from jdiff.models.wan_vae.config import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD, WanVAEConfig
from jdiff.models.z_image.config import ZImageConfig
from jdiff.weights.config import to_dict

if TYPE_CHECKING:  # `jdiff bench --help` imports this module: numpy only when a workload runs
    import numpy as np

GIB = 2**30
ENGINES = ("jdiff", "diffusers", "diffusers-compile")

# The real configs are the models' named presets, as reference config.json dicts (diffusers / transformers
# constructor keywords).
FLUX_DEV = to_dict(FluxConfig.dev())
WAN_13B = to_dict(WanTransformerConfig.t2v_1_3b())
FLUX_VAE = to_dict(AutoencoderKLConfig.flux())
WAN_VAE = to_dict(WanVAEConfig.wan21())
CLIP_L = to_dict(CLIPTextConfig.large())
T5_XXL = to_dict(T5Config.xxl())
Z_IMAGE_TURBO = to_dict(ZImageConfig.turbo())
FLUX2_KLEIN_4B = to_dict(Flux2Config.klein_4b())
SDXL_UNET = to_dict(UNet2DConditionConfig.sdxl())
QWEN_IMAGE = to_dict(QwenImageConfig.qwen_image())
# FLUX.1-dev's scheduler/scheduler_config.json.
FLUX_DEV_SCHEDULER = dict(
    num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
    base_image_seq_len=256, max_image_seq_len=4096,
)  # fmt: skip
FLUX_PIPELINE = dict(
    transformer=FLUX_DEV,
    text_encoder=CLIP_L,
    text_encoder_2=T5_XXL,
    vae=FLUX_VAE,
    scheduler=FLUX_DEV_SCHEDULER,
)
FLUX_TINY = to_dict(FluxConfig.tiny())
# Four levels, as the real VAE: the 8x downsampling the FLUX pipeline's sizes assume.
FLUX_VAE_TINY = to_dict(
    AutoencoderKLConfig.tiny(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 32, 32), norm_num_groups=8, latent_channels=16,
    )
)  # fmt: skip
# Z-Image's caption: the prompt's real tokens in Qwen3's chat template, padded to a multiple of 32 (about 100
# words of prompt; the pipeline keeps only real tokens, so this is not max_sequence_length).
Z_IMAGE_TEXT = 128
# Qwen-Image's text: SGLang's CI prompt ("A futuristic cityscape at sunset with flying cars") in Qwen2.5-VL's
# chat template with the template's system prefix dropped, as the pipeline does: about 16 tokens.
QWEN_IMAGE_TEXT = 16
# SDXL's layout at toy widths: a plain first level, 1 and 2 transformer layers, text_time with pooled text 24.
SDXL_UNET_TINY = to_dict(
    UNet2DConditionConfig.tiny(
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(16, 24, 40), attention_head_dim=(1, 3, 5), transformer_layers_per_block=(1, 1, 2),
        use_linear_projection=True, cross_attention_dim=40, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=24 + 6 * 8,
    )
)  # fmt: skip
PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed"


def position_ids(text: int, h: int, w: int, axes: int) -> tuple[np.ndarray, np.ndarray]:
    """(text ids [T, A], image ids [h w, A]) as the FLUX.1 (A = 3) and FLUX.2 (A = 4) pipelines build them:
    an image token's row and column in axes 1 and 2, zeros elsewhere; FLUX.2 counts text tokens in axis 3."""
    import numpy as np

    txt = np.zeros((text, axes))
    if axes == 4:
        txt[:, 3] = np.arange(text)
    img = np.zeros((h, w, axes))
    img[..., 1], img[..., 2] = np.arange(h)[:, None], np.arange(w)[None, :]
    return txt, img.reshape(h * w, axes)


def sdxl_time_ids(sz: dict) -> list[list[float]]:
    """SDXL's added time ids per batch row: original size, crop top-left (0, 0), target size, in pixels."""
    h, w = 8 * sz["h"], 8 * sz["w"]
    return [[h, w, 0, 0, h, w]] * sz["batch"]


def dit_tflop(*groups: tuple[int, int, int, int], extra_macs: int = 0) -> float:
    """TFLOP of one transformer call, 2 FLOPs per multiply-add.

    Each group is (blocks, tokens, linear multiply-adds per token, width D) for blocks whose linears see
    `tokens` tokens and whose attention runs over all of them: per block tokens x linear + 2 tokens^2 D
    (Q K^T and P V). `extra_macs`: the embedders and output projection, counted once. The AdaLN linears act on
    one vector per call (batch 1) and are left out, as FLUX.1's 74.4 leaves them out.
    """
    macs = extra_macs + sum(n * (t * lin + 2 * t * t * d) for n, t, lin, d in groups)
    return 2 * macs / 1e12


def z_image_tflop(cfg: dict, sz: dict) -> float:
    """Z-Image: every block 4 D^2 (q, k, v, out) + 3 D F (SwiGLU w1, w3, w2) per token; the noise refiner on
    the S image tokens, the context refiner on the T caption tokens, the main layers on S + T; embedders
    S x 4C x D (patches), T x J x D (captions), S x D x 4C (final layer)."""
    d, c = cfg["dim"], 4 * cfg["in_channels"]
    lin = 4 * d * d + 3 * d * int(d / 3 * 8)
    s, t = sz["h"] * sz["w"], sz["text"]
    r = cfg["n_refiner_layers"]
    extra = s * c * d * 2 + t * cfg["cap_feat_dim"] * d
    return dit_tflop((r, s, lin, d), (r, t, lin, d), (cfg["n_layers"], s + t, lin, d), extra_macs=extra)


def flux2_tflop(cfg: dict, sz: dict) -> float:
    """FLUX.2: 4 D^2 + 3 D F per token in every block (double: q, k, v, out + SwiGLU in 2F and out F per
    stream; single: the fused [q; k; v; MLP in] D x (3D + 2F) + out (D + F) x D), all S + T tokens, joint
    attention over S + T; embedders S x C x D, T x J x D, and proj_out S x D x C."""
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    f = int(d * cfg["mlp_ratio"])
    lin = 4 * d * d + 3 * d * f
    s, t = sz["h"] * sz["w"], sz["text"]
    n = cfg["num_layers"] + cfg["num_single_layers"]
    extra = 2 * s * cfg["in_channels"] * d + t * cfg["joint_attention_dim"] * d
    return dit_tflop((n, s + t, lin, d), extra_macs=extra)


def qwen_image_tflop(cfg: dict, sz: dict) -> float:
    """Qwen-Image: per block and token 4 D^2 (q, k, v, out) + 8 D^2 (GELU MLP of 4D) in each stream, so on all
    S + T tokens, joint attention over S + T; embedders S x C x D (img_in), T x J x D (txt_in), and proj_out
    S x D x C."""
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    s, t = sz["h"] * sz["w"], sz["text"]
    extra = 2 * s * cfg["in_channels"] * d + t * cfg["joint_attention_dim"] * d
    return dit_tflop((cfg["num_layers"], s + t, 12 * d * d, d), extra_macs=extra)


def _levels(value, n: int) -> list:
    return list(value) if isinstance(value, list | tuple) else [value] * n


def unet_tflop(cfg: dict, sz: dict) -> float:
    """An SD / SDXL UNet on `batch` latents of h x w, T text tokens of width J, 2 FLOPs per multiply-add:
    3x3 convs 9 Ci Co per output pixel (resnets' two, down/upsamplers, conv_in/out) and the resnets' 1x1
    shortcuts Ci Co; per transformer proj_in/out 2 c^2 per pixel and per layer, over N pixels: 18 c^2 per pixel
    (self q, k, v, out 4 c^2; cross q, out 2 c^2; GEGLU 8 c^2 in, 4 c^2 out), 2 N^2 c (self attention),
    2 N T c (cross attention), 2 J c per text token (cross k, v). Time embeddings and norms are not counted."""
    ch, n = cfg["block_out_channels"], len(cfg["block_out_channels"])
    per_block = _levels(cfg["layers_per_block"], n)
    layers = _levels(cfg["transformer_layers_per_block"], n)
    up_layers = cfg["reverse_transformer_layers_per_block"] or layers[::-1]
    j, t, hw = _levels(cfg["cross_attention_dim"], n)[0], sz["text"], sz["h"] * sz["w"]

    def conv(ci, co, pixels, k=3):
        return k * k * ci * co * pixels

    def resnet(ci, co, pixels):
        return conv(ci, co, pixels) + conv(co, co, pixels) + (ci * co * pixels if ci != co else 0)

    def transformer(c, pixels, depth):
        per_layer = 18 * c * c * pixels + 2 * pixels * pixels * c + 2 * pixels * t * c + 2 * j * c * t
        return 2 * c * c * pixels + depth * per_layer

    macs, x = conv(cfg["in_channels"], ch[0], hw), ch[0]
    skips = [x]
    for i, kind in enumerate(cfg["down_block_types"]):
        for _ in range(per_block[i]):
            macs += resnet(x, ch[i], hw) + (transformer(ch[i], hw, layers[i]) if "CrossAttn" in kind else 0)
            x = ch[i]
            skips.append(x)
        if i < n - 1:
            hw //= 4
            macs += conv(x, x, hw)
            skips.append(x)
    macs += 2 * resnet(x, x, hw) + transformer(x, hw, layers[-1])
    for i, kind in enumerate(cfg["up_block_types"]):
        c = ch[n - 1 - i]
        for _ in range(per_block[n - 1 - i] + 1):
            macs += resnet(x + skips.pop(), c, hw) + (
                transformer(c, hw, up_layers[i]) if "CrossAttn" in kind else 0
            )
            x = c
        if i < n - 1:
            hw *= 4
            macs += conv(x, x, hw)
    macs += conv(x, cfg["out_channels"], hw)
    return 2 * sz["batch"] * macs / 1e12


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
    # One prompt without CFG, as Z-Image-Turbo samples: 4096 image tokens (64x64 grid of 2x2 latent patches)
    # and the caption's Z_IMAGE_TEXT tokens.
    "z_image_step": Workload(
        "Z-Image-Turbo transformer step, 1024x1024",
        Z_IMAGE_TURBO,
        dict(h=64, w=64, text=Z_IMAGE_TEXT),
        z_image_tflop(Z_IMAGE_TURBO, dict(h=64, w=64, text=Z_IMAGE_TEXT)),
        warmup=2,
        repeats=10,
        engines=ENGINES,
        tiny_config=to_dict(ZImageConfig.tiny()),
        tiny_sizes=dict(h=4, w=4, text=32),
        tiny_title="tiny Z-Image transformer step (toy config), 64x64",
    ),
    # The distilled klein samples without CFG; its text is always max_sequence_length (512) tokens, padding
    # included, as Flux2KleinPipeline feeds it.
    "flux2_klein_step": Workload(
        "FLUX.2-klein-4B transformer step, 1024x1024",
        FLUX2_KLEIN_4B,
        dict(h=64, w=64, text=512),
        flux2_tflop(FLUX2_KLEIN_4B, dict(h=64, w=64, text=512)),
        warmup=2,
        repeats=10,
        engines=ENGINES,
        tiny_config=to_dict(Flux2Config.tiny()),
        tiny_sizes=dict(h=4, w=4, text=8),
        tiny_title="tiny FLUX.2 transformer step (toy config), 64x64",
    ),
    # SDXL base with CFG as StableDiffusionXLPipeline runs it: [negative; prompt] in one batch of 2, 77 tokens
    # of the two encoders' 2048 features, pooled text 1280 and six size/crop numbers (text_time).
    "sdxl_unet_step": Workload(
        "SDXL base UNet step, 1024x1024, CFG batch 2",
        SDXL_UNET,
        dict(h=128, w=128, text=77, batch=2),
        unet_tflop(SDXL_UNET, dict(h=128, w=128, text=77, batch=2)),
        warmup=2,
        repeats=10,
        engines=ENGINES,
        tiny_config=SDXL_UNET_TINY,
        tiny_sizes=dict(h=8, w=8, text=8, batch=2),
        tiny_title="tiny SDXL-like UNet step (toy config), 64x64, CFG batch 2",
    ),
    # One transformer call at batch 1. SGLang's per-step figure for Qwen-Image (true CFG 4.0) is two of them,
    # cond and uncond: compare 2x this row with it.
    "qwen_image_step": Workload(
        "Qwen-Image transformer call, 1024x1024, batch 1",
        QWEN_IMAGE,
        dict(h=64, w=64, text=QWEN_IMAGE_TEXT),
        qwen_image_tflop(QWEN_IMAGE, dict(h=64, w=64, text=QWEN_IMAGE_TEXT)),
        warmup=2,
        repeats=10,
        engines=ENGINES,
        tiny_config=to_dict(QwenImageConfig.tiny()),
        tiny_sizes=dict(h=4, w=4, text=8),
        tiny_title="tiny Qwen-Image transformer call (toy config), 64x64, batch 1",
    ),
    "wan_forward": Workload(
        "Wan2.1-T2V-1.3B transformer forward, 832x480x81",
        WAN_13B,
        dict(f=21, h=60, w=104, text=512),
        282.7,
        warmup=2,
        repeats=5,
        tiny_config=to_dict(
            WanTransformerConfig.tiny(text_dim=32, freq_dim=16, in_channels=16, out_channels=16)
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
        tiny_config=to_dict(
            WanVAEConfig.tiny(z_dim=16, latents_mean=WAN21_LATENTS_MEAN, latents_std=WAN21_LATENTS_STD)
        ),
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
