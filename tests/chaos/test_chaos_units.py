"""The chaos suite's own judges: the flat-memory rule on both sides of its bound, and the
partition relay (bytes flow, then a black hole that neither resets nor closes)."""

from __future__ import annotations

import socket
import threading

from tests.chaos.harness import Relay
from tests.chaos.scenarios import MB, flat_memory


def _series(start: float, per_s: float, n: int = 60, step: float = 60.0,
            noise: float = 0.0) -> list[tuple[float, int]]:
    return [(i * step, int(start + per_s * i * step + (noise if i % 2 else -noise)))
            for i in range(n)]


def test_flat_series_passes_and_leak_fails() -> None:
    dur = 3600.0
    ok, text = flat_memory(_series(60 * MB, 0.0, noise=2 * MB), dur)
    assert ok, text
    # 60 MB per minute, the leak of the review: far beyond the bound
    ok, _ = flat_memory(_series(60 * MB, 1 * MB), dur)
    assert not ok


def test_bound_is_the_larger_of_16_mib_and_10_percent() -> None:
    dur = 1000.0
    # median ~60 MiB: bound 16 MiB; growth over the run 15 vs 17 MiB
    assert flat_memory(_series(60 * MB, 15 * MB / dur, step=10.0, n=100), dur)[0]
    assert not flat_memory(_series(60 * MB, 17 * MB / dur, step=10.0, n=100), dur)[0]
    # median ~400 MiB: bound 40 MiB
    assert flat_memory(_series(400 * MB, 35 * MB / dur, step=10.0, n=100), dur)[0]
    assert not flat_memory(_series(400 * MB, 45 * MB / dur, step=10.0, n=100), dur)[0]


def test_too_few_samples_is_not_flat() -> None:
    assert not flat_memory([(0.0, MB), (1.0, MB)], 10.0)[0]


def test_relay_forwards_then_black_holes_without_closing() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    got: list[bytes] = []

    def echo() -> None:
        c, _ = srv.accept()
        c.settimeout(5)
        try:
            while data := c.recv(100):
                got.append(data)
                c.sendall(data)
        except OSError:
            pass

    threading.Thread(target=echo, daemon=True).start()
    relay = Relay(srv.getsockname()[1])
    relay.start()
    try:
        c = socket.create_connection(("127.0.0.1", relay.port), timeout=5)
        c.sendall(b"ping")
        assert c.recv(100) == b"ping"
        relay.partition()
        c.sendall(b"lost")
        c.settimeout(1.0)
        try:
            data = c.recv(100)
        except TimeoutError:
            data = None
        assert data is None, "a partitioned link must neither answer nor close"
        assert got == [b"ping"]
    finally:
        relay.close()
        srv.close()
