"""`jdiff convert`: header-only dry runs (tiny and real-size layouts) and atomic orbax checkpoints."""

import json
import os
import re
import shutil
import time
from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import jdiff
from jdiff.cli import main
from jdiff.convert.run import convert, dry_run, estimated_bytes
from jdiff.errors import ConversionError, InputError, OutputError
from jdiff.pipelines.model_dir import ModelDir
from jdiff.registry import open_model
from tests.utils import meta_state_shapes, write_sparse_safetensors

KW = dict(height=32, width=48, num_inference_steps=2, max_sequence_length=16, output_type="np", seed=4)


def test_round_trip_float32_is_exact(tiny_flux_dir, tmp_path):
    dst = convert(tiny_flux_dir, tmp_path / "ckpt", dtype="float32")
    assert json.loads((dst / "jdiff_checkpoint.json").read_text())["format"] == "jdiff"
    want = jdiff.DiffGenerator.from_pretrained(tiny_flux_dir).generate("a red circle", **KW)
    got = jdiff.DiffGenerator.from_pretrained(dst).generate("a red circle", **KW)
    np.testing.assert_array_equal(got.images, want.images)


def test_bfloat16_checkpoint(tiny_flux_dir, tmp_path):
    dst = convert(tiny_flux_dir, tmp_path / "ckpt")
    assert json.loads((dst / "jdiff_checkpoint.json").read_text())["dtype"] == "bfloat16"
    gen = jdiff.DiffGenerator.from_pretrained(dst, dtype="bfloat16")
    kernel = gen.pipeline._params["transformer"]["transformer_blocks"]["attn"]["to_q"]["kernel"]
    assert kernel[...].dtype == jnp.bfloat16
    ref = jdiff.DiffGenerator.from_pretrained(tiny_flux_dir).generate("a red circle", **KW)
    out = gen.generate("a red circle", **KW)
    assert np.abs(out.images - ref.images).mean() < 0.02  # bf16 weights and activations


def _corrupt(src, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    f = bad / "transformer" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(f)
    del tensors["single_transformer_blocks.1.proj_out.bias"]
    tensors["pos_embed.freqs"] = np.zeros(4, np.float32)
    save_file(tensors, f)
    f = bad / "vae" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(f)
    tensors["decoder.conv_in.weight"] = tensors["decoder.conv_in.weight"][:, :2]
    save_file(tensors, f)
    return bad


def test_problems_named_and_nothing_written(tiny_flux_dir, tmp_path, capsys):
    bad = _corrupt(tiny_flux_dir, tmp_path)
    assert main(["convert", str(bad), str(tmp_path / "out"), "--dry-run"]) == 2
    out = capsys.readouterr().out
    assert "missing source key 'single_transformer_blocks.1.proj_out.bias'" in out
    assert "unexpected source key 'pos_embed.freqs'" in out
    assert "shape mismatch for target 'decoder.conv_in.kernel'" in out
    with pytest.raises(ConversionError):
        convert(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad"]  # no partial directory either


def test_existing_destination_refused(tiny_flux_dir, tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(InputError, match="already exists"):
        convert(tiny_flux_dir, tmp_path / "taken")


def test_real_size_flux_dev_dry_run(tiny_flux_dir, tmp_path):
    """A FLUX.1-dev layout at real sizes (sparse files: headers only) checks in seconds."""
    import torch
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from jdiff.models.autoencoder_kl.config import AutoencoderKLConfig
    from jdiff.models.clip.config import CLIPTextConfig as ClipPreset
    from jdiff.models.flux.config import FluxConfig
    from jdiff.models.t5.config import T5Config as T5Preset
    from tests.parity import kwargs

    real = tmp_path / "flux-dev"
    for name in ("scheduler", "tokenizer", "tokenizer_2"):
        shutil.copytree(tiny_flux_dir / name, real / name)
    shutil.copy2(tiny_flux_dir / "model_index.json", real / "model_index.json")
    flux, vae = kwargs(FluxConfig.dev()), kwargs(AutoencoderKLConfig.flux())
    clip, t5 = kwargs(ClipPreset.large()), kwargs(T5Preset.xxl())
    builders = {
        "transformer": (lambda: FluxTransformer2DModel(**flux), "diffusion_pytorch_model", None),
        "vae": (lambda: AutoencoderKL(**vae), "diffusion_pytorch_model", None),
        "text_encoder": (lambda: CLIPTextModel(CLIPTextConfig(**clip)), "model", "text_model."),
        "text_encoder_2": (lambda: T5EncoderModel(T5Config(**t5)), "model", None),
    }
    for name, (build, stem, prefix) in builders.items():
        (real / name).mkdir()
        shapes = meta_state_shapes(lambda b=build: b().to(torch.bfloat16))
        if prefix:  # the released CLIP checkpoint carries transformers 4's `text_model.` prefix
            shapes = {prefix + k: v for k, v in shapes.items()}
        shapes.pop("encoder.embed_tokens.weight", None)  # tied to shared.weight; not saved
        write_sparse_safetensors(real / name / f"{stem}.safetensors", shapes)
    cfgs = {"transformer": flux, "vae": vae, "text_encoder": clip, "text_encoder_2": t5}
    for name, cfg in cfgs.items():
        (real / name / "config.json").write_text(json.dumps(dict(cfg)))
    start = time.perf_counter()
    report = dry_run(real)
    elapsed = time.perf_counter() - start
    assert report.problems == []
    assert any("FluxTransformer2DModel: 1" in line and "all mapped" in line for line in report.lines)
    assert elapsed < 60  # seconds, not minutes, on a 2-core CI box (it reads ~30 headers)


def test_convert_prints_each_component_and_respects_the_umask(tiny_flux_dir, tmp_path, capsys):
    old = os.umask(0o027)
    try:
        assert main(["convert", str(tiny_flux_dir), str(tmp_path / "new" / "ckpt")]) == 0  # parent made
    finally:
        os.umask(old)
    lines = capsys.readouterr().out.splitlines()
    assert "transformer: FluxTransformer2DModel -> bfloat16" in lines, lines
    assert "vae: AutoencoderKL -> bfloat16" in lines, lines
    assert any(re.fullmatch(r"tokenizer: CLIPTokenizer\w* \(copied\)", line) for line in lines), lines
    assert lines[-1] == str(tmp_path / "new" / "ckpt")
    dst = tmp_path / "new" / "ckpt"
    assert dst.stat().st_mode & 0o777 == 0o750  # not mkdtemp's 0700
    for path in dst.rglob("*"):
        want = 0o750 if path.is_dir() else 0o640
        assert path.stat().st_mode & 0o777 == want, (path, oct(path.stat().st_mode))


@pytest.fixture
def no_tensor_read(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a component was loaded before the destination was checked")

    monkeypatch.setattr(ModelDir, "load", refuse)


def test_unwritable_destination_fails_before_reading_tensors(tiny_flux_dir, tmp_path, no_tensor_read, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["convert", str(tiny_flux_dir), str(blocker / "ckpt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jdiff: error: cannot write the converted model") and err.count("\n") == 1, err
    assert "is a file, not a directory" in err


def test_full_disk_fails_before_reading_tensors(tiny_flux_dir, tmp_path, monkeypatch, no_tensor_read):
    need = estimated_bytes(open_model(tiny_flux_dir), 2)
    assert need > 100_000  # the tiny model's weights and tokenizers, in bytes
    monkeypatch.setattr(
        shutil, "disk_usage", lambda path: SimpleNamespace(total=10**12, used=0, free=need // 2)
    )
    with pytest.raises(OutputError, match="GiB free; the converted model needs about"):
        convert(tiny_flux_dir, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()
    # float32 needs about twice the room of bfloat16 for the same tensors.
    assert estimated_bytes(open_model(tiny_flux_dir), 4) > 1.5 * need


def test_dry_run_names_every_problem_at_once(tiny_flux_dir, tmp_path, capsys):
    """A component jdiff does not map (a UNet in a FLUX directory), two missing folders and a broken
    transformer are all reported by one dry run, and `jdiff convert` refuses before writing anything."""
    import json
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_flux_dir, bad)
    index = json.loads((bad / "model_index.json").read_text())
    index["unet"] = ["diffusers", "UNet2DConditionModel"]
    (bad / "unet").mkdir()
    (bad / "model_index.json").write_text(json.dumps(index))
    shutil.rmtree(bad / "vae")
    shutil.rmtree(bad / "tokenizer_2")
    (bad / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    problems = dry_run(bad).problems
    assert any(
        p.startswith("unet: a UNet2DConditionModel, which jdiff's flux family does not map") for p in problems
    )
    assert any(p.startswith("vae: component folder") and p.endswith("is missing") for p in problems)
    assert any(p.startswith("tokenizer_2: component folder") for p in problems)
    assert any(p.startswith("transformer:") for p in problems)
    assert main(["convert", str(bad), str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()
    assert main(["convert", "--dry-run", str(bad), str(tmp_path / "out")]) == 2
    err = capsys.readouterr()
    assert "unet" in err.out + err.err and "UNet2DConditionModel" in err.out + err.err
