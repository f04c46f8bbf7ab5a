"""The chaos scenarios: faults and attacks against real processes, each judged by
accounting (tests/chaos/harness.py) and by checks that could fail.

Every scenario takes a :class:`Ctx` (work directory, whether to run the full-length
version) and returns a :class:`Result`; :data:`SCENARIOS` lists them in table order.
``full`` durations are the ones the reliability table quotes (a 10-minute partition, a
5-minute InfluxDB outage, 20 agent kills, an 8-hour-equivalent soak); the short ones
exercise the same fault in seconds, for CI and for iterating.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import socket
import subprocess
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stack import manager as stack
from tests.chaos.harness import PY, ROOT, Account, Deployment, influx_series, log, wait_for
from tests.chaos.hostile import (
    CBOR_BAD_UTF8,
    Client,
    Sealer,
    hostile_payloads,
    poisoned_drop_frame,
)

HONEST = "gw-chaos-1"
SECOND = "gw-chaos-2"
EVIL = "gw-evil"
MB = 1024 * 1024


@dataclass
class Ctx:
    work: Path
    full: bool = False

    def dur(self, short: float, full: float) -> float:
        return full if self.full else short


@dataclass
class Result:
    name: str
    fault: str
    sealed: int | None = None
    stored: int | None = None
    covered: int | None = None
    unexplained: int | None = None
    duplicates: int | None = None
    rss_agent: int = 0
    rss_ingest: int = 0
    recovery_s: float | None = None
    checks: list[tuple[str, bool]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self, what: str, ok: bool) -> bool:
        self.checks.append((what, bool(ok)))
        return bool(ok)

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.checks) and all(ok for _, ok in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "fault": self.fault, "verdict":
                "PASS" if self.passed else "FAIL", "sealed": self.sealed,
                "stored": self.stored, "covered": self.covered,
                "unexplained": self.unexplained, "duplicates": self.duplicates,
                "peak_rss_agent": self.rss_agent, "peak_rss_ingest": self.rss_ingest,
                "recovery_s": self.recovery_s, "checks": self.checks, "notes": self.notes,
                "error": self.error, "seconds": round(self.seconds, 1), **self.extra}


# --------------------------------------------------------------------------- helpers


def account_into(r: Result, d: Deployment, gids: list[str]) -> list[Account]:
    """Fill the accounting columns from every honest gateway and add the two checks every
    data-carrying scenario must pass."""
    accs = [d.account(g) for g in gids]
    r.sealed = sum(a.sealed_readings for a in accs)
    r.stored = sum(a.stored_readings for a in accs)
    r.covered = sum(a.covered_readings + a.lost_unsealed_readings for a in accs)
    r.unexplained = sum(a.unexplained_readings for a in accs)
    r.duplicates = sum(a.duplicate_readings for a in accs)
    lost_frames = sum(a.unexplained_frames for a in accs)
    unknown = sum(a.unknown_frames for a in accs)
    pending = sum(a.pending_frames for a in accs)
    r.extra["frames"] = {a.gateway: {"sealed": a.sealed_frames, "stored": a.stored_frames,
                                     "covered": a.covered_frames, "pending": a.pending_frames,
                                     "unexplained": a.unexplained_frames,
                                     "first_missing": a.missing,
                                     "readings_lost_signed": a.lost_unsealed_readings}
                         for a in accs}
    if pending:
        r.notes.append(f"{pending} frames still queued at the gateway at the end (not lost)")
    if unknown:
        r.notes.append(f"{unknown} lost frames were never seen anywhere: their readings are "
                       "not in the sealed/lost columns")
    r.check("every sealed frame is stored, covered by a signed drop or still queued "
            f"({lost_frames} frames unexplained)", lost_frames == 0)
    r.check("nothing stored twice", r.duplicates == 0 and
            all(a.duplicate_frames == 0 for a in accs))
    r.check("readings were sealed", r.sealed > 0)
    return accs


def finish(r: Result, d: Deployment, gids: list[str], settle_s: float = 180.0) -> None:
    d.settle(gids, timeout=settle_s)
    account_into(r, d, gids)


def newest_lag(d: Deployment, gid: str) -> float | None:
    """Seconds between now and the newest stored frame of ``gid``."""
    s = influx_series(d.st.influx_url, d.st.influx_database,
                      f"SELECT last(\"seq\") FROM \"frame\" WHERE \"gateway\" = '{gid}'")
    if not s:
        return None
    return time.time() - s[0]["values"][0][0] / 1e3


def integrity_points(d: Deployment, gid: str, since: float = 0.0) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in influx_series(d.st.influx_url, d.st.influx_database,
                           f"SELECT count(\"count\") FROM \"integrity\" WHERE \"gateway\" = "
                           f"'{gid}' AND time >= {int(since * 1e3)}ms GROUP BY \"kind\""):
        out[(s.get("tags") or {}).get("kind", "?")] = int(s["values"][0][1])
    return out


def events_of(d: Deployment, gid: str, kind: str) -> list[dict[str, Any]]:
    out = []
    for s in influx_series(d.st.influx_url, d.st.influx_database,
                           f"SELECT \"detail\", \"instrument\" FROM \"event\" WHERE \"gateway\" = "
                           f"'{gid}' AND \"kind\" = '{kind}'"):
        for _t, detail, inst in s["values"]:
            with contextlib.suppress(ValueError, TypeError):
                out.append({"instrument": inst, **json.loads(detail)})
    return out


def evil_client(d: Deployment, client_id: str = "evil-pub") -> Client:
    cred = d.st.gateway(EVIL)
    return Client(d.st, EVIL, cred.password(), client_id, clean_start=True)


def evil_sealer(d: Deployment, site: str | None = None) -> Sealer:
    gw = d.gws[EVIL]
    return Sealer(EVIL, site or gw.site, gw.key_file)


def topic(d: Deployment, gid: str) -> str:
    return d.st.topic(gid, "frames")


def flat_memory(series: list[tuple[float, int]], duration_s: float) -> tuple[bool, str]:
    """The flat-memory rule (docs/reliability.md): least-squares slope of RSS over the
    second half of the run, projected over the whole run, must stay below
    max(16 MiB, 10 % of the median RSS of that half). The first half is warm-up (caches,
    allocator arenas, the database's first pages)."""
    half = [p for p in series if p[0] >= series[-1][0] / 2] if series else []
    if len(half) < 3:
        return False, "fewer than 3 samples in the second half"
    xs = [p[0] for p in half]
    ys = [p[1] for p in half]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    med = sorted(ys)[len(ys) // 2]
    growth = slope * duration_s
    bound = max(16 * MB, 0.10 * med)
    text = (f"slope {slope * 60 / MB:+.3f} MiB/min over the second half, projected "
            f"{growth / MB:+.1f} MiB over {duration_s / 60:.0f} min, bound {bound / MB:.1f} MiB")
    return growth < bound, text


def pipeline(ctx: Ctx, name: str, gws: tuple[str, ...] = (HONEST,), *,
             extra_gws: tuple[str, ...] = (), **ingest_over: Any) -> Deployment:
    d = Deployment(ctx.work, name, gateways=(*gws, *extra_gws), ingest_over=ingest_over)
    d.start_stack()
    d.start_ingest()
    d.start_recorder()
    return d


def rss_into(r: Result, d: Deployment) -> None:
    d.rss.sample()
    r.rss_agent = d.peak_rss("agent")
    r.rss_ingest = d.peak_rss("ingest")


# --------------------------------------------------------------------------- scenarios


def s_baseline(ctx: Ctx, r: Result) -> None:
    with pipeline(ctx, r.name, (HONEST,)) as d:
        d.start_gateway(HONEST)
        time.sleep(ctx.dur(15, 60))
        finish(r, d, [HONEST])
        rss_into(r, d)


def s_broker_restart(ctx: Ctx, r: Result) -> None:
    with pipeline(ctx, r.name) as d:
        d.start_gateway(HONEST)
        time.sleep(ctx.dur(8, 30))
        stack.stop_component(d.st.dir, "mosquitto")
        time.sleep(ctx.dur(5, 20))
        stack.start_component(d.st.dir, "mosquitto")
        t_end = time.time()
        r.recovery_s = d.recovery_time(HONEST, t_end)
        r.check("fresh data stored after the restart", r.recovery_s is not None)
        time.sleep(ctx.dur(5, 20))
        finish(r, d, [HONEST])
        rss_into(r, d)


def s_broker_crash(ctx: Ctx, r: Result) -> None:
    """kill -9 of the broker while ingest and agent run."""
    with pipeline(ctx, r.name) as d:
        d.start_gateway(HONEST)
        for _ in range(2 if not ctx.full else 3):
            time.sleep(ctx.dur(8, 20))
            stack.stop_component(d.st.dir, "mosquitto", kill=True)
            time.sleep(ctx.dur(3, 10))
            stack.start_component(d.st.dir, "mosquitto")
        t_end = time.time()
        r.recovery_s = d.recovery_time(HONEST, t_end)
        r.check("fresh data stored after the crash", r.recovery_s is not None)
        time.sleep(ctx.dur(5, 20))
        finish(r, d, [HONEST])
        rss_into(r, d)


def s_broker_crash_ingest_away(ctx: Ctx, r: Result) -> None:
    """Issue item 6: ingest away, frames acknowledged by the broker, then kill -9 of the
    broker inside its autosave window."""
    with pipeline(ctx, r.name) as d:
        d.start_gateway(HONEST)
        time.sleep(5)
        assert d.ingest is not None
        d.procs.stop(d.ingest)
        time.sleep(ctx.dur(10, 25))  # < the broker's 30 s autosave interval
        stack.stop_component(d.st.dir, "mosquitto", kill=True)
        time.sleep(2)
        stack.start_component(d.st.dir, "mosquitto")
        d.start_ingest()
        r.recovery_s = d.recovery_time(HONEST, time.time())
        time.sleep(ctx.dur(5, 15))
        finish(r, d, [HONEST])
        rss_into(r, d)


def s_partition(ctx: Ctx, r: Result) -> None:
    """The gateway's link dies (black hole, no RST) for 10 minutes, then heals."""
    with pipeline(ctx, r.name) as d:
        gw = d.start_gateway(HONEST, relay=True)
        assert gw.relay is not None
        time.sleep(ctx.dur(5, 20))
        gw.relay.partition()
        time.sleep(ctx.dur(25, 600))
        gw.relay.heal()
        t_end = time.time()
        # the agent's back-off after a long outage is up to 300 s (docs/agent.md §5)
        r.recovery_s = d.recovery_time(HONEST, t_end, timeout=420)
        r.check("fresh data stored after the partition", r.recovery_s is not None)
        finish(r, d, [HONEST], settle_s=420)
        rss_into(r, d)


def s_agent_kill9(ctx: Ctx, r: Result) -> None:
    """kill -9 of the agent ×20 while it writes; each time restarted at once (systemd)."""
    kills = 20 if ctx.full else 5
    rng = random.Random(7)
    with pipeline(ctx, r.name) as d:
        d.start_gateway(HONEST)
        time.sleep(3)
        for _ in range(kills):
            time.sleep(rng.uniform(1.0, 4.0))
            gw = d.gws[HONEST]
            assert gw.agent is not None
            d.procs.kill9(gw.agent)
            d.start_agent(HONEST)
        t_end = time.time()
        r.recovery_s = d.recovery_time(HONEST, t_end)
        time.sleep(5)
        finish(r, d, [HONEST])
        boots = len(events_of(d, HONEST, "gateway_boot"))
        r.check(f"every run sealed its gateway_boot ({boots} of {kills + 1})",
                boots == kills + 1)
        rss_into(r, d)


def s_ingest_kill9(ctx: Ctx, r: Result) -> None:
    kills = 5 if ctx.full else 2
    with pipeline(ctx, r.name, (HONEST, SECOND)) as d:
        d.start_gateway(HONEST)
        d.start_gateway(SECOND)
        rec: list[float] = []
        for _ in range(kills):
            time.sleep(ctx.dur(5, 10))
            assert d.ingest is not None
            d.procs.kill9(d.ingest)
            time.sleep(1)
            d.start_ingest()
            t = d.recovery_time(HONEST, time.time())
            if t is not None:
                rec.append(t)
        r.recovery_s = max(rec) if rec else None
        r.check("fresh data stored after every restart", len(rec) == kills)
        finish(r, d, [HONEST, SECOND])
        rss_into(r, d)


def s_influx_down(ctx: Ctx, r: Result) -> None:
    """InfluxDB down for 5 minutes under load from two gateways."""
    with pipeline(ctx, r.name, (HONEST, SECOND)) as d:
        d.start_gateway(HONEST, instruments=3)
        d.start_gateway(SECOND, instruments=3)
        time.sleep(ctx.dur(5, 20))
        stack.stop_component(d.st.dir, "influxdb")
        went_false = wait_for(lambda: (d.health() or {}).get("ok") is False, 30)
        time.sleep(ctx.dur(20, 300))
        r.extra["backlog_at_end_of_outage"] = (d.health() or {}).get("backlog")
        stack.start_component(d.st.dir, "influxdb")
        t_end = time.time()
        r.check("ingest health turned false during the outage", went_false)
        r.recovery_s = d.recovery_time(HONEST, t_end, timeout=300)
        r.check("fresh data stored after the outage", r.recovery_s is not None)
        finish(r, d, [HONEST, SECOND], settle_s=300)
        rss_into(r, d)


def _tmpfs(path: Path, size: str) -> Callable[[], None] | None:
    path.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                        str(path)], capture_output=True, text=True, check=False)
    if p.returncode != 0:
        return None

    def undo() -> None:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)

    return undo


def s_gateway_disk_full(ctx: Ctx, r: Result) -> None:
    """The gateway's state disk fills while its link is down (a 2 MiB tmpfs under the
    outbox); the agent must go on polling, account for what it could not store, and
    deliver everything it stored once the link is back."""
    with pipeline(ctx, r.name) as d:
        outdir = d.work / HONEST / "tmpfs"
        undo = _tmpfs(outdir, "2m")
        try:
            if undo is None:
                r.notes.append("tmpfs mount refused (not root?): used outbox.max_bytes "
                               "1 MiB as the disk bound instead")
                gw = d.start_gateway(HONEST, relay=True, instruments=4, poll_s=0.1,
                                     outbox={"max_bytes": MB})
            else:
                gw = d.start_gateway(HONEST, relay=True, instruments=4, poll_s=0.1,
                                     outbox_dir=outdir)
            assert gw.relay is not None
            time.sleep(3)
            gw.relay.partition()

            def full() -> bool:
                st = shutil.disk_usage(outdir)
                return st.free < 64 * 1024 if undo else False
            filled = wait_for(full, ctx.dur(120, 240), 1.0)
            r.check("the state disk filled up", filled or undo is None)
            time.sleep(ctx.dur(15, 60))  # polling goes on against a full disk
            assert gw.agent is not None
            r.check("agent still running on a full disk", gw.agent.alive())
            gw.relay.heal()
            t_end = time.time()
            r.recovery_s = d.recovery_time(HONEST, t_end, timeout=400)
            r.check("fresh data stored after the disk emptied", r.recovery_s is not None)
            finish(r, d, [HONEST], settle_s=400)
            lost = events_of(d, HONEST, "readings_lost")
            dropped = events_of(d, HONEST, "data_dropped")
            r.notes.append(f"signed readings_lost events: {len(lost)}, data_dropped: "
                           f"{len(dropped)}")
            r.check("what could not be stored is accounted for by a signed event",
                    bool(lost or dropped))
            rss_into(r, d)
        finally:
            d.close()
            if undo is not None:
                undo()


def s_clock_steps(ctx: Ctx, r: Result) -> None:
    """The gateway's wall clock steps forward 30 min, back to true time, back another
    30 min, forward to true time; the monotonic clock is untouched (tests/chaos/clockshim)."""
    with pipeline(ctx, r.name) as d:
        off = d.work / "clock-offset"
        off.write_text("0")
        d.start_gateway(HONEST, agent_prefix=[PY, "-m", "tests.chaos.clockshim", str(off)])
        steps = (1800, 0, -1800, 0)
        for s in steps:
            time.sleep(ctx.dur(6, 30))
            off.write_text(str(s))
        time.sleep(ctx.dur(6, 30))
        finish(r, d, [HONEST])
        jumps = events_of(d, HONEST, "clock_jump")
        got = sorted(round(float(j.get("jump_s", 0)) / 60) for j in jumps)
        r.notes.append(f"clock_jump events (minutes): {got}")
        r.check("each of the 4 steps sealed as a clock_jump event of the right size",
                got == sorted(round((b - a) / 60) for a, b in
                              zip((0, *steps[:-1]), steps, strict=True)))
        rss_into(r, d)


def _modbus(ctx: Ctx, r: Result, fault: str, event: str) -> None:
    start, end = 6, 6 + int(ctx.dur(10, 60))
    with pipeline(ctx, r.name) as d:
        d.start_gateway(HONEST, faults={"ana1": f"{fault}@{start}-{end}"})
        t0 = time.time()
        time.sleep(end + 1)
        t_end = t0 + end

        def ana1_fresh() -> bool:
            s = influx_series(d.st.influx_url, d.st.influx_database,
                              f"SELECT count(\"quality\") FROM \"reading\" WHERE \"gateway\" "
                              f"= '{HONEST}' AND \"instrument\" = 'ana1' AND "
                              f"time >= {int((t_end + 0.5) * 1e3)}ms")
            return bool(s) and int(s[0]["values"][0][1]) > 0
        ok = wait_for(ana1_fresh, 60, 0.25)
        r.recovery_s = time.time() - t_end if ok else None
        r.check("the faulty instrument's readings came back", ok)
        time.sleep(3)
        finish(r, d, [HONEST])
        evs = events_of(d, HONEST, event)
        r.check(f"sealed {event} events for ana1 ({len(evs)})",
                any(e.get("instrument") == "ana1" for e in evs))

        def gap(inst: str) -> float:
            s = influx_series(d.st.influx_url, d.st.influx_database,
                              f"SELECT count(\"quality\") FROM \"reading\" WHERE "
                              f"\"gateway\" = '{HONEST}' AND \"instrument\" = '{inst}' AND "
                              f"time >= {int((t0 + start + 1) * 1e3)}ms AND "
                              f"time < {int((t0 + end - 1) * 1e3)}ms")
            return int(s[0]["values"][0][1]) if s else 0
        r.check("the healthy instrument kept delivering during the fault",
                gap("ana2") > 0)
        rss_into(r, d)


def s_modbus_slow(ctx: Ctx, r: Result) -> None:
    _modbus(ctx, r, "timeout", "instrument_fault")


def s_modbus_garbage(ctx: Ctx, r: Result) -> None:
    _modbus(ctx, r, "garbage", "malformed_response")


# -- issue items -----------------------------------------------------------------------


def s_session_takeover(ctx: Ctx, r: Result) -> None:
    """Issue item 1: a gateway login connects with the ingest's client id and a clean
    start, repeatedly, while the real agent publishes."""
    with pipeline(ctx, r.name, (HONEST,), extra_gws=(EVIL,)) as d:
        d.start_gateway(HONEST)
        time.sleep(4)
        cred = d.st.gateway(EVIL)
        accepted = 0
        for _ in range(int(ctx.dur(4, 10))):
            c = Client(d.st, EVIL, cred.password(), "stationseal-ingest", clean_start=True)
            accepted += c.accepted
            time.sleep(2)
            c.close()
            time.sleep(2)
        r.notes.append(f"takeover logins accepted by the broker: {accepted} (under the "
                       "gateway's own account name if the broker ties client ids to "
                       "accounts)")
        h = d.health() or {}
        r.extra["ingest_health"] = h
        finish(r, d, [HONEST])
        rss_into(r, d)


def s_cbor_leak(ctx: Ctx, r: Result) -> None:
    """Issue item 2: 2-byte CBOR payloads with invalid UTF-8, at 60 per minute in the
    original finding; here ``rate`` per second, ingest RSS must stay flat."""
    dur = ctx.dur(60, 300)
    rate = 20.0
    with pipeline(ctx, r.name, (HONEST,), extra_gws=(EVIL,)) as d:
        d.start_gateway(HONEST)
        c = evil_client(d)
        d.rss.interval = 2.0
        t0 = time.monotonic()
        sent = 0
        while time.monotonic() - t0 < dur:
            sent += c.publish(topic(d, EVIL), CBOR_BAD_UTF8, qos=1, wait=5)
            time.sleep(1 / rate)
        c.close()
        r.extra["hostile_messages"] = sent
        series = d.rss.series.get("ingest", [])
        ok, text = flat_memory(series, dur)
        r.notes.append(f"{sent} bad-UTF-8 payloads; ingest RSS {text}")
        r.check("ingest memory flat under bad-UTF-8 CBOR", ok)
        finish(r, d, [HONEST])
        rss_into(r, d)


def s_state_disk_full(ctx: Ctx, r: Result) -> None:
    """Issue item 3: the ingest's state disk (a 64 MiB tmpfs, quarantine bound 8 MiB per
    source and day, as a small central disk would be configured) under a flood of 200 kB
    garbage payloads from one gateway. Quarantine must stay within its bound so the disk
    never fills, and the ingest must never report healthy while stalled."""
    state = ctx.work / f"{r.name}.ingest-state"  # beside the deployment, which it wipes
    if state.exists():
        shutil.rmtree(state, ignore_errors=True)
    undo = _tmpfs(state, "64m")
    if undo is None:
        r.notes.append("tmpfs mount refused: flood without a disk bound")
    try:
        with pipeline(ctx, r.name, (HONEST,), extra_gws=(EVIL,),
                      state_dir=str(state), disk={"min_free_bytes": 4 * MB},
                      quarantine={"max_bytes_per_source_day": 8 * MB}) as d:
            d.start_gateway(HONEST)
            c = evil_client(d)
            rng = random.Random(3)
            sent = 0
            silent_stall = 0
            t0 = time.monotonic()
            dur = ctx.dur(40, 180)
            while time.monotonic() - t0 < dur:
                sent += c.publish(topic(d, EVIL), rng.randbytes(200_000), qos=1, wait=5)
                h = d.health() or {}
                lag = newest_lag(d, HONEST) or 0.0
                if h.get("ok") is True and lag > 60:
                    silent_stall += 1
            c.close()
            usage = shutil.disk_usage(state)
            r.extra["state_used_mb"] = round(usage.used / MB, 1)
            r.notes.append(f"{sent} x 200 kB garbage; state disk {usage.used / MB:.1f} of "
                           f"{usage.total / MB:.0f} MiB used")
            r.check("quarantine bounded: the state disk did not fill",
                    usage.free > 2 * MB)
            r.check("never healthy while stalled (health ok with data > 60 s old)",
                    silent_stall == 0)
            assert d.ingest is not None
            if not d.ingest.alive():
                r.notes.append(f"ingest exited with status {d.ingest.popen.returncode}")
                d.start_ingest()
            finish(r, d, [HONEST])
            rss_into(r, d)
    finally:
        if undo is not None:
            undo()


def s_oversize_flood(ctx: Ctx, r: Result) -> None:
    """Issue item 4: sixty 3.9 MB QoS 0 messages from one gateway; the other gateway's
    data must keep flowing and ingest memory stay bounded."""
    with pipeline(ctx, r.name, (HONEST,), extra_gws=(EVIL,)) as d:
        d.start_gateway(HONEST)
        time.sleep(5)
        c = evil_client(d)
        rng = random.Random(5)
        blob = rng.randbytes(3_900_000)
        lags: list[float] = []
        accepted = 0
        for i in range(60):
            accepted += c.publish(topic(d, EVIL), blob[:-8] + i.to_bytes(8, "big"), qos=0,
                                  wait=10)
            if i % 5 == 0:
                lag = newest_lag(d, HONEST)
                if lag is not None:
                    lags.append(lag)
        c.close()
        for _ in range(10):
            time.sleep(1)
            lag = newest_lag(d, HONEST)
            if lag is not None:
                lags.append(lag)
        r.recovery_s = max(lags) if lags else None
        r.notes.append(f"oversize messages taken by the broker: {accepted} of 60; honest "
                       f"gateway's worst data age {r.recovery_s or 0:.1f} s")
        r.check("the honest gateway's data never more than 10 s old",
                bool(lags) and max(lags) < 10.0)
        finish(r, d, [HONEST])
        rss_into(r, d)
        r.check("ingest peak RSS below 200 MiB", r.rss_ingest < 200 * MB)


def s_label_abuse(ctx: Ctx, r: Result) -> None:
    """Issue item 5: a gateway with a valid key writes under another site's name, and
    pushes new series without end; the other gateways must not notice."""
    with pipeline(ctx, r.name, (HONEST,), extra_gws=(EVIL,),
                  series={"max_new_per_gateway_day": 500}) as d:
        d.start_gateway(HONEST)
        t0 = time.time()
        c = evil_client(d)
        victim_site = d.gws[HONEST].site
        s = evil_sealer(d)
        for _ in range(5):
            c.publish(topic(d, EVIL), s.frame(10, site=victim_site).payload)
        for _ in range(int(ctx.dur(20, 101))):
            c.publish(topic(d, EVIL), s.frame(100, instrument="x{seq}-{i}").payload)
        c.close()
        time.sleep(5)
        finish(r, d, [HONEST])
        under_victim = influx_series(
            d.st.influx_url, d.st.influx_database,
            f"SELECT count(\"quality\") FROM \"reading\" WHERE \"gateway\" = '{EVIL}' AND "
            f"\"site\" = '{victim_site}'")
        n_victim = int(under_victim[0]["values"][0][1]) if under_victim else 0
        integ = integrity_points(d, EVIL, t0 - 5)
        r.notes.append(f"readings stored under the victim's site: {n_victim}; integrity "
                       f"findings for {EVIL}: {integ}")
        r.check("another site's name is refused or flagged",
                n_victim == 0 or any("site" in k for k in integ))
        series = influx_series(d.st.influx_url, d.st.influx_database,
                               f"SHOW SERIES FROM \"reading\" WHERE \"gateway\" = '{EVIL}'")
        n_series = sum(len(x.get("values", [])) for x in series)
        r.notes.append(f"series of {EVIL}: {n_series} (cap 500)")
        r.check("new series per gateway capped", n_series <= 500)
        rss_into(r, d)


def s_hj212_flood(ctx: Ctx, r: Result) -> None:
    """Issue item 7: 600 idle and half-sent connections to the HJ 212 listener; a real
    logger must still be heard and /healthz must answer."""
    from stationseal.hj212 import CP, Frame, make_flag

    port = free_port()
    with pipeline(ctx, r.name, (HONEST,),
                  hj212={"port": port, "idle_timeout_s": 30, "frame_timeout_s": 10,
                         "loggers": [{"mn": "MNCHAOS0001", "site": "legacy-1"}]}) as d:
        socks: list[socket.socket] = []
        refused = 0
        for i in range(600):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=2)
                if i % 2:
                    s.sendall(b"##0101QN=2024")  # half a frame, never finished
                socks.append(s)
            except OSError:
                refused += 1
        healthz = d.health() is not None
        r.check("/healthz answers during the flood", healthz)
        f = Frame(st="22", cn="2011", mn="MNCHAOS0001", qn="20240101000000001",
                  flag=make_flag(ack=True),
                  cp=CP.build(data_time=time.strftime("%Y%m%d%H%M%S", time.gmtime()),
                              pollutants={"a34004": {"Rtd": "12.5", "Flag": "N"}}))
        stored = False
        with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", port), timeout=5, source_address=("127.0.0.9", 0)) as s:
            s.sendall(f.encode())
            stored = wait_for(lambda: bool(influx_series(
                d.st.influx_url, d.st.influx_database,
                "SELECT count(\"quality\") FROM \"reading\" WHERE \"mn\" = 'MNCHAOS0001'")),
                20)
        r.check("a real logger's frame is stored during the flood", stored)
        r.notes.append(f"{len(socks)} flood connections opened, {refused} refused")
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()
        rss_into(r, d)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        p: int = s.getsockname()[1]
        return p


def _run(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          check=False)


def s_poisoned_export(ctx: Ctx, r: Result) -> None:
    """Issue item 8: signed frames whose data_dropped event carries first_seq = inf or a
    huge integer; offline tools must give a verdict, the live ingest a named finding."""
    from stationseal.export import line_for

    with pipeline(ctx, r.name, (HONEST,), extra_gws=(EVIL,)) as d:
        s = evil_sealer(d)
        payloads = [s.frame(3).payload]
        cases = ({"first_seq": "inf"}, {"last_seq": "2**80", "frames": "2**64-1"},
                 {"first_seq": "-2**64", "readings": "nan"})
        for case in cases:
            payloads.append(poisoned_drop_frame(s, case))
        export = d.work / "poisoned.jsonl"
        export.write_text("".join(line_for(topic(d, EVIL), p) + "\n" for p in payloads))
        reg = d.work / "registry.json"
        v = _run([PY, "-m", "stationseal.cli", "verify", str(export), "--registry", str(reg),
                  "--authority", str(reg) + ".authority.pub.pem"])
        r.check(f"`stationseal verify` gives a verdict (exit {v.returncode}, no traceback)",
                v.returncode in (0, 1) and "Traceback" not in v.stderr)
        imp = _run([PY, "-m", "stationseal.cli", "ingest", "import", str(export), "--config",
                    str(d.work / "central.yaml")])
        r.check(f"`stationseal ingest import` gives a verdict (exit {imp.returncode}, "
                "no traceback)", imp.returncode in (0, 1) and "Traceback" not in imp.stderr)
        t0 = time.time()
        c = evil_client(d)
        for p in payloads[1:]:
            c.publish(topic(d, EVIL), p)
        c.close()
        time.sleep(5)
        integ = integrity_points(d, EVIL, t0 - 1)
        r.notes.append(f"live findings: {integ}")
        r.check("the live ingest names the poisoned events (no internal_error)",
                bool(integ) and "internal_error" not in integ)
        r.extra["verify_stderr"] = v.stderr[-500:]
        r.extra["import_stderr"] = imp.stderr[-500:]
        rss_into(r, d)


def s_config_errors(ctx: Ctx, r: Result) -> None:
    """Issue item 9: a broken config is refused up front, exit 2, naming what is wrong."""
    import yaml

    with pipeline(ctx, r.name, (HONEST,)) as d:
        gw = d.start_gateway(HONEST)
        d.stop_agent(HONEST)
        assert gw.runtime is not None
        base = yaml.safe_load(gw.runtime.read_text())
        blocker = d.work / "a-file"
        blocker.write_text("x")
        cases: list[tuple[str, str, Callable[[dict[str, Any]], None]]] = [
            ("agent: missing tls.ca", "missing-ca.pem",
             lambda c: c["uplink"]["tls"].update(ca=str(d.work / "missing-ca.pem"))),
            ("agent: missing password_file", "missing-password",
             lambda c: c["uplink"].update(password_file=str(d.work / "missing-password"))),
            ("agent: unwritable outbox directory", "a-file",
             lambda c: c["outbox"].update(path=str(blocker / "outbox.sqlite"))),
            ("agent: missing key_file", "missing.key",
             lambda c: c.update(key_file=str(d.work / "missing.key"))),
        ]
        for what, needle, mutate in cases:
            cfg = json.loads(json.dumps(base))
            mutate(cfg)
            p = d.work / f"bad-{needle}.yaml"
            p.write_text(yaml.safe_dump(cfg))
            for cmd in ("check-config", "run"):
                res = _run([PY, "-m", "stationseal.cli", "agent", cmd, "--config", str(p)], 30)
                out = res.stdout + res.stderr
                r.check(f"{what}: `agent {cmd}` exit {res.returncode} (want 2), names "
                        f"{needle}", res.returncode == 2 and needle in out
                        and "Traceback" not in out)
        central = yaml.safe_load((d.work / "central.yaml").read_text())
        icases: list[tuple[str, str, Callable[[dict[str, Any]], None]]] = [
            ("ingest: missing tls.ca_file", "missing-ca.pem",
             lambda c: c["mqtt"]["tls"].update(ca_file=str(d.work / "missing-ca.pem"))),
            ("ingest: unwritable state_dir", "a-file",
             lambda c: c.update(state_dir=str(blocker / "state"))),
            ("ingest: bad SM4 key", "sm4",
             lambda c: c.update(hj212={"port": 0, "loggers": [
                 {"mn": "MN1", "site": "s", "sm4_key": "zz"}]})),
        ]
        for what, needle, mutate in icases:
            cfg = json.loads(json.dumps(central))
            mutate(cfg)
            p = d.work / f"bad-central-{needle}.yaml"
            p.write_text(yaml.safe_dump(cfg))
            res = _run([PY, "-m", "stationseal.cli", "ingest", "check-config", "--config",
                        str(p)], 30)
            out = res.stdout + res.stderr
            r.check(f"{what}: `ingest check-config` exit {res.returncode} (want 2), names "
                    f"{needle}", res.returncode == 2 and needle.lower() in out.lower()
                    and "Traceback" not in out)


def s_future_frames(ctx: Ctx, r: Result) -> None:
    """Issue item 10: frames dated 40 days ahead, detection off."""
    with pipeline(ctx, r.name, (HONEST,), extra_gws=(EVIL,)) as d:
        t0 = time.time()
        s = evil_sealer(d)
        c = evil_client(d)
        for _ in range(5):
            c.publish(topic(d, EVIL), s.frame(5, created=time.time() + 40 * 86400).payload)
        c.close()
        time.sleep(5)
        integ = integrity_points(d, EVIL, t0 - 1)
        r.notes.append(f"integrity findings: {integ}")
        r.check("frames dated 40 days ahead produce an integrity finding", bool(integ))
        rss_into(r, d)


def s_soak(ctx: Ctx, r: Result) -> None:
    """8-hour-equivalent soak: the hostile mix of :func:`hostile_payloads` at 60 messages
    a minute for 8 hours (28,800 messages) delivered accelerated, while an honest agent
    writes; ingest and agent RSS sampled every minute (every 5 s in the short version)."""
    total = 28_800 if ctx.full else 1_200
    dur = ctx.dur(60, 1200)
    rate = total / dur
    with pipeline(ctx, r.name, (HONEST,), extra_gws=(EVIL,)) as d:
        d.rss.interval = 60.0 if ctx.full else 5.0
        d.start_gateway(HONEST)
        c = evil_client(d)
        rng = random.Random(11)
        gen = hostile_payloads(evil_sealer(d), HONEST, rng)
        kinds: dict[str, int] = {}
        t0 = time.monotonic()
        sent = 0
        while sent < total and time.monotonic() - t0 < dur * 1.5:
            kind, payload = next(gen)
            if c.disconnected.is_set():
                c = evil_client(d)
            if c.publish(topic(d, EVIL), payload, qos=1, wait=10):
                sent += 1
                kinds[kind] = kinds.get(kind, 0) + 1
            lag = (t0 + sent / rate) - time.monotonic()
            if lag > 0:
                time.sleep(lag)
        c.close()
        elapsed = time.monotonic() - t0
        d.rss.sample()
        r.extra["hostile_mix"] = kinds
        r.extra["rss_series_mb"] = {k: [(round(t), round(v / MB, 1)) for t, v in s]
                                    for k, s in d.rss.series.items()}
        for role in ("ingest", f"agent:{HONEST}"):
            ok, text = flat_memory(d.rss.series.get(role, []), elapsed)
            r.notes.append(f"{role}: {text}")
            r.check(f"{role} memory flat", ok)
        r.notes.append(f"{sent} hostile messages in {elapsed / 60:.1f} min "
                       f"({sent / 28_800 * 8:.2f} h at 60/min)")
        assert d.ingest is not None
        r.check("ingest survived the soak", d.ingest.alive())
        finish(r, d, [HONEST])
        rss_into(r, d)


@dataclass(frozen=True)
class Scenario:
    name: str
    fault: str
    fn: Callable[[Ctx, Result], None]
    slow: bool = False
    """Too long for CI even in its short version."""


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("baseline", "none: steady load, the reference row", s_baseline),
    Scenario("i1-session-takeover", "gateway login reuses ingest's client id, clean start",
             s_session_takeover),
    Scenario("i2-cbor-utf8-leak", "bad-UTF-8 CBOR payloads, 20/s", s_cbor_leak),
    Scenario("i3-state-disk-full", "quarantine flood on a 24 MiB ingest state disk",
             s_state_disk_full),
    Scenario("i4-oversize-flood", "sixty 3.9 MB QoS 0 messages from one gateway",
             s_oversize_flood),
    Scenario("i5-label-abuse", "another site's name; unbounded new series",
             s_label_abuse),
    Scenario("i6-broker-crash-ingest-away", "ingest away, kill -9 broker in autosave window",
             s_broker_crash_ingest_away),
    Scenario("i7-hj212-flood", "600 idle / half-sent HJ 212 connections", s_hj212_flood),
    Scenario("i8-poisoned-export", "signed data_dropped with inf / 2^80", s_poisoned_export),
    Scenario("i9-config-errors", "missing CA, password, key; unwritable dirs; bad SM4",
             s_config_errors),
    Scenario("i10-future-frames", "frames dated 40 days ahead, detection off",
             s_future_frames),
    Scenario("broker-restart", "clean broker restart", s_broker_restart),
    Scenario("broker-crash", "kill -9 broker, ingest running", s_broker_crash),
    Scenario("partition", "gateway link black-holed (10 min full)", s_partition, slow=True),
    Scenario("agent-kill9", "agent kill -9 while writing (x20 full)", s_agent_kill9),
    Scenario("ingest-kill9", "ingest kill -9 in flight", s_ingest_kill9),
    Scenario("influx-down", "InfluxDB down under load (5 min full)", s_influx_down),
    Scenario("gateway-disk-full", "agent state dir on a 2 MiB tmpfs, link down",
             s_gateway_disk_full, slow=True),
    Scenario("clock-steps", "wall clock +30 min, back, -30 min, back", s_clock_steps),
    Scenario("modbus-slow", "Modbus slave silent (timeouts)", s_modbus_slow),
    Scenario("modbus-garbage", "Modbus slave answers garbage", s_modbus_garbage),
    Scenario("soak", "8 h-equivalent hostile mix, RSS per minute", s_soak, slow=True),
)


def run(sc: Scenario, ctx: Ctx) -> Result:
    r = Result(sc.name, sc.fault)
    t0 = time.monotonic()
    log(f"{sc.name}: start ({'full' if ctx.full else 'short'})")
    try:
        sc.fn(ctx, r)
    except Exception as e:  # the table reports it; the next scenario still runs
        r.error = f"{type(e).__name__}: {e}"
        r.extra["traceback"] = traceback.format_exc()[-3000:]
    finally:
        from tests.chaos.harness import close_all

        close_all()
    r.seconds = time.monotonic() - t0
    log(f"{sc.name}: {'PASS' if r.passed else 'FAIL'} in {r.seconds:.0f} s")
    return r


def by_name(names: list[str]) -> list[Scenario]:
    known = {s.name: s for s in SCENARIOS}
    bad = [n for n in names if n not in known]
    if bad:
        raise KeyError(f"unknown scenario(s) {', '.join(bad)}; known: {', '.join(known)}")
    return [known[n] for n in names]


