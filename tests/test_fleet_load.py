"""Short version of benchmarks/fleet_load.py: many lightweight signed publishers (own
key, own account, own TLS connection each) through the NATS cluster into InfluxDB, with
two ingest workers; nothing may be lost and no gap reported."""

from __future__ import annotations

import argparse

import pytest

from benchmarks.fleet_load import run

pytestmark = [pytest.mark.stack, pytest.mark.slow]


@pytest.mark.parametrize("broker", ["nats", "mosquitto"])
def test_fleet_of_gateways_loses_nothing(broker: str) -> None:
    r = run(argparse.Namespace(broker=broker, gateways=60, minutes=0.3, interval=2.0,
                               readings=10, workers=2))
    assert r["frames_acked"] == r["frames_sent"] > 60 * 5
    assert r["readings_stored"] == r["readings_acked"] == r["frames_acked"] * 10
    assert r["gaps"] == 0
    assert r["broker_rss_mb"] > 0 and r["ingest_rss_mb"] > 0
