"""The PKCS#11 signing path, against a real SoftHSM token."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from stationseal.frame import ZERO_HASH, seal
from stationseal.keys import KeyRegistry
from stationseal.records import Reading
from stationseal.verify import verify_payload

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
pytest.importorskip("pkcs11", reason="python-pkcs11 not installed")
if not (Path(MODULE).exists() and shutil.which("softhsm2-util")):
    pytest.skip("SoftHSM2 not installed (apt-get install softhsm2)", allow_module_level=True)


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One token per module: the PKCS#11 library reads its configuration only once."""
    tmp_path = tmp_path_factory.mktemp("softhsm")
    (tmp_path / "tokens").mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tmp_path / 'tokens'}\nobjectstore.backend = file\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "gw-token",
                    "--pin", "1234", "--so-pin", "5678"], check=True, capture_output=True,
                   env={**os.environ, "SOFTHSM2_CONF": str(conf)})
    return "gw-token"


def test_bad_pin_names_the_token(token: str) -> None:
    from stationseal.pkcs11 import Pkcs11Signer
    from stationseal.signing import SigningError

    with pytest.raises(SigningError, match="gw-token"):
        Pkcs11Signer(MODULE, token, "0000", "no-such-key")


def test_token_signed_frames_verify(token: str) -> None:
    from stationseal.pkcs11 import Pkcs11Signer, generate_token_key

    pem = generate_token_key(MODULE, token, "1234", "frame-key")
    signer = Pkcs11Signer(MODULE, token, "1234", "frame-key")
    reg = KeyRegistry()
    reg.add("gw-hsm", pem, 0.0, sites=["S"])
    f = seal(signer, gateway_id="gw-hsm", site="S", boot_id=bytes(16), seq=1,
             prev_hash=ZERO_HASH, created=1767225600.0, clock_sync="synced",
             readings=[Reading("a", "so2_mgm3", 12.5, "mg/m³", 1767225600.0, "N", None)],
             events=[])
    assert verify_payload(f.payload, reg).alg == "p256"
    bad = bytearray(f.payload)
    bad[-1] ^= 1
    with pytest.raises(Exception, match="bad_signature"):
        verify_payload(bytes(bad), reg)
    signer.close()


def test_agent_signs_through_the_token_and_the_ingest_verifies(token: str,
                                                               tmp_path: Path) -> None:
    """End to end: the real `stationseal agent run`, configured with a PKCS#11 key (no key
    file anywhere), polls a simulated Modbus analyzer and seals frames inside the token;
    the ingest pipeline and the offline verifier accept them under the registered key."""
    import json
    import signal
    import sys
    import time

    import yaml

    from ingest.config import parse_config
    from ingest.metrics import Metrics
    from ingest.pipeline import Pipeline
    from ingest.store import Store
    from stationseal.export import read_frames
    from stationseal.frame import decode
    from stationseal.pkcs11 import generate_token_key
    from stationseal.registry import authority_pub_path

    sys.path.insert(0, str(Path(__file__).parent / "agent"))
    from sim_helpers import PROFILES, SimLoop, tcp_instrument

    pem = generate_token_key(MODULE, token, "1234", "gw-e2e-key")
    reg = KeyRegistry()
    reg.add("gw-hsm-e2e", pem, 0.0, sites=["site-hsm"], instruments=["cems-1"])
    (tmp_path / "central").mkdir()
    reg_path = tmp_path / "central" / "registry.json"
    reg.save(reg_path)
    gwdir = tmp_path / "gateway"
    gwdir.mkdir()
    pin = gwdir / "token.pin"
    pin.write_text("1234\n")
    pin.chmod(0o600)
    out = gwdir / "frames.jsonl"
    sims = SimLoop()
    try:
        port = sims.start("cems-1", "stack_cems")
        site = {
            "site": "site-hsm", "gateway_id": "gw-hsm-e2e", "kind": "stack_cems",
            "key_pkcs11": {"module": MODULE, "token_label": token, "key_label": "gw-e2e-key",
                           "pin_file": str(pin)},
            "profiles_dir": str(PROFILES),
            "uplink": {"type": "file", "path": str(out)},
            "outbox": {"path": str(gwdir / "state" / "outbox.sqlite"),
                       "batch_max_ms": 300},
            "instruments": [tcp_instrument("cems-1", "stack_cems", port)],
        }
        cfg = gwdir / "site.yaml"
        cfg.write_text(yaml.safe_dump(site, sort_keys=False))
        log = tmp_path / "agent.log"
        with open(log, "wb") as lf:
            proc = subprocess.Popen([sys.executable, "-m", "stationseal.cli", "agent", "run",
                                     "--config", str(cfg)], stdout=subprocess.DEVNULL,
                                    stderr=lf, env=dict(os.environ))
            try:
                end = time.monotonic() + 30
                while time.monotonic() < end and (
                        not out.exists() or len(out.read_text().splitlines()) < 4):
                    assert proc.poll() is None, log.read_text()
                    time.sleep(0.2)
            finally:
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(20) == 0, log.read_text()
    finally:
        sims.close()
    # Nothing on the gateway side holds a private key (the token's store is SoftHSM's).
    assert not [p for p in gwdir.rglob("*") if p.is_file() and b"PRIVATE KEY" in p.read_bytes()]
    lines = [ff for ff in read_frames(out)]
    assert len(lines) >= 4
    frames = [decode(ff.payload) for ff in lines if ff.payload is not None]
    assert {f.alg for f in frames} == {"p256"} and sum(f.reading_count for f in frames) > 0
    state = tmp_path / "ingest"
    icfg = parse_config({"registry": str(reg_path),
                         "registry_authority": str(authority_pub_path(reg_path)),
                         "state_dir": str(state)})
    state.mkdir()
    pipe = Pipeline(icfg, Store(state / "s.db"), Metrics())
    outcomes = [pipe.handle(ff.topic, ff.payload, time.time()) for ff in lines
                if ff.payload is not None]
    assert set(outcomes) == {"accepted"}, pipe.store.quarantine_counts()
    r = subprocess.run([sys.executable, "-m", "stationseal.cli", "verify", str(out),
                        "--registry", str(reg_path), "--authority",
                        str(authority_pub_path(reg_path)), "--json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["gateways"][0]["keys"] == [frames[0].key_id]
