"""Building an evidence package for one alert (docs/evidence.md §5).

A package is a directory (or the same files in a ZIP) that an officer can hand to someone
who trusts neither the station nor the central service: the original signed frames around
the alert exactly as received, the chain context, the keys, the receipts with inclusion
proofs against signed checkpoints, the records the rule judged and the inputs to re-run
it, plots, a bilingual report, and a manifest of every file's SHA-256 signed by the
central service's key.

How much context: the frames that produced the finding (the alert's ``origins``), plus all
frames of the site's (and its neighbours') gateways whose time falls within a margin of
the alert's interval. The builder re-runs the rule on the records of the selected frames;
if the finding is not reproduced (a rule with a long history, e.g. a before/after
comparison) the margin grows (×4, up to ``MAX_CONTEXT_S``) until it is. A package is
only written if the finding is reproduced from what it contains.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from evidence.records import records_from_frames
from evidence.reproduce import Reproduction, reproduce
from ingest.custody.log import ReceiptLog
from ingest.detectors.io import record_to_json
from ingest.detectors.sites import load_params, parse_sites
from stationseal.export import gateway_of_topic, line_for, read_frames
from stationseal.frame import Frame, FrameError, decode
from stationseal.keys import KeyRegistry
from stationseal.records import from_rfc3339, to_rfc3339
from stationseal.registry import public_key_pem
from stationseal.signing import Signer

FORMAT = "stationseal-evidence/1"
MIN_CONTEXT_S = 300.0
MAX_CONTEXT_S = 3 * 86400.0


class BuildError(Exception):
    """An alert for which no package can be built; the message says why."""


@dataclass(slots=True)
class Sources:
    """Everything a package is built from (from CENTRAL.yaml, or given one by one)."""

    alerts: dict[str, dict[str, Any]]
    frames: list[Path]
    registry: Path
    sites: Path
    params: Path | None
    signer: Signer
    central_public_pem: bytes
    log: ReceiptLog | None
    origin: str = "stationseal-central"
    quarantine: list[tuple[str | None, bytes]] = field(default_factory=list)
    #: The registry authority to trust: its public key file or SHA-256 fingerprint.
    registry_authority: str = ""


@dataclass(slots=True)
class Selected:
    """Frames chosen for a package, per gateway in sequence order."""

    frames: dict[str, list[Frame]]
    lines: dict[tuple[str, int], str]
    context_s: float
    reproduction: Reproduction
    records: list[Any]


@dataclass(slots=True)
class BuildResult:
    path: Path
    alert_id: str
    frames: int
    records: int
    context_s: float
    seconds: float
    files: list[str]


# -- reading the sources ---------------------------------------------------------------
def load_alerts_file(path: Path) -> dict[str, dict[str, Any]]:
    """Alert updates (JSON Lines): the last update of each id is its current state."""
    out: dict[str, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise BuildError(f"{path}:{n}: not JSON: {e.msg}") from None
            if isinstance(d, dict) and isinstance(d.get("id"), str):
                out[d["id"]] = d
    return out


_TOPIC = re.compile(r'"topic"\s*:\s*"([^"\\]*)"')


def _lines_by_gateway(paths: Iterable[Path]) -> Iterator[tuple[str, str]]:
    """(gateway, line) of every frames-file line, the gateway read from the topic text
    without parsing the JSON (most lines belong to gateways a package does not need)."""
    for p in paths:
        with open(p, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                m = _TOPIC.search(line)
                gw = gateway_of_topic(m.group(1)) if m else None
                if gw is not None:
                    yield gw, line


class FrameIndex:
    """Frames of some gateways from frames files, decoded once (header and rows)."""

    def __init__(self, paths: Iterable[Path], gateways: set[str]):
        self.by_gw: dict[str, dict[int, tuple[Frame, str]]] = {g: {} for g in gateways}
        for gw, line in _lines_by_gateway(paths):
            if gw not in self.by_gw:
                continue
            ff = next(read_frames(io.StringIO(line)), None)
            if ff is None or ff.payload is None or ff.topic is None:
                continue
            try:
                f = decode(ff.payload, materialize=False)
            except FrameError:
                continue
            # First copy wins (an archive never holds a frame twice; a recorder may).
            self.by_gw[gw].setdefault(f.seq, (f, ff.topic))

    def span(self, f: Frame) -> tuple[float, float]:
        if f.rows:
            dts = [r[1] for r in f.rows]
            return (f.created_ms + min(dts)) / 1000, (f.created_ms + max(0, max(dts))) / 1000
        return f.created, f.created


def _sites_subset(sites_path: Path, site: str) -> tuple[dict[str, Any], set[str]]:
    raw = yaml.safe_load(sites_path.read_text(encoding="utf-8")) or {}
    all_sites = raw.get("sites") or {}
    if site not in all_sites:
        raise BuildError(f"{sites_path}: site {site!r} of the alert is not listed")
    keep = {site, *[n for n in (all_sites[site].get("neighbours") or []) if n in all_sites]}
    sub = {}
    for sid in sorted(keep):
        d = dict(all_sites[sid])
        if d.get("neighbours"):
            d["neighbours"] = [n for n in d["neighbours"] if n in keep]
        sub[sid] = d
    return {**raw, "sites": sub}, keep


def _gateways_of_sites(index_paths: list[Path], sites: set[str]) -> set[str]:
    """Gateways whose frames name one of the sites (the first frame of each gateway)."""
    found: set[str] = set()
    seen: set[str] = set()
    for gw, line in _lines_by_gateway(index_paths):
        if gw in seen:
            continue
        ff = next(read_frames(io.StringIO(line)), None)
        if ff is None or ff.payload is None:
            continue
        try:
            f = decode(ff.payload, materialize=False)
        except FrameError:
            continue
        seen.add(gw)
        if f.site in sites:
            found.add(gw)
    return found


# -- choosing frames ---------------------------------------------------------------------
def cited_origins(alert: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """Per gateway, the lowest and highest sequence number the alert cites: in
    ``evidence.origins`` / ``findings[].origins`` as runs ``{gateway, first_seq,
    last_seq}`` or as ``[gateway, seq]`` pairs."""
    out: dict[str, tuple[int, int]] = {}

    def add(gw: Any, lo: Any, hi: Any) -> None:
        try:
            a, b = int(lo), int(hi)
        except (TypeError, ValueError):
            return
        g = str(gw)
        cur = out.get(g)
        out[g] = (a, b) if cur is None else (min(cur[0], a), max(cur[1], b))

    lists: list[Any] = [(alert.get("evidence") or {}).get("origins")]
    lists += [f.get("origins") for f in alert.get("findings") or [] if isinstance(f, dict)]
    for lst in lists:
        if isinstance(lst, dict):  # {"reported": [...], "measured": [...]}
            lst = [x for part in lst.values() if isinstance(part, list) for x in part]
        for o in lst if isinstance(lst, list) else []:
            if isinstance(o, dict) and "gateway" in o and "first_seq" in o:
                add(o["gateway"], o["first_seq"], o.get("last_seq", o["first_seq"]))
            elif isinstance(o, list | tuple) and len(o) == 2:
                add(o[0], o[1], o[1])
    return out



def _choose(index: FrameIndex, alert: dict[str, Any], t0: float, t1: float,
            ctx: float) -> dict[str, list[int]]:
    origins = cited_origins(alert)
    ev = alert.get("evidence") or {}
    out: dict[str, list[int]] = {}
    for gw, frames in index.by_gw.items():
        lo: int | None = None
        hi: int | None = None
        for seq, (f, _) in frames.items():
            a, b = index.span(f)
            if b >= t0 - ctx and a <= t1 + ctx:
                lo = seq if lo is None else min(lo, seq)
                hi = seq if hi is None else max(hi, seq)
        if gw in origins:
            o_lo, o_hi = origins[gw]
            lo = o_lo if lo is None else min(lo, o_lo)
            hi = o_hi if hi is None else max(hi, o_hi)
        if alert.get("rule") == "integrity" and ev.get("gateway") == gw and ev.get("seq"):
            s = int(ev["seq"])
            lo = s if lo is None else min(lo, s)
            hi = s if hi is None else max(hi, s)
        if lo is None or hi is None:
            continue
        # One frame either side: the chain context shows what came before and after.
        lo, hi = max(1, lo - 1), hi + 1
        seqs = [s for s in range(lo, hi + 1) if s in frames]
        if seqs:
            out[gw] = seqs
    return out


def _verify_frames(index: FrameIndex, todo: list[tuple[str, int]], registry: KeyRegistry,
                   meanwhile: Callable[[], None] | None = None) -> None:
    """Signature and key of every frame; two threads (the signature checks release the
    interpreter lock)."""
    from concurrent.futures import ThreadPoolExecutor

    from stationseal.keys import KeyLookupError
    from stationseal.signing import verify_with_key

    def check(part: list[tuple[str, int]]) -> str | None:
        for gw, s in part:
            f, topic = index.by_gw[gw][s]
            try:
                _, pub = registry.lookup(f.gateway_id, f.key_id, f.created)
            except KeyLookupError as e:
                return f"frame {gw} seq {s}: {e}"
            if gateway_of_topic(topic) != f.gateway_id or \
                    not verify_with_key(f.alg, pub, f.body, f.signature):
                return f"frame {gw} seq {s}: signature or topic does not verify"
        return None

    if not todo:
        return
    half = len(todo) // 2
    parts = [todo[:half], todo[half:]] if half >= 500 else [todo]
    with ThreadPoolExecutor(len(parts)) as ex:
        futures = [ex.submit(check, p) for p in parts]
        if meanwhile is not None:
            meanwhile()  # Python work overlaps the checks, which release the GIL
        for fu in futures:
            err = fu.result()
            if err is not None:
                raise BuildError(err)


def _refuse_gaps(frames: dict[str, list[Frame]],
                 alert: dict[str, Any]) -> None:
    """Sequence numbers missing inside the packaged range (not received, not archived, or
    an archive line that no longer decodes) and not covered by a signed drop: such a
    package would be refused (``window_gap``), so none is built."""
    from stationseal.chain import ChainTracker

    ev = alert.get("evidence") or {}
    if alert.get("rule") == "integrity" and ev.get("kind") == "gap":
        return
    for gw, lst in frames.items():
        t = ChainTracker(gw)
        for f in lst:
            t.observe(f)
        gaps = t.open_gaps()
        if gaps:
            text = ", ".join(f"{a}" if a == b else f"{a}..{b}" for a, b in gaps[:10])
            raise BuildError(f"{gw}: frames seq {text} are missing from the frames files "
                             "(never received, not archived, or damaged in the archive) and "
                             "no signed data_dropped event covers them")


def select(index: FrameIndex, alert: dict[str, Any], registry: KeyRegistry,
           sites: Any, params: dict[str, dict[str, Any]]) -> Selected:
    """Frames for the package, each verified (signature, key) against the registry."""
    t0, t1 = from_rfc3339(alert["start"]), from_rfc3339(alert["end"])
    verified: set[tuple[str, int]] = set()
    ctx = max(MIN_CONTEXT_S, min(3600.0, 0.25 * (t1 - t0)))
    last: Reproduction | None = None
    while True:
        chosen = _choose(index, alert, t0, t1, ctx)
        frames: dict[str, list[Frame]] = {}
        todo: list[tuple[str, int]] = []
        for gw, seqs in chosen.items():
            frames[gw] = [index.by_gw[gw][s][0] for s in seqs]
            todo += [(gw, s) for s in seqs if (gw, s) not in verified]
        _refuse_gaps(frames, alert)
        flat = [f for lst in frames.values() for f in lst]
        out: list[Any] = []

        def judge(flat: list[Frame] = flat, out: list[Any] = out) -> None:
            recs = records_from_frames(flat)
            out[:] = [recs, reproduce(alert, recs, flat, sites, params)]

        # Nothing is packaged unless every frame verifies; the rule runs meanwhile.
        _verify_frames(index, todo, registry, judge if todo else None)
        if not todo:
            judge()
        verified.update(todo)
        records, last = out
        if last.reproduced or ctx >= MAX_CONTEXT_S:
            break
        ctx = min(MAX_CONTEXT_S, ctx * 4)
    if not last.reproduced:
        raise BuildError(f"alert {alert.get('id')}: not reproduced from the frames within "
                         f"{MAX_CONTEXT_S / 3600:.0f} h of context: {last.detail}")
    lines = {(gw, f.seq): line_for(index.by_gw[gw][f.seq][1], f.payload)
             for gw, lst in frames.items() for f in lst}
    return Selected(frames, lines, ctx, last, records)


# -- writing -----------------------------------------------------------------------------
def _dump(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True) + "\n",
                    encoding="utf-8")


def _overlaps(f: Frame, t0: float, t1: float) -> bool:
    times = [r.time for r in f.iter_readings()] or [f.created]
    return max(times) >= t0 and min(times) <= t1


def _present(seqs: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for s in seqs:
        if out and s == out[-1][1] + 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return out


def write_manifest(root: Path, signer: Signer, head: dict[str, Any]) -> None:
    """manifest.json lists every other file's SHA-256; manifest.sig signs its bytes."""
    files = []
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(root).as_posix()
        if rel in ("manifest.json", "manifest.sig"):
            continue
        data = p.read_bytes()
        files.append({"path": rel, "sha256": hashlib.sha256(data).hexdigest(),
                      "bytes": len(data)})
    doc = {**head, "files": files}
    body = (json.dumps(doc, indent=2, ensure_ascii=False, sort_keys=True) + "\n").encode()
    (root / "manifest.json").write_bytes(body)
    sig = {"key_id": signer.key_id, "alg": signer.alg,
           "signature": base64.b64encode(signer.sign(body)).decode("ascii")}
    (root / "manifest.sig").write_text(json.dumps(sig, indent=2) + "\n", encoding="utf-8")


def _zip_dir(src: Path, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                info = zipfile.ZipInfo(p.relative_to(src).as_posix(), (1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                z.writestr(info, p.read_bytes())
    os.replace(tmp, dest)


def build(alert_id: str, src: Sources, out: Path, *, plots: bool = True,
          report: bool = True, pdf: bool = True, pages: bool = True) -> BuildResult:
    t_start = time.monotonic()
    alert = src.alerts.get(alert_id)
    if alert is None:
        raise BuildError(f"no alert with id {alert_id!r} (known: {len(src.alerts)})")
    site = str(alert.get("site"))
    sites_doc, site_ids = _sites_subset(src.sites, site)
    sites = parse_sites(sites_doc, "SITES.yaml")
    params_all = load_params(src.params) if src.params else {}
    rule = str(alert.get("rule"))
    params = params_all
    registry = KeyRegistry.load(src.registry, src.registry_authority)
    gateways = _gateways_of_sites(src.frames, site_ids)
    ev_gw = (alert.get("evidence") or {}).get("gateway")
    if isinstance(ev_gw, str):
        gateways.add(ev_gw)
    if not gateways:
        raise BuildError(f"no frames of site {site!r} in {', '.join(map(str, src.frames))}")
    index = FrameIndex(src.frames, gateways)
    sel = select(index, alert, registry, sites, params)

    with tempfile.TemporaryDirectory(prefix="evidence-") as td:
        root = Path(td) / "package"
        root.mkdir()
        _write_contents(root, alert, sel, src, registry, sites_doc, params)
        if plots:
            _need("matplotlib", "plots (--no-plots)")
            from evidence.plots import make_plots

            make_plots(root, alert, sel.records, sites, sel.reproduction)
        head = {"format": FORMAT, "alert_id": alert_id, "rule": rule, "site": site,
                "window": {"start": alert["start"], "end": alert["end"]},
                "created": to_rfc3339(time.time()), "origin": src.origin,
                "central_key_id": src.signer.key_id}
        if report:
            # The report states what the builder checked; the package's verifier checks
            # it all again from the files (docs/evidence.md §6).
            if pdf:
                _need("weasyprint", "the PDF report (--no-pdf)")
            from evidence.report import context, write_report

            ver = _self_check(root, src, sel)
            flat = [f for lst in sel.frames.values() for f in lst]
            write_report(root, alert, context(root, alert, sel.records, flat, ver, params),
                         pdf=pdf, pages=pages)
        write_manifest(root, src.signer, head)
        files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        if out.suffix.lower() == ".zip":
            out.parent.mkdir(parents=True, exist_ok=True)
            _zip_dir(root, out)
        else:
            if out.exists():
                shutil.rmtree(out)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(root, out)
    n_frames = sum(len(v) for v in sel.frames.values())
    return BuildResult(out, alert_id, n_frames, len(sel.records), sel.context_s,
                       time.monotonic() - t_start, files)


def _need(module: str, what: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise BuildError(f"{what} need {module}: pip install 'stationseal[evidence]' on the "
                         "central side")


def _self_check(root: Path, src: Sources, sel: Selected) -> dict[str, Any]:
    """The checks the builder made, in the verifier's report form, for the report."""
    from stationseal.checkpoint import check_inclusion, parse_checkpoint, verify_checkpoint
    from stationseal.signing import key_id_for, load_public_key

    rc = json.loads((root / "receipts.json").read_text(encoding="utf-8"))
    pub = load_public_key(src.central_public_pem)
    cps = {}
    failures: list[dict[str, str]] = []
    for d in rc["checkpoints"]:
        cp = parse_checkpoint(d)
        verify_checkpoint(cp, pub)
        cps[cp.number] = cp
    from stationseal.checkpoint import InclusionProof

    for d in rc["receipts"]:
        p = InclusionProof.from_json(d)
        check_inclusion(p, cps[p.checkpoint])
    n = sum(len(v) for v in sel.frames.values())
    if len(rc["receipts"]) != n:
        failures.append({"reason": "receipt_missing",
                         "detail": f"{n - len(rc['receipts'])} frame(s) without a receipt"})
    return {"verdict": "ACCEPTED" if not failures and sel.reproduction.reproduced
            else "REJECTED", "frames": n, "receipts": len(rc["receipts"]),
            "checkpoints": len(cps), "reproduced": sel.reproduction.reproduced,
            "reproduction": sel.reproduction.detail, "central_key_id": key_id_for(pub),
            "failures": failures}


def _lines(items: Any) -> str:
    enc = json.JSONEncoder(separators=(",", ":")).encode
    return "[\n" + ",\n".join(enc(x) for x in items) + "\n]"


def _write_contents(root: Path, alert: dict[str, Any], sel: Selected, src: Sources,
                    registry: KeyRegistry, sites_doc: dict[str, Any],
                    params: dict[str, dict[str, Any]]) -> None:
    enc = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    # Frames, exactly as received, per gateway in sequence order.
    with open(root / "frames.jsonl", "w", encoding="utf-8") as fh:
        for gw in sorted(sel.frames):
            for f in sel.frames[gw]:
                fh.write(sel.lines[(gw, f.seq)] + "\n")
    # The signed key registry (the whole document: its signature covers all of it) and
    # the public key of the authority that signed it (wire format §9).
    assert registry.document is not None and registry.authority_public is not None
    (root / "registry.json").write_bytes(registry.document)
    (root / "registry-authority.pub.pem").write_bytes(public_key_pem(registry.authority_public))
    (root / "central.pub.pem").write_bytes(src.central_public_pem)
    _dump(root / "alert.json", alert)
    # Chain context and receipts.
    t0, t1 = from_rfc3339(alert["start"]), from_rfc3339(alert["end"])
    chain = []
    proofs: list[dict[str, Any]] = []
    cps: dict[int, str] = {}
    if src.log is not None:
        src.log.maybe_checkpoint(force=True)
    for gw in sorted(sel.frames):
        lst = sel.frames[gw]
        seqs = [f.seq for f in lst]
        latest = None
        if src.log is not None:
            r = src.log.db.execute("SELECT MAX(seq) FROM receipts WHERE gateway_id = ?",
                                   (gw,)).fetchone()
            latest = None if r is None or r[0] is None else int(r[0])
        in_window = [f.seq for f in lst if _overlaps(f, t0, t1)]
        chain.append({"gateway": gw, "site": lst[0].site, "first_seq": seqs[0],
                      "last_seq": seqs[-1], "frames": len(seqs), "present": _present(seqs),
                      "first_prev_hash": lst[0].prev_hash.hex(),
                      "last_hash": lst[-1].frame_hash.hex(),
                      "window_seqs": [min(in_window), max(in_window)] if in_window else None,
                      "latest_seq_at_centre": latest})
        if src.log is None:
            continue
        first_receipt: dict[bytes, int] = {}
        for r in src.log.by_gateway(gw, seqs[0], seqs[-1]):
            first_receipt.setdefault(r.frame_hash, r.index)
        wanted = {f.seq: first_receipt[f.frame_hash] for f in lst
                  if f.frame_hash in first_receipt}
        got = src.log.proofs(sorted(wanted.values()))
        for f in lst:
            if f.seq not in wanted or wanted[f.seq] not in got:
                continue
            proof, cp = got[wanted[f.seq]]
            cps[cp.number] = cp.dumps()
            proofs.append({"gateway": gw, "seq": f.seq, **proof.to_json()})
    _dump(root / "chain.json", {"gateways": chain})
    # One receipt per line: a day of frames makes tens of thousands of them.
    rc_doc = {"origin": src.origin, "central_key_id": src.signer.key_id,
              "checkpoints": [json.loads(cps[n]) for n in sorted(cps)], "receipts": proofs}
    (root / "receipts.json").write_text(
        "{" + ",\n".join(f"{json.dumps(k)}: {enc(v) if k != 'receipts' else _lines(v)}"
                          for k, v in rc_doc.items()) + "}\n", encoding="utf-8")
    # What the rule judged, and how to run it again.
    det = root / "detect"
    det.mkdir()
    with open(det / "records.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(enc(record_to_json(r)) + "\n" for r in sel.records)
    (det / "SITES.yaml").write_text(yaml.safe_dump(sites_doc, sort_keys=True,
                                                   allow_unicode=True), encoding="utf-8")
    (det / "PARAMS.yaml").write_text(yaml.safe_dump(params, sort_keys=True,
                                                    allow_unicode=True), encoding="utf-8")
    buf = io.StringIO()
    for a in sel.reproduction.alerts:
        buf.write(json.dumps(a, ensure_ascii=False, sort_keys=True) + "\n")
    (det / "alerts.jsonl").write_text(buf.getvalue(), encoding="utf-8")
    _dump(det / "reproduction.json", {"reproduced": sel.reproduction.reproduced,
                                      "detail": sel.reproduction.detail,
                                      "match": sel.reproduction.match,
                                      "context_s": sel.context_s})
