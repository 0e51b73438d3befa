"""`jdiff generate --lora PATH[:SCALE]` and `jdiff serve --lora NAME=PATH`."""

import pytest
from PIL import Image

from jdiff.cli import _lora_arg, _serve_lora_arg, main
from jdiff.errors import InputError
from tests import lora_files

SMALL = ["--height", "32", "--width", "48", "--steps", "2", "--seed", "3"]


def test_lora_arguments():
    assert _lora_arg("a/b.safetensors") == ("a/b.safetensors", 1.0)
    assert _lora_arg("a/b.safetensors:0.5") == ("a/b.safetensors", 0.5)
    assert _lora_arg("c:/x.safetensors") == ("c:/x.safetensors", 1.0)
    assert _serve_lora_arg("style=a:b.safetensors") == ("style", "a:b.safetensors")
    with pytest.raises(InputError, match="NAME=PATH"):
        _serve_lora_arg("style.safetensors")


def test_generate_with_loras(tiny_flux_dir, tmp_path, capsys, monkeypatch):
    import jdiff

    seen, generate = [], jdiff.DiffGenerator.generate
    monkeypatch.setattr(
        jdiff.DiffGenerator,
        "generate",
        lambda self, p, **kw: seen.append(kw["loras"]) or generate(self, p, **kw),
    )
    from diffusers import FluxTransformer2DModel

    mods = lora_files.linears(FluxTransformer2DModel.from_pretrained(tiny_flux_dir / "transformer"))
    lora = lora_files.write(
        tmp_path / "style.safetensors", mods, ["transformer_blocks.0.attn.to_q", "proj_out"]
    )
    out = tmp_path / "lora.png"
    model = ["--model", str(tiny_flux_dir), "--prompt", "a red circle", *SMALL, "--output", str(out)]
    assert main(["generate", *model, "--lora", f"{lora}:0.9", "--lora", str(lora)]) == 0
    assert Image.open(out).size == (48, 32)
    assert seen == [{"lora0": 0.9, "lora1": 1.0}]
    capsys.readouterr()
    rc = main(
        ["generate", "--model", str(tiny_flux_dir), "--prompt", "x", *SMALL, "--lora", str(tmp_path / "no")]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "LoRA file" in err and "does not exist" in err and err.count("\n") == 1
