"""The text form scenarios share (``--scenario`` of the lane and stack drivers).

Entries are separated by commas or blanks; each ends in optional ``/key=value`` parameters;
a whole text may instead name a preset.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any


def entries(text: str, presets: Mapping[str, str]) -> list[str]:
    """The entries of ``text``, or of the preset it names."""
    text = presets.get(text.strip(), text)
    return [e for e in re.split(r"[,\s]+", text.strip()) if e]


def params(text: str, keep_text: tuple[str, ...] = ("variant", "signal")) -> dict[str, Any]:
    """``/k=v/k2=v2`` -> ``{k: v}``; numbers become floats except for ``keep_text`` keys."""
    out: dict[str, Any] = {}
    for part in text.split("/"):
        if not part:
            continue
        k, v = part.split("=", 1)
        if k in keep_text:
            out[k] = v
            continue
        try:
            out[k] = float(v)
        except ValueError:
            out[k] = v
    return out
