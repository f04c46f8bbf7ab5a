"""Command codes (CN) and the question every receiver asks: what must I answer?

HJ 212 has four interaction replies. 9011 (request answer) and 9012 (execution result)
go from the data logger to the platform for a request; 9013 (notification answer) is
sent by whoever receives a notification; 9014 (data answer) goes from the platform to
the logger for uploaded data. Whether an immediate answer is due at all is the A bit of
Flag. Many CNs are used in both directions with different meanings (CN=2051 from the
platform asks for minute data, from the logger it carries them), so the answer depends
on who sent the frame as well as on CN.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Literal, NamedTuple

Origin = Literal["logger", "platform"]


class Kind(StrEnum):
    REQUEST = "request"
    UPLOAD = "upload"
    NOTIFY = "notify"
    REPLY = "reply"


class Command(NamedTuple):
    cn: str
    name: str
    #: what the frame is when a data logger sends it (None: a logger never sends it)
    from_logger: Kind | None
    #: what the frame is when the platform sends it
    from_platform: Kind | None
    #: standard edition that introduced it
    since: int = 2017


_R, _U, _N, _A = Kind.REQUEST, Kind.UPLOAD, Kind.NOTIFY, Kind.REPLY

COMMANDS: dict[str, Command] = {
    c.cn: c
    for c in (
        Command("1000", "set timeout and retry count", None, _R),
        Command("1001", "upload logger hardware id (CPU id / MAC)", _U, None, 2025),
        Command("1011", "logger time (get / report)", _U, _R),
        Command("1012", "set logger time", None, _R),
        Command("1013", "logger time calibration request", _N, None),
        Command("1014", "key exchange (get / set new SM4 key)", _U, _R, 2025),
        Command("1061", "real-time data interval (get / report)", _U, _R),
        Command("1062", "set real-time data interval", None, _R),
        Command("1063", "minute data interval (get / report)", _U, _R),
        Command("1064", "set minute data interval", None, _R),
        Command("1072", "set logger access password", None, _R),
        Command("2011", "real-time data", _U, _R),
        Command("2012", "stop real-time data", None, _N),
        Command("2013", "raw monitoring data", _U, _R, 2025),
        Command("2021", "facility running status", _U, _R),
        Command("2022", "stop facility running status", None, _N),
        Command("2031", "daily data", _U, _R),
        Command("2041", "facility running time, daily", _U, _R),
        Command("2051", "minute data", _U, _R),
        Command("2061", "hourly data", _U, _R),
        Command("2081", "logger boot time", _U, _R),
        Command("3011", "zero / span calibration", None, _R),
        Command("3012", "immediate sampling", None, _R),
        Command("3013", "cleaning / back-flushing", None, _R),
        Command("3014", "comparison sampling", None, _R),
        Command("3015", "sample retention on exceedance", None, _R),
        Command("3016", "set sampling period", None, _R),
        Command("3017", "sampling period (get / report)", _U, _R),
        Command("3018", "sample delivery time (get / report)", _U, _R),
        Command("3019", "instrument unique id (get / report)", _U, _R),
        Command("3020", "logger / instrument information (get / report)", _U, _R),
        Command("3021", "set logger / instrument parameters", None, _R),
        Command("9011", "request answer", _A, None),
        Command("9012", "execution result", _A, None),
        Command("9013", "notification answer", _A, _A),
        Command("9014", "data answer", None, _A),
        Command("9015", "heartbeat", _N, None, 2025),
    )
}

REQUEST_ANSWER = "9011"
EXECUTION_RESULT = "9012"
NOTIFICATION_ANSWER = "9013"
DATA_ANSWER = "9014"
HEARTBEAT = "9015"
REPLY_CNS = frozenset({REQUEST_ANSWER, EXECUTION_RESULT, NOTIFICATION_ANSWER, DATA_ANSWER})

_ANSWER_FOR_KIND = {
    Kind.REQUEST: REQUEST_ANSWER,
    Kind.UPLOAD: DATA_ANSWER,
    Kind.NOTIFY: NOTIFICATION_ANSWER,
}


class QnRtn(IntEnum):
    """CP ``QnRtn`` of a 9011 request answer."""

    READY = 1
    REFUSED = 2
    BAD_PW = 3
    BAD_MN = 4
    BAD_ST = 5
    BAD_FLAG = 6
    BAD_QN = 7
    BAD_CN = 8
    BAD_CRC = 9
    UNKNOWN_ERROR = 100


class ExeRtn(IntEnum):
    """CP ``ExeRtn`` of a 9012 execution result."""

    SUCCESS = 1
    FAILED_UNKNOWN_REASON = 2
    BAD_CONDITIONS = 3
    TIMEOUT = 4
    BUSY = 5
    SYSTEM_FAULT = 6
    NO_DATA = 100


def command_name(cn: str) -> str:
    cmd = COMMANDS.get(cn)
    return cmd.name if cmd else "unknown command"


def kind_of(cn: str, origin: Origin) -> Kind:
    """What a frame with this CN is when ``origin`` sent it.

    Unknown codes from a logger are treated as uploads and from a platform as requests:
    answering an unknown upload with 9014 lets the logger stop resending, which beats a
    retry storm, and nothing is lost because the frame itself is still delivered.
    """
    cmd = COMMANDS.get(cn)
    kind = None if cmd is None else (cmd.from_logger if origin == "logger" else cmd.from_platform)
    if kind is None:
        return Kind.UPLOAD if origin == "logger" else Kind.REQUEST
    return kind


def answer_cn(cn: str, origin: Origin, ack_requested: bool) -> str | None:
    """CN of the immediate answer due for a frame, or ``None`` when none is due.

    The A bit of Flag decides whether any answer is due; replies are never answered.
    A 9012 execution result is not immediate (it follows the work a request asked for)
    and is therefore never returned here.
    """
    if not ack_requested or cn in REPLY_CNS:
        return None
    kind = kind_of(cn, origin)
    return _ANSWER_FOR_KIND.get(kind)


def is_encrypted_command(cn: str) -> bool:
    """Commands whose CP HJ 212-2025 encrypts with SM4: data (2000-2999), 1014, 3020."""
    return cn in ("1014", "3020") or (len(cn) == 4 and cn.isdigit() and cn.startswith("2"))
