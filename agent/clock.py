"""Wall-clock checks for a gateway without a battery-backed clock.

A Raspberry Pi has no RTC: it boots with the time it had at the last shutdown and jumps
when NTP (or someone with a shell) sets it. Readings are stamped with the wall clock
because that is what an auditor compares against the outside world, but a wall clock can
jump; the monotonic clock cannot. Comparing how far each advanced since the last check
detects a jump, which is sealed as a ``clock_jump`` event so that the central side can
tell a step in time from a gap in the data.

The NTP state sealed in every frame (``clock_sync``) comes from ``adjtimex(2)`` with
``modes = 0``: the same kernel flag ``timedatectl show -p NTPSynchronized`` reports, but
read without spawning a process or talking to D-Bus, and still cached for a minute.
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

    @property
    def sync_state(self) -> str:
        """The cached state, refreshed when older than ``sync_check_interval_s``."""
        if self._sync_source is not None:
            now = self._mono()
            if now - self._sync_checked >= self.sync_check_interval_s:
                self._sync_checked = now
                self._sync = self._sync_source()
        return self._sync

    def set_sync(self, state: str) -> None:
        """For sources too slow to ask inline (an SNTP query runs in a thread)."""
        self._sync = state

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


def sntp_offset(server: str, port: int = 123, timeout: float = 2.0) -> float:
    """Offset of the local clock from an NTP server (RFC 4330 client), in seconds
    (positive: the server is ahead). Raises OSError / ValueError when there is no usable
    answer."""
    import socket
    import struct

    addr = socket.getaddrinfo(server, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(addr[0], socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        t0 = time.time()
        s.sendto(b"\x23" + bytes(47), addr[4])  # LI 0, version 4, mode 3 (client)
        data = s.recv(512)
        t3 = time.time()
    if len(data) < 48:
        raise ValueError(f"NTP answer of {len(data)} bytes")
    if data[0] >> 6 == 3 or data[1] == 0:
        raise ValueError("NTP server is not synchronised (leap 3 / stratum 0)")

    def ts(b: bytes) -> float:
        sec, frac = struct.unpack("!II", b)
        return float(sec - _NTP_EPOCH + frac / 2**32)

    t1, t2 = ts(data[32:40]), ts(data[40:48])
    return ((t1 - t0) + (t2 - t3)) / 2
