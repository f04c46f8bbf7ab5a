"""Config errors are named up front, with exit code 2 and no traceback: every file and
directory a site or central config refers to is checked by ``check-config`` and at the
start of ``run`` (issue: a missing CA file or an unwritable state directory used to
surface as a traceback with exit 1, and ``check-config`` said OK)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from stationseal.keys import KeyRegistry, generate_keypair

SYSTEM_CA = Path("/etc/ssl/certs/ca-certificates.crt")
REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stationseal.cli", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def _secret(path: Path, text: str) -> Path:
    path.write_text(text)
    os.chmod(path, 0o600)
    return path


def _ca(tmp: Path) -> Path:
    """A CA bundle OpenSSL loads (the system one if present, else a fresh self-signed)."""
    if SYSTEM_CA.exists():
        return SYSTEM_CA
    from stack.manager import _layout, _make_ca

    lay = _layout(tmp / "ca-stack")
    lay.root.mkdir(parents=True, exist_ok=True)
    _make_ca(lay)
    return lay.ca_cert


# --------------------------------------------------------------------------- ingest


def _central(tmp: Path, **over: Any) -> Path:
    KeyRegistry().save(tmp / "registry.json")
    data: dict[str, Any] = {
        "mqtt": {"host": "127.0.0.1", "port": 1, "tls": {"ca_file": str(_ca(tmp))},
                 "username": "ingest",
                 "password_file": str(_secret(tmp / "mqtt-pw", "secret\n"))},
        "influx": {"url": "http://127.0.0.1:1", "database": "x"},
        "registry": "registry.json",
        "registry_authority": "registry.json.authority.pub.pem",
        "state_dir": "state",
        "metrics": {"enabled": False},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k] = {**data[k], **v}
        else:
            data[k] = v
    p = tmp / "central.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _assert_named(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in r.stderr, (n, r.stderr)


def test_ingest_check_config_accepts_a_usable_config(tmp_path: Path) -> None:
    r = cli("ingest", "check-config", "--config", str(_central(tmp_path)))
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stderr


def test_ingest_missing_ca_file_is_named_by_check_and_run(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "ca.crt"
    cfg = _central(tmp_path, mqtt={"tls": {"ca_file": str(missing)}})
    _assert_named(cli("ingest", "check-config", "--config", str(cfg)),
                  "mqtt.tls.ca_file", str(missing))
    _assert_named(cli("ingest", "run", "--config", str(cfg)),
                  "mqtt.tls.ca_file", str(missing))


def test_ingest_ca_file_that_is_not_pem_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "ca.crt"
    bad.write_text("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    cfg = _central(tmp_path, mqtt={"tls": {"ca_file": str(bad)}})
    _assert_named(cli("ingest", "check-config", "--config", str(cfg)), "mqtt.tls.ca_file")


def test_ingest_state_dir_that_cannot_be_created_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    cfg = _central(tmp_path, state_dir=str(blocker / "state"))
    _assert_named(cli("ingest", "check-config", "--config", str(cfg)), "state_dir",
                  str(blocker))
    _assert_named(cli("ingest", "run", "--config", str(cfg)), "state_dir")


def test_ingest_missing_password_file_and_bad_sm4_key_are_all_reported(tmp_path: Path
                                                                       ) -> None:
    pw = tmp_path / "missing-password"
    key = _secret(tmp_path / "sm4.hex", "0123456789abcdef0123")  # 20 digits, not 32
    cfg = _central(tmp_path, mqtt={"password_file": str(pw)},
                   hj212={"port": 0, "loggers": [
                       {"mn": "MN1", "site": "s1", "sm4_key_file": str(key)},
                       {"mn": "MN2", "site": "s2", "sm4_key": "zz" * 16}]})
    r = cli("ingest", "check-config", "--config", str(cfg))
    # One run names every problem, not just the first.
    _assert_named(r, "mqtt.password_file", str(pw), "MN1", "32 hex digits", "MN2")


def test_ingest_good_sm4_keys_pass(tmp_path: Path) -> None:
    key = _secret(tmp_path / "sm4.hex", "0123456789abcdef" * 2 + "\n")
    cfg = _central(tmp_path, hj212={"port": 0, "loggers": [
        {"mn": "MN1", "site": "s1", "sm4_key_file": str(key)},
        {"mn": "MN2", "site": "s2", "sm4_key": "ab" * 16}]})
    r = cli("ingest", "check-config", "--config", str(cfg))
    assert r.returncode == 0, r.stderr


def test_ingest_empty_password_file_and_open_mode_warning(tmp_path: Path) -> None:
    pw = tmp_path / "empty-pw"
    pw.write_text("\n")
    cfg = _central(tmp_path, mqtt={"password_file": str(pw)})
    _assert_named(cli("ingest", "check-config", "--config", str(cfg)), "file is empty")
    pw.write_text("secret\n")
    os.chmod(pw, 0o644)
    r = cli("ingest", "check-config", "--config", str(cfg))
    assert r.returncode == 0 and "chmod 600" in r.stderr, r.stderr


# --------------------------------------------------------------------------- agent


def _site(tmp: Path, **over: Any) -> Path:
    kf = generate_keypair("gw-pre-1", tmp / "keys")
    data: dict[str, Any] = {
        "site": "site-pre",
        "gateway_id": "gw-pre-1",
        "kind": "stack_cems",
        "key_file": str(kf.private_key),
        "profiles_dir": str(REPO / "firmware-config" / "instruments"),
        "uplink": {"type": "mqtt", "host": "127.0.0.1", "port": 8883,
                   "tls": {"ca": str(_ca(tmp))},
                   "password_file": str(_secret(tmp / "gw-pw", "pw\n"))},
        "outbox": {"path": str(tmp / "state" / "outbox.sqlite")},
        "instruments": [{"id": "cems-1", "profile": "stack_cems",
                         "transport": {"type": "modbus_tcp", "host": "127.0.0.1",
                                       "port": 1502}}],
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k] = {**data[k], **v}
        else:
            data[k] = v
    p = tmp / "site.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_agent_check_config_accepts_a_usable_config(tmp_path: Path) -> None:
    r = cli("agent", "check-config", "--config", str(_site(tmp_path)))
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout


def test_agent_missing_ca_and_password_file_are_named(tmp_path: Path) -> None:
    ca = tmp_path / "no-ca.pem"
    pw = tmp_path / "no-password"
    cfg = _site(tmp_path, uplink={"type": "mqtt", "host": "127.0.0.1",
                                  "tls": {"ca": str(ca)}, "password_file": str(pw)})
    _assert_named(cli("agent", "check-config", "--config", str(cfg)),
                  "uplink.tls.ca", str(ca), "uplink.password_file", str(pw))
    # `run` refuses the same way, before opening anything.
    _assert_named(cli("agent", "run", "--config", str(cfg)), "uplink.tls.ca")


def test_agent_unwritable_outbox_directory_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    cfg = _site(tmp_path, outbox={"path": str(blocker / "outbox.sqlite")})
    _assert_named(cli("agent", "check-config", "--config", str(cfg)), "outbox.path",
                  str(blocker))


def test_agent_bad_sm4_key_file_is_named(tmp_path: Path) -> None:
    key = _secret(tmp_path / "sm4.hex", "not-hex-at-all-not-hex-at-all-xx")
    cfg = _site(tmp_path, hj212={"port": 9212, "sm4_key_file": str(key)})
    _assert_named(cli("agent", "check-config", "--config", str(cfg)),
                  "hj212.sm4_key_file", "hex")
    key.write_text("00112233445566778899aabbccddeeff\n")
    r = cli("agent", "check-config", "--config", str(cfg))
    assert r.returncode == 0, r.stderr


def test_agent_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    cfg_path = _site(tmp_path)
    key = Path(yaml.safe_load(cfg_path.read_text())["key_file"])
    os.chmod(key, 0o644)
    _assert_named(cli("agent", "check-config", "--config", str(cfg_path)), "key_file",
                  "0600")


def test_agent_absent_serial_device_is_only_a_warning(tmp_path: Path) -> None:
    cfg = _site(tmp_path, instruments=[{
        "id": "cems-1", "profile": "stack_cems",
        "transport": {"type": "modbus_rtu", "port": str(tmp_path / "ttyNONE")}}])
    r = cli("agent", "check-config", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "no such device" in r.stderr
