"""An SNTP server (RFC 4330) on loopback: the demo's and the tests' time source.

A real protocol peer for the agent's clock measurement (agent/clock.py): it answers
client requests (mode 3) with server answers (mode 4), echoing the request's transmit
time as the originate time, with this machine's clock plus ``offset_s`` (tests use an
offset to play a gateway whose clock is off, or ``unsynchronised=True`` for a server that
says it has no good time itself).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from agent.clock import to_ntp


class SntpServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, offset_s: float = 0.0,
                 stratum: int = 2, unsynchronised: bool = False):
        self.offset_s = offset_s
        self.stratum = stratum
        self.unsynchronised = unsynchronised
        self.requests = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((host, port))
        self._sock.settimeout(0.2)
        self.host, self.port = self._sock.getsockname()[:2]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> SntpServer:
        self._thread = threading.Thread(target=self._serve, name="sntp-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        self._sock.close()

    def __enter__(self) -> SntpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def answer(self, req: bytes, received: float) -> bytes | None:
        if len(req) < 48 or req[0] & 7 != 3:
            return None
        version = (req[0] >> 3) & 7 or 4
        leap = 3 if self.unsynchronised else 0
        now = time.time() + self.offset_s
        return (bytes([leap << 6 | version << 3 | 4,
                       0 if self.unsynchronised else self.stratum, 6, 0xEC])  # poll, precision
                + (0x100).to_bytes(4, "big") + (0x100).to_bytes(4, "big")  # delay, dispersion
                + b"LOCL" + to_ntp(now - 16) + req[40:48]  # reference, originate
                + to_ntp(received + self.offset_s) + to_ntp(now))

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                req, peer = self._sock.recvfrom(512)
            except TimeoutError:
                continue
            except OSError:
                return
            received = time.time()
            ans = self.answer(req, received)
            if ans is not None:
                self.requests += 1
                with contextlib.suppress(OSError):
                    self._sock.sendto(ans, peer)
