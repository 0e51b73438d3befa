"""Tokenizers load as the class AutoTokenizer picks, without importing AutoTokenizer (and with it torch)."""

import json
import subprocess
import sys

import numpy as np
import pytest
from transformers import AutoTokenizer

from jdiff.api import embedded_model_path
from jdiff.pipelines.model_dir import ModelDir, _tokenizer_class
from jdiff.tiny.tokenizers import t5_tokenizer

PROMPTS = ["a red circle on a blue background", "", "Ünïcödé  text,  double  spaces!", "word " * 200]


def test_same_class_and_ids_as_auto_tokenizer(tmp_path):
    root = embedded_model_path()
    t5 = tmp_path / "t5"
    t5_tokenizer(["red", "circle"], model_max_length=512).save_pretrained(t5)
    unnamed = tmp_path / "unnamed"  # no tokenizer_class: AutoTokenizer itself decides
    t5_tokenizer(["red"], model_max_length=64).save_pretrained(unnamed)
    config = json.loads((unnamed / "tokenizer_config.json").read_text())
    del config["tokenizer_class"]
    (unnamed / "tokenizer_config.json").write_text(json.dumps(config))
    assert _tokenizer_class(unnamed) is AutoTokenizer
    for folder in (root / "tokenizer", root / "tokenizer_2", t5, unnamed):
        ours = _tokenizer_class(folder).from_pretrained(str(folder))
        ref = AutoTokenizer.from_pretrained(str(folder))
        assert type(ours) is type(ref)
        kw = dict(padding="max_length", max_length=48, truncation=True, return_tensors="np")
        np.testing.assert_array_equal(ours(PROMPTS, **kw)["input_ids"], ref(PROMPTS, **kw)["input_ids"])


def test_loading_tokenizers_does_not_import_torch():
    # Some transformers releases (5.17) import torch from their tokenizer module itself; nothing to test there.
    baseline = "import sys, transformers.tokenization_utils_tokenizers; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", baseline], capture_output=True, text=True, timeout=120)
    if out.stdout.strip() != "False":
        pytest.skip(f"this transformers imports torch from its tokenizer module: {out.stdout or out.stderr}")
    code = (
        "import sys\n"
        "from jdiff.api import embedded_model_path\n"
        "from jdiff.pipelines.model_dir import ModelDir\n"
        "m = ModelDir.open(embedded_model_path())\n"
        "m.tokenizer('tokenizer'); m.tokenizer('tokenizer_2')\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_model_dir_tokenizer_round_trip():
    tok = ModelDir.open(embedded_model_path()).tokenizer("tokenizer")
    assert tok.model_max_length == 77


def test_incomplete_tokenizer_folders_are_refused(tmp_path):
    import shutil

    from jdiff.errors import InputError

    model = tmp_path / "model"
    shutil.copytree(embedded_model_path(), model)
    (model / "tokenizer_2" / "tokenizer.json").unlink()  # transformers would load an empty vocabulary
    with pytest.raises(InputError, match="no vocabulary file"):
        ModelDir.open(model).tokenizer("tokenizer_2")
    (model / "tokenizer" / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        ModelDir.open(model).tokenizer("tokenizer")
