"""`--quantization fp8` on `jdiff generate` and `jdiff serve`."""

import pytest

from jdiff import load_options
from jdiff.cli import _parser, main

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


def test_generate_passes_quantization_to_from_pretrained(monkeypatch):
    import jdiff
    from jdiff.errors import InputError

    seen = {}

    def load(model, **kw):  # stop at loading: what matters is what the CLI asks for
        seen.update(kw)
        raise InputError("stop here")

    monkeypatch.setattr(jdiff.DiffGenerator, "from_pretrained", staticmethod(load))
    assert main(["generate", "--prompt", "a red circle", *SMALL, "--quantization", "fp8"]) == 2
    assert seen["quantization"] == "fp8"
