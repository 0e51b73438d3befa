"""HunyuanVideo-1.5's glyph encoder (byT5, a T5 encoder): parity at a byT5-shaped toy size through the real
loader, and the released layout's key coverage."""

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from jdiff.models.t5.config import T5Config
from jdiff.models.t5.plan import SPEC
from tests import parity

BYT5 = parity.kwargs(T5Config.byt5_glyph())


def test_byt5_shaped_parity(tmp_path):
    """Attention narrower than the model width (byT5: 6 x 64 < 1472), odd heads, gated GELU, padding."""
    cfg = T5Config.tiny(
        d_model=23, num_heads=3, d_kv=8, d_ff=29, vocab_size=300, feed_forward_proj="gated-gelu"
    )
    ref = parity.randomized(transformers.T5EncoderModel(transformers.T5Config(**parity.kwargs(cfg))), 0.2)
    _, model = parity.load(ref, SPEC, tmp_path)
    ids = np.random.default_rng(0).integers(1, 300, (2, 11))
    mask = (np.arange(11)[None] < np.array([[11], [5]])).astype(np.int64)
    ids[mask == 0] = 0
    with torch.no_grad():
        want = ref(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state
    got = jax.jit(lambda m, i, a: m(i, a))(model, jnp.asarray(ids), jnp.asarray(mask))
    parity.assert_close(got, want)


def test_real_size_keys(tmp_path):
    shapes = parity.check_coverage(
        SPEC,
        T5Config.byt5_glyph(),
        parity.real_layout(
            lambda: transformers.T5EncoderModel(transformers.T5Config(**BYT5)).to(torch.bfloat16)
        ),
        tmp_path,
        component="text_encoder_2",
        filename="model.safetensors",
        missing="encoder.block.11.layer.1.DenseReluDense.wo.weight",
        unexpected=("encoder.block.0.layer.0.SelfAttention.q.bias", (384,)),
    )
    assert shapes["shared.embedding"] == (1510, 1472)
    assert shapes["encoder.block.layer.0.SelfAttention.q.kernel"] == (12, 1472, 384)
    assert 2.1e8 < parity.n_params(shapes) < 2.3e8  # byT5-small's encoder with the glyph tokens: 0.22B


def test_glyph_text_and_template_match_diffusers():
    import inspect

    from diffusers.pipelines.hunyuan_video1_5 import pipeline_hunyuan_video1_5 as ref

    from jdiff.models.hunyuan_video15.text import CROP_START, HIDDEN_LAYER, SYSTEM_MESSAGE, glyph_text

    for prompt in (
        "a cat",
        'a sign saying "OPEN" and "CLOSED"',
        'repeated "A" and "A" and “B”',
        "“中文” only",
        'one "quote"',
        'empty "" quote',
    ):
        assert glyph_text(prompt) == ref.extract_glyph_texts(prompt), prompt
    defaults = inspect.signature(ref.HunyuanVideo15Pipeline._get_mllm_prompt_embeds).parameters
    assert defaults["system_message"].default == SYSTEM_MESSAGE
    assert defaults["crop_start"].default == CROP_START
    assert -(defaults["num_hidden_layers_to_skip"].default + 1) == HIDDEN_LAYER


def _torch_qwen(cfg):
    from transformers import Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel

    return Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(**parity.kwargs(cfg)))


def test_qwen_text_model_parity(tmp_path):
    """hidden_states[-3] (HunyuanVideo-1.5's layer) of a right-padded batch, through the real loader."""
    from jdiff.models.hunyuan_video15.text import HIDDEN_LAYER, TEXT_SPEC, Qwen2_5_VLTextConfig

    ref = parity.randomized(_torch_qwen(Qwen2_5_VLTextConfig.tiny()), 0.1, norms_near_one=True)
    _, model = parity.load(ref, TEXT_SPEC, tmp_path)
    ids = np.random.default_rng(0).integers(1, 100, (2, 9))
    mask = (np.arange(9)[None] < np.array([[9], [6]])).astype(np.int64)
    with torch.no_grad():
        out = ref(
            input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), output_hidden_states=True
        )
    want = out.hidden_states[HIDDEN_LAYER].numpy()
    got = model(model.embed(jnp.asarray(ids)), jnp.asarray(mask), hidden_layers=(HIDDEN_LAYER,))[0]
    parity.assert_close(np.asarray(got)[mask == 1], want[mask == 1])  # padded rows are never read


def test_qwen_text_model_real_size_keys(tmp_path):
    from jdiff.models.hunyuan_video15.text import TEXT_SPEC, Qwen2_5_VLTextConfig

    cfg = Qwen2_5_VLTextConfig.qwen2_5_vl_7b()
    shapes = parity.check_coverage(
        TEXT_SPEC,
        cfg,
        parity.real_layout(lambda: _torch_qwen(cfg).to(torch.bfloat16)),
        tmp_path,
        component="text_encoder",
        filename="model.safetensors",
        missing="layers.27.self_attn.k_proj.bias",
        unexpected=("lm_head.weight", (152064, 3584)),
    )
    assert shapes["layers.self_attn.k_proj.kernel"] == (28, 3584, 512)
    assert 7.0e9 < parity.n_params(shapes) < 7.1e9  # Qwen2.5-VL-7B's language model: 7.07B
