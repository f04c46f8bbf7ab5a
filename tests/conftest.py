"""Shared pytest fixtures.

``stack`` is one real Mosquitto + InfluxDB (stack.manager) for the whole session,
because the properties under test (TLS, ACLs, queued QoS 1, database writes) are the
servers' behaviour. Tests using it carry ``@pytest.mark.stack`` so a quick run can
deselect them with ``-m "not stack"``. Tests that stop or restart servers use their own
stack from ``make_stack``, never the shared one. Helpers and types: tests/stack_helpers.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from stack_helpers import STACK_GATEWAYS, MqttTestClient, mqtt_connect, start_test_stack

from stack.manager import Credential, StackInfo, add_gateway, down

_extra_ids = itertools.count(1)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    """A running stack with credentials for STACK_GATEWAYS; stopped at session end."""
    d = tmp_path_factory.mktemp("stack")
    info = start_test_stack(d)
    try:
        yield info
    finally:
        down(d)


@pytest.fixture
def new_gateway(stack: StackInfo) -> Callable[..., Credential]:
    """Factory: ``new_gateway()`` or ``new_gateway("gw-x")`` adds credentials for one more
    gateway to the session stack (broker reloaded, not restarted) and returns them."""

    def make(gateway_id: str | None = None) -> Credential:
        return add_gateway(stack.dir, gateway_id or f"gw-extra-{next(_extra_ids)}")

    return make


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[Callable[..., StackInfo]]:
    """Factory for a private stack (outage and restart tests):
    ``make_stack(gateways=("gw-a",), name="s")``; every one is stopped after the test."""
    dirs: list[Path] = []

    def make(gateways: tuple[str, ...] = STACK_GATEWAYS, name: str = "stack") -> StackInfo:
        d = tmp_path / name
        dirs.append(d)
        return start_test_stack(d, gateways)

    yield make
    for d in dirs:
        down(d)


@pytest.fixture
def mqtt_clients() -> Iterator[Callable[..., MqttTestClient]]:
    """Factory with the signature of :func:`stack_helpers.mqtt_connect`; every client is
    closed after the test."""
    made: list[MqttTestClient] = []

    def make(*args: Any, **kwargs: Any) -> MqttTestClient:
        c = mqtt_connect(*args, **kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()
