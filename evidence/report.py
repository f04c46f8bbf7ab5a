"""The package's report: one HTML page in Chinese and English, printed to PDF with
WeasyPrint, and its pages rendered to PNG (pdftoppm) for a quick look.

WeasyPrint (BSD, maintained, pure Python over Pango) prints the same HTML the officer
opens in a browser, so the two cannot say different things, and it embeds the CJK fonts
fontconfig finds (Debian ``fonts-wqy-microhei`` / ``fonts-noto-cjk``, installed by
deploy/dev/bootstrap.sh). It is central-side only: the ``evidence`` extra.
"""

from __future__ import annotations

import html
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from stationseal.records import from_rfc3339

#: Chinese names of the rules (the English ones are the detectors' own titles).
RULES_ZH = {
    "V1": "取样探头未插入排气管、取样管泄漏或堵塞",
    "V2": "检测软件中的旁路开关或模拟发动机信号",
    "V3": "伪造的 OBD 数据流",
    "V4": "OBD 作弊器：不相关车辆报告同一标定标识",
    "V5": "分析仪输出被按比例缩小（气路或软件系数）",
    "V6": "替车替气：一辆车或标准气代替多辆车检测",
    "V7": "缩短或拼接的检测过程",
    "V8": "测功机数据不一致",
    "V9": "默认或恒定的气象数据",
    "V10": "检测结果被调整到刚好低于限值（站级统计）",
    "E1": "站点数小时远低于邻近站点（采样器被堵或被湿润）",
    "E2": "烟气含氧量异常偏高而污染物接近限值",
    "E3": "数采仪通道同步变化，上报值与实测值不符",
    "E4": "设备运行期间数据恒定、取值极少或逐日重复",
    "E5": "大部分小时值集中在略低于排放限值的窄带内",
    "E6": "设备运行期间数据被标记为维护、故障、停运等且无记录",
    "E7": "数据变化幅度连日远低于站点自身历史",
    "E8": "标定寄存器被修改，读数随即阶跃变化",
    "I-GAP": "序列号缺失且没有签名的丢弃记录说明",
    "I-FORK": "同一网关身份下签名的两套不同历史",
    "I-REPLAY": "已接收序列的帧被重新发送",
    "I-SIG": "帧的签名或密钥校验不通过",
    "I-DROP": "网关自身被迫丢弃数据并签名说明",
    "I-CLOCK": "网关时钟跳变",
    "I-CAL": "标定或配置寄存器被修改",
    "I-OFFLINE": "仪器或网关不可用",
    "I-HEALTH": "仪器故障：失效、断开、饱和或不可能的读数",
    "integrity": "数据完整性（签名、序列、链）",
}

CSS = """
@page { size: A4; margin: 16mm 14mm; @bottom-right { content: counter(page) " / " counter(pages);
  font-size: 8pt; color: #666; } }
body { font-family: "WenQuanYi Micro Hei", "Noto Sans CJK SC", "DejaVu Sans", sans-serif;
  font-size: 9.5pt; line-height: 1.45; color: #111; }
h1 { font-size: 15pt; margin: 0 0 4pt; } h2 { font-size: 12pt; margin: 14pt 0 4pt;
  border-bottom: 1px solid #999; } h3 { font-size: 10.5pt; margin: 8pt 0 2pt; }
table { border-collapse: collapse; width: 100%; margin: 4pt 0; }
td, th { border: 1px solid #bbb; padding: 2pt 4pt; vertical-align: top; text-align: left;
  font-size: 8.5pt; word-break: break-all; }
th { background: #eee; width: 28%; } .zh { color: #000; } .en { color: #333; }
.verdict { font-size: 12pt; font-weight: bold; padding: 4pt; border: 2px solid; }
.ok { color: #064; border-color: #064; } .bad { color: #a00; border-color: #a00; }
code, pre { font-family: "DejaVu Sans Mono", monospace; font-size: 8pt; }
pre { background: #f4f4f4; padding: 4pt; white-space: pre-wrap; word-break: break-all; }
.notes { border: 1px solid #666; height: 60mm; margin-top: 4pt; }
img { max-width: 100%; }
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, dict | list):
        text = json.dumps(v, ensure_ascii=False)
        return text if len(text) <= 300 else text[:300] + " …"
    return str(v)


def _origins(o: Any) -> str:
    """Runs of sequence numbers per gateway, whatever form the rule cited them in."""
    runs: dict[str, list[tuple[int, int]]] = {}
    for x in o if isinstance(o, list) else []:
        if isinstance(x, dict) and "gateway" in x and "first_seq" in x:
            runs.setdefault(str(x["gateway"]), []).append((int(x["first_seq"]),
                                                           int(x.get("last_seq", 0))))
        elif isinstance(x, list | tuple) and len(x) == 2:
            runs.setdefault(str(x[0]), []).append((int(x[1]), int(x[1])))
    if not runs:
        return _fmt(o)
    out = []
    for gw, rs in sorted(runs.items()):
        merged: list[list[int]] = []
        for a, b in sorted(rs):
            if merged and a <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        out.append(f"{gw} seq " + ", ".join(f"{a}" if a == b else f"{a}–{b}"
                                            for a, b in merged))
    return "; ".join(out)


def _table(d: dict[str, Any]) -> str:
    if not d:
        return "<p>—</p>"
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_fmt(v))}</td></tr>" for k, v in d.items())
    return f"<table>{rows}</table>"


def _findings(alert: dict[str, Any]) -> list[dict[str, Any]]:
    fs = alert.get("findings")
    if isinstance(fs, list) and fs:
        return [f for f in fs if isinstance(f, dict)]
    ev = dict(alert.get("evidence") or {})
    thr: dict[str, Any] = {}
    for k in list(ev):
        if k == "thresholds" and isinstance(ev[k], dict):
            thr.update(ev.pop(k))
        elif k.startswith(("threshold", "min_", "max_", "limit")):
            thr[k] = ev.pop(k)
    ev.pop("origins", None)
    return [{"check": ev.get("finding") or alert.get("rule"), "start": alert.get("start"),
             "end": alert.get("end"), "summary_en": alert.get("summary_en"),
             "summary_zh": alert.get("summary_zh"), "values": ev, "thresholds": thr,
             "parameters": {}, "origins": (alert.get("evidence") or {}).get("origins")}]


def render_html(root: Path, alert: dict[str, Any], ctx: dict[str, Any]) -> str:
    from ingest.detectors import registry

    rule = str(alert.get("rule"))
    reg = registry.discover()
    info = reg.rules.get(rule)
    if info is None:  # alert rule raised by a detector of another id (HJ212 -> E3)
        info = next((r for r in reg.rules.values() if f"alerts {rule}" in r.title
                     or f"{rule}," in r.title), None)
    import inspect

    doc = (inspect.getdoc(info.cls) or "") if info is not None else ""
    title_en = doc.splitlines()[0] if doc else rule
    v = ctx["verification"]
    ok = v.get("verdict") == "ACCEPTED" or (not v.get("failures") and v.get("reproduced"))
    verdict_zh = "验证通过：签名数据重现了该发现" if ok else "验证未通过"
    verdict_en = ("VERIFIED: the finding is reproduced from signed data alone" if ok
                  else "NOT VERIFIED")
    meas = ctx["measured"]
    parts = [f"<h1>证据包 Evidence package · {_e(rule)} · {_e(alert.get('site'))}</h1>",
             f"<p><b>告警 Alert</b> <code>{_e(alert.get('id'))}</code> · 严重程度 severity "
             f"<b>{_e(alert.get('severity'))}</b> · {_e(alert.get('start'))} — "
             f"{_e(alert.get('end'))} (UTC)</p>",
             f"<p class='zh'>{_e(alert.get('summary_zh', ''))}</p>",
             f"<p class='en'>{_e(alert.get('summary_en', ''))}</p>",
             f"<div class='verdict {'ok' if ok else 'bad'}'>{_e(verdict_zh)}<br/>"
             f"{_e(verdict_en)}</div>"]
    parts.append("<h2>1. 测量了什么 What was measured</h2>")
    parts.append(_table({
        "站点 Site": alert.get("site"), "仪器 Instrument": alert.get("instrument") or "—",
        "检测 Test": alert.get("test_id") or "—",
        "网关 Gateways": ", ".join(meas["gateways"]),
        "签名帧 Signed frames": meas["frames"], "读数 Readings": meas["readings"],
        "记录 Records judged": meas["records"],
        "时间范围 Time span (UTC)": meas["span"],
        "信号 Signals": ", ".join(meas["signals"]),
        "签名密钥 Signing keys": ", ".join(meas["keys"]),
    }))
    parts.append("<p class='zh'>每个读数都在现场网关上用"
                 "网关私钥签名，中心收到每一帧时记录其哈希和首次到达时间"
                 "（回执），并定期签署检查点。本包中的帧与中心收到的字节完全一致。</p>"
                 "<p class='en'>Every reading was signed on the site's gateway with its key; "
                 "the central service logged each frame's hash and first arrival (receipt) "
                 "and signs checkpoints over those receipts. The frames in this package are "
                 "the bytes the centre received.</p>")
    parts.append("<h2>2. 规则检查什么 What the rule checks</h2>")
    parts.append(f"<p class='zh'><b>{_e(rule)}</b>：{_e(RULES_ZH.get(rule, '见英文说明'))}</p>")
    parts.append(f"<p class='en'><b>{_e(title_en)}</b></p>")
    body = "\n".join(doc.splitlines()[1:]).strip()
    if body:
        # The rule's own description, whole paragraphs up to about a page.
        kept, size = [], 0
        for para in body.split("\n\n"):
            if size and size + len(para) > 2500:
                break
            kept.append(para)
            size += len(para)
        parts += [f"<p class='en'>{_e(p)}</p>" for p in kept]
    parts.append("<h2>3. 为何触发 Why it fired</h2>")
    for i, f in enumerate(_findings(alert), 1):
        parts.append(f"<h3>发现 Finding {i}: {_e(f.get('check'))} · {_e(f.get('start'))} — "
                     f"{_e(f.get('end'))}</h3>")
        parts.append(f"<p class='zh'>{_e(f.get('summary_zh') or '')}</p>"
                     f"<p class='en'>{_e(f.get('summary_en') or '')}</p>")
        parts.append("<p><b>测量值 Values</b></p>" + _table(f.get("values") or {}))
        parts.append("<p><b>阈值 Thresholds</b></p>" + _table(f.get("thresholds") or {}))
        if f.get("parameters"):
            parts.append("<p><b>参数 Parameters</b></p>" + _table(f["parameters"]))
        if f.get("origins"):
            parts.append(f"<p><b>来源帧 Origins</b> <code>{_e(_origins(f['origins']))}</code>"
                         "</p>")
    if ctx.get("params"):
        parts.append("<p><b>规则参数（生效）Rule parameters in force</b></p>" +
                     _table(ctx["params"]))
    for p in ctx["plots"]:
        parts.append(f"<p><img src='../{_e(p)}'/></p>")
    parts.append("<p class='zh'>图中：实线为告警对象的信号，"
                 "虚线为对照（同站其他仪器、邻站），红色点线为限值或阈值，"
                 "橙色阴影为告警区间。</p><p class='en'>Solid: the signal of the alert's scope; "
                 "dashed: comparison traces (other instruments of the site, neighbours); red "
                 "dotted: limits and thresholds; orange: the flagged interval.</p>")
    parts.append("<h2>4. 如何验证 How to verify this package</h2>")
    parts.append(_table({
        "结果 Result": f"{verdict_zh} / {verdict_en}",
        "帧 Frames verified": v.get("frames"),
        "回执 Receipts proven": f"{v.get('receipts')} (checkpoints {v.get('checkpoints')})",
        "重现 Reproduction": v.get("reproduction"),
        "中心密钥 Central key id": v.get("central_key_id"),
        "失败 Failures": ", ".join(f["reason"] for f in v.get("failures", [])) or "none 无",
    }))
    parts.append("<p class='zh'>任何人均可独立验证：先确认 centra"
                 "l.pub.pem 的密钥标识与执法机构公布的一致，然后运行：</p>"
                 "<p class='en'>Anyone can check it independently: confirm that the key id of "
                 "central.pub.pem is the published one, then run:</p>"
                 "<pre>stationseal evidence verify PACKAGE --central-key central.pub.pem\n"
                 "stationseal detect --in detect/records.jsonl --sites detect/SITES.yaml "
                 "--params detect/PARAMS.yaml\n"
                 "stationseal verify frames.jsonl --registry registry.json</pre>"
                 "<p class='zh'>验证内容：清单签名及每个文件的 S"
                 "HA-256；每一帧的签名与密钥；帧链完整（无缺失、无替换）；"
                 "每帧回执在已签名检查点中的包含证明；由签名帧重新得出的记录；在这些记"
                 "录上重新运行规则。格式见 docs/evidence.md。</p>"
                 "<p class='en'>It checks the manifest's signature and every file's SHA-256; "
                 "every frame's signature and key; the chain (nothing missing or swapped); "
                 "each frame's receipt against a signed checkpoint (inclusion proof); the "
                 "records re-derived from the signed frames; and re-runs the rule on them. "
                 "Format: docs/evidence.md.</p>")
    parts.append("<h2>5. 执法人员备注 Officer's notes</h2>"
                 "<p>姓名 Name: ____________ 日期 Date: ____________ 签字 Signature: "
                 "____________</p><div class='notes'></div>")
    return (f"<!DOCTYPE html><html lang='zh-CN'><head><meta charset='utf-8'/>"
            f"<title>Evidence {_e(alert.get('id'))}</title><style>{CSS}</style></head>"
            f"<body>{''.join(parts)}</body></html>")


def context(root: Path, alert: dict[str, Any], records: list[Any], frames: list[Any],
            verification: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    from stationseal.records import Sample, to_rfc3339

    times = [r.time for r in records]
    sigs = sorted({k for r in records if isinstance(r, Sample) for k in r.values})
    plots = sorted(p.relative_to(root).as_posix() for p in (root / "plots").glob("*.png")) \
        if (root / "plots").exists() else []
    return {
        "measured": {
            "gateways": sorted({f.gateway_id for f in frames}),
            "frames": len(frames), "readings": sum(len(f.readings) for f in frames),
            "records": len(records),
            "span": f"{to_rfc3339(min(times))} — {to_rfc3339(max(times))}" if times else "—",
            "signals": sigs[:40] + (["…"] if len(sigs) > 40 else []),
            "keys": sorted({f.key_id for f in frames}),
        },
        "verification": verification,
        "plots": plots,
        "params": params.get(str(alert.get("rule")), {}),
        "start": from_rfc3339(alert["start"]),
    }


def write_report(root: Path, alert: dict[str, Any], ctx: dict[str, Any],
                 pdf: bool = True, pages: bool = True) -> list[Path]:
    out = root / "report"
    out.mkdir(exist_ok=True)
    html_path = out / "report.html"
    html_path.write_text(render_html(root, alert, ctx), encoding="utf-8")
    written = [html_path]
    if pdf:
        from weasyprint import HTML

        pdf_path = out / "report.pdf"
        HTML(filename=str(html_path), base_url=str(out)).write_pdf(str(pdf_path))
        written.append(pdf_path)
        if pages and shutil.which("pdftoppm"):
            subprocess.run(["pdftoppm", "-r", "70", "-png", str(pdf_path),
                            str(out / "page")], check=True, capture_output=True, timeout=120)
            written += sorted(out.glob("page-*.png"))
    return written
