"""Parse, build and check HJ 212 frames; list the pollutant codes; fuzz the parser.

stationseal hj212 parse FRAME_OR_FILE     one frame, or a capture file / '-' for stdin
stationseal hj212 build --st 31 --cn 2011 --mn MN --cp 'DataTime=...;a21026-Rtd=1.2'
stationseal hj212 crc TEXT                 CRC and complete frame for a data segment
stationseal hj212 codes [TEXT]             pollutant codes (and canonical signals)
stationseal hj212 listen --port 9000       act as upper platform, print frames as JSON
stationseal hj212 fuzz -n 100000           mutation-fuzz the parser and stream decoder
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from stationseal.errors import UsageError
from stationseal.hj212.codec import (
    MAX_DATA_LEN,
    VERSION_2017,
    VERSION_2025,
    Frame,
    QnSource,
    frame_to_dict,
    make_flag,
    parse_frame,
)
from stationseal.hj212.codes import SIGNAL_MAPS, pollutant_codes
from stationseal.hj212.cp import CP
from stationseal.hj212.crc import crc16_hex
from stationseal.hj212.errors import HJ212Error
from stationseal.hj212.server import HJ212Connection, HJ212Listener
from stationseal.hj212.sm4 import parse_key
from stationseal.hj212.stream import StreamDecoder, StreamError


def _key(args: argparse.Namespace) -> bytes | None:
    if not getattr(args, "key", None):
        return None
    try:
        return parse_key(args.key)
    except HJ212Error as e:
        raise UsageError(f"--key {args.key!r}: {e}") from None


def _error_dict(error: StreamError) -> dict[str, Any]:
    return {
        "error": str(error.error),
        "kind": type(error.error).__name__,
        "offset": error.offset,
        "raw": error.raw.decode("utf-8", "backslashreplace"),
    }


def _print(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, ensure_ascii=False))


def cmd_parse(args: argparse.Namespace) -> int:
    key = _key(args)
    source: str = args.frame
    if source == "-" or os.path.isfile(source):
        data = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
        decoder = StreamDecoder(sm4_key=key, check_crc=not args.no_crc)
        items = [*decoder.feed(data), *decoder.close()]
    elif source.startswith("##"):
        text = source.replace("\\r\\n", "\r\n")
        if not text.endswith("\r\n"):
            text += "\r\n"  # a shell argument cannot easily carry CR LF
        try:
            items = [parse_frame(text, sm4_key=key, check_crc=not args.no_crc)]
        except HJ212Error as e:
            _print({"error": str(e), "kind": type(e).__name__})
            return 1
    else:
        raise UsageError(f"{source!r} is neither a file, '-' nor a frame starting with '##'")
    failed = 0
    for item in items:
        if isinstance(item, StreamError):
            failed += 1
            _print(_error_dict(item))
        else:
            _print(frame_to_dict(item))
    return 1 if failed else 0


def cmd_build(args: argparse.Namespace) -> int:
    version = VERSION_2025 if args.version == "2025" else VERSION_2017
    flag = args.flag if args.flag is not None else make_flag(version, ack=args.ack)
    try:
        cp, warnings = CP.parse(args.cp)
        frame = Frame(
            st=args.st,
            cn=args.cn,
            mn=args.mn,
            pw=args.pw,
            qn=args.qn or QnSource()(time.time()),
            flag=flag,
            rf=args.rf,
            cp=cp,
        )
        wire = frame.encode(_key(args))
    except HJ212Error as e:
        raise UsageError(str(e)) from None
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    sys.stdout.write(wire.decode("utf-8") if args.crlf else wire.decode("utf-8").rstrip() + "\n")
    return 0


def cmd_crc(args: argparse.Namespace) -> int:
    data = args.text.encode("utf-8")
    if len(data) > MAX_DATA_LEN:
        print(f"warning: {len(data)} bytes, more than the {MAX_DATA_LEN} allowed", file=sys.stderr)
    crc = crc16_hex(data)
    _print({"crc": crc, "length": len(data), "frame": f"##{len(data):04d}{args.text}{crc}"})
    return 0


def cmd_codes(args: argparse.Namespace) -> int:
    query = (args.query or "").lower()
    signals: dict[str, list[str]] = {}
    for m in SIGNAL_MAPS:
        signals.setdefault(m.code, []).append(f"ST{m.st}:{m.signal}")
    for entry in pollutant_codes().values():
        line = "\t".join(
            [
                entry.code,
                entry.name,
                entry.legacy_code or "-",
                entry.unit_symbol or "-",
                entry.data_format or "-",
                ",".join(signals.get(entry.code, [])) or "-",
            ]
        )
        if not query or query in line.lower():
            print(line)
    return 0


def cmd_listen(args: argparse.Namespace) -> int:
    async def on_frame(frame: Frame, conn: HJ212Connection) -> None:
        _print({"peer": conn.peer, **frame_to_dict(frame)})

    async def on_error(error: StreamError, conn: HJ212Connection) -> None:
        _print({"peer": conn.peer, **_error_dict(error)})

    async def run() -> None:
        listener = HJ212Listener(
            on_frame, host=args.host, port=args.port, on_error=on_error, sm4_key=_key(args)
        )
        async with listener:
            print(f"listening on {args.host}:{listener.port}", file=sys.stderr)
            await asyncio.Event().wait()

    asyncio.run(run())
    return 0


def cmd_fuzz(args: argparse.Namespace) -> int:
    from stationseal.hj212.fuzz import fuzz

    report = fuzz(args.iterations, args.seed)
    _print(
        {
            "iterations": report.iterations,
            "parsed": report.parsed,
            "rejected": report.rejected,
            "failures": len(report.failures),
        }
    )
    for data, what in report.failures[:20]:
        print(f"FAIL {what}: {data!r}", file=sys.stderr)
    return 1 if report.failures else 0


def register(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = p.add_subparsers(dest="action", metavar="ACTION")

    def no_action(_args: argparse.Namespace) -> int:
        p.print_help(sys.stderr)
        return 2

    p.set_defaults(func=no_action)

    key_help = "SM4 key (32 hex digits) for HJ 212-2025 encrypted CP regions"
    sp = sub.add_parser("parse", help="parse a frame or a capture file, print JSON")
    sp.add_argument("frame", metavar="FRAME_OR_FILE", help="frame text, capture file or '-'")
    sp.add_argument("--key", help=key_help)
    sp.add_argument("--no-crc", action="store_true", help="show frames even if the CRC is bad")
    sp.set_defaults(func=cmd_parse)

    sp = sub.add_parser("build", help="build a frame and print it")
    sp.add_argument("--st", required=True, help="system code, e.g. 31 stack gas, 22 air")
    sp.add_argument("--cn", required=True, help="command code, e.g. 2011 real-time data")
    sp.add_argument("--mn", required=True, help="logger identifier (MN)")
    sp.add_argument("--pw", default="123456", help="access password (default 123456)")
    sp.add_argument("--qn", help="request number (default: now, China Standard Time)")
    sp.add_argument("--cp", default="", help="CP content without the '&&' delimiters")
    sp.add_argument("--version", choices=("2017", "2025"), default="2017")
    sp.add_argument("--ack", action="store_true", help="set the A bit (answer required)")
    sp.add_argument("--flag", type=int, help="raw Flag value (overrides --version/--ack)")
    sp.add_argument("--rf", help="HJ 212-2025 RF field (1 = resent data)")
    sp.add_argument("--key", help=key_help)
    sp.add_argument("--crlf", action="store_true", help="end with CR LF as on the wire")
    sp.set_defaults(func=cmd_build)

    sp = sub.add_parser("crc", help="CRC of a data segment (QN=...;...;CP=&&...&&)")
    sp.add_argument("text", metavar="TEXT")
    sp.set_defaults(func=cmd_crc)

    sp = sub.add_parser("codes", help="list pollutant codes (filter by TEXT)")
    sp.add_argument("query", nargs="?", metavar="TEXT")
    sp.set_defaults(func=cmd_codes)

    sp = sub.add_parser("listen", help="accept data loggers and print their frames")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=0, help="TCP port (default: any free)")
    sp.add_argument("--key", help=key_help)
    sp.set_defaults(func=cmd_listen)

    sp = sub.add_parser("fuzz", help="mutation-fuzz the parser")
    sp.add_argument("-n", "--iterations", type=int, default=100_000)
    sp.add_argument("--seed", type=int, default=0)
    sp.set_defaults(func=cmd_fuzz)
