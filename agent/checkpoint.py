"""The latest checkpoint of the central receipt log, kept on the gateway.

The ingest attaches its latest signed checkpoint (docs/evidence.md §3) to the
acknowledgements it sends a gateway. The gateway keeps the one with the highest number in
a small file: whoever later doubts the central log (the station operator in a dispute, an
auditor) can take that file from the gateway and compare it with the centre's exports; a
central log rewritten after that checkpoint would not match it. With the central public key
configured the signature is checked before the file is replaced.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from stationseal.checkpoint import Checkpoint, CheckpointError, parse_checkpoint, verify_checkpoint


def load_latest(path: Path) -> Checkpoint | None:
    try:
        return parse_checkpoint(path.read_text(encoding="ascii"))
    except (OSError, UnicodeDecodeError, CheckpointError):
        return None


def keep_latest(path: Path, doc: Any, public_key: Any = None) -> bool:
    """Store ``doc`` if it is a well-formed checkpoint (signed by ``public_key`` when
    given) newer than the stored one. Returns whether the file changed; a malformed or
    badly signed checkpoint raises :class:`CheckpointError` naming why."""
    cp = parse_checkpoint(doc)
    if public_key is not None:
        verify_checkpoint(cp, public_key)
    cur = load_latest(path)
    if cur is not None and cur.origin == cp.origin and cur.number >= cp.number:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(json.dumps(cp.to_json(), separators=(",", ":")) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return True
