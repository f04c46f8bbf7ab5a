"""The signed key registry: authority, serial, append-only changes, bindings, and what
the ingest does with a registry it must not trust."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ingest.config import parse_config
from ingest.metrics import Metrics
from ingest.pipeline import Pipeline
from ingest.store import Store
from stationseal import vectors
from stationseal.frame import ZERO_HASH, seal
from stationseal.keys import generate_keypair
from stationseal.records import Event, Reading
from stationseal.registry import (
    SIGNING_PREFIX,
    AcceptedRegistry,
    Authority,
    AuthorityPin,
    KeyRegistry,
    RegistryError,
    canonical_json,
    change_hash,
)
from stationseal.signing import Ed25519Signer, load_signer
from stationseal.verify import Rejected, verify_payload

ED = Ed25519Signer(vectors.ed_key())
T0 = vectors.T0
ED_PEM = vectors.build()["keys"]["ed25519"]["public_key"].encode()


def auth(tmp: Path, name: str = "authority") -> Authority:
    return Authority.generate(tmp / f"{name}.key")


def frame(site: str = "V-3201-001", created: float = T0, instrument: str = "analyzer-1",
          events: list[Event] | None = None, seq: int = 1) -> Any:
    return seal(ED, gateway_id="gw-demo-1", site=site, boot_id=vectors.BOOT, seq=seq,
                prev_hash=ZERO_HASH if seq == 1 else b"\x44" * 32, created=created,
                clock_sync="synced",
                readings=[Reading(instrument, "co_pct", 0.5, "%vol", created, "N", None)],
                events=events or [])


def verdict(payload: bytes, reg: KeyRegistry, **kw: Any) -> str:
    try:
        verify_payload(payload, reg, **kw)
    except Rejected as e:
        return e.reason
    return "valid"


def signed(tmp: Path, reg: KeyRegistry, a: Authority) -> Path:
    p = tmp / "registry.json"
    reg.save(p, a)
    return p


def doc_of(p: Path) -> dict[str, Any]:
    d: dict[str, Any] = json.loads(p.read_text())
    return d


def resign(d: dict[str, Any], a: Authority) -> bytes:
    """What an authority (or a forger holding its key) would publish for ``d``."""
    body = {k: v for k, v in d.items() if k != "signature"}
    try:
        data = canonical_json(body)
    except RegistryError:  # a forger signs whatever bytes it likes
        data = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    d = {**body, "signature": a.sign(SIGNING_PREFIX + data).hex()}
    return json.dumps(d).encode()


# --------------------------------------------------------------------------- the document


def test_round_trip_pinned_by_key_or_fingerprint(tmp_path: Path) -> None:
    a = auth(tmp_path)
    reg = KeyRegistry()
    reg.add("gw-demo-1", ED_PEM, T0 - 10, sites=["V-3201-001"], instruments=["analyzer-1"])
    p = signed(tmp_path, reg, a)
    for pin in (tmp_path / "authority.pub.pem", a.fingerprint, f"sha256:{a.fingerprint}"):
        got = KeyRegistry.load(p, pin)
        assert got.serial == 1 and got.entries[ED.key_id].sites == ("V-3201-001",)
    assert verdict(frame().payload, got) == "valid"
    # The next version extends it: serial 2, one more change.
    got.revoke(ED.key_id, T0 + 100, "retired")
    got.save(p, a)
    again = KeyRegistry.load(p, a.fingerprint)
    assert again.serial == 2 and len(again.changes) == 2
    assert again.extends(1, 1, reg.head) is None


def test_altered_or_foreign_documents_are_refused(tmp_path: Path) -> None:
    a = auth(tmp_path)
    reg = KeyRegistry()
    reg.add("gw-demo-1", ED_PEM, T0 - 10, sites=["V-3201-001"])
    p = signed(tmp_path, reg, a)
    d = doc_of(p)
    d["changes"][0]["sites"] = ["V-3201-001", "E-9999-999"]  # a wider binding, unsigned
    p.write_text(json.dumps(d))
    with pytest.raises(RegistryError, match="signature does not verify"):
        KeyRegistry.load(p, a.fingerprint)
    other = auth(tmp_path, "other")
    d["authority"]["public_key"] = other.public_key.public_bytes_raw().hex()
    p.write_bytes(resign(d, other))  # well signed, by somebody else
    with pytest.raises(RegistryError, match="not by the pinned authority"):
        KeyRegistry.load(p, a.fingerprint)


def test_a_duplicated_key_cannot_override_a_compromised_one(tmp_path: Path) -> None:
    """The old unsigned format let a second entry for a key replace an earlier
    ``compromised`` one. Each key is added once; the log cannot be rewritten."""
    a = auth(tmp_path)
    reg = KeyRegistry()
    reg.add("gw-demo-1", ED_PEM, T0 - 10, sites=["S"])
    reg.revoke(ED.key_id, T0 - 5, "compromised")
    with pytest.raises(RegistryError, match="already added in changes\\[0\\]"):
        reg.add("gw-demo-1", ED_PEM, T0 - 10, sites=["S"])
    p = signed(tmp_path, reg, a)
    d = doc_of(p)
    dup = copy.deepcopy(d["changes"][0])
    dup.update(n=2, prev=change_hash(d["changes"][1]), time_ms=d["changes"][1]["time_ms"])
    d["changes"].append(dup)
    d["head"] = change_hash(dup)
    p.write_bytes(resign(d, a))
    with pytest.raises(RegistryError, match=r"changes\[2\]: key .* already added"):
        KeyRegistry.load(p, a.fingerprint)


@pytest.mark.parametrize("path,value,match", [
    (("changes", 0, "valid_from_ms"), None, r"changes\[0\].valid_from_ms must be an integer"),
    (("changes", 0, "valid_from_ms"), 1.5, r"changes\[0\].valid_from_ms: float values"),
    (("changes", 0, "valid_from_ms"), -1, r"outside 0"),
    (("changes", 0, "sites"), [], r"changes\[0\].sites must be a non-empty array"),
    (("changes", 0, "sites"), ["a#b"], r"not a valid name"),
    (("changes", 0, "instruments"), ["b", "a"], r"sorted"),
    (("changes", 0, "backfill_s"), 0, r"backfill_s"),
    (("changes", 1, "reason"), "lost", r"reason \"lost\" is not one of"),
    (("changes", 1, "revoked_at_ms"), None, r"revoked_at_ms must be an integer"),
    (("changes", 1, "key_id"), "0123456789abcdef", r"which no earlier change added"),
    (("changes", 0, "op"), "replace", r"op \"replace\""),
    (("changes", 0, "alg"), "rsa", r"alg \"rsa\""),
    (("serial",), 0, r"serial"),
], ids=lambda x: str(x)[:30])
def test_bad_entries_are_named(tmp_path: Path, path: tuple[Any, ...], value: Any,
                               match: str) -> None:
    a = auth(tmp_path)
    reg = KeyRegistry()
    reg.add("gw-demo-1", ED_PEM, T0 - 10, sites=["S"])
    reg.revoke(ED.key_id, T0 - 5, "retired")
    p = signed(tmp_path, reg, a)
    d = doc_of(p)
    target = d
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = value
    # Keep the hash chain consistent so that the entry check itself is what fails.
    prev = "0" * 64
    for c in d["changes"]:
        c["prev"] = prev
        try:
            prev = change_hash(c)
        except RegistryError:  # a float: refused before any hash is computed
            break
    d["head"] = prev
    p.write_bytes(resign(d, a))
    with pytest.raises(RegistryError, match=match):
        KeyRegistry.load(p, a.fingerprint)


def test_compromised_without_revocation_time_is_impossible_and_rejects_all(
        tmp_path: Path) -> None:
    a = auth(tmp_path)
    reg = KeyRegistry()
    reg.add("gw-demo-1", ED_PEM, T0 - 10, sites=["V-3201-001"])
    p = signed(tmp_path, reg, a)
    d = doc_of(p)
    d["changes"].append({"n": 1, "op": "revoke", "time_ms": d["changes"][0]["time_ms"],
                         "prev": d["head"], "key_id": ED.key_id, "reason": "compromised"})
    d["head"] = change_hash(d["changes"][1])
    p.write_bytes(resign(d, a))
    with pytest.raises(RegistryError, match="missing revoked_at_ms"):
        KeyRegistry.load(p, a.fingerprint)
    reg.revoke(ED.key_id, T0 + 10**6, "compromised")  # even "in the future"
    assert verdict(frame().payload, reg) == "revoked_key"


def test_registry_errors_never_give_a_traceback(tmp_path: Path) -> None:
    a = auth(tmp_path)
    reg = KeyRegistry()
    reg.add("gw-demo-1", ED_PEM, T0 - 10, sites=["S"])
    p = signed(tmp_path, reg, a)
    d = doc_of(p)
    d["changes"][0]["valid_from_ms"] = None
    p.write_bytes(resign(d, a))
    f = tmp_path / "f.jsonl"
    f.write_text("")
    r = subprocess.run([sys.executable, "-m", "stationseal.cli", "verify", str(f),
                        "--registry", str(p), "--authority", a.fingerprint],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "changes[0].valid_from_ms must be an integer" in r.stderr


def test_rollback_and_rewritten_history_are_refused(tmp_path: Path) -> None:
    a = auth(tmp_path)
    reg = KeyRegistry()
    reg.add("gw-demo-1", ED_PEM, T0 - 10, sites=["S"])
    v1 = KeyRegistry.from_document(reg.sign(a), a.fingerprint)
    reg.revoke(ED.key_id, T0, "compromised")
    v2 = KeyRegistry.from_document(reg.sign(a), a.fingerprint)
    acc = AcceptedRegistry(tmp_path / "state")
    pin = AuthorityPin.parse(a.fingerprint)
    assert acc.accept(v1, pin) is None and acc.accept(v2, pin) is None
    why = acc.accept(v1, pin)
    assert why is not None and "rollback" in why
    # A version 3 that drops the revocation (history rewritten, still signed).
    fork = KeyRegistry()
    fork._apply(copy.deepcopy(v1.changes[0]), "x")
    fork.serial = v2.serial
    v3 = KeyRegistry.from_document(fork.sign(a), a.fingerprint)
    assert v3.serial == 3
    why = acc.accept(v3, pin)
    assert why is not None and "does not extend" in why
    assert acc.load(pin) is not None and acc.load(pin).serial == 2  # type: ignore[union-attr]


# --------------------------------------------------------------------------- bindings and time


def bound() -> KeyRegistry:
    reg = KeyRegistry()
    reg.add("gw-demo-1", ED_PEM, T0 - 10, sites=["V-3201-001", "V-3201-002"],
            instruments=["analyzer-1", "lane-1", "logger"])
    return reg


def test_a_key_cannot_report_for_another_site() -> None:
    """Hole 1: a gateway key signed frames for any site."""
    assert verdict(frame("V-3201-002").payload, bound()) == "valid"
    assert verdict(frame("E-1101-007").payload, bound()) == "site_mismatch"


def test_a_key_speaks_only_for_its_instruments() -> None:
    assert verdict(frame(instrument="dyno-9").payload, bound()) == "instrument_mismatch"
    ev = [Event("cems-1", "calibration_change", T0, {})]
    assert verdict(frame(events=ev).payload, bound()) == "instrument_mismatch"
    ok = [Event("gateway", "clock_jump", T0, {}), Event("lane-1", "test_start", T0, {})]
    assert verdict(frame(instrument="logger.minute", events=ok).payload, bound()) == "valid"
    assert verdict(frame(instrument="loggerx").payload, bound()) == "instrument_mismatch"


def test_retired_key_is_judged_on_first_arrival() -> None:
    """Hole 3: whoever holds a retired key can back-date created_ms."""
    reg = bound()
    reg.revoke(ED.key_id, T0 + 100, "retired")
    f = frame(created=T0 + 50)  # back-dated into the key's valid time
    assert verdict(f.payload, reg) == "valid"  # the signer's clock alone cannot tell
    assert verdict(f.payload, reg, received_ms=int((T0 + 60) * 1000)) == "valid"
    assert verdict(f.payload, reg, received_ms=int((T0 + 100) * 1000)) == "revoked_key"
    assert verdict(frame(created=T0 + 100).payload, reg) == "revoked_key"


def test_validity_window_on_both_clocks() -> None:
    reg = KeyRegistry()
    reg.add("gw-demo-1", ED_PEM, T0, T0 + 100, sites=["V-3201-001"])
    assert verdict(frame(created=T0 - 1).payload, reg) == "key_not_yet_valid"
    assert verdict(frame(created=T0).payload, reg) == "valid"
    assert verdict(frame(created=T0 + 99.999).payload, reg) == "valid"
    assert verdict(frame(created=T0 + 100).payload, reg) == "key_expired"
    # Sealed before expiry, forwarded later: accepted up to the backfill horizon (30 d).
    horizon = 30 * 86400
    assert verdict(frame(created=T0 + 50).payload, reg,
                   received_ms=int((T0 + 100 + horizon - 1) * 1000)) == "valid"
    assert verdict(frame(created=T0 + 50).payload, reg,
                   received_ms=int((T0 + 100 + horizon) * 1000)) == "key_expired"


# --------------------------------------------------------------------------- the ingest


def _pipeline(tmp: Path, reg_path: Path, a: Authority) -> Pipeline:
    cfg = parse_config({"registry": str(reg_path), "registry_authority":
                        str(tmp / "authority.pub.pem"), "state_dir": str(tmp / "state"),
                        "registry_check_s": 0.001})
    (tmp / "state").mkdir(exist_ok=True)
    return Pipeline(cfg, Store(tmp / "state" / "s.db"), Metrics())


def test_ingest_keeps_the_last_good_registry(tmp_path: Path) -> None:
    a = auth(tmp_path)
    reg = bound()
    p = signed(tmp_path, reg, a)
    good = p.read_bytes()
    pipe = _pipeline(tmp_path, p, a)
    assert pipe.registry.registry.serial == 1
    # A version revoking the key, then a forged one and a rolled-back one.
    reg.revoke(ED.key_id, T0 - 1, "compromised")
    reg.save(p, a)
    assert pipe.registry.maybe_reload(force=True) and pipe.registry.registry.serial == 2
    d = doc_of(p)
    d["changes"] = d["changes"][:1]
    d["head"] = change_hash(d["changes"][0])
    d["serial"] = 3
    p.write_text(json.dumps(d))  # signature no longer matches
    assert not pipe.registry.maybe_reload(force=True)
    assert pipe.registry.error is not None and "signature" in pipe.registry.error
    p.write_bytes(resign(d, a))  # signed, but drops the revocation
    assert not pipe.registry.maybe_reload(force=True)
    assert "does not extend" in (pipe.registry.error or "")
    p.write_bytes(good)  # serial 1 again
    assert not pipe.registry.maybe_reload(force=True)
    assert "rollback" in (pipe.registry.error or "")
    assert pipe.registry.registry.serial == 2
    assert pipe.metrics.get("registry_reloads_total", result="refused") == 3
    assert pipe.metrics.get("registry_state") == 0
    f = frame()
    assert pipe.handle("stationseal/v1/gw-demo-1/frames", f.payload, T0 + 1) == "quarantined"
    # A restart with the rolled-back file still uses the accepted serial 2.
    pipe2 = _pipeline(tmp_path, p, a)
    assert pipe2.registry.registry.serial == 2 and pipe2.registry.error is not None


def test_ingest_files_site_mismatch_under_its_reason(tmp_path: Path) -> None:
    a = auth(tmp_path)
    p = signed(tmp_path, bound(), a)
    pipe = _pipeline(tmp_path, p, a)
    f = frame("E-1101-007")
    assert pipe.handle("stationseal/v1/gw-demo-1/frames", f.payload, T0 + 1) == "quarantined"
    assert pipe.store.quarantine_counts() == {"site_mismatch": 1}
    assert any("kind=site_mismatch" in ln for ln in pipe.batch.lines)


# --------------------------------------------------------------------------- the commands


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stationseal.cli", *args],
                          capture_output=True, text=True, timeout=60)


def test_keys_commands_end_to_end(tmp_path: Path) -> None:
    r = cli("keys", "authority", "generate", "--out", str(tmp_path / "auth"))
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    key = Path(info["private_key"])
    assert os.stat(key).st_mode & 0o777 == 0o600
    kf = generate_keypair("gw-x", tmp_path / "gw")
    reg = tmp_path / "registry.json"
    r = cli("keys", "registry", "add", "--registry", str(reg), "--authority-key", str(key),
            "--gateway-id", "gw-x", "--public-key", str(kf.public_key), "--site", "S-1",
            "--site", "S-2", "--instrument", "ana-1", "--backfill", "7d")
    assert r.returncode == 0, r.stderr
    r = cli("keys", "registry", "revoke", kf.key_id, "--registry", str(reg),
            "--authority-key", str(key), "--reason", "superseded")
    assert r.returncode == 0, r.stderr
    r = cli("keys", "registry", "list", "--registry", str(reg), "--authority",
            info["fingerprint"], "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["serial"] == 2 and doc["keys"][0]["sites"] == ["S-1", "S-2"]
    assert doc["keys"][0]["backfill_s"] == 7 * 86400
    assert doc["keys"][0]["revocation_reason"] == "superseded"
    r = cli("keys", "authority", "fingerprint", info["public_key"])
    assert r.stdout.strip() == info["fingerprint"]
    # A second revocation is refused by name; a wrong authority cannot sign a change.
    r = cli("keys", "registry", "revoke", kf.key_id, "--registry", str(reg),
            "--authority-key", str(key), "--reason", "retired")
    assert r.returncode == 2 and "already revoked" in r.stderr
    other = Authority.generate(tmp_path / "other.key")
    assert other.fingerprint != info["fingerprint"]
    r = cli("keys", "registry", "revoke", kf.key_id, "--registry", str(reg),
            "--authority-key", str(tmp_path / "other.key"), "--reason", "compromised")
    assert r.returncode == 2 and "pinned authority" in r.stderr
    old = tmp_path / "old.json"
    r = cli("keys", "registry", "check", "--registry", str(reg), "--authority",
            info["public_key"])
    assert r.returncode == 0
    old.write_bytes(reg.read_bytes())
    r = cli("keys", "registry", "revoke", kf.key_id, "--registry", str(reg),
            "--authority-key", str(key), "--reason", "compromised")
    assert r.returncode == 0, r.stderr
    r = cli("keys", "registry", "check", "--registry", str(old), "--authority",
            info["public_key"], "--previous", str(reg))
    assert r.returncode == 1 and "rollback" in r.stderr


def test_signer_key_file_loads_as_gateway_key(tmp_path: Path) -> None:
    """Authority keys are ordinary PKCS#8 files, refused when readable by others."""
    a = auth(tmp_path)
    os.chmod(tmp_path / "authority.key", 0o644)
    with pytest.raises(RegistryError, match="0600"):
        Authority.load(tmp_path / "authority.key")
    os.chmod(tmp_path / "authority.key", 0o600)
    assert Authority.load(tmp_path / "authority.key").fingerprint == a.fingerprint
    assert load_signer(tmp_path / "authority.key").key_id == a.key_id


def _central_alerts(pipe: Pipeline) -> list[tuple[str, str]]:
    return [(u.doc["evidence"]["kind"], u.doc["severity"]) for u in pipe.batch.alert_updates
            if u.doc["site"] == "central"]


def test_a_refused_registry_is_in_health_and_alerted_but_not_unhealthy(tmp_path: Path
                                                                        ) -> None:
    a = auth(tmp_path)
    reg = bound()
    p = signed(tmp_path, reg, a)
    pipe = _pipeline(tmp_path, p, a)
    st = pipe.registry.status()
    assert st["state"] == "current" and st["serial"] == 1 and "refused" not in st
    assert _central_alerts(pipe) == []
    good = p.read_bytes()
    reg.revoke(ED.key_id, T0 - 1, "compromised")
    reg.save(p, a)
    pipe.check_gaps()  # periodic: the new version is taken without any frame arriving
    assert pipe.registry.registry.serial == 2 and _central_alerts(pipe) == []
    p.write_bytes(good)  # rolled back to serial 1
    pipe.check_gaps()
    st = pipe.registry.status()
    assert st["state"] == "refused" and st["serial"] == 2
    assert "rollback" in st["refused"]["reason"] and st["refused"]["at"].endswith("Z")
    assert _central_alerts(pipe) == [("registry_refused", "high")]
    doc = pipe.batch.alert_updates[-1].doc
    assert "serial 2" in doc["summary_en"] and "not in force" in doc["summary_en"]
    assert any(ln.startswith("integrity,") and "kind=registry_refused" in ln
               for ln in pipe.batch.lines)
    pipe.check_gaps()
    f = frame()
    pipe.handle("stationseal/v1/gw-demo-1/frames", f.payload, T0 + 1)
    assert _central_alerts(pipe).count(("registry_refused", "high")) == 1  # once per refusal
    # A proper next version: current again; the recovery is recorded (low: no alert).
    reg.add("gw-demo-2", vectors.build()["keys"]["p256"]["public_key"].encode(), T0 - 10,
            sites=["E-1101-007"])
    reg.save(p, a)
    pipe.check_gaps()
    assert pipe.registry.status()["state"] == "current"
    assert any("kind=registry_current" in ln for ln in pipe.batch.lines)
    assert _central_alerts(pipe) == [("registry_refused", "high")]


def test_a_registry_refused_at_start_is_alerted(tmp_path: Path) -> None:
    a = auth(tmp_path)
    reg = bound()
    p = signed(tmp_path, reg, a)
    good = p.read_bytes()
    reg.revoke(ED.key_id, T0 - 1, "retired")
    reg.save(p, a)
    _pipeline(tmp_path, p, a)  # accepts serial 2 into the state directory
    p.write_bytes(good)
    pipe = _pipeline(tmp_path, p, a)
    assert pipe.registry.status()["state"] == "refused"
    assert _central_alerts(pipe) == [("registry_refused", "high")]


def test_the_supervisor_merges_the_workers_registry_states() -> None:
    from ingest.supervisor import merge_registry

    cur = {"state": "current", "serial": 4}
    bad = {"state": "refused", "serial": 4,
           "refused": {"at": "2026-01-01T00:00:00Z", "reason": "x: rollback", "refusals": 1}}
    assert merge_registry({"0": {"ok": True, "registry": cur},
                           "1": {"ok": True, "registry": cur}}) == {"state": "current",
                                                                    "serial": 4}
    m = merge_registry({"0": {"ok": True, "registry": cur}, "1": {"ok": True, "registry": bad},
                        "2": {"ok": False, "error": "not running"}})
    assert m["state"] == "refused" and m["refused"]["workers"] == ["1"]
    assert m["refused"]["reason"] == "x: rollback"
    assert merge_registry({"0": {"ok": False, "error": "not running"}}) == {"state": "unknown"}


@pytest.mark.stack
def test_healthz_names_a_refused_registry_and_stays_ok(stack: Any, tmp_path: Path) -> None:
    """The live service: /healthz shows the refusal (time, reason) while ``ok`` stays
    true, the alert goes out, and the last accepted registry keeps verifying."""
    from ingest_support import create_db, drop_session, wait_for

    from ingest.config import config_from_stack
    from ingest.metrics import fetch
    from ingest.service import IngestService

    reg = bound()
    rp = tmp_path / "registry.json"
    reg.save(rp)
    good = rp.read_bytes()
    reg.revoke(ED.key_id, T0 - 1, "retired")
    reg.save(rp)
    cid = "ingest-test-registry"
    create_db(stack.influx_url, "t_registry")
    alerts = tmp_path / "alerts.jsonl"
    cfg = config_from_stack(stack, rp, tmp_path / "state", mqtt={"client_id": cid},
                            influx={"database": "t_registry", "flush_interval_ms": 50},
                            alerts={"jsonl": str(alerts)}, registry_check_s=0.05)
    svc = IngestService(cfg).start()
    try:
        def health() -> dict[str, Any]:
            code, text = fetch(f"http://127.0.0.1:{svc.metrics_port}/healthz")
            h: dict[str, Any] = json.loads(text)
            h["_code"] = code
            return h

        assert wait_for(lambda: health()["ok"], 20), health()
        assert health()["registry"]["state"] == "current"
        assert health()["registry"]["serial"] == 2
        rp.write_bytes(good)  # serial 1: a rollback
        assert wait_for(lambda: health()["registry"]["state"] == "refused", 10), health()
        h = health()
        assert h["ok"] is True and h["_code"] == 200
        assert h["registry"]["serial"] == 2 and "rollback" in h["registry"]["refused"]["reason"]
        assert wait_for(lambda: alerts.exists() and "registry_refused" in alerts.read_text(),
                        10)
    finally:
        svc.stop()
        drop_session(stack, cid)
