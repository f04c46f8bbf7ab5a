"""Pollutant code table (HJ 212-2017 appendix) and the mapping to canonical signals.

The table is read from ``hj212-2017-codes.tsv`` shipped inside this package. That file
was machine-extracted from the standard; the loader repairs the rows the extraction
broke (name and units run together in one column) and adds the codes it dropped, each
marked in :attr:`PollutantCode.source` so nobody mistakes a repair for the original.

The mapping to canonical signal names is keyed by ``(ST, code)``: the same code means a
different quantity in a different unit depending on the system. ``a21026`` is SO2 in
mg/m³ in stack gas (ST=31) but in µg/m³ at an ambient air station (ST=22).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import NamedTuple

TSV_NAME = "hj212-2017-codes.tsv"

#: Units as printed in the standard -> SI-style symbols used in StationSeal.
UNIT_SYMBOLS: dict[str, str] = {
    "毫克/立方米": "mg/m³",
    "微克/立方米": "µg/m³",
    "纳克/立方米": "ng/m³",
    "毫克/升": "mg/L",
    "微克/升": "µg/L",
    "纳克/升": "ng/L",
    "升/秒": "L/s",
    "立方米/秒": "m³/s",
    "立方米": "m³",
    "平方米": "m²",
    "千克": "kg",
    "克": "g",
    "毫克": "mg",
    "摄氏度": "°C",
    "%": "%",
    "千帕": "kPa",
    "米/秒": "m/s",
    "无量纲": "1",
    "个/升": "1/L",
    "[色]度": "colour degree",
    "[角]度": "°",
    "微西[门子]/厘米": "µS/cm",
    "贝可[勒尔]/升": "Bq/L",
    "吨/平方千米•月": "t/(km²·month)",
}

#: ST (system code) values. 44/45 come from HJ 212-2025.
SYSTEM_CODES: dict[str, str] = {
    "21": "surface water quality",
    "22": "ambient air quality",
    "23": "acoustic environment quality",
    "24": "groundwater quality",
    "25": "soil quality",
    "26": "seawater quality",
    "27": "volatile organic compounds",
    "31": "air pollution source (stack gas)",
    "32": "surface water pollution source (effluent)",
    "33": "groundwater pollution source",
    "34": "marine pollution source",
    "35": "soil pollution source",
    "36": "noise pollution source",
    "37": "vibration pollution source",
    "38": "radioactive pollution source",
    "39": "construction dust",
    "41": "electromagnetic pollution source",
    "44": "electricity use monitoring (2025)",
    "45": "key production condition monitoring (2025)",
    "91": "system interaction",
}


@dataclass(frozen=True, slots=True)
class PollutantCode:
    code: str
    name: str
    #: HJ/T 212-2005 code, ``None`` where the standard gives none (``--``).
    legacy_code: str | None
    #: Concentration (or value) unit exactly as printed in the standard.
    unit: str
    #: Unit of cumulative (``-Cou``) values, empty when the code has none.
    total_unit: str
    #: Transmission format, e.g. ``N5.2`` (5 integer digits, 2 decimals).
    data_format: str
    #: ``tsv`` (verbatim), ``tsv-repaired`` (columns re-split) or ``supplement``.
    source: str

    @property
    def unit_symbol(self) -> str:
        return UNIT_SYMBOLS.get(self.unit, self.unit)

    @property
    def total_unit_symbol(self) -> str:
        return UNIT_SYMBOLS.get(self.total_unit, self.total_unit)


#: Codes the machine extraction dropped or that the 2017 table lacks but every ambient
#: air network sends. Kept in code, not in the TSV, so the TSV stays the extraction.
_SUPPLEMENT: tuple[PollutantCode, ...] = (
    # In the HJ 212-2017 table next to a34001 TSP / a34004 PM2.5 (same printed units).
    PollutantCode("a34002", "可吸入颗粒物 PM10", None, "纳克/立方米", "克", "", "supplement"),
    # Not in the 2017 table; the code ambient air stations use for ozone, in µg/m³.
    PollutantCode("a05024", "臭氧 O3", None, "微克/立方米", "", "", "supplement"),
)


def _parse_row(row: list[str]) -> PollutantCode:
    code, name, legacy, unit, total, fmt = (row + [""] * 6)[:6]
    source = "tsv"
    if not unit and " " in name:
        # "铜 毫克/升 千克": the extraction merged name and unit columns.
        pieces = name.split()
        if len(pieces) >= 2 and pieces[1] in UNIT_SYMBOLS:
            name, unit = pieces[0], pieces[1]
            total = pieces[2] if len(pieces) > 2 else total
            source = "tsv-repaired"
    return PollutantCode(
        code=code.strip(),
        name=name.strip(),
        legacy_code=None if legacy.strip() in ("", "--") else legacy.strip(),
        unit=unit.strip(),
        total_unit=total.strip(),
        data_format=fmt.strip(),
        source=source,
    )


@cache
def pollutant_codes() -> dict[str, PollutantCode]:
    """All known pollutant codes by 2017 code (loaded once from the packaged TSV)."""
    text = resources.files(__package__).joinpath(TSV_NAME).read_text(encoding="utf-8")
    rows = list(csv.reader(io.StringIO(text), delimiter="\t"))
    if not rows or rows[0][:2] != ["code", "name"]:
        raise RuntimeError(f"{TSV_NAME}: unexpected header {rows[:1]!r}")
    table: dict[str, PollutantCode] = {}
    for row in rows[1:]:
        if row and row[0].strip():
            entry = _parse_row(row)
            table[entry.code] = entry
    for entry in _SUPPLEMENT:
        table.setdefault(entry.code, entry)
    return table


@cache
def _legacy_index() -> dict[str, str]:
    return {c.legacy_code: c.code for c in pollutant_codes().values() if c.legacy_code}


def code_info(code: str) -> PollutantCode | None:
    """Table entry for a 2017 code, or for an HJ/T 212-2005 code (``02`` -> a21026)."""
    table = pollutant_codes()
    found = table.get(code)
    if found is None and code in _legacy_index():
        found = table[_legacy_index()[code]]
    return found


def legacy_to_2017(code: str) -> str | None:
    """2017 code for an HJ/T 212-2005 code; water and air legacy codes do not collide."""
    return _legacy_index().get(code)


class SignalMap(NamedTuple):
    """How one HJ 212 code at one kind of site becomes a canonical signal."""

    st: str
    code: str
    signal: str
    #: canonical value = factor x transmitted value
    factor: float
    #: unit the value is transmitted in (an assumption where the standard is unclear)
    unit: str


#: The mapping table. Units: stack and water codes use the units of the standard's
#: table. Ambient air (ST=22) uses what the national air quality network sends, µg/m³
#: (CO mg/m³), although the 2017 table prints ng/m³ for particulates and mg/m³ for
#: gases: a logger following the table literally needs a per-site factor.
SIGNAL_MAPS: tuple[SignalMap, ...] = (
    # Stack gas CEMS
    SignalMap("31", "a21026", "so2_mgm3", 1.0, "mg/m³"),
    SignalMap("31", "a21002", "nox_mgm3", 1.0, "mg/m³"),
    SignalMap("31", "a34013", "pm_mgm3", 1.0, "mg/m³"),
    SignalMap("31", "a19001", "o2_stack_pct", 1.0, "%"),
    SignalMap("31", "a00000", "flow_m3h", 3600.0, "m³/s"),
    SignalMap("31", "a01012", "flue_temp_c", 1.0, "°C"),
    SignalMap("31", "a01013", "flue_kpa", 1.0, "kPa"),
    SignalMap("31", "a01014", "moisture_pct", 1.0, "%"),
    # Ambient air quality station
    SignalMap("22", "a34004", "pm25_ugm3", 1.0, "µg/m³"),
    SignalMap("22", "a34002", "pm10_ugm3", 1.0, "µg/m³"),
    SignalMap("22", "a21026", "so2_ugm3", 1.0, "µg/m³"),
    SignalMap("22", "a21004", "no2_ugm3", 1.0, "µg/m³"),
    SignalMap("22", "a05024", "o3_ugm3", 1.0, "µg/m³"),
    SignalMap("22", "a21005", "co_mgm3", 1.0, "mg/m³"),
    # Effluent (water pollution source)
    SignalMap("32", "w01018", "cod_mgl", 1.0, "mg/L"),
    SignalMap("32", "w21003", "nh3n_mgl", 1.0, "mg/L"),
    SignalMap("32", "w21011", "tp_mgl", 1.0, "mg/L"),
    SignalMap("32", "w21001", "tn_mgl", 1.0, "mg/L"),
    SignalMap("32", "w01001", "ph", 1.0, "1"),
    SignalMap("32", "w01010", "water_temp_c", 1.0, "°C"),
    SignalMap("32", "w00000", "water_flow_ls", 1.0, "L/s"),
    # Surface water quality station: same quality codes, no effluent flow
    SignalMap("21", "w01018", "cod_mgl", 1.0, "mg/L"),
    SignalMap("21", "w21003", "nh3n_mgl", 1.0, "mg/L"),
    SignalMap("21", "w21011", "tp_mgl", 1.0, "mg/L"),
    SignalMap("21", "w21001", "tn_mgl", 1.0, "mg/L"),
    SignalMap("21", "w01001", "ph", 1.0, "1"),
    SignalMap("21", "w01010", "water_temp_c", 1.0, "°C"),
)

#: ``(ST, code) -> canonical signal name``.
HJ212_TO_SIGNAL: dict[tuple[str, str], str] = {(m.st, m.code): m.signal for m in SIGNAL_MAPS}

_MAP_INDEX: dict[tuple[str, str], SignalMap] = {(m.st, m.code): m for m in SIGNAL_MAPS}
#: Reverse direction for simulators: ``(ST, signal) -> code``.
SIGNAL_TO_HJ212: dict[tuple[str, str], str] = {(m.st, m.signal): m.code for m in SIGNAL_MAPS}


def signal_map(st: str, code: str) -> SignalMap | None:
    """Mapping entry for a code at a site of system type ``st``; ``None`` if unmapped."""
    return _MAP_INDEX.get((st, code))


def signal_map_markdown() -> str:
    """The mapping table as it appears in docs/hj212.md (a test keeps the two in step)."""
    lines = [
        "| ST | code | name in the standard | table unit | sent as | × factor | signal |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in SIGNAL_MAPS:
        entry = code_info(m.code)
        name = entry.name if entry else "?"
        table_unit = entry.unit_symbol if entry else "?"
        lines.append(
            f"| {m.st} | `{m.code}` | {name} | {table_unit} | {m.unit} | {m.factor:g} "
            f"| `{m.signal}` |"
        )
    return "\n".join(lines) + "\n"
