"""The ingest's receive queue: bounded in bytes, fair between gateways.

Every message the broker delivers waits here between paho's network thread and the
processor. Two properties matter when one gateway misbehaves:

* **Bounded memory.** The queued payload bytes never exceed ``max_bytes`` (plus one
  message): the network thread waits in :meth:`FairInbox.put` until the processor has
  made room, so TCP flow control pushes back to the broker, which keeps what it cannot
  deliver in the ingest's persistent session. QoS 0 messages have no flow control at
  all (the broker sends them as fast as the link allows), so a source's QoS 0 messages
  beyond its share ``per_key_bytes`` are refused here and summarised by the caller.
* **Fairness.** One FIFO per source key (a gateway's topic), served round-robin: a
  gateway with sixty large messages queued delays another gateway's next frame by at
  most one message, not sixty.

Acknowledgements follow processing, so they may leave in a different order than the
messages arrived across gateways (never within one gateway). Mosquitto matches PUBACKs
by packet id; docs/security.md ("Bounds") notes this.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")

#: Key of control items (work other threads hand to the processor): served first.
CONTROL = "\0control"


class FairInbox(Generic[T]):
    def __init__(self, max_bytes: int, per_key_bytes: int,
                 stop: threading.Event | None = None) -> None:
        self.max_bytes = max_bytes
        self.per_key_bytes = per_key_bytes
        self.stop = stop or threading.Event()
        self._cond = threading.Condition()
        self._queues: dict[str, deque[tuple[T, int]]] = {}
        self._ring: deque[str] = deque()
        self._key_bytes: dict[str, int] = {}
        self._control: deque[T] = deque()
        self.bytes = 0
        self.items = 0
        self.peak_bytes = 0
        self.waits = 0
        self.wait_s = 0.0

    def put(self, key: str, item: T, nbytes: int, *, droppable: bool = False) -> bool:
        """Queue ``item`` (``nbytes`` of payload). Blocks while the inbox is full. With
        ``droppable`` (QoS 0) returns False instead of queueing when ``key`` already holds
        its share: the caller records what was refused."""
        with self._cond:
            if droppable and self._key_bytes.get(key, 0) + nbytes > self.per_key_bytes:
                return False
            if self.bytes > 0 and self.bytes + nbytes > self.max_bytes:
                self.waits += 1
                t0 = time.monotonic()
                while (self.bytes > 0 and self.bytes + nbytes > self.max_bytes
                       and not self.stop.is_set()):
                    self._cond.wait(0.5)
                self.wait_s += time.monotonic() - t0
            q = self._queues.get(key)
            if q is None:
                q = self._queues[key] = deque()
                self._ring.append(key)
            q.append((item, nbytes))
            self._key_bytes[key] = self._key_bytes.get(key, 0) + nbytes
            self.bytes += nbytes
            self.items += 1
            self.peak_bytes = max(self.peak_bytes, self.bytes)
            self._cond.notify_all()
            return True

    def put_control(self, item: T) -> None:
        with self._cond:
            self._control.append(item)
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> T:
        """Next item: control items first, then one message of the next source in turn.
        Raises :class:`queue.Empty` after ``timeout`` seconds without one."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.items > 0 or bool(self._control),
                                       timeout):
                raise queue.Empty
            if self._control:
                return self._control.popleft()
            key = self._ring.popleft()
            q = self._queues[key]
            item, nbytes = q.popleft()
            if q:
                self._ring.append(key)
            else:
                del self._queues[key]
            left = self._key_bytes.get(key, 0) - nbytes
            if left > 0:
                self._key_bytes[key] = left
            else:
                self._key_bytes.pop(key, None)
            self.bytes -= nbytes
            self.items -= 1
            self._cond.notify_all()
            return item

    def empty(self) -> bool:
        with self._cond:
            return self.items == 0 and not self._control

    def qsize(self) -> int:
        with self._cond:
            return self.items + len(self._control)

    def wake(self) -> None:
        """Let a ``put`` waiting for room re-check the stop flag."""
        with self._cond:
            self._cond.notify_all()
