"""The Prometheus exporter ([metrics]): pmon's state in Prometheus' text format over HTTP.

Built only when the project has a [metrics] section (app.py), and the only module that
imports prometheus_client, so a pmon without metrics never loads it.

What one scrape costs the supervisor's loop: a copy of each manager's snapshot and of the
pair's status (plain data, microseconds per manager). The rest runs in a worker thread: one
scan of the process table for every manager's process tree (cached for TREE_SECONDS, so
many scrapers cost one scan) and the rendering of the text. A client cannot hold pmon up:
one request per connection, read within READ_SECONDS and at most MAX_REQUEST bytes of
head, at most MAX_CLIENTS at once; anything else gets an HTTP error and the connection
closes.

The counters that must survive a hot restart of pmon: a manager's restarts come from the
state file (the manager machine restores them); the project's restarts and the pair's
switchovers, which only this exporter counts, are kept in <state_dir>/metrics.json.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from pmon.config import MetricsSpec
from pmon.core.project import ProjectState
from pmon.runtime.api import Api, Extension
from pmon.runtime.statefile import write_atomically
from pmon.states import ManagerState, Snapshot

if TYPE_CHECKING:
    from pmon.extensions.redundancy import RedundancyService

MAX_REQUEST = 8192  # bytes of request line and headers
READ_SECONDS = 5.0  # a client that sends no complete request head in this time is dropped
MAX_CLIENTS = 16
TREE_SECONDS = 2.0  # a process-tree scan serves every scrape within this time
LAG_PROBE_SECONDS = 1.0  # how often the event loop's lag is measured
# The classic text format, which every Prometheus reads (pmon's names need nothing newer).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ROLES = ("active", "passive", "starting")
# The reasons of redundancy/arbitration.py's Reason (a switchover's), shown at 0 before the
# first one: a counter that appears only at 1 is missed by increase() in the alert rules.
SWITCHOVER_REASONS = ("failure", "forced", "error state", "preference", "split-brain resolution")


@dataclass(frozen=True)
class Scrape:
    """Everything one scrape shows, copied on the loop; rendered in a thread."""

    project: str
    project_state: str
    project_restarts: int
    managers: tuple[Snapshot, ...]
    now: float  # wall clock
    trees: Mapping[str, tuple[int, float]]  # name -> (rss bytes, cpu seconds) of its tree
    loop_lag: float
    pair: Mapping[str, Any] | None
    switchovers: Mapping[str, int]


class MetricsExporter(Extension):
    name = "metrics"

    def __init__(self, spec: MetricsSpec, redundancy: "RedundancyService | None" = None) -> None:
        self.spec = spec
        self.redundancy = redundancy
        self.server: asyncio.AbstractServer | None = None
        self.project_restarts = 0
        self.switchovers: dict[str, int] = {}
        self.loop_lag = 0.0  # the largest lag measured since the previous scrape
        self._clients = 0
        self._trees: tuple[float, dict[str, tuple[int, float]]] | None = None
        self._scan_lock = asyncio.Lock()
        self._process = ProcessCollector(registry=None)  # pmon's own process_* metrics

    # --- lifecycle ----------------------------------------------------------------------
    async def start(self, api: Api) -> None:
        self.api = api
        self.counts_file = api.state_dir / "metrics.json"
        self._load_counts()
        api.events.listeners.append(self._on_record)
        try:
            self.server = await asyncio.start_server(
                self._serve, self.spec.host, self.spec.port, limit=MAX_REQUEST
            )
        except OSError as exc:
            # The project matters more than its metrics: say so loudly and run on.
            api.events.write(
                "metrics-failed",
                f"metrics cannot listen on {self.spec.host} port {self.spec.port}: "
                f"{exc.strerror or exc}; pmon runs without them (change [metrics] listen in "
                f"{api.config.path} and restart pmon)",
                address=self.spec.host, port=self.spec.port, error=str(exc),
            )
            return
        host, port = self.server.sockets[0].getsockname()[:2]
        write_atomically(api.state_dir / "metrics.addr", f"{host}:{port}".encode())
        api.events.write(
            "metrics-listening", f"metrics for Prometheus at http://{_url_host(host)}:{port}/metrics",
            address=host, port=port,
        )
        api.background(self, self._probe_lag())

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        self._save_counts()

    # --- what only this exporter counts ----------------------------------------------------
    def _on_record(self, record: dict[str, Any]) -> None:
        # The record, not the RESTARTING state: a restart resumed by the next pmon enters
        # RESTARTING again, but the pmon that began it already counted it (and wrote
        # the record); one that starts only at adoption (a core death while pmon was away)
        # writes its own record.
        if record.get("event") == "project-restart":
            self.project_restarts += 1
            self._save_counts()

    def on_switchover(self, active: str, previous: str | None, reason: str) -> None:
        self.switchovers[reason] = self.switchovers.get(reason, 0) + 1
        self._save_counts()

    def _load_counts(self) -> None:
        try:
            saved = json.loads(self.counts_file.read_text())
            restarts, switchovers = saved["project_restarts"], saved["switchovers"]
            if isinstance(restarts, int) and restarts >= 0:
                self.project_restarts = restarts
            self.switchovers = {str(k): v for k, v in switchovers.items()
                                if isinstance(v, int) and v >= 0}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            self.api.events.write(
                "metrics-counts-lost", f"cannot read {self.counts_file} ({exc!r}): the project "
                "restart and switchover counters start from 0",
            )

    def _save_counts(self) -> None:
        data = {"project_restarts": self.project_restarts, "switchovers": self.switchovers}
        try:
            write_atomically(self.counts_file, json.dumps(data).encode())
        except OSError as exc:
            self.api.write_failed(f"the metrics counters {self.counts_file}", exc)

    async def _probe_lag(self) -> None:
        """How late the loop runs a timer: the time a callback waits behind others."""
        loop = self.api.loop
        while True:
            due = loop.time() + LAG_PROBE_SECONDS
            await asyncio.sleep(LAG_PROBE_SECONDS)
            self.loop_lag = max(self.loop_lag, loop.time() - due)

    # --- HTTP -------------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients += 1
        try:
            if self._clients > MAX_CLIENTS:
                await _reply(writer, 503, "too many scrapers at once\n")
                return
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_SECONDS)
            except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, ValueError):
                await _reply(writer, 400, "malformed or overlong request\n")
                return
            except TimeoutError:
                await _reply(writer, 408, "no complete request in time\n")
                return
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = line.split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                await _reply(writer, 400, "malformed request line\n")
            elif parts[0] not in ("GET", "HEAD"):
                await _reply(writer, 405, "only GET\n", [("Allow", "GET, HEAD")])
            elif parts[1].split("?", 1)[0] != "/metrics":
                await _reply(writer, 404, "pmon serves /metrics\n")
            else:
                try:
                    body = await self.exposition()
                except Exception as exc:  # a bug here must cost a scrape, not pmon
                    self.api.events.write("metrics-error", f"a scrape failed: {exc!r}")
                    await _reply(writer, 500, f"pmon could not collect its metrics: {exc!r}\n")
                    return
                await _reply(writer, 200, body, [("Content-Type", CONTENT_TYPE)],
                             head_only=parts[0] == "HEAD")
        except OSError:
            pass  # the scraper went away, or read too slowly (TimeoutError is an OSError)
        finally:
            self._clients -= 1
            writer.close()

    async def exposition(self) -> bytes:
        """The text of one scrape."""
        managers = tuple(m.snapshot() for m in self.api.managers.values())
        roots = {m.name: m.pid for m in managers if m.pid is not None}
        trees = await self._tree_figures(roots)
        pair = None
        if self.redundancy is not None:
            pair = dict(self.redundancy.status())
            synced = self.redundancy.synced_at  # the links' ages are as old as the last sync
            pair["synced_ago"] = 0.0 if synced is None else time.monotonic() - synced
        scrape = Scrape(
            project=self.api.config.project.name,
            project_state=self.api.project_state.value,
            project_restarts=self.project_restarts,
            managers=managers, now=time.time(), trees=trees, loop_lag=self.loop_lag,
            pair=pair, switchovers=dict(self.switchovers),
        )
        self.loop_lag = 0.0
        return await asyncio.to_thread(generate_latest, _Families(scrape, self._process))

    async def _tree_figures(self, roots: Mapping[str, int]) -> Mapping[str, tuple[int, float]]:
        async with self._scan_lock:  # many scrapers at once: one scan
            cached = self._trees
            if cached is None or time.monotonic() - cached[0] > TREE_SECONDS:
                from pmon_plugins._trees import totals  # the bundled monitors' tree scan

                cached = self._trees = (time.monotonic(), await asyncio.to_thread(totals, roots))
        return cached[1]


async def _reply(
    writer: asyncio.StreamWriter, status: int, body: bytes | str,
    headers: Iterable[tuple[str, str]] = (), head_only: bool = False,
) -> None:
    data = body.encode() if isinstance(body, str) else body
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
              408: "Request Timeout", 500: "Internal Server Error", 503: "Service Unavailable"}[status]
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(data)}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers]
    if not any(k == "Content-Type" for k, _ in headers):
        lines.append("Content-Type: text/plain; charset=utf-8")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head_only else data))
    await asyncio.wait_for(writer.drain(), READ_SECONDS)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class _Families(Collector):
    """One scrape as metric families (prometheus_client renders them)."""

    def __init__(self, scrape: Scrape, process: ProcessCollector) -> None:
        self.scrape = scrape
        self.process = process

    def collect(self) -> Iterator[Metric]:
        yield from self.process.collect()
        s = self.scrape
        lag = GaugeMetricFamily(
            "pmon_event_loop_lag_seconds",
            "The longest delay of a timer on pmon's event loop since the previous scrape")
        lag.add_metric([], s.loop_lag)
        yield lag
        yield from _project(s)
        yield from _managers(s)
        if s.pair is not None:
            yield from _pair(s.pair, s.switchovers)


def _project(s: Scrape) -> Iterator[Metric]:
    state = GaugeMetricFamily(
        "pmon_project_state", "1 for the project's current state, 0 for the others",
        labels=["project", "state"])
    for value in ProjectState:
        state.add_metric([s.project, value.value], float(value.value == s.project_state))
    yield state
    restarts = CounterMetricFamily(
        "pmon_project_restarts", "Project restarts (a core manager's death, restart --all, "
        "a lost split brain), kept across pmon's hot restarts", labels=["project"])
    restarts.add_metric([s.project], s.project_restarts)
    yield restarts


def _managers(s: Scrape) -> Iterator[Metric]:
    info = GaugeMetricFamily(
        "pmon_manager_info", "1 per configured manager, with its index, start type and core flag",
        labels=["manager", "index", "start", "core"])
    state = GaugeMetricFamily(
        "pmon_manager_state", "1 for the manager's current state, 0 for the others",
        labels=["manager", "state"])
    up = GaugeMetricFamily("pmon_manager_up", "1 when the manager runs and is ready", labels=["manager"])
    restarts = CounterMetricFamily(
        "pmon_manager_restarts", "Restarts of the manager by pmon, kept across pmon's hot restarts",
        labels=["manager"])
    exit_code = GaugeMetricFamily(
        "pmon_manager_last_exit_code", "The manager's last exit code (negative: the signal); "
        "absent until it first ended", labels=["manager"])
    uptime = GaugeMetricFamily(
        "pmon_manager_uptime_seconds", "Seconds since the manager's process started (while it runs)",
        labels=["manager"])
    cpu = CounterMetricFamily(
        "pmon_manager_cpu_seconds", "CPU seconds (user and system) of the manager's process tree, "
        "with the children it reaped; starts again from 0 at its restart", labels=["manager"])
    rss = GaugeMetricFamily(
        "pmon_manager_resident_memory_bytes", "Resident memory of the manager's process tree",
        labels=["manager"])
    for m in s.managers:
        info.add_metric([m.name, str(m.index), m.start, str(m.core).lower()], 1.0)
        for value in ManagerState:
            state.add_metric([m.name, value.value], float(value.value == m.state))
        up.add_metric([m.name], float(m.state == ManagerState.RUNNING.value))
        restarts.add_metric([m.name], m.restarts)
        if m.exit_code is not None:
            exit_code.add_metric([m.name], m.exit_code)
        if m.pid is not None and m.started_at is not None:
            uptime.add_metric([m.name], max(0.0, s.now - m.started_at))
        tree = s.trees.get(m.name) if m.pid is not None else None
        if tree is not None:
            rss.add_metric([m.name], tree[0])
            cpu.add_metric([m.name], tree[1])
    yield from (info, state, up, restarts, exit_code, uptime, cpu, rss)


def _pair(pair: Mapping[str, Any], switchovers: Mapping[str, int]) -> Iterator[Metric]:
    role = GaugeMetricFamily(
        "pmon_redundancy_role", "1 for this server's current role (starting: not decided yet)",
        labels=["server", "role"])
    for value in ROLES:
        role.add_metric([pair["server"], value], float(pair["role"] == value))
    yield role
    if isinstance(pair.get("group"), dict):
        yield from _group(pair["group"])
    else:
        yield from _partner(pair)
    yield from _switchovers(pair, switchovers)


def _group(group: Mapping[str, Any]) -> Iterator[Metric]:
    """A group of three or more: every member as etcd has its record (no partner, no links)."""
    members = [m for m in group.get("members") or [] if isinstance(m, dict) and m.get("name")]
    live = GaugeMetricFamily(
        "pmon_redundancy_member_up", "1 while the member's record is in etcd (its redundancy "
        "manager holds its member lease)", labels=["member"])
    available = GaugeMetricFamily(
        "pmon_redundancy_member_available", "1 while the member says it is available (its "
        "project fully started, no blocked manager)", labels=["member"])
    leader = GaugeMetricFamily(
        "pmon_redundancy_leader", "1 for the member that holds the group's lease", labels=["member"])
    errors = GaugeMetricFamily(
        "pmon_redundancy_error_state", "The error state of each member of the group (0: "
        "healthy; only while its record is in etcd)", labels=["server"])
    for m in members:
        name = str(m["name"])
        live.add_metric([name], float(bool(m.get("live"))))
        available.add_metric([name], float(bool(m.get("live") and m.get("available"))))
        leader.add_metric([name], float(group.get("leader") == name))
        if m.get("live") and isinstance(m.get("error"), (int, float)):
            errors.add_metric([name], float(m["error"]))
    yield from (live, available, leader, errors)


def _partner(pair: Mapping[str, Any]) -> Iterator[Metric]:
    errors = GaugeMetricFamily(
        "pmon_redundancy_error_state", "The error state of each server of the pair (0: healthy; "
        "the partner's only while it is connected)", labels=["server"])
    errors.add_metric([pair["server"]], float(pair["error_state"] or 0))
    if pair.get("partner_error_state") is not None:
        errors.add_metric([pair["partner"]], float(pair["partner_error_state"]))
    yield errors
    for key, text in (("partner_connected", "1 while the partner is heard on some link"),
                      ("partner_available", "1 while the partner is connected, fully started "
                                            "and has no blocked manager")):
        family = GaugeMetricFamily(f"pmon_redundancy_{key}", text, labels=["partner"])
        family.add_metric([pair["partner"]], float(bool(pair[key])))
        yield family
    link_up = GaugeMetricFamily(
        "pmon_redundancy_link_up", "1 while the partner's heartbeats arrive on this link",
        labels=["link"])
    age = GaugeMetricFamily(
        "pmon_redundancy_link_last_heartbeat_age_seconds",
        "Seconds since the partner's last heartbeat on this link (absent: never heard)",
        labels=["link"])
    ago = pair.get("synced_ago") or 0.0
    for link in pair.get("links") or []:
        link_up.add_metric([link["link"]], float(bool(link.get("up"))))
        if link.get("last_heard") is not None:
            age.add_metric([link["link"]], float(link["last_heard"]) + ago)
    yield link_up
    yield age


def _switchovers(pair: Mapping[str, Any], switchovers: Mapping[str, int]) -> Iterator[Metric]:
    count = CounterMetricFamily(
        "pmon_redundancy_switchovers", "Switchovers seen by this server, by reason, kept "
        "across pmon's hot restarts", labels=["reason"])
    for reason, n in sorted({**dict.fromkeys(SWITCHOVER_REASONS, 0), **switchovers}.items()):
        count.add_metric([reason], n)
    yield count
    last = pair.get("last_switchover")
    if isinstance(last, dict) and isinstance(last.get("at"), (int, float)):
        when = GaugeMetricFamily(
            "pmon_redundancy_last_switchover_timestamp_seconds",
            "When the last switchover happened (Unix time)", labels=["active", "reason"])
        when.add_metric([str(last.get("active")), str(last.get("reason"))], float(last["at"]))
        yield when
