"""Strict YAML loading for profiles and site configs, with errors that name file and path.

A misconfigured gateway on a remote site is diagnosed from one log line, so every error
says which file, which path inside it (``points[3].word_order``) and what is wrong, in
the notation a person would use to find the line in the YAML.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from agent.siteplan import ConfigError

__all__ = ["ConfigError", "StrictModel", "format_validation_error", "read_yaml", "validate"]

M = TypeVar("M", bound=BaseModel)

#: Fields holding a tagged union: pydantic puts the chosen tag into the error location
#: (``transport.modbus_rtu.baudrate``); people think of it as ``transport.baudrate``.
_TAGGED_FIELDS = frozenset({"transport", "framing", "uplink"})


class StrictModel(BaseModel):
    """Unknown keys are errors: a misspelt ``word_ordr`` silently ignored is exactly the
    float-swap bug users of other gateways lose days to."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    prev: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif prev in _TAGGED_FIELDS and part not in ("type",):
            # drop the union tag pydantic inserts after a tagged field
            prev = None
            continue
        elif part.startswith("function-") or part.endswith("]"):
            # internal validator names (e.g. "function-after[...]") say nothing useful
            continue
        else:
            out += f".{part}" if out else part
        prev = part
    return out or "(top level)"


#: Cross-field validators raise "path.inside: problem"; the path is joined to the
#: location pydantic reports for the validating model.
_MSG_PATH = re.compile(r"^([A-Za-z_]\w*(?:\[\d+\])*(?:\.[A-Za-z_]\w*(?:\[\d+\])*)*): (.+)$", re.S)


def format_validation_error(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors(include_url=False):
        msg = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        where = format_loc(tuple(err["loc"]))
        m = _MSG_PATH.match(msg)
        if m:
            inner, msg = m.group(1), m.group(2)
            where = inner if where == "(top level)" else f"{where}.{inner}"
        extra = ""
        if err["type"] not in ("missing", "extra_forbidden") and "input" in err:
            inp = err["input"]
            if not isinstance(inp, (dict, list)):
                extra = f" (got {inp!r})"
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{source}: {where}: {msg}{extra}")
    return "\n".join(lines)


def read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text: byte 0x{e.object[e.start]:02x} at "
                          f"offset {e.start}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e


def validate(model: type[M], data: Any, source: str, context: dict[str, Any] | None = None) -> M:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got "
                          f"{type(data).__name__}")
    try:
        return model.model_validate(data, context=context)
    except ValidationError as e:
        raise ConfigError(format_validation_error(source, e)) from None
