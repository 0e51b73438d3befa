"""Deterministic tokenizers for small models: built from fixed vocabularies, never trained.

`clip_tokenizer` is a byte-level BPE `CLIPTokenizer` over single characters, with merges that spell out
`words` whole; `t5_tokenizer` is a Unigram `T5TokenizerFast` with `words` as pieces and ASCII characters as
fallback. The same inputs give the same files on every machine, so the embedded model's tokenizers can be
rebuilt and compared with the committed ones.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path


def _word_merges(word: str) -> list[tuple[str, str]]:
    """Left-to-right merges building `word</w>` from its characters."""
    merges, left = [], word[0]
    for i, ch in enumerate(word[1:], start=1):
        right = ch + ("</w>" if i == len(word) - 1 else "")
        merges.append((left, right))
        left = left + right
    return merges


def clip_tokenizer(folder: Path, words: Sequence[str] = (), model_max_length: int = 77):
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = chars + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []
    for w in words:
        for m in _word_merges(w) if len(w) > 1 else []:
            if m not in merges:
                merges.append(m)
    for a, b in merges:
        if a + b not in vocab:
            vocab.append(a + b)
    vocab += ["<|startoftext|>", "<|endoftext|>"]  # last: the highest ids, as in CLIP's own vocabulary
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=model_max_length
    )


def t5_tokenizer(words: Sequence[str] = (), model_max_length: int = 512):
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import Unigram
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("▁" + w, -2.0) for w in words]
    pieces += [(chr(c), -5.0) for c in range(33, 127)] + [("▁", -3.0)]
    tk = Tokenizer(Unigram(pieces, unk_id=2, byte_fallback=False))
    tk.normalizer = normalizers.Sequence([normalizers.Replace(" ", "▁")])
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok = T5TokenizerFast(
        tokenizer_object=tk, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0
    )
    tok.model_max_length = model_max_length
    return tok
