"""Offline tokenizers for the end-to-end workloads: built from fixed word lists, never trained or downloaded.

Random weights need only token ids that fit the real vocabularies; what must be real is the token count,
which sets the text encoders' and the denoiser's work (and Qwen-Image drops its template's first 34 tokens).
So the Qwen2 tokenizers here are byte-level BPE whose merges spell out every word of the bench's texts (the
prompt, the negative prompt, the pipelines' chat templates) whole, with and without the leading space: common
English words are single tokens in Qwen's real 151k vocabulary too, so the counts match it
(`test_bench_tokenizers_count_as_the_real_ones`). CLIP pads to its 77 positions whatever the prompt, so SDXL
takes `jdiff.tiny.tokenizers.clip_tokenizer` as is. FLUX.1 copies the embedded tiny model's tokenizers.

`write(recipe, folder)` saves the tokenizer a component folder holds; `RECIPES` names them.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

# The user / assistant part of Qwen3's chat template (the part prompts without system turns or tools reach):
# Z-Image renders it with enable_thinking=True (nothing appended), FLUX.2-klein with False (an empty think).
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}{%- endif %}"
)
QWEN_SPECIALS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
    "<think>", "</think>",
)  # fmt: skip
# Words of Qwen-Image's and Z-Image's templates besides the prompts' (jdiff.pipelines.qwen_image_text).
TEMPLATE_TEXT = (
    "system user assistant Describe the image by detailing the color, shape, size, texture, quantity, text, "
    "spatial relationships of the objects and background"
)


def _merges(words: list[str], encode) -> list[tuple[str, str]]:
    """BPE merges that make each of `words` one token (`encode(merges, word)` -> its tokens).

    Left-to-right merges per word can lose to another word's earlier merge (one word's "ho" before another's
    "ph" + "o"); whatever a word still splits into is then merged further, appended last (the lowest
    priority, so it fires only once everything else has), until every word is whole.
    """
    merges: list[tuple[str, str]] = []
    for _ in range(8):
        split = [pieces for w in words if len(pieces := encode(merges, w)) > 1]
        if not split:
            return merges
        for pieces in split:
            left = pieces[0]
            for right in pieces[1:]:
                if (left, right) not in merges:
                    merges.append((left, right))
                left += right
    raise RuntimeError(f"merges do not converge for {words}")


def qwen2_tokenizer(folder: Path, texts: tuple[str, ...], chat_template: str | None = None):
    """A `Qwen2TokenizerFast` saved to `folder`: byte-level BPE whose merges spell each word of `texts`
    whole, Qwen's special tokens, and `chat_template` if given."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import Qwen2TokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    found = {w for t in texts for w in re.findall(r"[A-Za-z]+", t)}
    words = sorted(f"{space}{w}" for w in found for space in ("", "Ġ"))

    def build(merges):
        vocab = {c: i for i, c in enumerate(alphabet)}
        for a, b in merges:
            vocab.setdefault(a + b, len(vocab))
        tk = Tokenizer(BPE(vocab, merges))
        tk.pre_tokenizer = byte_level
        tk.decoder = decoders.ByteLevel()
        return tk

    def encode(merges, word):
        return [t.value for t in build(merges).model.tokenize(word)]

    tok = Qwen2TokenizerFast(
        tokenizer_object=build(_merges(words, encode)),
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(QWEN_SPECIALS[1:]),
    )
    if chat_template is not None:
        tok.chat_template = chat_template
    tok.model_max_length = 131072
    tok.save_pretrained(folder)
    return tok


def clip_tokenizers(folder: Path, texts: tuple[str, ...], pad_token: str | None = None):
    """SDXL's CLIP tokenizer (`pad_token` "!" for its second one, as the released tokenizer_2), saved."""
    from transformers import CLIPTokenizer

    from jdiff.tiny.tokenizers import clip_tokenizer

    words = sorted({w for t in texts for w in re.findall(r"[a-z]+", t.lower())})
    tok = clip_tokenizer(folder, words, model_max_length=77)
    if pad_token is not None:
        tok = CLIPTokenizer(
            str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token=pad_token, model_max_length=77
        )
    tok.save_pretrained(folder)
    return tok


def umt5_tokenizer(folder: Path, texts: tuple[str, ...]):
    """Wan's tokenizer (a `T5TokenizerFast`, 512 tokens) with the words of `texts` as pieces, saved; its ids fit
    UMT5's vocabulary (the texts are padded to 512 tokens either way, as Wan's pipelines pad them)."""
    from jdiff.tiny.tokenizers import t5_tokenizer

    tok = t5_tokenizer(sorted({w for t in texts for w in re.findall(r"[A-Za-z]+", t)}), model_max_length=512)
    tok.save_pretrained(folder)
    return tok


def _embedded(name: str, folder: Path) -> None:
    from jdiff.api import embedded_model_path

    shutil.copytree(embedded_model_path() / name, folder)


def write(recipe: str, folder: Path, texts: tuple[str, ...]) -> None:
    """Saves the tokenizer `recipe` (a key of `RECIPES`) for `texts` into `folder`."""
    RECIPES[recipe](folder, texts)


RECIPES = {
    # FLUX.1: the embedded tiny model's CLIP and T5 tokenizers (ids fit the real vocabularies).
    "embedded:tokenizer": lambda folder, texts: _embedded("tokenizer", folder),
    "embedded:tokenizer_2": lambda folder, texts: _embedded("tokenizer_2", folder),
    # Z-Image (Qwen3-4B) and FLUX.2-klein (Qwen3-4B): Qwen's vocabulary, the Qwen3 chat template.
    "qwen3": lambda folder, texts: qwen2_tokenizer(folder, (*texts, TEMPLATE_TEXT), QWEN3_CHAT_TEMPLATE),
    # Qwen-Image (Qwen2.5-VL-7B): the pipeline formats its own template, so none in the tokenizer.
    "qwen2_5_vl": lambda folder, texts: qwen2_tokenizer(folder, (*texts, TEMPLATE_TEXT)),
    "clip": lambda folder, texts: clip_tokenizers(folder, texts),
    "clip_bang_pad": lambda folder, texts: clip_tokenizers(folder, texts, pad_token="!"),
    "umt5": umt5_tokenizer,
}
