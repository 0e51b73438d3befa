"""`jdiff convert --dry-run` over a real-size Qwen-Image-Edit-Plus layout (20B transformer, Qwen2.5-VL-7B,
the VAE; header-only sparse files), and the same with a missing and a stray key."""

import json
import shutil
import time

import pytest
import torch
import transformers
from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel

from jdiff.cli import main
from jdiff.convert.run import dry_run
from jdiff.models.qwen2_5_vl.config import Qwen2_5_VLConfig
from jdiff.models.qwen_image.config import QwenImageConfig
from jdiff.models.qwen_image.vae import QwenImageVAEConfig
from tests.fixtures_qwen_image import saved, tiny_qwen_image_pipeline
from tests.parity import kwargs
from tests.utils import meta_state_shapes, write_sparse_safetensors


def _qwen_vl_config() -> transformers.Qwen2_5_VLConfig:
    """Qwen2.5-VL-7B-Instruct's config, as transformers 5 writes it (nested text and vision configs)."""
    cfg = Qwen2_5_VLConfig.qwen_image_7b()
    v = cfg.vision_config
    vision = dict(
        depth=v.depth, hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, num_heads=v.num_heads,
        out_hidden_size=v.out_hidden_size, patch_size=v.patch_size, spatial_merge_size=v.spatial_merge_size,
        temporal_patch_size=v.temporal_patch_size, window_size=v.window_size,
        fullatt_block_indexes=list(v.fullatt_block_indexes), tokens_per_second=v.tokens_per_second,
    )  # fmt: skip
    text = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, rms_norm_eps=cfg.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta, "mrope_section": list(cfg.mrope_section)},
    )  # fmt: skip
    return transformers.Qwen2_5_VLConfig(text_config=text, vision_config=vision)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = saved(tiny_qwen_image_pipeline("edit_plus"), tmp_path_factory.mktemp("tiny"))
    (path / "jdiff_preset.json").write_text(
        json.dumps({"vae_image_area": 48 * 48, "condition_image_area": 40 * 40})
    )
    return path


@pytest.fixture(scope="module")
def real_dir(tiny, tmp_path_factory):
    """A Qwen-Image-Edit-Plus directory at real sizes: headers only (plus the tiny tokenizer and processor)."""
    real = tmp_path_factory.mktemp("qwen-image-edit-plus")
    for name in ("scheduler", "tokenizer", "processor"):
        shutil.copytree(tiny / name, real / name)
    shutil.copy2(tiny / "model_index.json", real / "model_index.json")
    transformer, vae, vl = (
        kwargs(QwenImageConfig.edit_2511()),
        kwargs(QwenImageVAEConfig.qwen_image()),
        _qwen_vl_config(),
    )
    builders = {
        "transformer": (
            lambda: QwenImageTransformer2DModel(**transformer),
            "diffusion_pytorch_model",
            transformer,
        ),
        "vae": (lambda: AutoencoderKLQwenImage(**vae), "diffusion_pytorch_model", vae),
        "text_encoder": (lambda: transformers.Qwen2_5_VLForConditionalGeneration(vl), "model", vl.to_dict()),
    }
    for name, (build, stem, config) in builders.items():
        (real / name).mkdir()
        shapes = meta_state_shapes(lambda b=build: b().to(torch.bfloat16))
        write_sparse_safetensors(real / name / f"{stem}.safetensors", shapes)
        (real / name / "config.json").write_text(json.dumps(dict(config)))
    return real


def test_real_size_dry_run(real_dir, capsys):
    start = time.perf_counter()
    report = dry_run(real_dir)
    assert report.problems == [], report.problems
    assert time.perf_counter() - start < 60  # headers only
    lines = "\n".join(report.lines)
    assert "QwenImageTransformer2DModel: 1933 tensors -> 45 parameters, all mapped" in lines, lines
    assert "AutoencoderKLQwenImage:" in lines and "Qwen2_5_VLForConditionalGeneration:" in lines, lines
    assert "processor        Qwen2_5_VLProcessor: copied as is" in lines, lines
    assert main(["convert", "--dry-run", str(real_dir), str(real_dir.parent / "out")]) == 0
    capsys.readouterr()


def test_real_size_dry_run_names_a_missing_and_a_stray_key(real_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    # Links to the other components: copying the sparse files would write their tens of GB out in full.
    for item in real_dir.iterdir():
        if item.name != "transformer":
            (broken / item.name).symlink_to(item)
    (broken / "transformer").mkdir()
    shutil.copy2(real_dir / "transformer" / "config.json", broken / "transformer" / "config.json")
    path = broken / "transformer" / "diffusion_pytorch_model.safetensors"
    shapes = meta_state_shapes(lambda: QwenImageTransformer2DModel(**kwargs(QwenImageConfig.edit_2511())))
    shapes = {k: v for k, v in shapes.items() if k != "transformer_blocks.59.img_mlp.net.2.weight"}
    shapes["transformer_blocks.3.attn.to_q.lora_A.weight"] = ((16, 3072), "BF16")
    write_sparse_safetensors(path, shapes)
    problems = "\n".join(dry_run(broken).problems)
    assert "transformer_blocks.59.img_mlp.net.2.weight" in problems, problems
    assert "transformer_blocks.3.attn.to_q.lora_A.weight" in problems, problems
    assert main(["convert", "--dry-run", str(broken), str(tmp_path / "out")]) == 2
    out = capsys.readouterr()
    assert "2 problem(s)" in out.err and "transformer_blocks.59.img_mlp.net.2.weight" in out.out + out.err


def test_convert_tiny_edit_plus_gives_the_same_latents(tiny, tmp_path, capsys):
    """`jdiff convert` of a Qwen-Image-Edit-Plus directory (processor copied) loads and edits as the source."""
    import numpy as np
    from PIL import Image

    import jdiff

    src = saved(tiny_qwen_image_pipeline("edit_plus"), tmp_path / "src")
    (src / "jdiff_preset.json").write_text(
        json.dumps({"vae_image_area": 48 * 48, "condition_image_area": 40 * 40})
    )
    out = tmp_path / "ckpt"
    assert main(["convert", str(src), str(out), "--dtype", "float32"]) == 0
    assert "processor: Qwen2_5_VLProcessor (copied)" in capsys.readouterr().out
    images = [Image.new("RGB", (56, 40), (200, 30, 30)), Image.new("RGB", (30, 64), (30, 30, 200))]
    kw = dict(image=images, num_inference_steps=1, output_type="latent", height=32, width=32)
    want = jdiff.DiffGenerator.from_pretrained(src, dtype="float32").generate("a red circle", **kw).latents
    got = jdiff.DiffGenerator.from_pretrained(out, dtype="float32").generate("a red circle", **kw).latents
    np.testing.assert_array_equal(got, want)
