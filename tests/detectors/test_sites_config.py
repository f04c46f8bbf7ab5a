"""SITES.yaml / PARAMS.yaml loading: strict, errors naming file and path."""

from __future__ import annotations

import json

import pytest

from ingest.detectors.sites import ConfigError, load_params, load_sites

GOOD = """
sites:
  dongsi:
    kind: air_quality
    location: {lat: 39.929, lon: 116.417}
    limits: {pm25_ugm3: 75}
    neighbours: [guanyuan]
  guanyuan:
    kind: air_quality
    location: {lat: 39.929, lon: 116.339}
"""


def test_yaml_and_json(tmp_path):
    p = tmp_path / "SITES.yaml"
    p.write_text(GOOD)
    sites = load_sites(p)
    assert sites["dongsi"].limits == {"pm25_ugm3": 75.0}
    assert sites["dongsi"].neighbours == ["guanyuan"] and sites["guanyuan"].neighbours == []
    assert (sites["guanyuan"].lat, sites["guanyuan"].lon) == (39.929, 116.339)
    j = tmp_path / "SITES.json"
    j.write_text(json.dumps({"sites": {"s": {"kind": "stack_cems",
                                             "location": {"lat": 1, "lon": 2}}}}))
    assert load_sites(j)["s"].kind == "stack_cems"


@pytest.mark.parametrize(("text", "message"), [
    (GOOD.replace("lat: 39.929, lon: 116.417", "lat: north, lon: 116.417"),
     "sites.dongsi.location.lat: Input should be a valid number"),
    (GOOD.replace("    neighbours: [guanyuan]", "    neighbors: [guanyuan]"),
     "sites.dongsi.neighbors: Extra inputs are not permitted"),
    (GOOD.replace("kind: air_quality\n    location: {lat: 39.929, lon: 116.339}",
                  "kind: airport\n    location: {lat: 39.929, lon: 116.339}"),
     "sites.guanyuan.kind: Input should be"),
    (GOOD.replace("pm25_ugm3: 75", "pm25: 75"), "sites.dongsi.limits.pm25: unknown signal"),
    (GOOD.replace("[guanyuan]", "[gucheng]"), "sites.dongsi.neighbours.0: unknown site"),
    (GOOD.replace("[guanyuan]", "[dongsi]"), "sites.dongsi.neighbours.0: a site is not its"),
    (GOOD.replace("lat: 39.929, lon: 116.417", "lat: 139.9, lon: 116.417"),
     "sites.dongsi.location.lat: Input should be less than or equal to 90"),
    ("sites: [", "not valid YAML"),
])
def test_errors_name_file_and_path(tmp_path, text, message):
    p = tmp_path / "SITES.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as ei:
        load_sites(p)
    assert str(ei.value).startswith(f"{p}: ")
    assert message in str(ei.value)


def test_params(tmp_path):
    p = tmp_path / "PARAMS.yaml"
    p.write_text("E4: {window_h: 8}\n")
    assert load_params(p) == {"E4": {"window_h": 8}}
    p.write_text("- E4\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_params(p)
    with pytest.raises(ConfigError, match="cannot read"):
        load_params(tmp_path / "missing.yaml")
