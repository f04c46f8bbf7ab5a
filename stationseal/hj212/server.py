"""Asyncio TCP server that plays the upper platform for HJ 212 data loggers.

Used by the gateway (listening to the site's logger as one more upper platform) and by
the ingest service (legacy sites without a gateway). Each connection runs its own
:class:`StreamDecoder`; every frame goes to an async callback, in arrival order, and the
protocol answer (9014 for data, 9013 for notifications and heartbeats) is sent only
after the callback returned. An answer tells the logger it may forget the data, so it
must not leave before the data is safe: if the callback raises, no answer is sent and
the logger resends. Undecodable bytes go to ``on_error`` (or the log), never nowhere.

The listener faces the network, where anyone may connect, so every connection is bounded:

* **idle timeout** (``idle_timeout_s``): a connection that sends nothing is closed (a
  logger reconnects on its own; an idle socket held by a stranger costs a file
  descriptor for ever);
* **half-sent frame timeout** (``frame_timeout_s``): a frame must be complete within this
  time of its first byte, however slowly its bytes trickle in; the partial bytes go to
  ``on_error`` as a truncated frame, then the connection is closed;
* **caps** (``max_connections`` in total, ``max_per_address`` per remote address):
  a connection beyond the per-address cap is closed at once. At the total cap, the
  connection idle longest among those that never delivered a frame the handler accepted
  is closed to make room (a flood of idle strangers churns among itself while loggers
  that have delivered data keep their connections); only if every connection is such a
  logger is the new one refused. The total is also kept below the process's open-file
  limit (minus a reserve), so a flood can never take the descriptors the rest of the
  process (its health endpoint, its database) needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import time
from collections.abc import Awaitable, Callable
from types import TracebackType

from stationseal.hj212.codec import MAX_DATA_LEN, Frame, KeySource, resolve_key
from stationseal.hj212.replies import reply_for
from stationseal.hj212.stream import StreamDecoder, StreamError

log = logging.getLogger(__name__)


class HJ212Connection:
    """One connected data logger."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sm4_key: KeySource
    ) -> None:
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        #: MN of the last frame received on this connection
        self.mn: str | None = None
        self.frames_received = 0
        self.errors = 0
        self.answers_sent = 0
        #: None until a frame was handled: then True, unless the handler set it False
        #: (e.g. an unknown MN). Untrusted connections are closed first at the total cap.
        self.trusted: bool | None = None
        self.last_activity = time.monotonic()
        self._sm4_key = sm4_key

    async def send(self, frame: Frame) -> None:
        """Send a frame to the logger (answers, or requests such as 1012 set time)."""
        self.writer.write(frame.encode(resolve_key(self._sm4_key, frame.mn)))
        await self.writer.drain()

    def close(self) -> None:
        self.writer.close()


#: File descriptors kept free for the rest of the process when the total connection cap
#: is derived from the open-file limit.
FD_RESERVE = 64

FrameHandler = Callable[[Frame, HJ212Connection], Awaitable[None]]
ErrorHandler = Callable[[StreamError, HJ212Connection], Awaitable[None]]


class HJ212Listener:
    def __init__(
        self,
        on_frame: FrameHandler,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        on_error: ErrorHandler | None = None,
        sm4_key: KeySource = None,
        max_data_len: int = MAX_DATA_LEN,
        answer: bool = True,
        read_size: int = 4096,
        idle_timeout_s: float | None = 300.0,
        frame_timeout_s: float | None = 30.0,
        max_connections: int = 256,
        max_per_address: int = 8,
    ) -> None:
        self.on_frame = on_frame
        self.on_error = on_error
        self.host = host
        self._port = port
        self.sm4_key = sm4_key
        self.max_data_len = max_data_len
        self.answer = answer
        self.read_size = read_size
        self.idle_timeout_s = idle_timeout_s
        self.frame_timeout_s = frame_timeout_s
        self.max_per_address = max_per_address
        self.max_connections = _fd_bounded(max_connections)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections: set[HJ212Connection] = set()
        self._per_address: dict[str, int] = {}
        #: connections closed at once because a cap was reached
        self.refused = 0
        #: connections closed for idleness / for a frame not completed in time
        self.idle_closed = 0
        self.frame_timeouts = 0
        #: untrusted connections closed to make room at the total cap
        self.evicted = 0
        self._last_refusal_log = 0.0

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``)."""
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self._port)
        log.info("HJ 212 listener on %s:%d", self.host, self.port)

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, close every connection and wait for their handlers to finish.

        A handler still busy in ``on_frame`` after ``timeout`` seconds is cancelled.
        """
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close()
        tasks = list(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> HJ212Listener:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _evict_one(self) -> bool:
        """At the total cap: close the untrusted connection idle longest."""
        idle = [c for c in self.connections if not c.trusted]
        if not idle:
            return False
        victim = min(idle, key=lambda c: c.last_activity)
        self.evicted += 1
        self.connections.discard(victim)  # its handler ends on the abort
        victim.writer.transport.abort()
        return True

    def _admit(self, writer: asyncio.StreamWriter) -> str | None:
        """The connection's address if it may stay, else None (closed at once)."""
        peer = writer.get_extra_info("peername")
        addr = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        if (len(self.connections) >= self.max_connections
                and self._per_address.get(addr, 0) < self.max_per_address):
            self._evict_one()
        if (len(self.connections) >= self.max_connections
                or self._per_address.get(addr, 0) >= self.max_per_address):
            self.refused += 1
            now = time.monotonic()
            if now - self._last_refusal_log > 10:
                self._last_refusal_log = now
                log.warning("HJ 212: connection from %s refused (%d open, %d from that "
                            "address; caps %d / %d); %d refused so far", addr,
                            len(self.connections), self._per_address.get(addr, 0),
                            self.max_connections, self.max_per_address, self.refused)
            # abort(): no lingering close handshake holding the descriptor.
            writer.transport.abort()
            return None
        self._per_address[addr] = self._per_address.get(addr, 0) + 1
        return addr

    def _read_timeout(self, decoder: StreamDecoder, partial_since: float | None) -> float | None:
        if partial_since is not None and self.frame_timeout_s is not None:
            left = partial_since + self.frame_timeout_s - time.monotonic()
            return max(0.0, left) if self.idle_timeout_s is None \
                else max(0.0, min(left, self.idle_timeout_s))
        return self.idle_timeout_s

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        addr = self._admit(writer)
        if addr is None:
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = HJ212Connection(reader, writer, self.sm4_key)
        self.connections.add(conn)
        decoder = StreamDecoder(sm4_key=self.sm4_key, max_data_len=self.max_data_len)
        partial_since: float | None = None
        try:
            while True:
                try:
                    async with asyncio.timeout(self._read_timeout(decoder, partial_since)):
                        data = await reader.read(self.read_size)
                except TimeoutError:
                    if partial_since is not None:
                        self.frame_timeouts += 1
                        log.info("HJ 212 connection %s: frame not completed within %g s; "
                                 "closed", conn.peer, self.frame_timeout_s)
                    else:
                        self.idle_closed += 1
                        log.info("HJ 212 connection %s idle for %g s; closed", conn.peer,
                                 self.idle_timeout_s)
                    break
                except (ConnectionError, OSError) as e:
                    log.info("HJ 212 connection %s lost: %s", conn.peer, e)
                    break
                if not data:
                    break
                conn.last_activity = time.monotonic()
                for item in decoder.feed(data):
                    await self._dispatch(item, conn)
                if decoder.buffered == 0:
                    partial_since = None
                elif partial_since is None:
                    partial_since = time.monotonic()
            for error in decoder.close():
                await self._dispatch(error, conn)
        except asyncio.CancelledError:
            # Only stop() cancels, after its timeout; ending quietly keeps asyncio's
            # server callback from logging the cancellation as an error.
            log.warning("HJ 212 connection %s cancelled while busy", conn.peer)
        finally:
            self.connections.discard(conn)
            n = self._per_address.get(addr, 1) - 1
            if n > 0:
                self._per_address[addr] = n
            else:
                self._per_address.pop(addr, None)
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _dispatch(self, item: Frame | StreamError, conn: HJ212Connection) -> None:
        if isinstance(item, StreamError):
            conn.errors += 1
            if self.on_error is None:
                log.warning(
                    "HJ 212 from %s: %s (%d bytes at offset %d)",
                    conn.peer,
                    item.error,
                    len(item.raw),
                    item.offset,
                )
                return
            try:
                await self.on_error(item, conn)
            except Exception:
                log.exception("HJ 212 error handler failed for %s", conn.peer)
            return
        conn.frames_received += 1
        conn.mn = item.mn
        try:
            await self.on_frame(item, conn)
            if conn.trusted is None:
                conn.trusted = True
        except Exception:
            log.exception(
                "HJ 212 frame handler failed for QN=%s from %s: not answered, the logger "
                "will resend",
                item.qn,
                conn.peer,
            )
            return
        reply = reply_for(item, "logger") if self.answer else None
        if reply is None:
            return
        try:
            await conn.send(reply)
            conn.answers_sent += 1
        except (ConnectionError, OSError) as e:
            log.info("HJ 212 answer to %s not delivered: %s", conn.peer, e)


def _fd_bounded(cap: int) -> int:
    """``cap``, lowered so that open connections leave :data:`FD_RESERVE` descriptors of
    the process's open-file limit to everything else."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return cap
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return cap
    bound = max(1, soft - FD_RESERVE - 32)
    if cap > bound:
        log.warning("HJ 212: at most %d connections (open-file limit %d, %d kept in reserve)",
                    bound, soft, FD_RESERVE + 32)
    return min(cap, bound)
