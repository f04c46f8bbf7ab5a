"""Asyncio TCP server that plays the upper platform for HJ 212 data loggers.

Used by the gateway (listening to the site's logger as one more upper platform) and by
the ingest service (legacy sites without a gateway). Each connection runs its own
:class:`StreamDecoder`; every frame goes to an async callback, in arrival order, and the
protocol answer (9014 for data, 9013 for notifications and heartbeats) is sent only
after the callback returned. An answer tells the logger it may forget the data, so it
must not leave before the data is safe: if the callback raises, no answer is sent and
the logger resends. Undecodable bytes go to ``on_error`` (or the log), never nowhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
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
        self._sm4_key = sm4_key

    async def send(self, frame: Frame) -> None:
        """Send a frame to the logger (answers, or requests such as 1012 set time)."""
        self.writer.write(frame.encode(resolve_key(self._sm4_key, frame.mn)))
        await self.writer.drain()

    def close(self) -> None:
        self.writer.close()


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
    ) -> None:
        self.on_frame = on_frame
        self.on_error = on_error
        self.host = host
        self._port = port
        self.sm4_key = sm4_key
        self.max_data_len = max_data_len
        self.answer = answer
        self.read_size = read_size
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections: set[HJ212Connection] = set()

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

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = HJ212Connection(reader, writer, self.sm4_key)
        self.connections.add(conn)
        decoder = StreamDecoder(sm4_key=self.sm4_key, max_data_len=self.max_data_len)
        try:
            while True:
                try:
                    data = await reader.read(self.read_size)
                except (ConnectionError, OSError) as e:
                    log.info("HJ 212 connection %s lost: %s", conn.peer, e)
                    break
                if not data:
                    break
                for item in decoder.feed(data):
                    await self._dispatch(item, conn)
            for error in decoder.close():
                await self._dispatch(error, conn)
        except asyncio.CancelledError:
            # Only stop() cancels, after its timeout; ending quietly keeps asyncio's
            # server callback from logging the cancellation as an error.
            log.warning("HJ 212 connection %s cancelled while busy", conn.peer)
        finally:
            self.connections.discard(conn)
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
