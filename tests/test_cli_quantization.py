"""`--quantization fp8` on `jdiff generate` and `jdiff serve`."""

import pytest

from jdiff import load_options
from jdiff.cli import _parser, main
from jdiff.pipelines import quantize

SMALL = ["--height", "32", "--width", "48", "--steps", "2"]


@pytest.mark.parametrize("command", [["generate", "--prompt", "x"], ["serve"]])
def test_flag_parses_into_from_pretrained_keywords(command):
    args = _parser().parse_args([*command, "--quantization", "fp8", "--offload", "model"])
    assert load_options.load_kwargs(args) == {"offload": "model", "quantization": "fp8"}
    assert load_options.load_kwargs(_parser().parse_args(command))["quantization"] is None


def test_bad_value_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", "--prompt", "x", "--quantization", "int4"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("jdiff: error:") and "--quantization" in err and "'fp8'" in err


def test_generate_quantizes_the_transformer(tiny_flux_dir, tmp_path, capsys, monkeypatch):
    seen = []
    apply = quantize.apply
    monkeypatch.setattr(quantize, "apply", lambda p, m, q: seen.append(apply(p, m, q)) or seen[-1])
    out = tmp_path / "fp8.png"
    argv = [
        "generate",
        "--model",
        str(tiny_flux_dir),
        "--prompt",
        "a red circle",
        *SMALL,
        "--output",
        str(out),
    ]
    assert main([*argv, "--quantization", "fp8"]) == 0 and out.exists()
    assert "transformer:transformer_blocks.attn.to_q" in seen[0]
