"""FLOP counts of one denoiser call at a workload's config and sizes, 2 FLOPs per multiply-add.

Only the denoiser: text encoders, VAEs, samplers and the host's work are not counted, so a pipeline's TFLOP/s
is a lower bound on what it achieves.
"""

from __future__ import annotations


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


def hunyuan_video15_tflop(cfg: dict, sz: dict) -> float:
    """HunyuanVideo-1.5, one call per sample of jdiff's CFG batch: per block and token 4 D^2 (q, k, v, out) +
    8 D^2 (tanh-GELU MLP of 4D) in each stream, so on all S + T tokens (T = text + glyph buckets), joint
    attention over S + T; the patch embedder S x C x D and proj_out S x D x C. The token refiner (2 blocks on
    the text only) and the glyph projection are left out (under 0.1%)."""
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    s, t = sz["f"] * sz["h"] * sz["w"], sz["text"] + sz["glyph"]
    extra = s * cfg["in_channels"] * d + s * d * cfg["out_channels"]
    return 2 * dit_tflop((cfg["num_layers"], s + t, 12 * d * d, d), extra_macs=extra)
