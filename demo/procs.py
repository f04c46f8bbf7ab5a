"""Child processes of the demo (agents, ingest): started in their own session, stopped in
an order the demo chooses, recorded so a demo that was killed outright can be cleaned up
by the next one.

Own session: Ctrl-C in the terminal reaches only the demo, which then stops the agents
first (so they flush their last frames) and ingest after them, instead of every process
receiving SIGINT at once. The price is that a SIGKILLed demo leaves its children running;
``DIR/run/children.json`` lists them with their command lines, and :func:`reap_leftovers`
stops exactly those (a recycled pid with another command line is left alone).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]
    terminated: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


class Children:
    """The demo's child processes, in start order."""

    def __init__(self, run_dir: Path, log_dir: Path) -> None:
        self.run_dir = run_dir
        self.log_dir = log_dir
        self.children: list[Child] = []
        run_dir.mkdir(parents=True, exist_ok=True)
        log_dir.mkdir(parents=True, exist_ok=True)

    @property
    def record(self) -> Path:
        return self.run_dir / "children.json"

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        log_path = self.log_dir / f"{name}.log"
        log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, **(env or {})})
        child = Child(name, argv, proc, log_path, log)
        self.children.append(child)
        self._save()
        return child

    def terminate(self, child: Child) -> None:
        """Ask the child to stop (SIGTERM, once: a second one could hit it after its own
        handler is gone and kill it in the middle of its shutdown)."""
        if child.alive() and not child.terminated:
            child.terminated = True
            child.proc.send_signal(signal.SIGTERM)

    def wait(self, child: Child, timeout: float = 15.0) -> int | None:
        """Wait for a terminated child; SIGKILL after ``timeout``. Returns the exit status."""
        try:
            child.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait(5)
        if not child.log.closed:
            child.log.close()
        self._save()
        return child.proc.returncode

    def stop(self, child: Child, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit status."""
        self.terminate(child)
        return self.wait(child, timeout)

    def stop_all(self, timeout: float = 15.0) -> None:
        """Every child still running, newest first."""
        for child in reversed(self.children):
            self.stop(child, timeout)

    def _save(self) -> None:
        live = [{"name": c.name, "pid": c.pid, "argv": c.argv} for c in self.children
                if c.alive()]
        tmp = self.record.with_suffix(".tmp")
        tmp.write_text(json.dumps(live, indent=1), encoding="utf-8")
        os.replace(tmp, self.record)


def reap_leftovers(run_dir: Path, timeout: float = 10.0) -> list[str]:
    """Stop children a previous demo in this directory left running; their names."""
    record = run_dir / "children.json"
    try:
        items = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    stopped = []
    for it in items:
        pid, argv = int(it["pid"]), list(it["argv"])
        if _cmdline(pid) != argv:
            continue  # gone, or the pid now belongs to someone else
        os.kill(pid, signal.SIGTERM)
        end = time.monotonic() + timeout
        while _cmdline(pid) == argv and time.monotonic() < end:
            time.sleep(0.1)
        if _cmdline(pid) == argv:
            os.kill(pid, signal.SIGKILL)
        stopped.append(str(it["name"]))
    record.unlink(missing_ok=True)
    return stopped
