"""Wall-clock checks for a gateway without a battery-backed clock.

A Raspberry Pi has no RTC: it boots with the time it had at the last shutdown and jumps
when NTP (or someone with a shell) sets it. Readings are stamped with the wall clock
because that is what an auditor compares against the outside world, but a wall clock can
jump; the monotonic clock cannot. Comparing how far each advanced since the last check
detects a jump, which is sealed as a ``clock_jump`` event so that the central side can
tell a step in time from a gap in the data.

The clock state sealed in every frame (``clock_sync``) comes, when the site config lists
``clock.ntp_servers``, from the agent's own measurement: an SNTP query (RFC 4330) to each
server, ``synced`` when the median offset of the servers that answered is within
``clock.max_offset_s``, ``unsynced`` beyond it (or when every answering server says it is
unsynchronised itself), ``unknown`` when none answered. The local NTP daemon is then not
trusted: a site operator controls it. Without servers, the kernel's discipline decides
(``adjtimex(2)`` with ``modes = 0``: the flag ``timedatectl show -p NTPSynchronized``
reports, read without spawning a process). Every change of state is sealed as a
``clock_state`` event carrying the measured offset, so the central side can tell a
gateway whose clock drifted from one whose NTP was blocked.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable
from typing import Any

from stationseal.records import Event

#: ``struct timex`` from <sys/timex.h>. ``long`` fields follow the platform word size, so
#: the same definition fits aarch64, armhf and x86-64.
_L = ctypes.c_long


class _Timex(ctypes.Structure):
    _fields_ = [
        ("modes", ctypes.c_uint), ("offset", _L), ("freq", _L), ("maxerror", _L),
        ("esterror", _L), ("status", ctypes.c_int), ("constant", _L), ("precision", _L),
        ("tolerance", _L), ("time_sec", _L), ("time_usec", _L), ("tick", _L),
        ("ppsfreq", _L), ("jitter", _L), ("shift", ctypes.c_int), ("stabil", _L),
        ("jitcnt", _L), ("calcnt", _L), ("errcnt", _L), ("stbcnt", _L),
        ("tai", ctypes.c_int), ("_pad", ctypes.c_int * 11),
    ]


#: Instrument name of events about the gateway itself (boot, clock, outbox).
GATEWAY = "gateway"

_TIME_ERROR = 5
_STA_UNSYNC = 0x0040
_libc: Any = None


def ntp_sync_state() -> str:
    """``synced`` / ``unsynced`` as the kernel's NTP discipline sees it, ``unknown`` when
    the call is unavailable (non-Linux, seccomp)."""
    global _libc
    try:
        if _libc is None:
            # the process's own symbols include libc's; ctypes.util.find_library would
            # pull in shutil, tempfile and compression modules just to find the name
            _libc = ctypes.CDLL(None, use_errno=True)
        tx = _Timex()
        rc = int(_libc.adjtimex(ctypes.byref(tx)))
    except (OSError, AttributeError):
        return "unknown"
    if rc < 0:
        return "unknown"
    return "unsynced" if rc == _TIME_ERROR or tx.status & _STA_UNSYNC else "synced"


class ClockMonitor:
    """Detects wall-clock jumps and caches the NTP state.

    ``check()`` is called from the sealing tick (about once per batch interval); between
    two calls the wall and monotonic clocks must advance alike, up to NTP slewing (at most
    0.5 ms per second). A difference above ``jump_threshold_s`` is a step of the wall
    clock.
    """

    def __init__(
        self,
        jump_threshold_s: float = 0.5,
        sync_check_interval_s: float = 60.0,
        *,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        sync_source: Callable[[], str] | None = ntp_sync_state,
    ) -> None:
        self.jump_threshold_s = jump_threshold_s
        self.sync_check_interval_s = sync_check_interval_s
        self._wall = wall
        self._mono = mono
        self._sync_source = sync_source
        self._last_wall = wall()
        self._last_mono = mono()
        self._sync = sync_source() if sync_source is not None else "unknown"
        self._sync_checked = self._last_mono
        self.jumps = 0
        self.last_jump_s: float | None = None
        self.events: list[Event] = []
        #: The last SNTP measurement (status file).
        self.last_offset_s: float | None = None

    @property
    def sync_state(self) -> str:
        """The cached state, refreshed when older than ``sync_check_interval_s``."""
        if self._sync_source is not None:
            now = self._mono()
            if now - self._sync_checked >= self.sync_check_interval_s:
                self._sync_checked = now
                self._sync = self._sync_source()
        return self._sync

    def set_sync(self, state: str, detail: dict[str, Any] | None = None) -> None:
        """For sources too slow to ask inline (an SNTP query runs in a thread). With
        ``detail`` (the measurement), a change of state is sealed as ``clock_state``."""
        if detail is not None and state != self._sync:
            self.events.append(Event(GATEWAY, "clock_state", self._wall(),
                                     {"state": state, "previous": self._sync, **detail}))
        self._sync = state

    def take_events(self) -> list[Event]:
        """Events waiting to be sealed (``clock_state``)."""
        out, self.events = self.events, []
        return out

    def check(self) -> Event | None:
        """A ``clock_jump`` event if the wall clock stepped since the previous call."""
        wall, mono = self._wall(), self._mono()
        wall_delta = wall - self._last_wall
        mono_delta = mono - self._last_mono
        self._last_wall, self._last_mono = wall, mono
        jump = wall_delta - mono_delta
        if abs(jump) <= self.jump_threshold_s:
            return None
        self.jumps += 1
        self.last_jump_s = jump
        # A step usually means NTP just synchronised: refresh the state now, so the frame
        # carrying the event also carries the new state.
        if self._sync_source is not None:
            self._sync_checked = mono
            self._sync = self._sync_source()
        return Event(
            GATEWAY,
            "clock_jump",
            wall,
            {
                "wall_delta_s": round(wall_delta, 6),
                "mono_delta_s": round(mono_delta, 6),
                "jump_s": round(jump, 6),
            },
        )


_NTP_EPOCH = 2208988800  # seconds from 1900-01-01 to 1970-01-01


def to_ntp(t: float) -> bytes:
    """A Unix time as a 64-bit NTP timestamp (RFC 5905: seconds since 1900, 32.32)."""
    sec = int(t) + _NTP_EPOCH
    frac = int((t - int(t)) * 2**32) & 0xFFFFFFFF
    return sec.to_bytes(4, "big") + frac.to_bytes(4, "big")


def from_ntp(b: bytes) -> float:
    return int.from_bytes(b[:4], "big") - _NTP_EPOCH + int.from_bytes(b[4:8], "big") / 2**32


def sntp_offset(server: str, port: int = 123, timeout: float = 2.0) -> float:
    """Offset of the local clock from an NTP server (RFC 4330 client), in seconds
    (positive: the server is ahead). Raises OSError / ValueError when there is no usable
    answer. The request's transmit time must come back as the answer's originate time,
    so a stale or forged datagram is not taken for the answer."""
    import os
    import socket

    addr = socket.getaddrinfo(server, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(addr[0], socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        t0 = time.time()
        # The low bits of the fraction are random: a nonce the answer must echo.
        stamp = to_ntp(t0)[:6] + os.urandom(2)
        s.sendto(b"\x23" + bytes(39) + stamp, addr[4])  # LI 0, version 4, mode 3
        data = s.recv(512)
        t3 = time.time()
    if len(data) < 48:
        raise ValueError(f"NTP answer of {len(data)} bytes")
    if data[0] & 7 not in (4, 5) or data[24:32] != stamp:
        raise ValueError("not an answer to this request (mode or originate timestamp)")
    if data[0] >> 6 == 3 or not 1 <= data[1] <= 15:
        raise ValueError("NTP server is not synchronised (leap 3 / stratum 0)")
    t1, t2 = from_ntp(data[32:40]), from_ntp(data[40:48])
    return ((t1 - t0) + (t2 - t3)) / 2


def parse_server(spec: str) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port`` -> (host, port); default port 123."""
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else 123
    if spec.count(":") == 1:
        host, port = spec.split(":")
        return host, int(port)
    return spec, 123


def measure(servers: list[str], max_offset_s: float, timeout: float = 2.0
            ) -> tuple[str, dict[str, Any]]:
    """Query every server once; the clock state and what it rests on.

    ``synced``: the median offset of the servers that answered (and say they are
    synchronised) is within ``max_offset_s``. ``unsynced``: it is not, or every server
    that answered says it is unsynchronised itself. ``unknown``: no server answered.
    """
    offsets: list[float] = []
    errors: dict[str, str] = {}
    unsynced_servers = 0
    for spec in servers:
        try:
            host, port = parse_server(spec)
            offsets.append(sntp_offset(host, port, timeout))
        except ValueError as e:
            if "not synchronised" in str(e):
                unsynced_servers += 1
            errors[spec] = str(e)
        except OSError as e:
            errors[spec] = e.strerror or type(e).__name__
    detail: dict[str, Any] = {"servers": len(servers), "answered": len(offsets),
                              "max_offset_s": max_offset_s}
    if errors:
        detail["errors"] = dict(list(errors.items())[:4])
    if not offsets:
        return ("unsynced" if unsynced_servers else "unknown"), detail
    offsets.sort()
    mid = len(offsets) // 2
    median = offsets[mid] if len(offsets) % 2 else (offsets[mid - 1] + offsets[mid]) / 2
    detail["offset_s"] = round(median, 6)
    return ("synced" if abs(median) <= max_offset_s else "unsynced"), detail
