"""`python -m demo`: the demo station, end to end, on this machine.

Order of events (each step waits until the previous one is really up):

1. a fresh local stack (Mosquitto + InfluxDB) under ``OUT/.stack``;
2. a key pair per gateway and the key registry ``OUT/registry.json``;
3. the frame recorder (persistent MQTT session) and the ingest service (subprocess),
   with detection on for the demo sites;
4. the simulated instruments of both sites and one agent per site (subprocesses, the
   real ``stationseal agent run``);
5. the lane and stack drivers start their scenario, and the stack site's (tampering)
   HJ 212 data logger starts reporting to its gateway; the run lasts ``--seconds``;
6. the lanes start no test they cannot finish by the end; then the logger stops, then
   the agents (SIGTERM: they seal and send what they hold); the demo waits, bounded,
   until InfluxDB holds every recorded reading, then stops ingest, the simulators and
   the stack;
7. as a third party would, it verifies frames.jsonl, derives the records (with the lane
   controller's test context) and runs ``stationseal detect`` over them
   (``OUT/alerts-offline.jsonl``), and writes ``OUT/summary.json``.

Ctrl-C or an error at any step runs the same teardown, so nothing is left running.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import sys
import time
import traceback
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from agent.status import status_path_for
from demo import plan
from demo.offline import export_receipts, reproduce
from demo.procs import Child, Children, reap_leftovers
from demo.recorder import Recorder
from demo.report import (
    count_frames,
    influx_readings,
    load_alerts,
    print_summary,
    quarantine_counts,
    write_summary,
)
from demo.simulators import SimThread
from sim import lane as lane_sim
from sim import stack_site
from sim.hj212_site import (
    DEMO_MN,
    LoggerRun,
    demo_labels,
    demo_tamper,
    driver_values_fn,
    start_logger,
)
from sim.sntp import SntpServer
from stack import manager as stack
from stationseal.keys import KeyRegistry, generate_keypair
from stationseal.registry import Authority

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ROOT / "firmware-config" / "instruments"
#: Files and directories the demo owns inside OUT (removed at the start of a run).
OWNED = ("frames.jsonl", "alerts.jsonl", "summary.json", "registry.json",
         "registry-authority.pub.pem", "receipts.jsonl", "records.jsonl",
         "alerts-offline.jsonl", ".stack", "keys", "config", "state", "logs", "run",
         "evidence")


def log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def wait_until(pred: Callable[[], bool], timeout: float, interval: float = 0.25) -> bool:
    end = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _stop_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


class Demo:
    def __init__(self, seconds: float, out: Path, vehicle_scenario: str,
                 stack_scenario: str | None, seconds_per_hour: float) -> None:
        self.seconds = seconds
        self.out = out.resolve()
        self.vehicle_scenario = vehicle_scenario
        self.stack_scenario = stack_scenario
        self.seconds_per_hour = seconds_per_hour
        self.children = Children(self.out / "run", self.out / "logs")
        self.sims: SimThread | None = None
        self.recorder: Recorder | None = None
        self.info: stack.StackInfo | None = None
        self.ingest: Child | None = None
        self.agents: dict[str, Child] = {}
        self.status_files: dict[str, Path] = {}
        self.problems: list[str] = []
        self.lanes: dict[str, lane_sim.LaneDriver] = {}
        self.stacks: dict[str, stack_site.StackSiteDriver] = {}
        self.t_go = 0.0
        self.t_stop = 0.0
        self.outbox_left: dict[str, Any] = {}
        self.stored: dict[str, int] = {}
        self.quarantine: dict[str, int] | None = None
        self.interrupted = False
        self.offline: dict[str, Any] | None = None
        self.hj212_port = 0
        self.ntp: SntpServer | None = None
        self.logger: LoggerRun | None = None
        self.logger_labels: list[dict[str, Any]] = []
        self.evidence: dict[str, Any] | None = None

    # -- paths ------------------------------------------------------------------------
    def p(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)

    # -- steps ------------------------------------------------------------------------
    def prepare(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        left = reap_leftovers(self.p("run"))
        if left:
            log(f"stopped processes a previous demo left running: {', '.join(left)}")
        if self.p(".stack", "stack.json").exists():
            stack.down(self.p(".stack"))
        for name in OWNED:
            target = self.p(name)
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        self.children = Children(self.p("run"), self.p("logs"))

    def start_stack(self) -> stack.StackInfo:
        log("starting the local stack (Mosquitto + InfluxDB) ...")
        self.info = stack.up(self.p(".stack"), [plan.STATION_GW, plan.CEMS_GW])
        log(f"stack up: MQTT TLS 127.0.0.1:{self.info.mqtt_port}, InfluxDB "
            f"{self.info.influx_url}")
        return self.info

    def site_docs(self, info: stack.StackInfo) -> dict[str, dict[str, Any]]:
        """Both sites' configs as their commissioning engineer writes them. The gateways
        measure their clocks against an SNTP server on loopback, as a deployed gateway
        does against the site's NTP servers."""
        self.ntp = SntpServer().start()
        self.hj212_port = free_port()
        state = self.p("state", "gateways")
        return {
            plan.STATION_GW: plan.station_site(info, self.p("keys", f"{plan.STATION_GW}.key"),
                                               PROFILES, state, self.ntp.address),
            plan.CEMS_GW: plan.cems_site(info, self.p("keys", f"{plan.CEMS_GW}.key"),
                                         PROFILES, state, self.hj212_port, self.ntp.address),
        }

    def make_keys(self, docs: dict[str, dict[str, Any]]) -> dict[str, Path]:
        """Gateway keys, and the signed registry binding each key to its gateway, its site
        and its instruments. The registry authority's key stays in ``keys/`` (in a
        deployment: offline); its public key is published beside the registry for
        third-party verification."""
        auth = Authority.generate(self.p("keys", "registry-authority.key"),
                                  self.p("registry-authority.pub.pem"))
        reg = KeyRegistry()
        keys: dict[str, Path] = {}
        for gw, doc in docs.items():
            kf = generate_keypair(gw, self.p("keys"))
            reg.add(gw, kf.public_key.read_bytes(), valid_from=time.time() - 60,
                    sites=[doc["site"]], instruments=plan.bound_instruments(doc),
                    backfill_s=86400)
            keys[gw] = kf.private_key
        reg.save(self.p("registry.json"), auth)
        # The central service's own key: signs the receipt log's checkpoints and the
        # evidence packages' manifests.
        generate_keypair("central", self.p("keys"))
        return keys

    def start_ingest(self, info: stack.StackInfo) -> None:
        sites = plan.write_yaml(self.p("config", "SITES.yaml"), plan.sites_yaml())
        params = plan.write_yaml(
            self.p("config", "PARAMS.yaml"), plan.detector_params(self.seconds),
            "# Demo-only detector windows: the plant runs on a compressed clock but the\n"
            "# gateway stamps readings in real time (see demo/plan.py).")
        central = plan.write_yaml(self.p("config", "central.yaml"), plan.central_config(
            info, registry=self.p("registry.json"),
            authority=self.p("registry-authority.pub.pem"), state=self.p("state", "ingest"),
            alerts=self.p("alerts.jsonl"), sites=sites, params=params,
            central_key=self.p("keys", "central.key"), archive=self.p("state", "archive")))
        self.ingest = self.children.start(
            "ingest", [sys.executable, "-m", "stationseal.cli", "ingest", "run",
                       "--config", str(central), "--log-level", "info"])
        log(f"ingest started (pid {self.ingest.pid}); waiting until it is connected ...")
        info_file = self.p("state", "ingest", "run", "worker-0.json")

        def healthy() -> bool:
            if self.ingest is None or not self.ingest.alive():
                return True  # stop waiting; reported below
            try:
                port = json.loads(info_file.read_text())["metrics_port"]
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz",
                                            timeout=2) as r:
                    return bool(r.status == 200)
            except (OSError, ValueError, KeyError):
                return False

        if not wait_until(healthy, 40.0) or not self.ingest.alive():
            self.problems.append("ingest did not become healthy: " +
                                 self.ingest.tail(8).replace("\n", " | "))
            log("WARNING: ingest is not healthy; the run continues without storage")

    def start_sites(self, info: stack.StackInfo, keys: dict[str, Path],
                    docs: dict[str, dict[str, Any]], scenario: plan.Scenario) -> None:
        self.sims = SimThread()
        far = time.time() + 10 * 86400  # placeholders: idle lanes until the run starts
        self.lanes.update({ln: lane_sim.LaneDriver(cfg, far)
                           for ln, cfg in scenario.lanes.items()})
        self.stacks[plan.CEMS_INSTRUMENT] = stack_site.StackSiteDriver(
            plan.CEMS, time.time(), seconds_per_hour=self.seconds_per_hour,
            instrument=plan.CEMS_INSTRUMENT)
        state = self.p("state", "gateways")
        for name, gw, factory in (
                ("station", plan.STATION_GW, lane_sim.values_factory(self.lanes)),
                ("cems", plan.CEMS_GW, stack_site.values_factory(self.stacks))):
            cfg = plan.write_yaml(self.p("config", f"{name}.yaml"), docs[gw])
            runtime = self.p("config", f"{name}.runtime.yaml")
            sim = self.sims.start_site(cfg, runtime, factory, state, keys[gw])
            self.status_files[gw] = status_path_for(sim.site.outbox.path)
            self.agents[gw] = self.children.start(
                f"agent-{name}", [sys.executable, "-m", "stationseal.cli", "agent", "run",
                                  "--config", str(runtime)])
            log(f"{name}: {len(sim.endpoints)} simulated instruments, agent {gw} started "
                f"(pid {self.agents[gw].pid})")

        def connected() -> bool:
            for gw, child in self.agents.items():
                if not child.alive():
                    return True
                st = self._status(gw)
                if st is None or st.get("uplink", {}).get("state") != "connected":
                    return False
            return True

        if not wait_until(connected, 40.0):
            self.problems.append("an agent did not connect to the broker within 40 s")
        for gw, child in self.agents.items():
            if not child.alive():
                self.problems.append(f"agent {gw} exited early: " +
                                     child.tail(8).replace("\n", " | "))

    def _status(self, gw: str) -> dict[str, Any] | None:
        try:
            doc: dict[str, Any] = json.loads(self.status_files[gw].read_text())
            return doc
        except (OSError, ValueError, KeyError):
            return None

    def go(self, scenario: plan.Scenario) -> None:
        """Start the scenario clocks now that the gateways are polling."""
        self.t_go = time.time()
        for ln, cfg in scenario.lanes.items():
            self.lanes[ln] = lane_sim.LaneDriver(cfg, self.t_go,
                                                 close_at=self.t_go + self.seconds)
        self.stacks[plan.CEMS_INSTRUMENT] = stack_site.StackSiteDriver(
            plan.CEMS, self.t_go, seconds_per_hour=self.seconds_per_hour,
            instrument=plan.CEMS_INSTRUMENT, injections=scenario.stack)
        # The site's data logger reports the same stack to the gateway, tampered (E3).
        tamper = demo_tamper()
        assert self.sims is not None
        self.logger = self.sims.call(start_logger(
            self.hj212_port, driver_values_fn(lambda: self.stacks[plan.CEMS_INSTRUMENT]),
            mn=DEMO_MN, tamper=tamper, rtd_interval=2.0, minute_period=60.0,
            hour_period=None))
        self.logger_labels = demo_labels(plan.CEMS, self.t_go, tamper)
        log(f"scenario running for {self.seconds:.0f} s: lanes {', '.join(self.lanes)} "
            f"({scenario.vehicle_text}); stack ({scenario.stack_text}), one simulated hour "
            f"per {self.seconds_per_hour:g} s")

    def run_for(self) -> None:
        end = self.t_go + self.seconds
        shown: set[str] = set()
        next_report = time.time() + 10
        while time.time() < end:
            time.sleep(min(1.0, max(0.0, end - time.time())))
            for a in load_alerts(self.p("alerts.jsonl")):
                if a.get("id") not in shown:
                    shown.add(str(a.get("id")))
                    log(f"ALERT {a.get('rule')} {a.get('site')}: {a.get('summary_en')}")
            if time.time() >= next_report:
                next_report += 10
                n = self.recorder.frames if self.recorder else 0
                log(f"{time.time() - self.t_go:.0f} s: {n} frames recorded, "
                    f"{len(shown)} alerts")
            for gw, child in self.agents.items():
                if not child.alive() and f"agent {gw} died" not in " ".join(self.problems):
                    self.problems.append(f"agent {gw} died during the run: " +
                                         child.tail(8).replace("\n", " | "))
        self.t_stop = time.time()
        # The lanes started no test they could not finish (close_at); stop them for good
        # and give the gateways a moment to read the last state before they stop.
        for driver in self.lanes.values():
            driver.stop(self.t_stop)
        time.sleep(3.0)

    def stop_logger(self) -> None:
        """First, so the gateway seals and answers everything the logger sent."""
        if self.logger is not None and self.sims is not None:
            self.sims.call(self.logger.stop())
        self.logger = None

    def stop_agents(self) -> None:
        self.stop_logger()
        for child in self.agents.values():
            self.children.terminate(child)
        for gw, child in self.agents.items():
            rc = self.children.wait(child, timeout=20.0)
            st = self._status(gw) or {}
            ob = st.get("outbox", {})
            self.outbox_left[gw] = ob.get("frames")
            if rc not in (0, None):
                self.problems.append(f"agent {gw} exited with status {rc}")
        log("agents stopped")

    def catch_up(self, timeout: float = 45.0) -> dict[str, int]:
        """Wait (bounded) until InfluxDB holds every reading the recorder saw."""
        assert self.info is not None
        wait_until(lambda: self.recorder is None or self.recorder.quiet_for() > 2.0, 15.0)
        signed = count_frames(self.p("frames.jsonl")).readings
        info = self.info
        stored: dict[str, int] = {}

        def done() -> bool:
            try:
                for gw in (plan.STATION_GW, plan.CEMS_GW):
                    stored[gw] = influx_readings(info.influx_url, info.influx_database, gw)
            except (OSError, RuntimeError):
                return False
            return all(stored.get(gw, 0) >= n for gw, n in signed.items())

        if self.ingest is not None and self.ingest.alive():
            log("waiting for ingest to store every recorded reading ...")
            if not wait_until(done, timeout, interval=1.0):
                self.problems.append(f"ingest had not stored every reading after {timeout:.0f} s")
        else:
            done()
        return stored

    def teardown(self) -> None:
        """Stop whatever is still running, agents first; safe to call twice."""
        self.stop_logger()
        for child in self.agents.values():
            if child.alive():
                self.children.stop(child, timeout=20.0)
        if self.recorder is not None:
            self.recorder.stop()
            self.recorder = None
        if self.ingest is not None and self.ingest.alive():
            self.children.stop(self.ingest, timeout=40.0)
        self.children.stop_all()
        if self.sims is not None:
            self.sims.close()
            self.sims = None
        if self.ntp is not None:
            self.ntp.stop()
            self.ntp = None
        if self.info is not None:
            if not self.stored:  # interrupted: still say what reached the database
                self.stored = self._final_counts({})
            try:
                stack.down(self.info.dir)
            except stack.StackError as e:
                self.problems.append(f"stack down: {e}")
            self.info = None

    # -- the whole run ---------------------------------------------------------------
    def run(self) -> int:
        gap = plan.GAP_WITH_CONTEXT if plan.lane_context_applied() else plan.GAP_INFERRED
        scenario = plan.make_scenario(self.vehicle_scenario, self.stack_scenario,
                                      self.seconds, gap_s=gap)
        self.prepare()
        try:
            info = self.start_stack()
            docs = self.site_docs(info)
            keys = self.make_keys(docs)
            self.recorder = Recorder(info, self.p("frames.jsonl"))
            self.recorder.start()
            self.start_ingest(info)
            self.start_sites(info, keys, docs, scenario)
            self.go(scenario)
            self.run_for()
            self.stop_agents()
            self.stored = self.catch_up()
            if self.recorder is not None:
                self.recorder.stop()
                self.recorder = None
            if self.ingest is not None:
                rc = self.children.stop(self.ingest, timeout=40.0)
                if rc not in (0, None):
                    self.problems.append(f"ingest exited with status {rc}")
            self.quarantine = quarantine_counts(self.p("state", "ingest", "ingest.db"))
            self.stored = self._final_counts(self.stored)
        except KeyboardInterrupt:
            self.interrupted = True
            log("interrupted: stopping everything ...")
        except Exception as e:  # reported in the summary after the teardown
            traceback.print_exc()
            self.problems.append(f"the demo failed: {type(e).__name__}: {e}")
            log("error: stopping everything ...")
        finally:
            # a second Ctrl-C must not cut the teardown short and leave processes behind
            previous = {s: signal.signal(s, signal.SIG_IGN)
                        for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                self.teardown()
            finally:
                for s, h in previous.items():
                    signal.signal(s, h)
        central = self.p("config", "central.yaml")
        if not self.interrupted and central.exists() and \
                export_receipts(self.out, central) != 0:
            self.problems.append("could not export the receipt log (receipts.jsonl)")
        if not self.interrupted and self.p("frames.jsonl").exists():
            log("reproducing the alerts offline from frames.jsonl (stationseal detect) ...")
            try:
                self.offline = reproduce(self.out, self.p("config", "SITES.yaml"),
                                         self.p("config", "PARAMS.yaml"))
                if self.offline["exit_status"] != 0:
                    self.problems.append("stationseal detect failed: "
                                         + self.offline["stderr"].replace("\n", " | "))
            except (OSError, ValueError) as e:
                self.problems.append(f"offline reproduction failed: {e}")
        if not self.interrupted and self.p("state", "ingest", "ingest.db").exists():
            log("building an evidence package for every alert (stationseal evidence build) ...")
            try:
                from demo.evidence_step import build_all

                self.evidence = build_all(self.out)
                for it in self.evidence["items"]:
                    if it.get("verdict") != "ACCEPTED":
                        self.problems.append(
                            f"evidence package of {it['alert_id']} not accepted: "
                            f"{it.get('error') or it.get('failures')}")
                log(f"evidence: {self.evidence['accepted']} of {self.evidence['packages']} "
                    f"packages accepted ({self.evidence['seconds']} s), in evidence/")
            except Exception as e:  # reported, never hides the rest of the summary
                self.problems.append(f"evidence packages failed: {type(e).__name__}: {e}")
        summary = self.summary(scenario)
        write_summary(self.p("summary.json"), summary)
        print_summary(summary, sys.stdout)
        return 0 if summary["ok"] else 1

    def _final_counts(self, stored: dict[str, int]) -> dict[str, int]:
        if self.info is None:
            return stored
        try:
            return {gw: influx_readings(self.info.influx_url, self.info.influx_database, gw)
                    for gw in (plan.STATION_GW, plan.CEMS_GW)}
        except (OSError, RuntimeError) as e:
            self.problems.append(f"could not count readings in InfluxDB: {e}")
            return stored

    def summary(self, scenario: plan.Scenario) -> dict[str, Any]:
        from demo.summary import build

        return build(self, scenario)
