"""The gateway agent: poll instruments, seal, store, forward. One asyncio loop.

Tasks on the event loop:

* one poll task per instrument, on its own interval (drift-free, missed slots skipped
  and counted, never queued up); whatever a poll returns goes to the sealer at once;
* the seal task: seals the pending batch when it is full or ``batch_max_ms`` old, checks
  the wall clock against the monotonic clock, runs the periodic fsync of
  ``fsync: interval``, and deletes delivered frames when no frame is being sealed;
* the status task: writes the status file and pings the systemd watchdog, but only
  while the seal task keeps making progress;
* (``clock.ntp_servers`` set) the SNTP task, which measures the clock's offset.

The uplink runs in its own thread (agent/uplink.py); the event loop thread alone touches
SQLite. Nothing the uplink does can block or stop polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.clock import ClockMonitor, measure, ntp_sync_state
from agent.dispatch import Dispatcher, Transport
from agent.instruments import Instrument
from agent.outbox import Outbox
from agent.sdnotify import Notifier
from agent.sealer import Sealer
from agent.signer import make_signer
from agent.siteplan import FileUplink, MqttUplink, OutboxConfig, SiteConfig, plain_site
from agent.status import STATUS_SCHEMA, InstrumentHealth, status_path_for, write_status
from agent.uplink import FileTransport, MqttTransport
from stationseal import __version__
from stationseal.export import frames_topic
from stationseal.records import Event, to_rfc3339
from stationseal.signing import Signer

log = logging.getLogger("stationseal.agent")

AGENT_VERSION = __version__


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    """Tuning the site config does not expose; defaults are what docs/agent.md describes."""

    #: Frames handed to the uplink and not yet acknowledged, at most.
    max_inflight: int = 16
    #: Slots of that window backlog frames may not take (kept for live frames).
    live_reserve: int = 2
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 300.0
    #: A connection whose oldest unacknowledged frame is older than this is torn down.
    ack_timeout_s: float = 60.0
    connect_timeout_s: float = 15.0
    status_interval_s: float = 5.0
    #: |wall delta - monotonic delta| above this between two checks is a clock jump.
    clock_jump_s: float = 0.5
    #: Delivered frames are deleted with the next sealed frame, or after this long.
    delete_after_s: float = 2.0
    #: What deletes a frame from the outbox (docs/acks.md): "ingest" (its end-to-end
    #: acknowledgement; site configs default to it) or "broker" (PUBACK "success").
    confirm: str = "broker"
    #: A frame the broker accepted and the ingest has not confirmed is sent again after
    #: this long (doubling per attempt), or sooner once a later frame is confirmed.
    confirm_timeout_s: float = 900.0
    #: A frame the broker had no subscriber for (PUBACK 0x10) is sent again after this
    #: long (doubling per attempt).
    unrouted_retry_s: float = 5.0


def _tls_context(up: MqttUplink) -> ssl.SSLContext | None:
    if up.tls is None:
        return None
    ctx = ssl.create_default_context(cafile=str(up.tls.ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if up.tls.cert is not None and up.tls.key is not None:
        ctx.load_cert_chain(str(up.tls.cert), str(up.tls.key))
    return ctx


class Agent:
    def __init__(
        self,
        *,
        gateway_id: str,
        site: str,
        signer: Signer,
        outbox: OutboxConfig,
        instruments: Sequence[Instrument],
        transport: Callable[[dict[str, Any]], Transport],
        config_hash: str = "",
        profiles: dict[str, str] | None = None,
        clock: ClockMonitor | None = None,
        options: RuntimeOptions = RuntimeOptions(),
        ntp_server: str | list[str] | None = None,
        ntp_max_offset_s: float = 1.0,
        ntp_interval_s: float = 600.0,
        status_path: Path | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.gateway_id = gateway_id
        self.site = site
        self.signer = signer
        self.outbox_cfg = outbox
        self.instruments = list(instruments)
        self.make_transport = transport
        self.config_hash = config_hash
        self.profiles = profiles or {}
        self.options = options
        self.clock = clock or ClockMonitor(options.clock_jump_s)
        self.ntp_servers = [ntp_server] if isinstance(ntp_server, str) else list(
            ntp_server or [])
        self.ntp_max_offset_s = ntp_max_offset_s
        self.ntp_interval_s = ntp_interval_s
        self.status_path = status_path or status_path_for(outbox.path)
        self.notifier = notifier or Notifier()
        self.health = {i.id: InstrumentHealth(i.id, i.config.poll_interval_s)
                       for i in self.instruments}
        self.started = time.time()
        self.outbox: Outbox | None = None
        self.sealer: Sealer | None = None
        self.dispatcher: Dispatcher | None = None
        self.transport: Transport | None = None
        self._seal_progress = time.monotonic()
        self._last_sealed = time.monotonic()
        self._stopped = False

    @classmethod
    def from_config(cls, cfg: SiteConfig | Any, *, output: str | None = None,
                    options: RuntimeOptions = RuntimeOptions(),
                    instruments: Sequence[Instrument] | None = None) -> Agent:
        """Build from a validated site config: its plain copy (agent/siteplan.py, what
        `agent run` gets from its checking process) or the pydantic model itself.
        ``output="file:PATH"`` replaces the configured uplink (air-gapped site, or a
        test)."""
        from agent.instruments import build_instruments

        cfg = plain_site(cfg)
        uplink: MqttUplink | FileUplink = cfg.uplink
        if output is not None:
            if not output.startswith("file:") or len(output) <= 5:
                raise ValueError(f"--output {output!r}: expected file:PATH")
            uplink = FileUplink(type="file", path=Path(output[5:]).resolve())
        signer = make_signer(cfg)
        gw = cfg.gateway_id
        if isinstance(uplink, MqttUplink):
            options = dataclasses.replace(options, confirm=uplink.confirm,
                                          confirm_timeout_s=uplink.confirm_timeout_s)

        def transport(birth: dict[str, Any]) -> Transport:
            if isinstance(uplink, FileUplink):
                return FileTransport(uplink.path, gateway_id=gw, topic=frames_topic(gw))
            password = None
            if uplink.password_file is not None:
                password = uplink.password_file.read_text(encoding="utf-8").strip()
            prefix = uplink.topic_prefix.rstrip("/")
            return MqttTransport(
                host=uplink.host, port=uplink.port, gateway_id=gw,
                frames_topic=f"{prefix}/{gw}/frames", status_topic=f"{prefix}/{gw}/status",
                birth=birth, tls=_tls_context(uplink),
                username=uplink.username if uplink.username is not None
                else (gw if password is not None else None),
                password=password, keepalive=uplink.keepalive_s,
                protocol=uplink.protocol,
                max_inflight=options.max_inflight,
                backoff_min_s=options.reconnect_min_s, backoff_max_s=options.reconnect_max_s,
                connect_timeout_s=options.connect_timeout_s,
                ack_timeout_s=options.ack_timeout_s,
                acks_topic=f"{prefix}/{gw}/acks" if uplink.confirm == "ingest" else None,
                session_expiry_s=uplink.session_expiry_s,
                checkpoint_path=Path(cfg.outbox.path).with_name("central-checkpoint.json"),
            )

        if isinstance(uplink, MqttUplink) and uplink.tls is None:
            log.warning("uplink to %s without TLS: frames are signed but readable "
                        "and the broker is not authenticated", uplink.host)
        clock_cfg = cfg.clock
        clock = ClockMonitor(
            options.clock_jump_s, clock_cfg.check_interval_s,
            sync_source=None if (not clock_cfg.ntp_check or clock_cfg.servers())
            else ntp_sync_state,
        )
        return cls(
            gateway_id=gw, site=cfg.site, signer=signer, outbox=cfg.outbox,
            instruments=instruments if instruments is not None else build_instruments(cfg),
            transport=transport, config_hash=cfg.config_hash,
            profiles={i.profile_name: cfg.profile(i).version for i in cfg.instruments},
            clock=clock, options=options,
            ntp_server=clock_cfg.servers() if clock_cfg.ntp_check else None,
            ntp_max_offset_s=clock_cfg.max_offset_s, ntp_interval_s=clock_cfg.check_interval_s,
        )

    # -- lifecycle -----------------------------------------------------------------
    def open(self) -> None:
        """Open the outbox and wire sealer, dispatcher and transport (no I/O to devices
        or the network yet). Separate from :meth:`run` so tests can inspect the parts."""
        oc = self.outbox_cfg
        self.outbox = Outbox(
            oc.path, gateway_id=self.gateway_id, max_bytes=oc.max_bytes,
            max_age_s=oc.max_age_s,
            sync={"batch": "full", "interval": "normal", "off": "off"}[oc.fsync],
            sync_interval_s=oc.fsync_interval_s,
        )
        o = self.options
        self.dispatcher = Dispatcher(self.outbox, max_inflight=o.max_inflight,
                                     live_reserve=o.live_reserve, confirm=o.confirm,
                                     confirm_timeout_s=o.confirm_timeout_s,
                                     retry_s=o.unrouted_retry_s)
        self.sealer = Sealer(
            self.signer, self.outbox, gateway_id=self.gateway_id, site=self.site,
            max_readings=oc.batch_max_readings, max_delay_s=oc.batch_max_ms / 1000,
            clock=self.clock, forwarder=self.dispatcher,
        )
        self.transport = self.make_transport(self.birth())
        self.dispatcher.attach(self.transport)
        self.sealer.boot(AGENT_VERSION, self.config_hash, profiles=self.profiles)
        for inst in self.instruments:
            # Push sources (the HJ 212 logger, agent/hj212_source.py) answer their peer
            # only once its data are sealed: they need to see the sealer.
            bind = getattr(inst, "bind_sealer", None)
            if bind is not None:
                bind(self.sealer)

    def birth(self) -> dict[str, Any]:
        """Retained on ``<prefix>/<gateway>/status`` while connected."""
        assert self.sealer is not None
        return {
            "gateway_id": self.gateway_id,
            "site": self.site,
            "agent_version": AGENT_VERSION,
            "config_hash": self.config_hash,
            "profiles": self.profiles,
            "key_id": self.signer.key_id,
            "alg": self.signer.alg,
            "boot_id": self.sealer.boot_id.hex(),
            "started": to_rfc3339(self.started),
        }

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until ``stop`` is set (or SIGTERM/SIGINT when ``stop`` is None)."""
        stop = stop or self._signal_stop()
        if self.outbox is None:
            self.open()
        assert self.transport is not None and self.dispatcher is not None
        self.transport.start(self.dispatcher)
        tasks = [asyncio.create_task(self._poll_loop(i), name=f"poll-{i.id}")
                 for i in self.instruments]
        tasks.append(asyncio.create_task(self._seal_loop(), name="seal"))
        tasks.append(asyncio.create_task(self._status_loop(), name="status"))
        if self.ntp_servers:
            tasks.append(asyncio.create_task(self._sntp_loop(), name="sntp"))
        self.notifier.ready(f"{len(self.instruments)} instruments")
        log.info("agent %s started: boot %s, seq %d, %d instruments, outbox %s",
                 self.gateway_id, self.sealer.boot_id.hex() if self.sealer else "-",
                 self.outbox.seq if self.outbox else 0, len(self.instruments),
                 self.outbox_cfg.path)
        try:
            waiter = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is not waiter and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
            waiter.cancel()
        finally:
            self.notifier.stopping()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._shutdown()

    def _signal_stop(self) -> asyncio.Event:
        ev = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, ev.set)
        return ev

    async def _shutdown(self) -> None:
        for inst in self.instruments:
            try:
                await asyncio.wait_for(inst.close(), 5)
            except Exception as e:  # closing must not stop the final flush
                log.warning("closing %s: %s", inst.id, e)
        assert self.sealer is not None and self.outbox is not None
        assert self.dispatcher is not None and self.transport is not None
        self.sealer.flush()
        if self.sealer.pending:
            log.error("%d item(s) could not be stored at shutdown: %s", self.sealer.pending,
                      self.sealer.storage_error)
        # Give frames already handed over a moment to be acknowledged (with end-to-end
        # confirmation, by the ingest: its acknowledgements follow its batch write, so a
        # clean stop does not leave the last frames to be sent again at the next start).
        confirm = self.options.confirm == "ingest"
        end = time.monotonic() + (6.0 if confirm else 2.0)
        while (self.dispatcher.inflight or (confirm and self.outbox.awaiting())) \
                and time.monotonic() < end:
            await asyncio.sleep(0.05)
        await asyncio.to_thread(self.transport.stop, 5.0)
        await asyncio.sleep(0)  # run acknowledgements the uplink thread scheduled last
        self._delete_delivered()
        self._stopped = True
        self._write_status()
        self.outbox.close()
        self.notifier.close()
        log.info("agent %s stopped at seq %d", self.gateway_id, self.outbox.seq)

    # -- tasks ---------------------------------------------------------------------
    async def _poll_loop(self, inst: Instrument) -> None:
        assert self.sealer is not None
        loop = asyncio.get_running_loop()
        interval = inst.config.poll_interval_s
        # Readers time out each request themselves; this only catches a poll that never
        # returns (a reader bug), which would otherwise silence the instrument unseen.
        hang_s = max(60.0, 10 * interval)
        st = self.health[inst.id]
        add = self.sealer.add
        last_error: str | None = None
        next_t = loop.time()
        while True:
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the task's
                # own cancellation when the poll completes at the same moment.
                async with asyncio.timeout(hang_s):
                    readings, events = await inst.poll()
                if last_error is not None:
                    events.append(Event(inst.id, "instrument_recovered", time.time(),
                                        {"last_error": last_error}))
                    last_error = None
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the protocol says poll never raises; a bug must not
                err = (f"poll did not return within {hang_s:g} s"  # stop this instrument,
                       if isinstance(e, TimeoutError)              # let alone the others
                       else f"{type(e).__name__}: {e}")
                readings = []
                events = [] if err == last_error else [
                    Event(inst.id, "instrument_fault", time.time(), {"error": err})]
                if err != last_error:
                    log.error("instrument %s: %s", inst.id, err)
                last_error = err
            st.observe(time.time(), readings, events)
            if readings or events:
                add(readings, events)
            next_t += interval
            now = loop.time()
            if next_t < now:
                st.overruns += 1
                if now - next_t > interval:
                    next_t = now  # skip missed slots instead of polling in a burst
            await asyncio.sleep(max(0.0, next_t - now))

    async def _seal_loop(self) -> None:
        sealer, outbox, disp = self.sealer, self.outbox, self.dispatcher
        assert sealer is not None and outbox is not None and disp is not None
        idle = min(1.0, sealer.max_delay_s)
        while True:
            self._seal_progress = time.monotonic()
            d = sealer.deadline()
            now = time.monotonic()
            if d is not None and now >= d:
                if sealer.flush():
                    self._last_sealed = time.monotonic()
                if sealer.storage_error is not None:
                    await asyncio.sleep(1.0)  # disk full / I/O error: retry, don't spin
                    continue
            else:
                jump = self.clock.check()
                if jump is not None:
                    log.warning("wall clock jumped by %.3f s", jump.detail["jump_s"])
                    sealer.add([], [jump])
            if outbox.sync_due():
                outbox.sync()
                disp.pump()
            if (disp.delivered_pending or outbox.pending_marks) and (
                time.monotonic() - self._last_sealed >= self.options.delete_after_s
            ):
                self._delete_delivered()
            if disp.next_due <= time.time():
                disp.pump()  # frames waiting for a resend became due
            d = sealer.deadline()
            wait = idle if d is None else min(idle, d - time.monotonic())
            await asyncio.sleep(max(wait, 0.0))

    def _delete_delivered(self) -> None:
        assert self.outbox is not None and self.dispatcher is not None
        items = self.dispatcher.take_delivered()
        if not items and not self.outbox.pending_marks:
            return
        try:
            self.outbox.delete_delivered(items)
        except Exception as e:  # retried with the next frame or tick
            log.warning("outbox: deleting delivered frames: %s", e)
            return
        self.dispatcher.deleted(items)
        self._last_sealed = time.monotonic()

    async def _status_loop(self) -> None:
        interval = self.options.status_interval_s
        wd = self.notifier.watchdog_s
        period = min(interval, wd / 2) if wd else interval
        next_status = 0.0
        while True:
            now = time.monotonic()
            if now >= next_status:
                next_status = now + interval
                try:
                    self._write_status()
                except OSError as e:
                    log.warning("status file %s: %s", self.status_path, e)
            # Ping the watchdog only while sealing makes progress: a wedged seal task
            # (say, SQLite stuck on a dying card) should get the agent restarted.
            if wd and now - self._seal_progress < max(wd / 2, 5.0):
                self.notifier.watchdog()
            await asyncio.sleep(period)

    async def _sntp_loop(self) -> None:
        """Measure the wall clock against the configured servers (in a thread: a query
        waits for the network) and seal the state; a change is sealed as an event."""
        while True:
            state, detail = await asyncio.to_thread(measure, self.ntp_servers,
                                                    self.ntp_max_offset_s)
            if state != "synced":
                log.warning("clock %s against %s: %s", state, ", ".join(self.ntp_servers),
                            detail)
            self.clock.last_offset_s = detail.get("offset_s")
            self.clock.set_sync(state, detail)
            await asyncio.sleep(self.ntp_interval_s)

    # -- status --------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        assert self.outbox is not None and self.sealer is not None
        assert self.dispatcher is not None and self.transport is not None
        now = time.time()
        ob = self.outbox.stats().to_json(now)
        ob["max_bytes"] = self.outbox.max_bytes
        ob["max_age_s"] = self.outbox.max_age_s
        ob["pending_readings"] = self.sealer.pending_readings
        ob["awaiting_confirmation"] = self.outbox.awaiting()
        return {
            "schema": STATUS_SCHEMA,
            "gateway_id": self.gateway_id,
            "site": self.site,
            "agent_version": AGENT_VERSION,
            "pid": os.getpid(),
            "boot_id": self.sealer.boot_id.hex(),
            "key_id": self.signer.key_id,
            "config_hash": self.config_hash,
            "started": to_rfc3339(self.started),
            "updated": to_rfc3339(now),
            "updated_unix": now,
            "state": "stopped" if self._stopped else "running",
            "interval_s": self.options.status_interval_s,
            "clock": {"sync": self.clock.sync_state, "jumps": self.clock.jumps,
                      "last_jump_s": self.clock.last_jump_s,
                      "offset_s": self.clock.last_offset_s},
            "outbox": ob,
            "sealer": {"frames": self.sealer.frames, "readings": self.sealer.readings,
                       "lost_readings": self.sealer.lost_readings},
            "storage_error": self.sealer.storage_error,
            "uplink": {**self.transport.state(), **self.dispatcher.state()},
            "instruments": {k: h.to_json(now) for k, h in self.health.items()},
        }

    def _write_status(self) -> None:
        write_status(self.status_path, self.status())
