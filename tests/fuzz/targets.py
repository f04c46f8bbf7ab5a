"""Fuzz targets and their contract, shared by the Hypothesis tests, the corpus replay
(tests/fuzz/test_fuzz_corpus.py) and the coverage-guided runner (tests/fuzz/atheris_run.py).

Contract for every target: for any input bytes, the code under test returns a valid
result or raises the project's named error for that input (``FrameError`` /
``verify.Rejected`` for frames, ``HJ212Error`` for HJ 212, ``ConfigError`` for configs and
profiles), never another exception, and within a bounded time (:data:`TIME_LIMIT_S`, a
hang detector, not a speed target). A violation raises :class:`ContractViolation` naming
the target, the exception and the input's digest.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).resolve().parent / "corpus"
#: A single input taking longer than this is a hang (infinite loop, exponential blow-up).
TIME_LIMIT_S = 10.0


class ContractViolation(AssertionError):
    pass


class _Hang(BaseException):
    """Raised from the alarm handler; BaseException so no ``except Exception`` in the
    code under test can swallow it."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    if seconds <= 0 or not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise _Hang

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


# --------------------------------------------------------------------------- frames


_REGISTRY: Any = None


def _registry() -> Any:
    """One registry with the test-vector key, so valid signed seeds verify fully."""
    global _REGISTRY
    if _REGISTRY is None:
        from stationseal import vectors
        from stationseal.keys import KeyRegistry

        reg = KeyRegistry()
        with contextlib.suppress(Exception):  # the vectors' layout is another module's
            reg = vectors.registry_for(vectors.build())
        _REGISTRY = reg
    return _REGISTRY


def frame_target(data: bytes) -> str:
    """The signed-frame decoder and the ingest's verification path."""
    from stationseal import frame as fr
    from stationseal.verify import Rejected, verify_payload

    outcome = "frame"
    try:
        f = fr.decode(data)
        # a decoded frame must describe itself consistently
        assert isinstance(f.seq, int) and f.seq >= 0, f"seq {f.seq!r}"
        assert isinstance(f.readings, list)
    except fr.FrameError as e:
        outcome = f"FrameError:{e.reason}"
    with contextlib.suppress(fr.FrameError):
        fr.decode(data, materialize=False)
    try:
        verify_payload(data, _registry())
    except Rejected as e:
        return f"{outcome}/Rejected:{e.reason}"
    return outcome


# --------------------------------------------------------------------------- HJ 212


def hj212_target(data: bytes) -> str:
    """parse_frame (with and without CRC check, with an SM4 key) and the stream decoder."""
    from stationseal.hj212 import Frame, HJ212Error, StreamDecoder, parse_frame
    from stationseal.hj212.fuzz import FUZZ_KEY

    outcome = []
    for kwargs in ({}, {"check_crc": False}, {"sm4_key": FUZZ_KEY}):
        try:
            f = parse_frame(data, **kwargs)  # type: ignore[arg-type]
            assert isinstance(f, Frame)
            outcome.append("frame")
        except HJ212Error as e:
            outcome.append(type(e).__name__)
    dec = StreamDecoder()
    half = len(data) // 2
    items = dec.feed(data[:half]) + dec.feed(data[half:])
    assert dec.buffered <= len(data), "stream decoder holds more than it was given"
    outcome.append(f"stream:{len(items)}")
    return "/".join(outcome)


# --------------------------------------------------------------------------- configs


_TMP: Path | None = None


def _tmpdir() -> Path:
    global _TMP
    if _TMP is None:
        base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        _TMP = Path(tempfile.mkdtemp(prefix="stationseal-fuzz-", dir=base))
    return _TMP


def _write(name: str, data: bytes) -> Path:
    p = _tmpdir() / name
    p.write_bytes(data)
    return p


def site_config_target(data: bytes) -> str:
    from agent.config import load_site_config
    from agent.yamlcfg import ConfigError

    # laid out as firmware-config/ is (sites/ beside instruments/, the default
    # profiles_dir), so inputs reach the profile cross-checks, not just "no profile file"
    inst = _tmpdir() / "instruments"
    if not inst.exists():
        inst.symlink_to(ROOT / "firmware-config" / "instruments")
    (_tmpdir() / "sites").mkdir(exist_ok=True)
    p = _write("sites/site.yaml", data)
    try:
        load_site_config(p)
    except ConfigError:
        return "ConfigError"
    return "config"


def profile_target(data: bytes) -> str:
    from agent.profiles import load_profile
    from agent.yamlcfg import ConfigError

    p = _write("fuzzprofile.yaml", data)
    try:
        load_profile(p)
    except ConfigError:
        return "ConfigError"
    return "profile"


def ingest_config_target(data: bytes) -> str:
    from ingest.config import ConfigError, load_config

    p = _write("central.yaml", data)
    try:
        load_config(p)
    except ConfigError:
        return "ConfigError"
    return "config"


TARGETS: dict[str, Callable[[bytes], str]] = {
    "frame": frame_target,
    "hj212": hj212_target,
    "site_config": site_config_target,
    "profile": profile_target,
    "ingest_config": ingest_config_target,
}


def check(target: str, data: bytes, time_limit_s: float = TIME_LIMIT_S) -> str:
    """Run one input through a target; raise ContractViolation if the contract breaks."""
    fn = TARGETS[target]
    try:
        with time_limit(time_limit_s):
            return fn(data)
    except _Hang:
        raise ContractViolation(f"{target}: input {_digest(data)} ({len(data)} bytes) took "
                                f"more than {time_limit_s:.0f} s") from None
    except ContractViolation:
        raise
    except RecursionError as e:
        raise ContractViolation(f"{target}: input {_digest(data)} ({len(data)} bytes): "
                                f"RecursionError {e}") from e
    except Exception as e:
        raise ContractViolation(f"{target}: input {_digest(data)} ({len(data)} bytes) "
                                f"raised {type(e).__name__}: {e}"[:800]) from e


def corpus_files(target: str) -> list[Path]:
    d = CORPUS / target
    return sorted(p for p in d.iterdir() if p.is_file()) if d.is_dir() else []
