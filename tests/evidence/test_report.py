"""What an officer sees: the report's PDF pages and the plots, in Chinese and English."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from evidence_support import Central, make_central

from evidence.verify import verify_package
from stationseal.cli import main


def _need() -> None:
    for tool in ("pdftoppm", "pdftotext"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} missing (Debian poppler-utils; deploy/dev/bootstrap.sh)")
    for mod in ("weasyprint", "matplotlib"):
        try:
            __import__(mod)
        except ImportError:
            pytest.skip(f"{mod} missing: pip install -e '.[evidence]'")


def page_text(pdf: Path) -> str:
    return subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True,
                          text=True, check=True).stdout


def check_pages_and_plots(pkg: Path, expect: list[str]) -> None:
    """The checks an officer's first look makes, shared with the demo test."""
    from PIL import Image

    text = page_text(pkg / "report" / "report.pdf")
    flat = " ".join(text.split())
    for words in (["测量了什么", "What was measured"], ["规则检查什么", "What the rule checks"],
                  ["为何触发", "Why it fired"], ["如何验证", "How to verify"],
                  ["执法人员备注", "Officer's notes"], ["阈值", "Thresholds"],
                  ["验证通过", "VERIFIED"]):
        for w in words:
            assert w in flat, (w, flat[:2000])
    for w in expect:
        assert w in flat, (w, flat[:3000])
    pages = sorted((pkg / "report").glob("page-*.png"))
    assert pages
    for p in pages:
        im = Image.open(p).convert("L")
        lo, hi = im.getextrema()
        assert hi - lo > 100, p  # not a blank page
    info = json.loads((pkg / "plots" / "plots.json").read_text())
    assert info["signals"], info
    mains = [sum(t["points"] for t in s["traces"] if t["main"]) for s in info["signals"]]
    assert all(n >= 1 for n in mains) and max(mains) > 5, info  # a register may be sparse
    im = Image.open(pkg / "plots" / "signals.png").convert("L")
    hist = im.histogram()
    assert sum(hist[:128]) > 2000  # lines, ticks, text: not an empty canvas
    svg = (pkg / "plots" / "signals.svg").read_text()
    assert svg.count("<path") > 20


@pytest.fixture(scope="module")
def central(tmp_path_factory: pytest.TempPathFactory) -> Central:
    return make_central(tmp_path_factory.mktemp("central"))


def test_report_pages_show_the_rule_numbers_thresholds_and_verdict_in_both_languages(
        central: Central, tmp_path: Path) -> None:
    _need()
    pkg = tmp_path / "pkg"
    assert main(["evidence", "build", central.alert_id, "--out", str(pkg),
                 *central.build_args()]) == 0
    assert verify_package(pkg, (central.root / "keys" / "central.pub.pem").read_bytes()).ok
    alert = json.loads((pkg / "alert.json").read_text())
    f = alert["findings"][0]
    check_pages_and_plots(pkg, [
        "E4", "设备运行期间数据恒定", "flat", "12.3", "so2_mgm3",
        str(f["thresholds"].get("max_chance", "1e-05")),
        "stationseal evidence verify",
    ])
    # The flat SO2 value is what the plot's main trace shows in the flagged interval.
    info = json.loads((pkg / "plots" / "plots.json").read_text())
    assert info["signals"][0]["signal"] == "so2_mgm3"


def test_thresholds_drawn_only_on_the_signal_they_name() -> None:
    from evidence.plots import _thresholds
    from ingest.detectors.base import SiteInfo

    alert = {"findings": [{"thresholds": {"threshold_co_co2_pct": 6.0, "max_o2_pct": 0.5,
                                          "min_seconds": 5}}]}
    site = SiteInfo("S", "vehicle_inspection", limits={"o2_pct": 21.0})
    assert _thresholds(alert, "o2_pct", site) == [("limit 限值", 21.0), ("max_o2_pct", 0.5)]
    assert _thresholds(alert, "co2_pct", None) == []
