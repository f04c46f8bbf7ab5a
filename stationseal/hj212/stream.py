"""Frames out of a TCP byte stream.

TCP delivers bytes, not frames: a read may hold half a frame or three. The decoder
buffers at most one maximal frame, uses the length field to cut frames, and
resynchronises on the next ``##`` after anything it cannot parse. Nothing is skipped
silently: every byte fed comes back either inside a :class:`Frame` (``frame.raw``) or
inside a :class:`StreamError` record, so the caller can account for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from stationseal.hj212.codec import MAX_DATA_LEN, OVERHEAD, Frame, KeySource, parse_frame
from stationseal.hj212.errors import HJ212Error, HJ212FramingError


@dataclass(frozen=True, slots=True)
class StreamError:
    """Bytes that did not form a valid frame, with the reason."""

    error: HJ212Error
    raw: bytes
    #: offset of ``raw[0]`` counted from the first byte fed to the decoder
    offset: int


class StreamDecoder:
    def __init__(
        self,
        *,
        sm4_key: KeySource = None,
        max_data_len: int = MAX_DATA_LEN,
        check_crc: bool = True,
    ) -> None:
        self.sm4_key = sm4_key
        self.max_data_len = max_data_len
        self.check_crc = check_crc
        self._buf = bytearray()
        self._consumed = 0

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame (never more than one frame)."""
        return len(self._buf)

    def _take(self, n: int) -> tuple[bytes, int]:
        chunk, offset = bytes(self._buf[:n]), self._consumed
        del self._buf[:n]
        self._consumed += n
        return chunk, offset

    def _error(self, n: int, error: HJ212Error) -> StreamError:
        raw, offset = self._take(n)
        return StreamError(error, raw, offset)

    def _garbage(self, n: int) -> list[StreamError]:
        """Report ``n`` bytes before the next ``##`` in records of at most one frame."""
        out = []
        limit = OVERHEAD + self.max_data_len
        while n > 0:
            size = min(n, limit)
            preview = bytes(self._buf[:size])
            error = HJ212FramingError(
                f"{size} bytes outside any frame", expected="'##'", got=preview
            )
            out.append(self._error(size, error))
            n -= size
        return out

    def _resync_point(self, start: int) -> int:
        """Length of a broken frame: through its CRLF, or up to the next ``##``."""
        buf = self._buf
        nxt = buf.find(b"##", start)
        crlf = buf.find(b"\r\n", start)
        if crlf >= 0 and (nxt < 0 or crlf + 2 <= nxt):
            return crlf + 2
        if nxt >= 0:
            return nxt
        return len(buf) - 1 if buf.endswith(b"#") else len(buf)

    def _broken(self, n: int) -> StreamError:
        """Record ``n`` bytes as a broken frame, with parse_frame's precise reason."""
        try:
            parse_frame(
                bytes(self._buf[:n]),
                check_crc=self.check_crc,
                max_data_len=self.max_data_len,
                sm4_key=self.sm4_key,
            )
        except HJ212Error as e:
            return self._error(n, e)
        return self._error(n, HJ212FramingError("frame boundary lost", position=0))

    def feed(self, data: bytes) -> list[Frame | StreamError]:
        """Add bytes; return frames and error records completed by them, in stream order."""
        self._buf += data
        out: list[Frame | StreamError] = []
        buf = self._buf
        while buf:
            start = buf.find(b"##")
            while start >= 0 and buf[start + 2 : start + 3] == b"#":
                start += 1  # in '###0101' the frame starts at the last two
            if start != 0:
                if start < 0:
                    start = len(buf) - 1 if buf.endswith(b"#") else len(buf)
                out += self._garbage(start)
                if not buf.startswith(b"##"):
                    break
                continue
            if len(buf) < 6:
                if not bytes(buf[2:]).isdigit() and len(buf) > 2:
                    out.append(self._broken(self._resync_point(1)))
                    continue
                break
            length_field = bytes(buf[2:6])
            if not length_field.isdigit() or int(length_field) > self.max_data_len:
                out.append(self._broken(self._resync_point(1)))
                continue
            total = OVERHEAD + int(length_field)
            early_crlf = buf.find(b"\r\n", 6, min(len(buf), total - 1))
            if 0 <= early_crlf < total - 2:
                # No frame has CR LF inside: this one is broken. Cut at that CR LF or
                # at the next '##' if one comes first, so a frame behind is not eaten.
                out.append(self._broken(self._resync_point(1)))
                continue
            if len(buf) < total:
                break
            try:
                frame = parse_frame(
                    bytes(buf[:total]),
                    sm4_key=self.sm4_key,
                    check_crc=self.check_crc,
                    max_data_len=self.max_data_len,
                )
            except HJ212Error as e:
                if buf[total - 2 : total] == b"\r\n":
                    out.append(self._error(total, e))
                else:
                    out.append(self._broken(self._resync_point(1)))
                continue
            self._take(total)
            out.append(frame)
        return out

    def close(self) -> list[StreamError]:
        """End of stream: whatever is still buffered is a truncated frame."""
        if not self._buf:
            return []
        n = len(self._buf)
        return [
            self._error(
                n,
                HJ212FramingError(
                    "stream ended inside a frame", position=0, got=bytes(self._buf[:40])
                ),
            )
        ]
