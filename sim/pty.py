"""Pseudo-terminals standing in for RS-232/RS-485 lines.

A simulated serial instrument owns the master side of a pty and gives the reader the
slave path (``/dev/pts/N``), which pyserial opens like a USB adapter. A Modbus RTU
simulator needs a *path* on both sides (pymodbus' serial server opens a port by name),
so :class:`PtyLink` joins two ptys back to back, like a null-modem cable.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from dataclasses import dataclass


@dataclass
class Pty:
    master: int
    slave: int
    path: str

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


def open_pty() -> Pty:
    """A raw (no echo, no line editing) pty; the slave fd stays open here so the master
    never sees EIO while the reader closes and reopens its side."""
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    return Pty(master, slave, os.ttyname(slave))


def write_master(fd: int, data: bytes) -> bool:
    """Write what fits; a full pty buffer means nobody reads the line, and a real device
    would lose those bytes too."""
    try:
        os.write(fd, data)
        return True
    except (BlockingIOError, OSError):
        return False


class PtyLink:
    """Two ptys joined master-to-master: bytes written to ``a.path`` come out of
    ``b.path`` and back."""

    def __init__(self) -> None:
        self.a = open_pty()
        self.b = open_pty()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.a.master, self._pump, self.a.master, self.b.master)
        self._loop.add_reader(self.b.master, self._pump, self.b.master, self.a.master)

    @staticmethod
    def _pump(src: int, dst: int) -> None:
        try:
            data = os.read(src, 4096)
        except (BlockingIOError, OSError):
            return
        if data:
            write_master(dst, data)

    def close(self) -> None:
        if self._loop is not None:
            for fd in (self.a.master, self.b.master):
                with contextlib.suppress(ValueError, RuntimeError, OSError):
                    self._loop.remove_reader(fd)
        self.a.close()
        self.b.close()
