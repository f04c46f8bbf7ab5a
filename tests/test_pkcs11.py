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
