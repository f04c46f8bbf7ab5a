"""Real processes for the chaos scenarios, and the accounting that judges them.

A :class:`Deployment` is one central site and its gateways as a deployed system runs
them: Mosquitto and InfluxDB started by the project's stack manager (``stack/``), the
ingest as ``stationseal ingest run``, simulated instruments as ``stationseal sim site``
and each gateway as ``stationseal agent run`` against the runtime config the simulator
wrote. Every process is started in its own session and recorded, and
:meth:`Deployment.close` stops all of them (the stack last) whatever happened before, so
a failing scenario leaves nothing running.

The accounting never takes a component's word for what it did:

* **sealed**: the agent's own chain. Its outbox (``meta.seq``) says how many frames it
  sealed; every sequence number 1..seq exists exactly once (``fsync: batch``). What a frame
  held is read from wherever a copy of it survives: InfluxDB's ``frame`` points, the
  frames an independent MQTT recorder saw, or the outbox itself;
* **stored**: InfluxDB, queried (``frame`` points for sequence numbers, ``reading``
  points for readings);
* **covered**: the signed ``data_dropped`` events stored in InfluxDB (their ranges and
  reading counts), and signed ``readings_lost`` counts;
* **unexplained**: sealed sequence numbers neither stored, nor covered by a signed drop,
  nor still waiting in the outbox when the scenario ends;
* **duplicates**: reading points beyond what the stored frames hold, plus frames stored
  under a second history (``branch`` tag) for a sequence number the main history has.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from stack import manager as stack
from stationseal.keys import KeyRegistry, generate_keypair

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ROOT / "firmware-config" / "instruments"
PY = sys.executable

#: Every Deployment alive in this interpreter, so a signal handler can close them all.
LIVE: list[Deployment] = []


def log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def wait_for(pred: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    end = time.monotonic() + timeout
    while True:
        try:
            if pred():
                return True
        except (OSError, ValueError, KeyError):
            pass
        if time.monotonic() >= end:
            return False
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --------------------------------------------------------------------------- processes


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its descendants (by /proc ppid)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and its descendants (0 when gone)."""
    total = 0
    for p in tree_pids(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
        except (OSError, ValueError):
            continue
    return total


@dataclass
class Proc:
    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]
    env: dict[str, str] | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 20) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


class Procs:
    """Child processes of one deployment, each in its own session (so ``kill -9`` of a
    role reaches only it, and a Ctrl-C reaches only the runner)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.all: list[Proc] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None,
              stdout_pipe: bool = False) -> Proc:
        path = self.log_dir / f"{name}.log"
        fh = open(path, "ab")  # noqa: SIM115 - closed in stop()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE if stdout_pipe else fh,
                             stderr=fh, start_new_session=True, cwd=ROOT,
                             env={**os.environ, **(env or {})})
        proc = Proc(name, argv, p, path, fh, env)
        self.all.append(proc)
        return proc

    def restart(self, proc: Proc) -> Proc:
        self.stop(proc)
        return self.start(proc.name, proc.argv, proc.env)

    def kill9(self, proc: Proc) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.popen.wait(10)

    def stop(self, proc: Proc, timeout: float = 20.0) -> int | None:
        if proc.alive():
            with contextlib.suppress(ProcessLookupError):
                proc.popen.send_signal(signal.SIGTERM)
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.popen.wait(10)
        # whatever it left in its session (a simulator's helper, a forked worker)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.popen.stdout is not None:
            proc.popen.stdout.close()
        if not proc.log.closed:
            proc.log.close()
        return proc.popen.returncode

    def stop_all(self) -> None:
        for p in reversed(self.all):
            with contextlib.suppress(Exception):
                self.stop(p, timeout=10.0)


class RssSampler(threading.Thread):
    """Samples the resident memory of named processes every ``interval`` seconds."""

    def __init__(self, targets: Callable[[], dict[str, int]], interval: float = 1.0) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.targets = targets
        self.interval = interval
        self.peak: dict[str, int] = {}
        self.series: dict[str, list[tuple[float, int]]] = {}
        self._stop = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        now = time.monotonic() - self.t0
        for role, pid in self.targets().items():
            r = rss_bytes(pid)
            if r <= 0:
                continue
            self.peak[role] = max(self.peak.get(role, 0), r)
            self.series.setdefault(role, []).append((now, r))

    def stop(self) -> None:
        self._stop.set()
        self.join(5)


# --------------------------------------------------------------------------- relay


class Relay(threading.Thread):
    """A TCP relay between a gateway and the broker, to cut the link without touching
    either end. ``partition()`` makes it a black hole: connections stay open but no byte
    moves either way and new connections are accepted and then hear nothing, which is
    what a dead cellular link looks like to both sides (no RST, no FIN)."""

    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        super().__init__(daemon=True, name="relay")
        self.target = (host, target_port)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.port: int = self.sock.getsockname()[1]
        self.blackhole = threading.Event()
        self.closed = threading.Event()
        self.conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def partition(self) -> None:
        self.blackhole.set()

    def heal(self) -> None:
        """End the partition: connections held through it are reset, as a NAT or a
        carrier would have forgotten them; new ones flow."""
        with self._lock:
            conns, self.conns = self.conns, []
        for c in conns:
            with contextlib.suppress(OSError):
                c.close()
        self.blackhole.clear()

    def run(self) -> None:
        self.sock.settimeout(0.5)
        while not self.closed.is_set():
            try:
                a, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.blackhole.is_set():
                with self._lock:
                    self.conns.append(a)
                continue
            try:
                b = socket.create_connection(self.target, timeout=5)
            except OSError:
                a.close()
                continue
            with self._lock:
                self.conns += [a, b]
            for src, dst in ((a, b), (b, a)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(0.5)
        pending = b""
        try:
            while not self.closed.is_set():
                if self.blackhole.is_set():
                    time.sleep(0.1)
                    continue
                if pending:
                    dst.sendall(pending)
                    pending = b""
                try:
                    data = src.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                if self.blackhole.is_set():
                    pending = data  # swallowed by the dead link until it heals
                    continue
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()

    def close(self) -> None:
        self.closed.set()
        with contextlib.suppress(OSError):
            self.sock.close()
        self.heal()


# --------------------------------------------------------------------------- recorder


class Recorder:
    """An independent subscriber (ingest's account, its own persistent session) that keeps
    every frame payload the broker delivered: the content of frames that never reached
    InfluxDB, so their readings can be counted."""

    def __init__(self, info: stack.StackInfo, client_id: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.frames: dict[tuple[str, int], int] = {}  # (gateway, seq) -> readings
        self.payloads = 0
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                        protocol=mqtt.MQTTv5)
        # an account of the ingest role of its own: the broker ties sessions to accounts
        cred = stack.add_ingest_account(info.dir, client_id)
        c.tls_set_context(info.tls_context())
        c.username_pw_set(cred.username, cred.password())
        c.reconnect_delay_set(1, 2)
        topic = f"{info.topic_prefix}/+/frames"

        def on_connect(cl: Any, u: Any, flags: Any, rc: Any, props: Any = None) -> None:
            if not rc.is_failure:
                cl.subscribe(topic, qos=1)

        c.on_connect = on_connect
        c.on_subscribe = lambda *a: self.subscribed.set()
        c.on_message = self._on_message
        make: Any = Properties
        props = make(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 24 * 3600
        c.connect(info.mqtt_host, info.mqtt_port, clean_start=False, properties=props)
        c.loop_start()
        self.client = c
        if not self.subscribed.wait(15):
            raise RuntimeError("frame recorder: no subscription")

    def _on_message(self, c: Any, u: Any, msg: Any) -> None:
        from stationseal.frame import FrameError, decode

        try:
            f = decode(bytes(msg.payload))
        except (FrameError, ValueError, TypeError, OverflowError):
            return
        with self._lock:
            self.payloads += 1
            self.frames[(f.gateway_id, f.seq)] = len(f.readings)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
            self.client.loop_stop()


# --------------------------------------------------------------------------- influx


def influx_series(url: str, db: str, q: str) -> list[dict[str, Any]]:
    qs = urllib.parse.urlencode({"db": db, "q": q, "epoch": "ms"})
    with urllib.request.urlopen(f"{url}/query?{qs}", timeout=30) as r:
        doc = json.loads(r.read())
    res = doc["results"][0]
    if "error" in res:
        raise RuntimeError(f"InfluxDB: {q}: {res['error']}")
    return list(res.get("series", []))


@dataclass
class Account:
    """What happened to one gateway's chain (see the module docstring)."""

    gateway: str
    sealed_frames: int = 0
    sealed_readings: int = 0
    unknown_frames: int = 0
    """sealed frames whose content no surviving copy shows (counted lost, readings unknown)"""
    stored_frames: int = 0
    stored_readings: int = 0
    covered_frames: int = 0
    covered_readings: int = 0
    lost_unsealed_readings: int = 0
    """signed ``readings_lost`` counts (readings that never became a frame)"""
    pending_frames: int = 0
    unexplained_frames: int = 0
    unexplained_readings: int = 0
    duplicate_readings: int = 0
    duplicate_frames: int = 0
    missing: list[int] = field(default_factory=list)


def outbox_state(path: Path) -> tuple[int, dict[int, int]]:
    """(last sealed seq, {seq: readings} of frames still queued), read-only."""
    if not path.exists():
        return 0, {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        row = db.execute("SELECT seq FROM meta WHERE id = 1").fetchone()
        rows = db.execute("SELECT seq, readings FROM frames").fetchall()
    finally:
        db.close()
    return (int(row[0]) if row else 0), {int(s): int(n) for s, n in rows}


def outbox_oldest_age(path: Path) -> float:
    """Age in seconds of the oldest frame still queued (0 when the queue is empty)."""
    if not path.exists():
        return 0.0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        row = db.execute("SELECT min(created) FROM frames").fetchone()
    finally:
        db.close()
    return 0.0 if not row or row[0] is None else max(0.0, time.time() - float(row[0]))


def account(url: str, db: str, gateway: str, last_seq: int, queued: dict[int, int],
            recorded: dict[tuple[str, int], int]) -> Account:
    acc = Account(gateway)
    g = gateway.replace("'", "\\'")
    main: dict[int, int] = {}
    branch_seqs: dict[int, int] = {}
    for s in influx_series(url, db, f"SELECT \"seq\", \"readings\" FROM \"frame\" "
                           f"WHERE \"gateway\" = '{g}' GROUP BY \"branch\""):
        tags = s.get("tags") or {}
        target = branch_seqs if tags.get("branch") else main
        for _t, seq, n in s["values"]:
            if seq is None:
                continue
            if int(seq) in target and target is main:
                acc.duplicate_frames += 1
            target[int(seq)] = int(n or 0)
    for s in influx_series(url, db, f"SELECT count(\"quality\") FROM \"reading\" "
                           f"WHERE \"gateway\" = '{g}' GROUP BY \"branch\""):
        tags = s.get("tags") or {}
        n = int(s["values"][0][1])
        if tags.get("branch"):
            acc.duplicate_readings += n
        else:
            acc.stored_readings += n
    acc.duplicate_frames += sum(1 for seq in branch_seqs if seq in main)
    covered: dict[int, None] = {}
    for s in influx_series(url, db, f"SELECT \"detail\" FROM \"event\" WHERE \"gateway\" = "
                           f"'{g}' AND \"kind\" = 'data_dropped'"):
        for _t, detail in s["values"]:
            try:
                d = json.loads(detail)
                lo, hi = int(d["first_seq"]), int(d["last_seq"])
                acc.covered_readings += int(d.get("readings", 0))
            except (ValueError, KeyError, TypeError, OverflowError):
                continue
            for seq in range(max(lo, 1), min(hi, last_seq) + 1):
                covered[seq] = None
    for s in influx_series(url, db, f"SELECT \"detail\" FROM \"event\" WHERE \"gateway\" = "
                           f"'{g}' AND \"kind\" = 'readings_lost'"):
        for _t, detail in s["values"]:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                acc.lost_unsealed_readings += int(json.loads(detail)["readings"])
    acc.sealed_frames = last_seq
    acc.stored_frames = len(main)
    acc.covered_frames = len(covered)
    acc.pending_frames = len(queued)
    stored_frame_readings = 0
    for seq in range(1, last_seq + 1):
        n = main.get(seq)
        if n is not None:
            stored_frame_readings += n
        if n is None:
            n = queued.get(seq)
        if n is None:
            n = recorded.get((gateway, seq))
        if n is None and seq not in covered:
            acc.unknown_frames += 1
        acc.sealed_readings += n or 0
        if seq not in main and seq not in covered and seq not in queued:
            acc.unexplained_frames += 1
            acc.unexplained_readings += n or 0
            if len(acc.missing) < 20:
                acc.missing.append(seq)
    # readings stored beyond what the stored frames hold: written twice
    acc.duplicate_readings += max(0, acc.stored_readings - stored_frame_readings)
    return acc


# --------------------------------------------------------------------------- deployment


def site_yaml(gateway: str, site: str, *, poll_s: float, instruments: int,
              outbox_dir: Path, key_file: Path, info: stack.StackInfo, mqtt_port: int,
              extra_outbox: dict[str, Any] | None = None) -> dict[str, Any]:
    """A small monitoring site: ``instruments`` five-gas analyzers on Modbus TCP (one
    simulated server each), polled every ``poll_s``; the uplink is filled in later."""
    insts = [{"id": f"ana{n}", "profile": "five_gas",
              "transport": {"type": "modbus_tcp", "host": f"10.0.0.{10 + n}", "port": 502},
              "unit_id": 1, "poll_interval_s": poll_s, "timeout_s": 0.5,
              "backoff_initial_s": 0.5, "backoff_max_s": 2.0, "parameter_interval_s": 0}
             for n in range(1, instruments + 1)]
    return {"site": site, "gateway_id": gateway, "kind": "vehicle_inspection",
            "key_file": str(key_file), "profiles_dir": str(PROFILES),
            "uplink": {"type": "mqtt", "host": info.mqtt_host, "port": mqtt_port,
                       "tls": {"ca": str(info.ca_file)}, "username": gateway,
                       "password_file": str(info.gateway(gateway).password_file),
                       "keepalive_s": 10},
            "outbox": {"path": str(outbox_dir / "outbox.sqlite"), "batch_max_ms": 500,
                       **(extra_outbox or {})},
            "instruments": insts}


@dataclass
class Gateway:
    id: str
    site: str
    key_file: Path
    dir: Path
    outbox_dir: Path
    sim: Proc | None = None
    agent: Proc | None = None
    runtime: Path | None = None
    relay: Relay | None = None
    agent_env: dict[str, str] = field(default_factory=dict)
    agent_prefix: list[str] = field(default_factory=list)

    @property
    def outbox(self) -> Path:
        return self.outbox_dir / "outbox.sqlite"


class Deployment:
    """One stack, one ingest, any number of gateways with simulated instruments."""

    def __init__(self, work: Path, name: str, gateways: Iterable[str] = ("gw-chaos-1",),
                 ingest_over: dict[str, Any] | None = None) -> None:
        self.work = (work / name).resolve()
        self.name = name
        if self.work.exists():
            import shutil

            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        self.procs = Procs(self.work / "logs")
        self.gateway_ids = list(gateways)
        self.info: stack.StackInfo | None = None
        self.ingest: Proc | None = None
        self.gws: dict[str, Gateway] = {}
        self.recorder: Recorder | None = None
        self.rss = RssSampler(self._rss_targets)
        self.ingest_over = ingest_over or {}
        self.registry = KeyRegistry()
        self.closed = False
        LIVE.append(self)

    # -- lifecycle --------------------------------------------------------------------
    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            self.rss.stop()
        if self.recorder is not None:
            self.recorder.close()
        for gw in self.gws.values():
            if gw.relay is not None:
                gw.relay.close()
        self.procs.stop_all()
        with contextlib.suppress(Exception):
            stack.down(self.work / "stack")
        if self in LIVE:
            LIVE.remove(self)

    def _rss_targets(self) -> dict[str, int]:
        out: dict[str, int] = {}
        if self.ingest is not None and self.ingest.alive():
            out["ingest"] = self.ingest.pid
        for gw in self.gws.values():
            if gw.agent is not None and gw.agent.alive():
                out[f"agent:{gw.id}"] = gw.agent.pid
        return out

    def peak_rss(self, role: str) -> int:
        return max((v for k, v in self.rss.peak.items() if k.startswith(role)), default=0)

    # -- stack, keys, ingest ----------------------------------------------------------
    def start_stack(self) -> stack.StackInfo:
        self.info = stack.up(self.work / "stack", self.gateway_ids)
        for gid in self.gateway_ids:
            site = f"site-{gid}"
            kf = generate_keypair(gid, self.work / "keys")
            self.registry.add(gid, kf.public_key.read_bytes(), valid_from=time.time() - 3600,
                              sites=[site])
            d = self.work / gid
            d.mkdir()
            self.gws[gid] = Gateway(gid, site, kf.private_key, d, d / "state")
        self.registry.save(self.work / "registry.json")
        self.rss.start()
        return self.info

    @property
    def st(self) -> stack.StackInfo:
        assert self.info is not None, "start_stack() first"
        return self.info

    def ingest_config(self) -> Path:
        from ingest.config import config_from_stack, dump_config

        over = {"influx": {"flush_interval_ms": 100, "max_backoff_s": 2.0, "timeout_s": 3.0},
                "chain": {"gap_grace_s": 5.0}}
        for k, v in self.ingest_over.items():
            over[k] = {**over.get(k, {}), **v} if isinstance(v, dict) else v
        cfg = config_from_stack(self.st, self.work / "registry.json",
                                self.ingest_over.get("state_dir", self.work / "ingest-state"),
                                **{k: v for k, v in over.items() if k != "state_dir"})
        path = self.work / "central.yaml"
        path.write_text(yaml.safe_dump(dump_config(cfg), sort_keys=False))
        return path

    def start_ingest(self, wait: bool = True) -> Proc:
        cfg = self.ingest_config()
        argv = [PY, "-m", "stationseal.cli", "ingest", "run", "--config", str(cfg)]
        if self.ingest is not None and not self.ingest.alive():
            self.procs.stop(self.ingest)
        self.ingest = self.procs.start("ingest", argv)
        if wait and not wait_for(lambda: (self.health() or {}).get("ok") is True, 40):
            raise RuntimeError(f"ingest not healthy:\n{self.ingest.tail()}")
        return self.ingest

    def state_dir(self) -> Path:
        return Path(self.ingest_over.get("state_dir", self.work / "ingest-state"))

    def health(self) -> dict[str, Any] | None:
        from ingest.metrics import fetch

        try:
            port = json.loads((self.state_dir() / "run" / "worker-0.json").read_text()
                              )["metrics_port"]
            _, text = fetch(f"http://127.0.0.1:{port}/healthz", timeout=2)
            return dict(json.loads(text))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def start_recorder(self) -> None:
        self.recorder = Recorder(self.st, "ingest-chaos-recorder")

    # -- gateways ---------------------------------------------------------------------
    def start_gateway(self, gid: str, *, poll_s: float = 0.2, instruments: int = 2,
                      faults: dict[str, str] | None = None, relay: bool = False,
                      outbox: dict[str, Any] | None = None,
                      outbox_dir: Path | None = None,
                      agent_env: dict[str, str] | None = None,
                      agent_prefix: list[str] | None = None) -> Gateway:
        gw = self.gws[gid]
        if outbox_dir is not None:
            gw.outbox_dir = outbox_dir
        gw.outbox_dir.mkdir(parents=True, exist_ok=True)
        port = self.st.mqtt_port
        if relay:
            gw.relay = Relay(self.st.mqtt_port)
            gw.relay.start()
            port = gw.relay.port
        src = gw.dir / "site.yaml"
        src.write_text(yaml.safe_dump(site_yaml(
            gid, gw.site, poll_s=poll_s, instruments=instruments, outbox_dir=gw.outbox_dir,
            key_file=gw.key_file, info=self.st, mqtt_port=port, extra_outbox=outbox)))
        gw.runtime = gw.dir / "runtime.yaml"
        argv = [PY, "-m", "stationseal.cli", "sim", "site", "--config", str(src),
                "--out", str(gw.runtime), "--state-dir", str(gw.outbox_dir),
                "--key-file", str(gw.key_file)]
        for inst, spec in (faults or {}).items():
            argv += ["--fault", inst, spec]
        gw.sim = self.procs.start(f"sim-{gid}", argv, stdout_pipe=True)
        assert gw.sim.popen.stdout is not None
        line = gw.sim.popen.stdout.readline()
        if not line:
            raise RuntimeError(f"simulator for {gid} did not start:\n{gw.sim.tail()}")
        gw.agent_env = agent_env or {}
        gw.agent_prefix = agent_prefix or []
        self.start_agent(gid)
        return gw

    def start_agent(self, gid: str) -> Proc:
        gw = self.gws[gid]
        assert gw.runtime is not None
        argv = [*(gw.agent_prefix or [PY, "-m", "stationseal.cli"]), "agent", "run",
                "--config", str(gw.runtime)]
        gw.agent = self.procs.start(f"agent-{gid}", argv, env=gw.agent_env)
        return gw.agent

    def stop_agent(self, gid: str) -> int | None:
        gw = self.gws[gid]
        return None if gw.agent is None else self.procs.stop(gw.agent, timeout=30)

    # -- measurements -----------------------------------------------------------------
    def stored_since(self, gid: str, t_wall: float) -> int:
        """Frames of ``gid`` stored with a creation time at or after ``t_wall``."""
        s = influx_series(self.st.influx_url, self.st.influx_database,
                          f"SELECT count(\"seq\") FROM \"frame\" WHERE \"gateway\" = '{gid}' "
                          f"AND time >= {int(t_wall * 1e3)}ms")
        return int(s[0]["values"][0][1]) if s else 0

    def recovery_time(self, gid: str, t_wall: float, timeout: float = 300.0) -> float | None:
        """Seconds from ``t_wall`` (the end of a fault) until a frame sealed after it is
        in InfluxDB: how long the pipeline took to carry fresh data again."""
        if not wait_for(lambda: self.stored_since(gid, t_wall) > 0, timeout, 0.25):
            return None
        return time.time() - t_wall

    def settle(self, gids: Iterable[str] | None = None, timeout: float = 180.0) -> None:
        """Wait (bounded) until each running agent's outbox holds no more than its live
        frames, stop the agents cleanly (they seal what they hold and send it), then wait
        until InfluxDB holds every sealed frame not covered by a signed drop or still
        queued at the gateway, or ``timeout``."""
        gids = list(gids or self.gws)

        # No backlog: nothing older than a few seconds waits in the outbox (the last
        # frames are always in flight until the ingest's acknowledgement comes back).
        def drained() -> bool:
            return all(outbox_oldest_age(self.gws[g].outbox) < 5.0 for g in gids
                       if self.gws[g].agent is not None and self.gws[g].agent.alive())
        wait_for(drained, timeout, 0.2)
        for gid in gids:
            gw = self.gws[gid]
            if gw.agent is not None and gw.agent.alive():
                self.stop_agent(gid)
        # The agents are gone: their last frames are in the broker or their outboxes.
        # Wait until nothing is unexplained, or until the stored count has not moved for
        # ``stall_s`` (a real loss does not heal by waiting), or ``timeout``.
        stall_s = 30.0
        last: list[Any] = [None, time.monotonic()]

        def done() -> bool:
            accs = [self.account(g) for g in gids]
            if all(a.unexplained_frames == 0 for a in accs):
                return True
            stored = sum(a.stored_frames for a in accs)
            if stored != last[0]:
                last[:] = [stored, time.monotonic()]
            return time.monotonic() - last[1] > stall_s
        wait_for(done, timeout, 1.0)

    def account(self, gid: str) -> Account:
        gw = self.gws[gid]
        last, queued = outbox_state(gw.outbox)
        rec = dict(self.recorder.frames) if self.recorder is not None else {}
        return account(self.st.influx_url, self.st.influx_database, gid, last, queued, rec)


def close_all() -> None:
    for d in list(LIVE):
        with contextlib.suppress(Exception):
            d.close()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]
