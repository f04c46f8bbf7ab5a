"""After the run: an evidence package for every live alert (`stationseal evidence build`),
each checked as an officer's verifier would (`stationseal evidence verify`), into
``OUT/evidence/``. Uses the ingest's own state: stored alerts, frame archive, receipt log
and the central key, as `stationseal evidence build --all --config config/central.yaml`
would."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def build_all(out: Path) -> dict[str, Any]:
    from evidence.build_cli import sources_for
    from evidence.package import BuildError, build
    from evidence.verify import verify_package
    from ingest.config import load_config

    dest = out / "evidence"
    dest.mkdir(parents=True, exist_ok=True)
    src = sources_for(load_config(out / "config" / "central.yaml"))
    pub = (out / "keys" / "central.pub.pem").read_bytes()
    items: list[dict[str, Any]] = []
    t0 = time.monotonic()
    for aid in sorted(src.alerts):
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in aid)
        item: dict[str, Any] = {"alert_id": aid, "package": f"evidence/{safe}"}
        try:
            res = build(aid, src, dest / safe)
        except BuildError as e:
            item.update({"built": False, "error": str(e)})
            items.append(item)
            continue
        rep = verify_package(dest / safe, pub, str(out / "registry-authority.pub.pem"))
        item.update({"built": True, "frames": res.frames, "records": res.records,
                     "build_seconds": round(res.seconds, 2),
                     "verdict": "ACCEPTED" if rep.ok else "REJECTED",
                     "failures": [f.to_json() for f in rep.failures]})
        items.append(item)
    summary = {
        "command": "stationseal evidence build --all --config config/central.yaml "
                   "--out evidence; stationseal evidence verify evidence/<ID> "
                   "--central-key keys/central.pub.pem "
                   "--registry-authority registry-authority.pub.pem",
        "packages": len(items),
        "accepted": sum(1 for i in items if i.get("verdict") == "ACCEPTED"),
        "seconds": round(time.monotonic() - t0, 1),
        "items": items,
    }
    (dest / "index.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n",
                                     encoding="utf-8")
    return summary
