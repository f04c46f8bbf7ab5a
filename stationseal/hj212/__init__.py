"""HJ 212-2017 (and the HJ 212-2025 additions) data-logger protocol.

Shared by the gateway agent, the ingest service and the simulators. Import from here:

    from stationseal.hj212 import parse_frame, Frame, CP, StreamDecoder, HJ212Listener

See docs/hj212.md for what is supported and how the errors read.
"""

from __future__ import annotations

from stationseal.hj212.codec import (
    MAX_DATA_LEN,
    VERSION_2017,
    VERSION_2025,
    VERSIONS,
    FlagInfo,
    Frame,
    KeySource,
    QnSource,
    decode_flag,
    frame_to_dict,
    make_flag,
    parse_frame,
    resolve_key,
)
from stationseal.hj212.codes import (
    HJ212_TO_SIGNAL,
    SIGNAL_MAPS,
    SIGNAL_TO_HJ212,
    SYSTEM_CODES,
    PollutantCode,
    SignalMap,
    code_info,
    legacy_to_2017,
    pollutant_codes,
    signal_map,
)
from stationseal.hj212.commands import (
    COMMANDS,
    Command,
    ExeRtn,
    Kind,
    Origin,
    QnRtn,
    command_name,
    is_encrypted_command,
    kind_of,
)
from stationseal.hj212.cp import CP, MAX_CP_LEN, Pollutant, format_number
from stationseal.hj212.crc import crc16, crc16_hex
from stationseal.hj212.errors import (
    HJ212BuildError,
    HJ212CPError,
    HJ212CRCError,
    HJ212CryptoError,
    HJ212EncodingError,
    HJ212Error,
    HJ212FlagError,
    HJ212FramingError,
    HJ212HeaderError,
    HJ212PacketError,
)
from stationseal.hj212.replies import (
    data_answer,
    execution_result,
    notification_answer,
    reply_for,
    request_answer,
    required_reply,
)
from stationseal.hj212.server import HJ212Connection, HJ212Listener
from stationseal.hj212.sm4 import decrypt_cp, encrypt_cp
from stationseal.hj212.split import IncompletePacket, Reassembler, merge_packets, split_frame
from stationseal.hj212.stream import StreamDecoder, StreamError
from stationseal.hj212.timefmt import CST, format_data_time, format_qn, parse_data_time

__all__ = [
    "COMMANDS",
    "CP",
    "CST",
    "HJ212_TO_SIGNAL",
    "MAX_CP_LEN",
    "MAX_DATA_LEN",
    "SIGNAL_MAPS",
    "SIGNAL_TO_HJ212",
    "SYSTEM_CODES",
    "VERSIONS",
    "VERSION_2017",
    "VERSION_2025",
    "Command",
    "ExeRtn",
    "FlagInfo",
    "Frame",
    "HJ212BuildError",
    "HJ212CPError",
    "HJ212CRCError",
    "HJ212Connection",
    "HJ212CryptoError",
    "HJ212EncodingError",
    "HJ212Error",
    "HJ212FlagError",
    "HJ212FramingError",
    "HJ212HeaderError",
    "HJ212Listener",
    "HJ212PacketError",
    "IncompletePacket",
    "KeySource",
    "Kind",
    "Origin",
    "Pollutant",
    "PollutantCode",
    "QnRtn",
    "QnSource",
    "Reassembler",
    "SignalMap",
    "StreamDecoder",
    "StreamError",
    "code_info",
    "command_name",
    "crc16",
    "crc16_hex",
    "data_answer",
    "decode_flag",
    "decrypt_cp",
    "encrypt_cp",
    "execution_result",
    "format_data_time",
    "format_number",
    "format_qn",
    "frame_to_dict",
    "is_encrypted_command",
    "kind_of",
    "legacy_to_2017",
    "make_flag",
    "merge_packets",
    "notification_answer",
    "parse_data_time",
    "parse_frame",
    "pollutant_codes",
    "reply_for",
    "request_answer",
    "required_reply",
    "resolve_key",
    "signal_map",
    "split_frame",
]
