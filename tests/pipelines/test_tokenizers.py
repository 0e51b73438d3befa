"""Tokenizers: the class AutoTokenizer picks, read once through transformers, then served from jdiff's cache by
the `tokenizers` library alone, with the same ids and masks as transformers gives."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from transformers import AutoTokenizer

from jdiff.api import embedded_model_path
from jdiff.pipelines import tokenizer as T
from jdiff.pipelines.model_dir import ModelDir, _tokenizer_class
from jdiff.tiny.tokenizers import clip_tokenizer, t5_tokenizer

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
    assert isinstance(tok, T.PromptTokenizer)
    assert tok.model_max_length == 77


def _slow_format_clip(folder):
    """A CLIP tokenizer folder as FLUX ships it: vocab.json + merges.txt, no tokenizer.json."""
    clip_tokenizer(folder, ["red", "circle", "blue", "square"])
    specials = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "pad_token": "<|endoftext|>",
        **specials,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "special_tokens_map.json").write_text(json.dumps({**specials, "pad_token": "<|endoftext|>"}))
    return folder


@pytest.mark.parametrize("cached", [False, True])
def test_prompt_tokenizer_matches_transformers(tmp_path, monkeypatch, cached):
    """Ids and masks equal transformers' (padding="max_length", truncation) for CLIP and T5 folders, slow
    format included, read through transformers (cache off) or rebuilt from the cache file (cache on)."""
    monkeypatch.setenv("JDIFF_CACHE_DIR", str(tmp_path / "cache") if cached else "")
    root = embedded_model_path()
    t5 = tmp_path / "t5"
    t5_tokenizer(["red", "circle"], model_max_length=512).save_pretrained(t5)
    folders = (root / "tokenizer", root / "tokenizer_2", t5, _slow_format_clip(tmp_path / "clip"))
    for folder in folders:
        if cached:  # the first read fills the cache; the tokenizer compared is the one rebuilt from it
            T.load_tokenizer(folder, _read)
            assert (tmp_path / "cache" / "tokenizers" / f"{T.fingerprint(folder)}.json").is_file()
            tok = T.load_tokenizer(folder, _must_not_read)
        else:
            tok = T.load_tokenizer(folder, _read)
        ref = AutoTokenizer.from_pretrained(str(folder))
        assert tok.model_max_length == ref.model_max_length
        for length in (77, 12, 3):
            ids, mask = tok(PROMPTS, length)
            want = ref(PROMPTS, padding="max_length", max_length=length, truncation=True, return_tensors="np")
            assert ids.dtype == mask.dtype == np.int32 and ids.shape == (len(PROMPTS), length)
            np.testing.assert_array_equal(ids, want["input_ids"], err_msg=f"{folder.name} {length}")
            np.testing.assert_array_equal(mask, want["attention_mask"], err_msg=f"{folder.name} {length}")


def _read(folder):
    return AutoTokenizer.from_pretrained(str(folder))


def _must_not_read(folder):
    raise AssertionError(f"{folder} was read through transformers, not from the cache")


def test_tokenizer_cache_is_keyed_by_the_folder_and_survives_corruption(tmp_path, monkeypatch):
    monkeypatch.setenv("JDIFF_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "t5"
    t5_tokenizer(["red"], model_max_length=64).save_pretrained(folder)
    key = T.fingerprint(folder)
    T.load_tokenizer(folder, _read)
    entry = tmp_path / "cache" / "tokenizers" / f"{key}.json"
    entry.write_text("{truncated")  # a corrupt entry is read again through transformers and rewritten
    assert T.load_tokenizer(folder, _read).model_max_length == 64
    assert json.loads(entry.read_text())["format"] == T.CACHE_FORMAT
    # Any change in the folder is another key: a stale conversion is never served.
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 32}))
    assert T.fingerprint(folder) != key
    assert T.load_tokenizer(folder, _read).model_max_length == 32


def test_cached_tokenizers_load_without_transformers(tmp_path):
    """A second process builds both embedded tokenizers from the cache without importing transformers."""
    env = {**os.environ, "JDIFF_CACHE_DIR": str(tmp_path / "cache")}
    code = (
        "import sys\n"
        "from jdiff.api import embedded_model_path\n"
        "from jdiff.pipelines.model_dir import ModelDir\n"
        "m = ModelDir.open(embedded_model_path())\n"
        "ids, _ = m.tokenizer('tokenizer')(['a red circle'], 77)\n"
        "ids2, _ = m.tokenizer('tokenizer_2')(['a red circle'], 16)\n"
        "print(ids[0, :4].tolist(), ids2[0, :4].tolist(), 'transformers' in sys.modules)\n"
    )
    run = [sys.executable, "-c", code]
    first = subprocess.run(run, env=env, capture_output=True, text=True, timeout=120, check=True)
    second = subprocess.run(run, env=env, capture_output=True, text=True, timeout=120, check=True)
    assert first.stdout.split()[-1] == "True"  # the cold read goes through transformers
    assert second.stdout.split()[-1] == "False", second.stdout
    assert first.stdout.rsplit(" ", 1)[0] == second.stdout.rsplit(" ", 1)[0]  # same ids


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


def test_tokenizer_without_pad_token_is_refused(tmp_path, monkeypatch):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    from jdiff.errors import InputError

    monkeypatch.setenv("JDIFF_CACHE_DIR", "")
    backend = Tokenizer(WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>"))
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>").save_pretrained(tmp_path / "tok")
    with pytest.raises(InputError, match="no pad token"):
        T.load_tokenizer(tmp_path / "tok", _read)


def test_unwritable_tokenizer_cache_is_skipped(tmp_path, monkeypatch):
    (tmp_path / "not-a-dir").write_text("")
    monkeypatch.setenv("JDIFF_CACHE_DIR", str(tmp_path / "not-a-dir"))
    tok = T.load_tokenizer(embedded_model_path() / "tokenizer", _read)
    ids, mask = tok(["a red circle"], 77)
    assert ids.shape == mask.shape == (1, 77) and mask.sum() > 2


@pytest.mark.parametrize("wrapped", [False, True])
def test_lengths_count_what_truncation_drops(tmp_path, monkeypatch, wrapped):
    """`lengths` gives each prompt's untruncated token count (special tokens included), as transformers
    counts it, so the pipelines can say how many tokens a max_length drops; then a call truncates as before."""
    monkeypatch.setenv("JDIFF_CACHE_DIR", "")
    root = embedded_model_path()
    for folder in (root / "tokenizer", root / "tokenizer_2"):
        ref = AutoTokenizer.from_pretrained(str(folder))
        tok = T.TransformersTokenizer(ref) if wrapped else T.load_tokenizer(folder, _read)
        want = [len(ids) for ids in ref(PROMPTS, truncation=False)["input_ids"]]
        assert tok.lengths(PROMPTS) == want
        assert want[-1] > 200  # "word " * 200 is longer than any max_length below
        ids, mask = tok(PROMPTS, 12)  # truncation and padding are back on for calls
        assert ids.shape == (len(PROMPTS), 12) and mask[-1].sum() == 12
