"""Chat templates of LLM text encoders (Qwen3, Mistral-3), rendered as transformers' `apply_chat_template(...,
tokenize=False)` renders them, without importing transformers.

The template is the tokenizer folder's `chat_template.jinja` (transformers 5 saves it there) or the
`chat_template` key of its tokenizer_config.json. It runs in jinja2's immutable sandbox with transformers'
settings (trim_blocks, lstrip_blocks, loop controls, `raise_exception`, a non-escaping `tojson`).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from jdiff.errors import InputError
from jdiff.weights.config import read_json


def read_template(folder: Path) -> str:
    """The chat template of the tokenizer in `folder`.

    Raises:
        InputError: the folder has none (the pipelines need it to format prompts as their references do).
    """
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    config = folder / "tokenizer_config.json"
    template = read_json(config).get("chat_template") if config.is_file() else None
    if isinstance(template, list):  # named templates: the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if not isinstance(template, str):
        raise InputError(
            f"the tokenizer in {folder} has no chat template (chat_template.jinja or tokenizer_config.json's "
            "chat_template), which this pipeline formats prompts with; copy the tokenizer files again"
        )
    return template


def special_tokens(folder: Path) -> dict[str, str]:
    """The named special tokens (bos_token, eos_token, ...) of tokenizer_config.json, which transformers
    passes to the template (Mistral's starts with `{{ bos_token }}`)."""
    config = folder / "tokenizer_config.json"
    data = read_json(config) if config.is_file() else {}
    out = {}
    for key in ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"):
        value = data.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str):
            out[key] = value
    return out


@lru_cache(maxsize=8)
def _compiled(template: str):
    from jinja2.exceptions import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)


def render(template: str, messages: list[dict[str, Any]], **kwargs) -> str:
    """The prompt text for `messages` (e.g. `add_generation_prompt=True, enable_thinking=False`)."""
    from jinja2.exceptions import TemplateError

    try:
        return _compiled(template).render(messages=messages, tools=None, documents=None, **kwargs)
    except TemplateError as e:
        raise InputError(f"the tokenizer's chat template failed: {e}") from None
