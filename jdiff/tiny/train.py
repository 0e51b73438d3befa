"""Training the embedded default model: a small FLUX (transformer, AutoencoderKL, CLIP, T5) on the shapes world.

The text encoders stay at their seeded random initialisation (random features still separate the 168
captions); the VAE learns reconstruction with a small KL term; the transformer learns rectified flow on the
VAE's normalised latents: x_t = (1 - t) x_0 + t eps, target v = eps - x_0, which is the velocity FLUX's
Euler sampler integrates from t = 1 to 0.

Axis letters: B batch, K captions, T text tokens, J T5 width, P pooled width, S packed latent tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jdiff.kernels import norm_rope
from jdiff.models.autoencoder_kl.config import AutoencoderKLConfig
from jdiff.models.autoencoder_kl.vae import AutoencoderKL
from jdiff.models.clip.config import CLIPTextConfig
from jdiff.models.clip.text_encoder import CLIPTextModel
from jdiff.models.flux.config import FluxConfig
from jdiff.models.flux.transformer import FluxTransformer2DModel
from jdiff.models.t5.config import T5Config
from jdiff.models.t5.encoder import T5EncoderModel
from jdiff.pipelines.flux import _rope_tables, pack_latents
from jdiff.tiny import shapes
from jdiff.tiny.tokenizers import clip_tokenizer, t5_tokenizer

SIZE = 64  # image side
MAX_TEXT = 32  # T5 tokens (the preset's max_sequence_length)
WORDS = tuple(sorted({w for c in shapes.all_captions() for w in c.text.split()}))


@dataclass(frozen=True)
class TinyConfigs:
    transformer: FluxConfig
    vae: AutoencoderKLConfig
    clip: CLIPTextConfig
    t5: T5Config


def tiny_configs(clip_vocab: int, t5_vocab: int) -> TinyConfigs:
    """The embedded model's configs: the toy presets, widened (their values are the shipped weights' shapes)."""
    return TinyConfigs(
        transformer=FluxConfig.tiny(
            in_channels=16, num_layers=2, num_single_layers=4, attention_head_dim=32, num_attention_heads=4,
            joint_attention_dim=64, pooled_projection_dim=64, guidance_embeds=False, axes_dims_rope=(8, 12, 12),
        ),
        vae=AutoencoderKLConfig.tiny(
            down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
            block_out_channels=(32, 64, 64), norm_num_groups=16, sample_size=SIZE,
            scaling_factor=1.0, shift_factor=0.0,  # set from the trained encoder's latent statistics
        ),
        # Legacy eos_token_id 2 (the preset's): pool at argmax(ids), the end-of-text token (the highest id).
        clip=CLIPTextConfig.tiny(vocab_size=clip_vocab, hidden_size=64, intermediate_size=128),
        t5=T5Config.tiny(
            vocab_size=t5_vocab, d_model=64, d_kv=16, d_ff=128, num_layers=2, relative_attention_max_distance=32,
            feed_forward_proj="gated-gelu",
        ),
    )  # fmt: skip


def build_tokenizers(folder: Path):
    """The CLIP and T5 tokenizers of the embedded model, written to folder/tokenizer and folder/tokenizer_2."""
    clip = clip_tokenizer(folder / "tokenizer", WORDS)
    clip.save_pretrained(folder / "tokenizer")
    t5 = t5_tokenizer(WORDS, model_max_length=512)
    t5.save_pretrained(folder / "tokenizer_2")
    return clip, t5


def caption_table(clip, t5, clip_tok, t5_tok, texts: list[str]) -> tuple[jax.Array, jax.Array]:
    """T5 embeddings [K, T, J] and CLIP pooled embeddings [K, P] of every caption, tokenized as the pipeline
    tokenizes (padding to max_length, T5 unmasked)."""
    clip_ids = clip_tok(texts, padding="max_length", max_length=77, truncation=True, return_tensors="np")
    t5_ids = t5_tok(texts, padding="max_length", max_length=MAX_TEXT, truncation=True, return_tensors="np")
    _, pooled = clip(jnp.asarray(clip_ids["input_ids"]))
    return t5(jnp.asarray(t5_ids["input_ids"])), pooled


def sample_batch(key: jax.Array, batch: int, captions: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Caption indices [B] and their rendered images [B, H, W, 3] in [-1, 1]."""
    k_idx, k_img = jax.random.split(key)
    idx = jax.random.randint(k_idx, (batch,), 0, captions["colour"].shape[0])
    img = shapes.render(
        k_img, captions["colour"][idx], captions["shape"][idx], captions["background"][idx], SIZE
    )
    return idx, img * 2 - 1


def vae_loss(vae: AutoencoderKL, x: jax.Array, key: jax.Array, kl_weight: float) -> jax.Array:
    mean, logvar = vae.encode(x)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape)
    recon = vae.decode(z)
    kl = 0.5 * jnp.mean(jnp.square(mean) + jnp.exp(logvar) - 1 - logvar)
    return jnp.mean(jnp.abs(recon - x)) + jnp.mean(jnp.square(recon - x)) + kl_weight * kl


def encode_latents(vae: AutoencoderKL, x: jax.Array, shift: float, scale: float) -> jax.Array:
    """Packed, normalised latents [B, S, 4C] of images [B, H, W, 3] (the transformer's x_0)."""
    mean, _ = vae.encode(x)
    return pack_latents(((mean - shift) * scale).transpose(0, 3, 1, 2))


def flow_loss(model: FluxTransformer2DModel, x0, embeds, pooled, rope, key) -> jax.Array:
    k_t, k_eps = jax.random.split(key)
    t = jax.nn.sigmoid(jax.random.normal(k_t, (x0.shape[0],)))  # logit-normal, as SD3 / FLUX train
    eps = jax.random.normal(k_eps, x0.shape)
    xt = (1 - t[:, None, None]) * x0 + t[:, None, None] * eps
    v = model(xt, embeds, pooled, t, rope)
    return jnp.mean(jnp.square(v - (eps - x0)))


def optimizer(lr: float, steps: int, warmup: int = 200) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(steps, warmup + 1), lr * 0.05)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))


def trainer(loss_fn, graphdef: nnx.GraphDef, tx: optax.GradientTransformation):
    """A jitted `run(params, opt_state, key, first_step, aux) -> (params, opt_state, losses)` that takes
    `num` optimizer steps in one `lax.scan` (one dispatch for many steps; parameters and optimizer state are
    donated, so they are updated in place).

    `loss_fn(module, key, aux) -> loss`; step i uses the key `fold_in(key, first_step + i)`.

    The step is traced with the XLA formulation of the QK norm + RoPE: the fused Pallas kernel that inference
    picks on NVIDIA GPUs has no gradient rule, so training on a GPU failed at the first flow step.
    """

    def run(params, opt_state, key, first_step, aux, num):
        with norm_rope.forced("xla"):  # read while tracing
            return steps(params, opt_state, key, first_step, aux, num)

    def steps(params, opt_state, key, first_step, aux, num):
        def one(carry, i):
            params, opt_state = carry

            def loss_of(p):
                return loss_fn(nnx.merge(graphdef, p), jax.random.fold_in(key, first_step + i), aux)

            loss, grads = jax.value_and_grad(loss_of)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(one, (params, opt_state), jnp.arange(num))
        return params, opt_state, losses

    return jax.jit(run, static_argnames=("num",), donate_argnums=(0, 1))


def rope(cfg: FluxConfig) -> tuple[jax.Array, jax.Array]:
    h2 = SIZE // 8  # VAE factor 4, then 2x2 packing
    return tuple(jnp.asarray(a) for a in _rope_tables(MAX_TEXT, h2, h2, tuple(cfg.axes_dims_rope)))


def models(cfgs: TinyConfigs, seed: int):
    """Freshly initialised (transformer, vae, clip, t5), each from its own stream of `seed`."""
    keys = jax.random.split(jax.random.key(seed), 4)
    rng = [nnx.Rngs(params=k) for k in keys]
    return (
        FluxTransformer2DModel(cfgs.transformer, rngs=rng[0]),
        AutoencoderKL(cfgs.vae, rngs=rng[1]),
        CLIPTextModel(cfgs.clip, rngs=rng[2]),
        T5EncoderModel(cfgs.t5, rngs=rng[3]),
    )


def vae_objective(batch: int, kl_weight: float):
    """loss_fn for `trainer`: fresh shapes every step, reconstruction + KL; aux = the caption arrays."""

    def loss_fn(vae, key, captions):
        k_data, k_noise = jax.random.split(key)
        _, x = sample_batch(k_data, batch, captions)
        return vae_loss(vae, x, k_noise, kl_weight)

    return loss_fn


def flow_objective(batch: int, vae_graphdef: nnx.GraphDef):
    """loss_fn for `trainer`: rectified flow on frozen VAE latents; aux = (captions, vae params, caption
    table, rope tables, (shift, scale))."""

    def loss_fn(model, key, aux):
        captions, vae_params, table, rope_tables, norm = aux
        k_data, k_noise = jax.random.split(key)
        idx, x = sample_batch(k_data, batch, captions)
        vae = nnx.merge(vae_graphdef, vae_params)
        x0 = jax.lax.stop_gradient(encode_latents(vae, x, norm[0], norm[1]))
        return flow_loss(model, x0, table[0][idx], table[1][idx], rope_tables, k_noise)

    return loss_fn


def latent_stats(vae: AutoencoderKL, captions, key, n: int = 2048) -> tuple[float, float]:
    """(shift, scale) normalising the encoder's latent means to zero mean and unit variance."""
    _, x = sample_batch(key, n, captions)
    mean, _ = jax.jit(lambda v, x: v.encode(x))(vae, x)
    mean = np.asarray(mean, np.float64)
    return float(mean.mean()), float(1.0 / mean.std())


def as_arrays(d: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    return {k: jnp.asarray(v) for k, v in d.items()}
