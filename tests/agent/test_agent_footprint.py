"""What the running agent process has imported: only what its site uses.

The gateway's memory budget (35 MB, benchmarks/agent_bench.py measures it) holds only if
the long-running `agent run` process never loads pydantic and PyYAML (the config is
validated in a forked child: agent/configproc.py), nor cryptography (Ed25519 signs
through the libcrypto Python's ssl already maps: stationseal/ossl.py), nor the readers
and codecs of protocols the site does not use. These tests run the real command in a
subprocess and read its ``sys.modules`` once it is running.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from stationseal import ossl
from stationseal.keys import generate_keypair

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ROOT / "firmware-config" / "instruments"

#: Runs `stationseal agent run` in this process; once the status file exists, writes
#: sys.modules to OUT and stops the agent with SIGTERM (as systemd would).
RUNNER = textwrap.dedent("""
    import json, os, signal, sys, threading, time
    from pathlib import Path
    cfg, out, status = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    def watch():
        end = time.monotonic() + 60
        while time.monotonic() < end and not status.exists():
            time.sleep(0.05)
        time.sleep(0.5)
        out.write_text(json.dumps(sorted(sys.modules)))
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, daemon=True).start()
    from stationseal.cli import main
    sys.exit(main(["agent", "run", "--config", cfg, "--log-level", "WARNING"]))
""")

#: Never in the running agent, whatever the site.
NEVER = ("pydantic", "pydantic_core", "yaml", "agent.config", "agent.profiles",
         "agent.yamlcfg")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _site(tmp: Path, instruments: list[dict[str, Any]], **extra: Any) -> Path:
    kf = generate_keypair("gw-fp", tmp / "keys")
    doc = {"site": "site-fp", "gateway_id": "gw-fp", "kind": "stack_cems",
           "key_file": str(kf.private_key), "profiles_dir": str(PROFILES),
           "uplink": f"file:{tmp / 'frames.jsonl'}",
           "outbox": {"path": str(tmp / "state" / "outbox.sqlite"), "batch_max_ms": 200},
           "clock": {"ntp_check": False},
           "instruments": instruments, **extra}
    path = tmp / "site.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _modules(tmp: Path, config: Path) -> set[str]:
    out = tmp / "modules.json"
    r = subprocess.run([sys.executable, "-c", RUNNER, str(config), str(out),
                        str(tmp / "state" / "outbox.status.json")],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return set(json.loads(out.read_text()))


def _loaded(mods: set[str], name: str) -> bool:
    return name in mods or any(m.startswith(name + ".") for m in mods)


def test_modbus_site_loads_no_validation_crypto_serial_or_hj212(tmp_path: Path) -> None:
    cfg = _site(tmp_path, [
        {"id": f"cems-{i}", "profile": "stack_cems", "unit_id": i + 1,
         "transport": {"type": "modbus_tcp", "host": "127.0.0.1", "port": _free_port()}}
        for i in range(2)])
    mods = _modules(tmp_path, cfg)
    for name in (*NEVER, "agent.serial_reader", "agent.hj212_source", "stationseal.hj212",
                 "stationseal.pkcs11", "pkcs11"):
        assert not _loaded(mods, name), f"{name} imported by a Modbus TCP site's agent"
    if ossl.libcrypto() is not None:
        assert not _loaded(mods, "cryptography"), "Ed25519 signing loaded cryptography"
    # the other side of the line: what a Modbus site does need is there
    for name in ("agent.modbus", "pymodbus.client", "stationseal.frame", "agent.outbox"):
        assert _loaded(mods, name), name


def test_serial_and_logger_site_loads_them_and_no_modbus(tmp_path: Path) -> None:
    cfg = _site(tmp_path, [
        {"id": "opa-1", "profile": "opacimeter", "poll_interval_s": 0.5,
         "transport": {"type": "serial", "port": str(tmp_path / "no-such-tty")}}],
        hj212={"host": "127.0.0.1", "port": _free_port()})
    mods = _modules(tmp_path, cfg)
    for name in ("agent.serial_reader", "agent.hj212_source", "stationseal.hj212"):
        assert _loaded(mods, name), f"{name} missing on a serial + logger site"
    for name in (*NEVER, "agent.modbus", "pymodbus"):
        assert not _loaded(mods, name), f"{name} imported by a site without Modbus"
    if ossl.libcrypto() is not None:
        # no SM4 key configured: the HJ 212 codec must not pull cryptography in
        assert not _loaded(mods, "cryptography")


def test_run_reports_config_errors_with_their_path(tmp_path: Path) -> None:
    # Validation moved to a child process; its errors must read exactly as before.
    port = _free_port()
    cfg = _site(tmp_path, [
        {"id": f"cems-{i}", "profile": "stack_cems", "unit_id": 1,
         "transport": {"type": "modbus_tcp", "host": "127.0.0.1", "port": port}}
        for i in range(2)])
    r = subprocess.run([sys.executable, "-m", "stationseal.cli", "agent", "run", "--config",
                        str(cfg)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2
    assert "instruments[1].unit_id: unit 1 on tcp://127.0.0.1:" in r.stderr, r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(cfg.read_text().replace("batch_max_ms: 200", "batch_max_ms: 5"))
    r = subprocess.run([sys.executable, "-m", "stationseal.cli", "agent", "run", "--config",
                        str(bad)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2
    assert "outbox.batch_max_ms: Input should be greater than or equal to 10" in r.stderr, \
        r.stderr


@pytest.mark.parametrize("missing", [True, False])
def test_run_names_a_missing_config(tmp_path: Path, missing: bool) -> None:
    path = tmp_path / "absent.yaml"
    if not missing:
        path.write_text("site: [unclosed\n")
    r = subprocess.run([sys.executable, "-m", "stationseal.cli", "agent", "run", "--config",
                        str(path)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2
    assert str(path) in r.stderr
    assert ("cannot read" in r.stderr) == missing, r.stderr
    assert ("not valid YAML" in r.stderr) == (not missing), r.stderr
