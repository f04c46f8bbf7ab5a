"""Code tables of the lane controller: how a lane's test program tells the gateway what it does.

A lane controller (the PC or PLC that runs the inspection program) exposes its state in a
few registers (profile ``firmware-config/instruments/lane_controller.yaml``): a state
code, a test serial number, a method code, a phase code, a verdict and the vehicle's
identity as text. Registers can only hold numbers and bytes, so both ends need the same
tables: the simulated lane writes them (sim/lane.py) and the central side turns them back
into :class:`~stationseal.records.TestContext` and ``test_start``/``test_end`` events
(ingest/testcontext.py). They live here because ingest must not import the simulators.

Text registers hold GBK bytes, as Chinese lane software writes plates (``京A12345``). The
gateway decodes register strings byte for byte (Latin-1), so the signed value keeps the
exact bytes; :func:`decode_text` recovers the plate on the central side.
"""

from __future__ import annotations

from stationseal.records import TEST_METHODS
from stationseal.vehicle_results import PHASES

#: ``lane_test_state`` values.
STATE_IDLE = 0
STATE_TESTING = 1
STATE_FINISHED = 2
STATE_ABORTED = 3
STATES: dict[int, str] = {
    STATE_IDLE: "idle",
    STATE_TESTING: "testing",
    STATE_FINISHED: "finished",
    STATE_ABORTED: "aborted",
}

#: ``lane_method`` values (0: no test selected).
METHOD_CODES: dict[str, int] = {m: i + 1 for i, m in enumerate(TEST_METHODS)}
METHOD_BY_CODE: dict[int, str] = {c: m for m, c in METHOD_CODES.items()}

#: ``lane_result`` values.
RESULT_CODES: dict[str, int] = {"": 0, "pass": 1, "fail": 2}
RESULT_BY_CODE: dict[int, str] = {c: r for r, c in RESULT_CODES.items()}

#: Encoding of the lane controller's text registers.
TEXT_ENCODING = "gbk"


def phase_code(method: str, phase: str) -> int:
    """1-based position of ``phase`` in the method's phase list (0: none / unknown)."""
    phases = PHASES.get(method, ())
    return phases.index(phase) + 1 if phase in phases else 0


def phase_name(method: str, code: int) -> str:
    phases = PHASES.get(method, ())
    return phases[code - 1] if 1 <= code <= len(phases) else ""


def test_id(site: str, lane: str, number: int) -> str:
    """Site-wide test id from the lane's serial number (the form sim/vehicle.py uses)."""
    return f"{site}-{lane}-{number:04d}"


def encode_text(text: str) -> str:
    """The register bytes of ``text`` as a Latin-1 string (one character per byte), the
    form a Modbus string point carries through the gateway."""
    return text.encode(TEXT_ENCODING, errors="replace").decode("latin-1")


def decode_text(value: str) -> str:
    """Inverse of :func:`encode_text`; text that is not GBK bytes is returned unchanged."""
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError:
        return value  # already decoded (a gateway that knows the encoding)
    try:
        return raw.decode(TEXT_ENCODING)
    except UnicodeDecodeError:
        return value
