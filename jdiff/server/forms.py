"""`multipart/form-data` bodies (OpenAI's `POST /v1/images/edits` and `POST /v1/videos`): fields and files.

Parsed with the standard library's MIME parser (no `python-multipart` dependency): the body is read up to
its limit (413 past it), then split into parts. Text fields are typed here, as the JSON parser types them
(`"n": "2"` is an int in a form, `"n": "two"` an error naming the field); files stay bytes.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import math
import urllib.parse
from dataclasses import dataclass, field

from fastapi import Request

from jdiff.server.errors import ApiError

MAX_FORM_BYTES = 64 << 20  # a few uploaded images

INT_FIELDS = ("n", "seed", "num_inference_steps", "output_compression", "partial_images", "num_frames")
FLOAT_FIELDS = ("guidance_scale", "true_cfg_scale", "guidance_scale_2")
BOOL_FIELDS = ("stream",)  # "true" / "false", as the OpenAI client writes them
JSON_FIELDS = ("loras",)  # a JSON object as the field's text
# Uploads even when a client sends them without a filename.
FILE_FIELDS = ("image", "image[]", "input_reference", "mask")


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)  # name -> text value (the last one given)
    files: dict[str, list[bytes]] = field(default_factory=dict)  # name -> uploaded files, in order

    def typed(self) -> dict:
        """The text fields with the numeric ones converted (int / finite float).

        Raises:
            ApiError: 400 naming a field that is not a number of its kind.
        """
        out: dict = {}
        for name, value in self.fields.items():
            if name in INT_FIELDS:
                try:
                    out[name] = int(value)
                except ValueError:
                    raise ApiError(400, f"{name} must be an integer, got {value!r}", param=name) from None
            elif name in FLOAT_FIELDS:
                try:
                    v = float(value)
                except ValueError:
                    v = math.nan
                if not math.isfinite(v):
                    raise ApiError(400, f"{name} must be a finite number, got {value!r}", param=name)
                out[name] = v
            elif name in BOOL_FIELDS:
                if value.lower() not in ("true", "false"):
                    raise ApiError(400, f"{name} must be true or false, got {value!r}", param=name)
                out[name] = value.lower() == "true"
            elif name in JSON_FIELDS:
                try:
                    out[name] = json.loads(value)
                except ValueError:
                    raise ApiError(400, f"{name} must be a JSON object, got {value!r}", param=name) from None
            else:
                out[name] = value
        return out


def is_form(request: Request) -> bool:
    """A multipart form, or a URL-encoded one (a form without files, as some clients send it)."""
    content_type = request.headers.get("content-type", "")
    return "multipart/form-data" in content_type or "application/x-www-form-urlencoded" in content_type


async def parse_form(request: Request, limit: int = MAX_FORM_BYTES) -> Form:
    """Reads a `multipart/form-data` body of at most `limit` bytes.

    Raises:
        ApiError: 413 past `limit`; 400 for a body that is not a well-formed multipart form.
    """
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"request body is over {limit} bytes")
    content_type = request.headers.get("content-type", "")
    if "application/x-www-form-urlencoded" in content_type:
        try:
            pairs = urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
        except (UnicodeDecodeError, ValueError):
            raise ApiError(400, "request body is not a well-formed URL-encoded form") from None
        return Form(fields=dict(pairs))
    if "boundary=" not in content_type:
        raise ApiError(400, "multipart/form-data request without a boundary in its Content-Type")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + bytes(body))
    if not message.is_multipart() or message.defects:
        raise ApiError(400, "request body is not a well-formed multipart/form-data form")
    form = Form()
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            raise ApiError(400, "a form part has no name (Content-Disposition: form-data; name=...)")
        payload = part.get_payload(decode=True) or b""
        if part.get_filename() is not None or name in FILE_FIELDS:
            form.files.setdefault(name, []).append(payload)
        else:
            form.fields[name] = payload.decode("utf-8", "replace")
    return form


__all__ = ["MAX_FORM_BYTES", "Form", "is_form", "parse_form"]
