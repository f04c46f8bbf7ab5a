"""Verifying an evidence package from its contents alone (docs/evidence.md §6).

Every check that fails adds a :class:`Failure` with a reason name; the verdict is "accepted"
only when there is none and the finding is reproduced. Checks go on after a failure so
that the report names everything wrong (a changed byte shows as ``file_changed`` and, if
it hit a frame, as ``frame_rejected`` too).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evidence.records import records_from_frames
from evidence.reproduce import reproduce
from ingest.detectors.io import RecordError, read_records, record_to_json
from ingest.detectors.sites import ConfigError, load_params, load_sites
from stationseal.checkpoint import (
    ZERO32,
    Checkpoint,
    CheckpointError,
    InclusionProof,
    check_inclusion,
    parse_checkpoint,
    verify_checkpoint,
)
from stationseal.export import gateway_of_topic, read_frames
from stationseal.frame import Frame
from stationseal.keys import KeyLookupError, KeyRegistry, RegistryError
from stationseal.records import from_rfc3339
from stationseal.signing import SigningError, key_id_for, load_public_key, verify_with_key

#: Bounds on a ZIP package before it is unpacked (a package is a few MB per day of data).
MAX_ZIP_ENTRIES = 10_000
MAX_ZIP_BYTES = 4 << 30

#: Every reason a package can be refused for (docs/evidence.md §6).
REASONS = {
    "package_unreadable": "the package is not a directory or ZIP with a manifest",
    "manifest_malformed": "manifest.json / manifest.sig cannot be read",
    "manifest_signature": "the manifest's signature does not verify under the central key",
    "central_key_mismatch": "the central key is not the one the verifier was told to trust",
    "file_missing": "a file the manifest lists is not in the package",
    "file_changed": "a file's SHA-256 differs from the manifest",
    "file_unlisted": "a file in the package is not listed in the manifest",
    "registry_invalid": "registry.json cannot be loaded",
    "frame_unreadable": "a line of frames.jsonl is not a frame record",
    "frame_rejected": "a frame fails verification (signature, key, schema, topic)",
    "frame_duplicate": "the same frame (gateway, seq) appears twice",
    "frame_unexpected": "a frame of a gateway or sequence number chain.json does not list",
    "frame_missing": "a frame chain.json lists as present is not in frames.jsonl",
    "chain_broken": "a frame's prev_hash does not match the frame before it",
    "window_gap": "sequence numbers missing inside the packaged range, not covered by a "
                  "signed data_dropped event",
    "window_not_covered": "the frames do not cover the alert's interval",
    "receipt_missing": "a frame has no receipt with an inclusion proof",
    "receipt_mismatch": "a receipt names another frame hash or sequence",
    "checkpoint_malformed": "a checkpoint cannot be parsed",
    "checkpoint_signature": "a checkpoint's signature does not verify under the central key",
    "checkpoint_chain": "consecutive checkpoints do not link (previous hash)",
    "proof_mismatch": "an inclusion proof does not lead to its checkpoint's root",
    "key_invalid_at_receipt": "a frame's key was not valid when the centre received it",
    "records_mismatch": "detect/records.jsonl is not what the frames say",
    "detect_inputs": "detect/SITES.yaml or PARAMS.yaml cannot be loaded",
    "finding_not_reproduced": "the rule run on the packaged records does not find the alert",
}


@dataclass(slots=True)
class Failure:
    reason: str
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"reason": self.reason, "detail": self.detail}


@dataclass(slots=True)
class VerifyReport:
    package: str
    alert_id: str | None = None
    rule: str | None = None
    failures: list[Failure] = field(default_factory=list)
    frames: int = 0
    receipts: int = 0
    checkpoints: int = 0
    records: int = 0
    reproduced: bool = False
    reproduction: str = ""
    central_key_id: str | None = None
    registry_authority: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failures and self.reproduced

    def fail(self, reason: str, detail: str) -> None:
        assert reason in REASONS, reason
        self.failures.append(Failure(reason, detail))

    def reasons(self) -> set[str]:
        return {f.reason for f in self.failures}

    def to_json(self) -> dict[str, Any]:
        return {"package": self.package, "verdict": "ACCEPTED" if self.ok else "REJECTED",
                "alert_id": self.alert_id, "rule": self.rule, "frames": self.frames,
                "receipts": self.receipts, "checkpoints": self.checkpoints,
                "records": self.records, "reproduced": self.reproduced,
                "reproduction": self.reproduction, "central_key_id": self.central_key_id,
                "registry_authority": self.registry_authority,
                "failures": [f.to_json() for f in self.failures]}


def _open(package: Path, tmp: Path) -> Path:
    if package.is_dir():
        return package
    if zipfile.is_zipfile(package):
        with zipfile.ZipFile(package) as z:
            infos = z.infolist()
            if len(infos) > MAX_ZIP_ENTRIES or \
                    sum(i.file_size for i in infos) > MAX_ZIP_BYTES:
                raise ValueError(f"ZIP larger than {MAX_ZIP_ENTRIES} entries or "
                                 f"{MAX_ZIP_BYTES >> 30} GiB unpacked: not a package")
            for info in infos:
                name = Path(info.filename)
                if name.is_absolute() or ".." in name.parts:
                    raise ValueError(f"unsafe path in ZIP: {info.filename}")
            z.extractall(tmp)
        return tmp
    raise ValueError(f"{package}: not a directory or ZIP file")


def verify_package(package: str | Path, central_key: bytes | None = None,
                   registry_authority: str | None = None) -> VerifyReport:
    """``central_key``: PEM of the central public key to trust; without it the package's
    own ``central.pub.pem`` is used and its key id reported (compare it with the
    published one). ``registry_authority``: likewise for the key registry's authority
    (public key file or sha256 fingerprint; default the package's
    ``registry-authority.pub.pem``, whose fingerprint is reported)."""
    rep = VerifyReport(str(package))
    with tempfile.TemporaryDirectory(prefix="evidence-verify-") as td:
        try:
            root = _open(Path(package), Path(td))
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            rep.fail("package_unreadable", str(e))
            return rep
        _verify(root, rep, central_key, registry_authority)
    return rep


def _verify(root: Path, rep: VerifyReport, central_key: bytes | None,
            registry_authority: str | None = None) -> None:
    # 1. Manifest and its signature.
    try:
        body = (root / "manifest.json").read_bytes()
        manifest = json.loads(body)
        sig = json.loads((root / "manifest.sig").read_text(encoding="utf-8"))
        signature = base64.b64decode(sig["signature"], validate=True)
        pem = central_key if central_key is not None else (root / "central.pub.pem").read_bytes()
        pub = load_public_key(pem)
    except (OSError, ValueError, KeyError, TypeError, binascii.Error, SigningError) as e:
        rep.fail("manifest_malformed", f"{type(e).__name__}: {e}")
        return
    rep.alert_id = manifest.get("alert_id")
    rep.rule = manifest.get("rule")
    rep.central_key_id = key_id_for(pub)
    if central_key is not None and (root / "central.pub.pem").exists() and \
            (root / "central.pub.pem").read_bytes().strip() != central_key.strip():
        rep.fail("central_key_mismatch", "the package's central.pub.pem is not the key given "
                 "with --central-key")
    if sig.get("key_id") != rep.central_key_id or \
            not verify_with_key("ed25519", pub, body, signature):
        rep.fail("manifest_signature", f"manifest.sig does not verify under central key "
                 f"{rep.central_key_id}")
    listed: set[str] = set()
    for entry in manifest.get("files", []):
        rel = str(entry.get("path"))
        listed.add(rel)
        p = root / rel
        if ".." in Path(rel).parts or not p.is_file():
            rep.fail("file_missing", rel)
            continue
        if hashlib.sha256(p.read_bytes()).hexdigest() != entry.get("sha256"):
            rep.fail("file_changed", f"{rel}: SHA-256 differs from the manifest")
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel not in listed and rel not in ("manifest.json", "manifest.sig"):
            rep.fail("file_unlisted", rel)

    # 2. Frames against the packaged key registry.
    try:
        registry = KeyRegistry.load(
            root / "registry.json",
            registry_authority or str(root / "registry-authority.pub.pem"))
    except RegistryError as e:
        rep.fail("registry_invalid", str(e))
        return
    rep.registry_authority = registry.authority_fingerprint
    try:
        alert = json.loads((root / "alert.json").read_text(encoding="utf-8"))
        chain = json.loads((root / "chain.json").read_text(encoding="utf-8"))["gateways"]
        receipts = json.loads((root / "receipts.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError) as e:
        rep.fail("file_missing", f"alert.json / chain.json / receipts.json: {e}")
        return
    frames = _check_frames(root, rep, registry)
    _check_chain(rep, frames, chain, alert)
    _check_receipts(rep, frames, receipts, pub, registry)
    _check_records_and_rule(root, rep, frames, alert)


def _check_frames(root: Path, rep: VerifyReport, registry: KeyRegistry
                  ) -> dict[tuple[str, int], Frame]:
    from stationseal.verify import Rejected, verify_payload

    out: dict[tuple[str, int], Frame] = {}
    for ff in read_frames(root / "frames.jsonl"):
        if ff.payload is None:
            rep.fail("frame_unreadable", f"frames.jsonl:{ff.line}: {ff.error}")
            continue
        try:
            f = verify_payload(ff.payload, registry,
                               gateway_of_topic(ff.topic) if ff.topic else None)
        except Rejected as e:
            rep.fail("frame_rejected", f"frames.jsonl:{ff.line}: {e.reason}: {e.detail}")
            continue
        k = (f.gateway_id, f.seq)
        if k in out:
            rep.fail("frame_duplicate", f"frames.jsonl:{ff.line}: {k[0]} seq {k[1]} again")
            continue
        out[k] = f
    rep.frames = len(out)
    return out


def _check_chain(rep: VerifyReport, frames: dict[tuple[str, int], Frame],
                 chain: list[dict[str, Any]], alert: dict[str, Any]) -> None:
    from stationseal.chain import ChainTracker

    expected: set[tuple[str, int]] = set()
    for c in chain:
        gw = c["gateway"]
        for lo, hi in c["present"]:
            expected.update((gw, s) for s in range(int(lo), int(hi) + 1))
    for k in sorted(set(frames) - expected):
        rep.fail("frame_unexpected", f"{k[0]} seq {k[1]} is not listed in chain.json")
    for k in sorted(expected - set(frames)):
        rep.fail("frame_missing", f"{k[0]} seq {k[1]} (listed in chain.json) is not in "
                 "frames.jsonl")
    is_gap_alert = alert.get("rule") == "integrity" and \
        (alert.get("evidence") or {}).get("kind") == "gap"
    for c in chain:
        gw = c["gateway"]
        t = ChainTracker(gw)
        mine = sorted((f for (g, _), f in frames.items() if g == gw), key=lambda f: f.seq)
        prev: Frame | None = None
        for f in mine:
            if prev is not None and f.seq == prev.seq + 1 and f.prev_hash != prev.frame_hash:
                rep.fail("chain_broken", f"{gw} seq {f.seq}: prev_hash does not match the "
                         f"hash of seq {prev.seq}")
            prev = f
            t.observe(f)
        if not is_gap_alert:
            for a, b in t.open_gaps():
                rep.fail("window_gap", f"{gw}: seq {a}..{b} missing and not covered by a "
                         "signed data_dropped event")
    # The frames of the alert's site cover its interval.
    t0, t1 = from_rfc3339(alert["start"]), from_rfc3339(alert["end"])
    site_frames = [f for f in frames.values() if f.site == alert.get("site")]
    if alert.get("rule") != "integrity":
        times = [r.time for f in site_frames for r in f.readings]
        if not times or min(times) > t0 + 1.0 or max(times) < t1 - 1.0:
            rep.fail("window_not_covered", f"readings of site {alert.get('site')} span "
                     f"{_span(times)}, the alert {alert['start']} .. {alert['end']}")


def _span(times: list[float]) -> str:
    from stationseal.records import to_rfc3339

    return "nothing" if not times else f"{to_rfc3339(min(times))} .. {to_rfc3339(max(times))}"


def _check_receipts(rep: VerifyReport, frames: dict[tuple[str, int], Frame],
                    receipts: dict[str, Any], pub: Any, registry: KeyRegistry) -> None:
    cps: dict[int, Checkpoint] = {}
    prev_hash: dict[int, bytes] = {}
    for doc in receipts.get("checkpoints", []):
        try:
            cp = parse_checkpoint(doc)
        except CheckpointError as e:
            rep.fail("checkpoint_malformed", str(e))
            continue
        try:
            verify_checkpoint(cp, pub)
        except CheckpointError as e:
            rep.fail("checkpoint_signature", str(e))
            continue
        cps[cp.number] = cp
        prev_hash[cp.number] = cp.previous
    rep.checkpoints = len(cps)
    for n, cp in cps.items():
        if n == 0 and cp.previous != ZERO32:
            rep.fail("checkpoint_chain", "checkpoint 0 names a previous checkpoint")
        before = cps.get(n - 1)
        if before is not None and cp.previous != before.hash:
            rep.fail("checkpoint_chain", f"checkpoint {n} does not name checkpoint {n - 1}")
        if before is not None and cp.first != before.end:
            rep.fail("checkpoint_chain", f"checkpoint {n} does not start where {n - 1} ends")
    proven: set[tuple[str, int]] = set()
    for d in receipts.get("receipts", []):
        try:
            proof = InclusionProof.from_json(d)
        except CheckpointError as e:
            rep.fail("proof_mismatch", str(e))
            continue
        k = (str(d.get("gateway")), int(d.get("seq", -1)))
        f = frames.get(k)
        if f is None:
            continue  # reported as frame_missing
        if f.frame_hash != proof.frame_hash:
            rep.fail("receipt_mismatch", f"{k[0]} seq {k[1]}: the receipt is for frame "
                     f"{proof.frame_hash.hex()[:16]}, the packaged frame is "
                     f"{f.frame_hash.hex()[:16]}")
            continue
        held = cps.get(proof.checkpoint)
        if held is None:
            rep.fail("receipt_missing", f"{k[0]} seq {k[1]}: checkpoint {proof.checkpoint} "
                     "is not in the package (or did not verify)")
            continue
        try:
            check_inclusion(proof, held)
        except CheckpointError as e:
            rep.fail(e.reason if e.reason in REASONS else "proof_mismatch",
                     f"{k[0]} seq {k[1]}: {e.detail}")
            continue
        # The key must have been valid when the centre first saw the frame: a frame made
        # later with a retired key, back-dated, has a receipt after the retirement.
        try:
            registry.check_validity(registry.key_for(f.gateway_id, f.key_id), f.created_ms,
                                    proof.received_ms)
        except KeyLookupError as e:
            rep.fail("key_invalid_at_receipt", f"{k[0]} seq {k[1]}: {e.reason}: {e.detail}")
        proven.add(k)
    rep.receipts = len(proven)
    for k in sorted(set(frames) - proven):
        rep.fail("receipt_missing", f"{k[0]} seq {k[1]}: no receipt with inclusion proof")


def _check_records_and_rule(root: Path, rep: VerifyReport,
                            frames: dict[tuple[str, int], Frame], alert: dict[str, Any]
                            ) -> None:
    flat = list(frames.values())
    derived = records_from_frames(flat)
    rep.records = len(derived)
    try:
        packaged = [record_to_json(r) for _, r in read_records(root / "detect" /
                                                                "records.jsonl")]
    except (OSError, RecordError) as e:
        rep.fail("records_mismatch", f"detect/records.jsonl: {e}")
        packaged = []
    else:
        mine = [record_to_json(r) for r in derived]
        if packaged != mine:
            n = next((i for i, (a, b) in enumerate(zip(packaged, mine, strict=False))
                      if a != b), min(len(packaged), len(mine)))
            rep.fail("records_mismatch", f"detect/records.jsonl differs from the records of "
                     f"the frames from record {n + 1} ({len(packaged)} packaged, "
                     f"{len(mine)} derived)")
    try:
        sites = load_sites(root / "detect" / "SITES.yaml")
        params = load_params(root / "detect" / "PARAMS.yaml")
    except ConfigError as e:
        rep.fail("detect_inputs", str(e))
        return
    try:
        res = reproduce(alert, derived, flat, sites, params)
    except ValueError as e:
        rep.fail("detect_inputs", str(e))
        return
    rep.reproduced = res.reproduced
    rep.reproduction = res.detail
    if not res.reproduced:
        rep.fail("finding_not_reproduced", res.detail)
