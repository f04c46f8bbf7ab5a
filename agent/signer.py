"""The gateway's signer, from the site config: its key file or its PKCS#11 token.

A key file is loaded with ``lean=True`` (stationseal.signing.load_signer): an Ed25519 key
signs through the libcrypto Python's ``ssl`` already maps, so the agent does not load the
``cryptography`` package for the length of its run (docs/agent.md, "Cost"). P-256 keys
and hardware tokens still need it (and python-pkcs11); they are loaded only for sites
that use them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from stationseal.signing import Signer


class _Pkcs11Key(Protocol):
    module: Path
    token_label: str
    key_label: str
    pin_file: Path


class _KeyConfig(Protocol):
    @property
    def key_file(self) -> Path | None: ...

    @property
    def key_pkcs11(self) -> _Pkcs11Key | None: ...


def make_signer(cfg: _KeyConfig) -> Signer:
    """The gateway's signer: from its key file, or inside its PKCS#11 token. ``cfg`` is
    the validated site config (pydantic model or its plain copy)."""
    from stationseal.signing import load_signer

    if cfg.key_file is not None:
        return load_signer(cfg.key_file, lean=True)
    assert cfg.key_pkcs11 is not None
    from stationseal.pkcs11 import Pkcs11Signer

    k = cfg.key_pkcs11
    pin = k.pin_file.read_text(encoding="utf-8").strip()
    return Pkcs11Signer(str(k.module), k.token_label, pin, k.key_label)
