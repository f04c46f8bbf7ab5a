"""Evidence packages: built from the central side's records, accepted by the verifier,
and every kind of tampering refused with a named reason."""

from __future__ import annotations

import base64
import json
import random
import shutil
import zipfile
from pathlib import Path

import pytest
from evidence_support import GW, Central, make_central

from evidence.package import write_manifest
from evidence.verify import REASONS, verify_package
from stationseal.cli import main
from stationseal.signing import load_signer


@pytest.fixture(scope="module")
def central(tmp_path_factory: pytest.TempPathFactory) -> Central:
    return make_central(tmp_path_factory.mktemp("central"))


@pytest.fixture(scope="module")
def package(central: Central, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pkg") / "package"
    assert main(["evidence", "build", central.alert_id, "--out", str(out),
                 *central.build_args(), "--no-plots", "--no-report"]) == 0
    return out


def _copy(package: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(package, dst)
    return dst


def _pub(central: Central) -> bytes:
    return (central.root / "keys" / "central.pub.pem").read_bytes()


def _resign(pkg: Path, central: Central) -> None:
    """What only the central service could do: re-sign after changing the contents."""
    head = json.loads((pkg / "manifest.json").read_text())
    head.pop("files")
    write_manifest(pkg, load_signer(central.root / "keys" / "central.key"), head)


def test_package_is_accepted_and_the_finding_reproduced(central: Central, package: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    rep = verify_package(package, _pub(central))
    assert rep.ok, rep.to_json()
    assert rep.reproduced and rep.rule == "E4" and rep.alert_id == central.alert_id
    assert rep.frames == rep.receipts > 36  # the flat 3 minutes are 36 frames, plus context
    assert rep.checkpoints >= 2
    files = {e["path"] for e in json.loads((package / "manifest.json").read_text())["files"]}
    assert {"frames.jsonl", "alert.json", "chain.json", "receipts.json", "registry.json",
            "central.pub.pem", "detect/records.jsonl", "detect/SITES.yaml",
            "detect/PARAMS.yaml"} <= files
    # Frames exactly as received: every packaged line is a line of the archive.
    archive = set(central.frames.read_text().splitlines())
    assert set((package / "frames.jsonl").read_text().splitlines()) <= archive
    # `stationseal detect` on the package alone raises the alert again.
    out = package.parent / "again.jsonl"
    assert main(["detect", "--in", str(package / "detect" / "records.jsonl"), "--sites",
                 str(package / "detect" / "SITES.yaml"), "--params",
                 str(package / "detect" / "PARAMS.yaml"), "--out", str(out)]) == 0
    assert central.alert_id in {json.loads(x)["id"] for x in out.read_text().splitlines()}
    capsys.readouterr()
    assert main(["evidence", "verify", str(package), "--central-key",
                 str(central.root / "keys" / "central.pub.pem")]) == 0
    assert "ACCEPTED" in capsys.readouterr().out


def test_zip_package_is_accepted(central: Central, tmp_path: Path) -> None:
    z = tmp_path / "p.zip"
    assert main(["evidence", "build", central.alert_id, "--out", str(z),
                 *central.build_args(), "--no-plots", "--no-report"]) == 0
    assert zipfile.is_zipfile(z)
    assert verify_package(z, _pub(central)).ok


def test_changing_any_byte_of_any_file_is_detected(central: Central, package: Path,
                                                   tmp_path: Path) -> None:
    rnd = random.Random(13)
    files = sorted(p.relative_to(package).as_posix() for p in package.rglob("*")
                   if p.is_file())
    assert len(files) >= 10
    for i, rel in enumerate(files):
        pkg = tmp_path / f"t{i}"
        shutil.copytree(package, pkg)
        p = pkg / rel
        data = bytearray(p.read_bytes())
        pos = rnd.randrange(len(data))
        data[pos] ^= 0x01
        p.write_bytes(bytes(data))
        rep = verify_package(pkg, _pub(central))
        assert not rep.ok, rel
        reasons = rep.reasons()
        if rel == "manifest.json" or rel == "manifest.sig":
            assert reasons & {"manifest_signature", "manifest_malformed"}, (rel, reasons)
        elif rel == "central.pub.pem":
            assert reasons & {"central_key_mismatch", "file_changed"}, (rel, reasons)
        else:
            assert any(f.reason == "file_changed" and f.detail.startswith(rel)
                       for f in rep.failures), (rel, reasons)
        shutil.rmtree(pkg)


def _frame_lines(pkg: Path) -> list[str]:
    return (pkg / "frames.jsonl").read_text().splitlines()


def _seq(line: str) -> int:
    from stationseal.frame import decode

    return decode(base64.b64decode(json.loads(line)["payload"])).seq


def test_removed_frame_is_detected_even_with_a_resigned_manifest(
        central: Central, package: Path, tmp_path: Path) -> None:
    pkg = _copy(package, tmp_path)
    lines = _frame_lines(pkg)
    gone = lines.pop(len(lines) // 2)
    (pkg / "frames.jsonl").write_text("\n".join(lines) + "\n")
    rep = verify_package(pkg, _pub(central))
    assert {"file_changed", "frame_missing"} <= rep.reasons()
    # Even the central operator, re-signing, cannot hide it: chain.json lists the frame,
    # and if chain.json is edited too, the sequence has a hole.
    chain = json.loads((pkg / "chain.json").read_text())
    s = _seq(gone)
    c = chain["gateways"][0]
    c["present"] = [[c["first_seq"], s - 1], [s + 1, c["last_seq"]]]
    (pkg / "chain.json").write_text(json.dumps(chain))
    _resign(pkg, central)
    rep = verify_package(pkg, _pub(central))
    assert "file_changed" not in rep.reasons()
    assert "window_gap" in rep.reasons(), rep.to_json()


def test_frame_swapped_from_another_window_is_detected(central: Central, package: Path,
                                                       tmp_path: Path) -> None:
    pkg = _copy(package, tmp_path)
    lines = _frame_lines(pkg)
    in_pkg = {_seq(x) for x in lines}
    other = next(x for x in central.frames.read_text().splitlines() if _seq(x) not in in_pkg)
    k = len(lines) // 2
    lines[k] = other
    (pkg / "frames.jsonl").write_text("\n".join(lines) + "\n")
    rep = verify_package(pkg, _pub(central))
    assert {"file_changed", "frame_missing", "frame_unexpected"} <= rep.reasons()
    # Re-signed, with the swap put in the frame's place: the hash chain breaks.
    _resign(pkg, central)
    rep = verify_package(pkg, _pub(central))
    assert {"frame_missing", "frame_unexpected"} <= rep.reasons()
    assert "receipt_missing" in rep.reasons() or "window_gap" in rep.reasons()


def test_changed_reading_resigned_is_a_rejected_frame_and_changed_records_mismatch(
        central: Central, package: Path, tmp_path: Path) -> None:
    pkg = _copy(package, tmp_path)
    recs = (pkg / "detect" / "records.jsonl").read_text().splitlines()
    d = json.loads(recs[40])
    d["values"] = {k: v + 1 for k, v in d["values"].items()}
    recs[40] = json.dumps(d)
    (pkg / "detect" / "records.jsonl").write_text("\n".join(recs) + "\n")
    _resign(pkg, central)
    assert "records_mismatch" in verify_package(pkg, _pub(central)).reasons()


def test_other_central_key_and_forged_receipts_are_refused(central: Central, package: Path,
                                                           tmp_path: Path) -> None:
    from stationseal.keys import generate_keypair

    pkg = _copy(package, tmp_path)
    fake = generate_keypair("central", tmp_path / "fake")
    shutil.copy(fake.public_key, pkg / "central.pub.pem")
    head = json.loads((pkg / "manifest.json").read_text())
    head.pop("files")
    write_manifest(pkg, load_signer(fake.private_key), head)
    # Without a pinned key the package is self-consistent except for the checkpoints,
    # which were signed by the real central key.
    rep = verify_package(pkg)
    assert "checkpoint_signature" in rep.reasons() and not rep.ok
    rep = verify_package(pkg, _pub(central))
    assert {"central_key_mismatch", "manifest_signature"} <= rep.reasons()
    # A receipt moved in time (back-dated arrival) no longer leads to the signed root.
    pkg2 = tmp_path / "p2"
    shutil.copytree(package, pkg2)
    rc = json.loads((pkg2 / "receipts.json").read_text())
    rc["receipts"][3]["received_ms"] -= 3_600_000
    (pkg2 / "receipts.json").write_text(json.dumps(rc))
    _resign(pkg2, central)
    assert "proof_mismatch" in verify_package(pkg2, _pub(central)).reasons()


def test_every_reason_is_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "evidence.md").read_text()
    for r in REASONS:
        assert f"`{r}`" in doc, r


def test_unknown_alert_and_missing_inputs_are_usage_errors(central: Central, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    assert main(["evidence", "build", "nope#1", "--out", str(tmp_path / "x"),
                 *central.build_args(), "--no-plots", "--no-report"]) == 1
    assert "no alert with id 'nope#1'" in capsys.readouterr().err
    assert main(["evidence", "build", "x", "--out", str(tmp_path / "x")]) == 2
    assert GW


def test_frame_received_after_its_key_was_retired_is_refused(central: Central, package: Path,
                                                             tmp_path: Path) -> None:
    """A back-dated frame: created (by its own clock) while the key was valid, but first
    seen by the centre after the key was retired."""

    from stationseal.frame import decode
    from stationseal.registry import Authority, KeyRegistry

    pkg = _copy(package, tmp_path)
    lines = _frame_lines(pkg)
    f = decode(base64.b64decode(json.loads(lines[len(lines) // 2])["payload"]))
    # The registry authority publishes a new version retiring the key (receipt is +0.5 s).
    reg = KeyRegistry.load(pkg / "registry.json", pkg / "registry-authority.pub.pem")
    reg.revoke(f.key_id, f.created + 0.25, "retired")
    reg.save(pkg / "registry.json", Authority.beside(central.root / "registry.json"))
    _resign(pkg, central)
    rep = verify_package(pkg, _pub(central))
    bad = [x for x in rep.failures if x.reason == "key_invalid_at_receipt"]
    assert len(bad) == 1 and f"seq {f.seq}:" in bad[0].detail, rep.to_json()


def test_build_refuses_an_archive_frame_that_does_not_verify(central: Central, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]
                                                             ) -> None:
    lines = central.frames.read_text().splitlines()
    d = json.loads(lines[30])
    raw = bytearray(base64.b64decode(d["payload"]))
    raw[-70] ^= 0x01  # a byte of the body, just before the signature
    d["payload"] = base64.b64encode(bytes(raw)).decode()
    lines[30] = json.dumps(d)
    bad = tmp_path / "frames.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    args = [a if a != str(central.frames) else str(bad) for a in central.build_args()]
    assert main(["evidence", "build", central.alert_id, "--out", str(tmp_path / "p"), *args,
                 "--no-plots", "--no-report"]) == 1
    assert "seq 31" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
