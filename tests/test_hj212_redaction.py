"""The HJ 212 access password never goes into sealed (or stored) frame text."""

from __future__ import annotations

from stationseal.hj212 import CP, Frame, parse_frame
from stationseal.hj212.readings import (
    frame_event,
    raw_text,
    redact_credentials,
    redact_credentials_bytes,
)


def _frame(pw: str | None) -> Frame:
    f = Frame(st="31", cn="2011", mn="MN1", qn="20240501120000000", pw=pw,
              cp=CP.build(data_time="20240501120000",
                          pollutants={"a21026": {"Rtd": "12.3", "Flag": "N"}}))
    return parse_frame(f.encode())


def test_password_is_redacted_in_the_sealed_event() -> None:
    f = _frame("s3cret-99")
    assert b"PW=s3cret-99" in f.raw
    ev = frame_event(f, None, 1.0, "logger")
    assert "s3cret" not in str(ev.detail)
    assert "PW=***;" in ev.detail["raw"] and ev.detail["redacted"] == ["PW"]
    assert "s3cret" not in raw_text(f)
    # Without a password nothing is marked.
    assert "redacted" not in frame_event(_frame(None), None, 1.0, "logger").detail


def test_redaction_rules() -> None:
    assert redact_credentials("QN=1;PW=123456;MN=9") == "QN=1;PW=***;MN=9"
    assert redact_credentials("##0101QN=1;PW=abc") == "##0101QN=1;PW=***"
    assert redact_credentials("CP=&&PW=1&&") == "CP=&&PW=***&&"
    assert redact_credentials("XPW=1;PW=2") == "XPW=1;PW=***"  # another field's name
    assert redact_credentials_bytes(b"\x00PW=\xff\xfe;") == b"\x00PW=***;"
