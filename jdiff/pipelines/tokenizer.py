"""Prompt tokenizers: the Rust `tokenizers` library at run time, transformers only to read a folder once.

A pipeline needs one thing from a tokenizer: a batch of prompts as ids [B, L] (and the attention mask),
padded and truncated to L. transformers' fast tokenizers do exactly that with a `tokenizers.Tokenizer` inside
(the "backend"); the rest of transformers is the cost. Importing its tokenizer classes takes seconds, and
some releases (5.17) import torch from there.

So a folder is read through transformers once. That run also converts vocab.json + merges.txt (FLUX's CLIP
folder) into a backend. The backend and the few settings the call needs (pad token, sides, model_max_length)
are then written to a small JSON file under the cache directory, keyed by the folder's bytes and the
transformers version. Later starts build the same backend from that file and never import transformers.
Padding and truncation are set exactly as transformers sets them before `encode_batch`, so both paths give
the same ids (tests/test_tokenizers.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from jdiff.errors import InputError

CACHE_FORMAT = 1


@dataclass(frozen=True)
class Settings:
    """What transformers' `__call__` reads from the tokenizer object besides the backend."""

    pad_token: str
    pad_id: int
    padding_side: str
    truncation_side: str
    model_max_length: int
    split_special_tokens: bool = False


class PromptTokenizer:
    """Prompts -> (ids, attention mask), int32 [B, max_length], right-padded/truncated as the folder says."""

    def __init__(self, backend, settings: Settings):
        self.backend = backend
        self.settings = settings
        backend.encode_special_tokens = settings.split_special_tokens

    @property
    def model_max_length(self) -> int:
        return self.settings.model_max_length

    def __call__(
        self, prompts: list[str], max_length: int, *, add_special_tokens: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        s = self.settings
        self.backend.enable_truncation(
            max_length=max_length, stride=0, strategy="longest_first", direction=s.truncation_side
        )
        self.backend.enable_padding(
            length=max_length, direction=s.padding_side, pad_id=s.pad_id, pad_token=s.pad_token, pad_type_id=0
        )
        encodings = self.backend.encode_batch(list(prompts), add_special_tokens=add_special_tokens)
        ids = np.array([e.ids for e in encodings], np.int32).reshape(len(encodings), max_length)
        mask = np.array([e.attention_mask for e in encodings], np.int32).reshape(ids.shape)
        return ids, mask

    def lengths(self, prompts: list[str]) -> list[int]:
        """How many tokens each prompt encodes to, special tokens included, before any truncation: a prompt
        longer than a call's `max_length` loses its last tokens (the pipelines warn)."""
        self.backend.no_truncation()  # `__call__` sets truncation and padding again each time
        self.backend.no_padding()
        return [len(e.ids) for e in self.backend.encode_batch(list(prompts), add_special_tokens=True)]


class TransformersTokenizer:
    """The same call over a transformers tokenizer with no Rust backend (a slow-only class)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    @property
    def model_max_length(self) -> int:
        return int(self.tokenizer.model_max_length)

    def __call__(
        self, prompts: list[str], max_length: int, *, add_special_tokens: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        out = self.tokenizer(
            list(prompts),
            add_special_tokens=add_special_tokens,
            padding="max_length",
            max_length=max_length,
            truncation=True,
            return_attention_mask=True,
            return_tensors="np",
        )
        return np.asarray(out["input_ids"], np.int32), np.asarray(out["attention_mask"], np.int32)

    def lengths(self, prompts: list[str]) -> list[int]:
        """How many tokens each prompt encodes to, special tokens included, before any truncation."""
        return [len(ids) for ids in self.tokenizer(list(prompts), truncation=False)["input_ids"]]


def cache_dir() -> Path | None:
    """Where converted tokenizers are kept: `tokenizers/` inside jdiff's cache ($JDIFF_CACHE_DIR, default
    ~/.cache/jdiff/jax); None when JDIFF_CACHE_DIR is set empty (caching off)."""
    root = os.environ.get("JDIFF_CACHE_DIR", str(Path.home() / ".cache" / "jdiff" / "jax"))
    return Path(root) / "tokenizers" if root else None


def fingerprint(folder: Path) -> str:
    """Hash of every file in the tokenizer folder (names and bytes) and the transformers version that read it."""
    h = hashlib.sha256(f"jdiff-tokenizer-{CACHE_FORMAT}".encode())
    try:
        h.update(metadata.version("transformers").encode())
    except metadata.PackageNotFoundError:
        h.update(b"no-transformers")
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:32]


def load_tokenizer(folder: Path, read_with_transformers):
    """A PromptTokenizer for `folder`, from the cache when it holds this folder's conversion.

    `read_with_transformers(folder)` returns the transformers tokenizer; it is called only on a cache miss.
    """
    cache = cache_dir()
    entry = cache / f"{fingerprint(folder)}.json" if cache is not None else None
    if entry is not None and entry.is_file():
        tok = _from_entry(entry)
        if tok is not None:
            return tok
    hf = read_with_transformers(folder)
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        return TransformersTokenizer(hf)
    if hf.pad_token is None or hf.pad_token_id is None:
        raise InputError(
            f"the tokenizer in {folder} has no pad token; its tokenizer_config.json is incomplete"
        )
    settings = Settings(
        pad_token=str(hf.pad_token),
        pad_id=int(hf.pad_token_id),
        padding_side=str(hf.padding_side),
        truncation_side=str(hf.truncation_side),
        model_max_length=int(hf.model_max_length),
        split_special_tokens=bool(getattr(hf, "split_special_tokens", False)),
    )
    data = {"format": CACHE_FORMAT, "settings": asdict(settings), "backend": backend.to_str()}
    if entry is not None:
        _write_atomic(entry, json.dumps(data))
    return _build(data)


def _build(data: dict) -> PromptTokenizer:
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(data["backend"])
    backend.no_padding()
    backend.no_truncation()
    return PromptTokenizer(backend, Settings(**data["settings"]))


def _from_entry(entry: Path) -> PromptTokenizer | None:
    """The cached tokenizer, or None (read again) when the file is unreadable or of another format."""
    try:
        data = json.loads(entry.read_text())
        if data.get("format") != CACHE_FORMAT:
            return None
        return _build(data)
    except Exception:  # unreadable JSON, missing keys, or a backend `tokenizers` rejects (plain Exception)
        return None


def _write_atomic(path: Path, text: str) -> None:
    """Writes through a temp file and a rename; a cache that cannot be written is skipped, not an error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError:
        return
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)
