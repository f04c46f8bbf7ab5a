"""Answers to received frames, built the way HJ 212-2017 section 6 describes them.

An answer echoes the QN, PW and MN of the frame it answers (QN is how the peer matches
it), is sent as ST=91 (system interaction) and never asks for an answer itself. It uses
the protocol version of the frame it answers, so a 2025 logger gets 2025 answers.
"""

from __future__ import annotations

from stationseal.hj212.codec import VERSION_2017, VERSIONS, Frame, make_flag
from stationseal.hj212.commands import (
    DATA_ANSWER,
    EXECUTION_RESULT,
    NOTIFICATION_ANSWER,
    REQUEST_ANSWER,
    ExeRtn,
    Origin,
    QnRtn,
    answer_cn,
)
from stationseal.hj212.cp import CP

SYSTEM_INTERACTION = "91"


def _answer(frame: Frame, cn: str, cp: CP = CP()) -> Frame:
    version = frame.version
    if version is None or version not in VERSIONS:
        version = VERSION_2017
    return Frame(
        st=SYSTEM_INTERACTION,
        cn=cn,
        mn=frame.mn,
        pw=frame.pw,
        qn=frame.qn,
        flag=make_flag(version),
        cp=cp,
    )


def request_answer(frame: Frame, qn_rtn: QnRtn | int = QnRtn.READY) -> Frame:
    """9011: the logger accepts (QnRtn=1) or refuses a platform request."""
    return _answer(frame, REQUEST_ANSWER, CP.build(params={"QnRtn": int(qn_rtn)}))


def execution_result(frame: Frame, exe_rtn: ExeRtn | int = ExeRtn.SUCCESS) -> Frame:
    """9012: the logger reports how executing a platform request ended."""
    return _answer(frame, EXECUTION_RESULT, CP.build(params={"ExeRtn": int(exe_rtn)}))


def notification_answer(frame: Frame) -> Frame:
    """9013: receipt of a notification (also the answer to a 2025 heartbeat)."""
    return _answer(frame, NOTIFICATION_ANSWER)


def data_answer(frame: Frame) -> Frame:
    """9014: the platform confirms receipt of uploaded data."""
    return _answer(frame, DATA_ANSWER)


def required_reply(frame: Frame, origin: Origin) -> str | None:
    """CN of the immediate answer ``frame`` needs (from whoever did not send it)."""
    return answer_cn(frame.cn, origin, frame.ack_requested)


def reply_for(frame: Frame, origin: Origin) -> Frame | None:
    """The immediate answer due for ``frame`` sent by ``origin``; ``None`` if none is due.

    A request is answered with 9011 QnRtn=1 (ready); refusing it or reporting the
    execution result (9012) is up to the code that executes requests.
    """
    cn = required_reply(frame, origin)
    if cn == REQUEST_ANSWER:
        return request_answer(frame)
    if cn == NOTIFICATION_ANSWER:
        return notification_answer(frame)
    if cn == DATA_ANSWER:
        return data_answer(frame)
    return None
