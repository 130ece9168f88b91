"""`pmon console`: a full-screen live console over the control channel (textual).

The only module that imports textual (the `console` extra): the console lives in the CLI's
process, never in pmon's. Like every other command it talks to pmon only through the
control channel (it signals nothing itself), so it works for exactly the users the socket
lets in; the one thing it reads beside the channel is what a user of the socket may read
anyway: the process table (CPU and memory of each manager's tree, every SAMPLE_SECONDS)
and the selected manager's log file (followed every FOLLOW_SECONDS).

How the table stays live without polling pmon: a thread holds the event subscription
(docs/control.md), takes one `status` after subscribing (so no change falls between the
two), then applies every `state` / `project-state` record to the table as it arrives; a
state change also asks for one coalesced `status` (restarts, uptime, exit codes) and, on a
pair, `redu-status`. When pmon goes away the thread says so and connects again every
RECONNECT_SECONDS until a pmon answers (a `pmon detach` and a new `pmon run`, an upgrade).

Commands run in threads of their own (a start waits until the manager is running) and
report in the message line. What pmon refuses for safety unless forced (the `--force` of
the CLI) is asked here with pmon's own words; yes sends it again forced.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, RichLog, Static

from pmon.control.client import Endpoint, RemoteError, call, subscribe

RECONNECT_SECONDS = 0.5
INBOX_LIMIT = 5000  # calls from the threads waiting for the app's loop
SAMPLE_SECONDS = 2.0  # CPU, memory and uptime columns
FOLLOW_SECONDS = 0.5  # the selected manager's log
PAIR_SECONDS = 1.0  # the pair's line (links and heartbeats change without events)
HISTORY = 50  # events from the log shown when the console opens
LOG_TAIL = 8192
REASON_WIDTH = 90  # characters of a reason shown in the table (the event stream has it all)  # bytes of a log shown when a manager is selected
COLUMNS = ("index", "name", "state", "pid", "start", "restarts", "uptime", "cpu", "rss", "reason")
STATE_STYLE = {
    "running": "bold green", "starting": "yellow", "stopping": "yellow", "backoff": "magenta",
    "blocked": "bold white on red", "exited": "cyan", "stopped": "dim",
    "restarting": "yellow",
}
FORCE_HINT = "add --force"  # pmon's refusals that an operator may override say this


def styled(state: str) -> Text:
    return Text(state, style=STATE_STYLE.get(state, ""))


def duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def megabytes(size: int | None) -> str:
    return "" if size is None else f"{size / 1048576:.1f}M"


class Arrived(Message):
    """Calls from the console's threads wait in its inbox (Console._from_thread)."""


class Confirm(ModalScreen[bool]):
    """pmon's refusal, in its words, and a question: y does it anyway, n (or Esc) not."""

    BINDINGS = [Binding("y", "answer(True)", "yes, anyway"), Binding("n", "answer(False)", "no"),
                Binding("escape", "answer(False)", "no", show=False)]
    DEFAULT_CSS = """
    Confirm { align: center middle; }
    #question { width: 80%; height: auto; border: thick $error; padding: 1 2; background: $panel; }
    """

    def __init__(self, message: str) -> None:
        super().__init__()
        self.question = message

    def compose(self) -> ComposeResult:
        yield Static(f"{self.question}\n\nDo it anyway?  y: yes   n: no", id="question")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class Console(App[int]):
    TITLE = "pmon console"
    CSS = """
    #project, #pair, #message { height: 1; padding: 0 1; }
    #pair, #message { height: 2; }
    #pair { color: $text-muted; }
    #message { background: $boost; }
    #managers { height: 2fr; }
    #bottom { height: 1fr; }
    #events, #log { width: 1fr; border: round $primary-darken-2; }
    """
    BINDINGS = [
        Binding("s", "manager('start')", "start"),
        Binding("x", "manager('stop')", "stop"),
        Binding("r", "manager('restart')", "restart"),
        Binding("k", "manager('kill')", "kill"),
        Binding("S", "project('start-all')", "start all"),
        Binding("X", "project('stop-all')", "stop all"),
        Binding("R", "project('restart-all')", "restart all"),
        Binding("a", "pair('redu-set-active', False)", "set active here"),
        Binding("A", "pair('redu-set-active', True)", "partner active", show=False),
        Binding("p", "pair('redu-prefer', False)", "prefer here"),
        Binding("P", "pair('redu-prefer', True)", "prefer partner", show=False),
        Binding("q", "quit", "quit"),
    ]

    def __init__(self, where: Endpoint) -> None:
        super().__init__()
        self.where = where
        self.rows: dict[str, dict[str, Any]] = {}  # name -> pmon's status row, kept current
        self.usage: dict[str, tuple[int, float | None]] = {}  # name -> (rss, cpu %)
        self.project_state = "?"
        self.pmon_pid: int | None = None
        self.connected = False
        self.pair: dict[str, Any] | None = None
        self.is_pair = False
        self.selected: str | None = None
        self.last_message = ""
        self._shown: dict[str, dict[str, str]] = {}  # name -> column -> the text shown
        self._lines: dict[str, Text] = {}  # what the one-line widgets show
        self._touched: dict[str, float] = {}  # name -> when a record last changed its row
        self._widths: dict[str, int] = {column: len(column) for column in COLUMNS}
        self._log_offset = 0
        self._refreshing = threading.Lock()
        self._refresh_again = threading.Event()
        self._quitting = threading.Event()
        self._inbox: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._inbox_ready = threading.Condition()
        self._posted = False  # an Arrived message is on its way to the loop
        self._sampling = False
        from pmon_plugins._trees import TreeSampler  # the memory monitor's tree figures

        self._sampler = TreeSampler()

    # --- layout -------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(id="project")
            yield Static(id="pair")
            table: DataTable[Any] = DataTable(id="managers", cursor_type="row", zebra_stripes=True)
            yield table
            yield Static("connecting to pmon ...", id="message")
            with Horizontal(id="bottom"):
                yield RichLog(id="events", max_lines=500, wrap=False, markup=False)
                yield RichLog(id="log", max_lines=500, wrap=False, markup=False)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#managers", DataTable)
        for column in COLUMNS:
            table.add_column(column, key=column)
        self.query_one("#events", RichLog).border_title = "events"
        self.query_one("#log", RichLog).border_title = "log"
        self.query_one("#pair", Static).display = False
        self._show_project()
        threading.Thread(target=self._feed, name="pmon feed", daemon=True).start()
        self.set_interval(SAMPLE_SECONDS, self._sample)
        self.set_interval(FOLLOW_SECONDS, self._follow_log)
        self.set_interval(PAIR_SECONDS, self._pair_tick)

    def on_unmount(self) -> None:
        self._quitting.set()
        with self._inbox_ready:
            self._inbox_ready.notify_all()

    # --- the subscription (a thread) -------------------------------------------------------
    def _feed(self) -> None:
        said_gone = False
        while not self._quitting.is_set():
            records = None
            try:
                records = subscribe(self.where, timeout=5.0)
                status = call(self.where, "status", timeout=10.0)  # after: no change between
            except Exception as exc:
                if records is not None:
                    _close(records)
                if not said_gone:
                    self._from_thread(self._gone, f"cannot reach pmon: {exc}")
                    said_gone = True
                self._quitting.wait(RECONNECT_SECONDS)
                continue
            said_gone = False
            self._from_thread(self._connected, status)
            try:
                for record in records:
                    self._from_thread(self._record, record)
                    if self._quitting.is_set():
                        break
            except Exception:
                pass  # pmon went away mid-record: the same as the end of the stream
            finally:
                _close(records)
            if not self._quitting.is_set():
                self._from_thread(self._gone, "pmon went away")
                said_gone = True

    def _from_thread(self, func: Callable[..., None], *args: Any) -> None:
        """Have `func(*args)` run on the app's loop, in order, without waiting for it: what
        arrives while the app draws is run in one batch (an exit and its restart in one
        pass). Past INBOX_LIMIT waiting calls the thread waits: a console that cannot keep
        up slows its feed, and pmon (not this process) drops and counts records."""
        with self._inbox_ready:
            while len(self._inbox) >= INBOX_LIMIT and not self._quitting.is_set():
                self._inbox_ready.wait(0.5)
            if self._quitting.is_set():
                return
            self._inbox.append((func, args))
            if self._posted:
                return
            self._posted = True
        if not self.post_message(Arrived()):  # thread-safe; False once the app is gone
            self._quitting.set()

    def on_arrived(self, _message: "Arrived") -> None:
        with self._inbox_ready:
            calls = list(self._inbox)
            self._inbox.clear()
            self._posted = False
            self._inbox_ready.notify_all()
        for func, args in calls:
            func(*args)

    def _connected(self, status: dict[str, Any]) -> None:
        again = self.pmon_pid is not None
        self.connected = True
        if not again:  # what happened before the console opened: the log's last records
            from pmon.cli.events import log_files, read_records

            for record in deque(read_records(log_files(self.where.state_dir)), maxlen=HISTORY):
                self.event_line(record.get("ts"), str(record.get("event")), str(record.get("message", "")))
        self._apply_status(status)
        pid = status.get("pmon_pid")
        self.say(f"{'reconnected' if again else 'connected'} to pmon (pid {pid}), "
                 f"project {status.get('project')} from {status.get('config')}")
        self._refresh_pair()

    def _gone(self, why: str) -> None:
        if not self.connected and self.pmon_pid is not None:
            return
        self.connected = False
        self.say(f"{why}; reconnecting by itself every {RECONNECT_SECONDS:g} s "
                 f"(start it with `pmon run -c {self.where.config_path}`)", error=True)
        self.event_line(time.time(), "console", why)
        self._show_project()

    def _record(self, record: dict[str, Any]) -> None:
        kind = record.get("event")
        if kind == "state":
            name = record.get("manager")
            row = self.rows.get(name) if isinstance(name, str) else None
            if row is None or not isinstance(name, str):
                self._refresh()  # a manager new to the console: take the whole table
                return
            row = dict(row, state=record.get("state"), pid=record.get("pid"),
                       reason=record.get("reason") or "")
            self.rows[name] = row
            self._touched[name] = time.monotonic()
            self._show_row(name)
            self._refresh()
        elif kind == "project-state":
            self.project_state = str(record.get("state"))
            self._show_project()
            self._refresh()
        elif kind == "lost" or "manager" in record:
            # An exit and its restart at once are no state change (running -> running):
            # the records of the exit and of the start say it (shown at once), and the row
            # is taken again (restarts, uptime).
            row = self.rows.get(str(record.get("manager")))
            if row is not None and kind in ("exited", "started"):
                name = str(record["manager"])
                row = self.rows[name] = dict(row, pid=record.get("pid") if kind == "started" else None)
                if kind == "exited" and isinstance(record.get("state"), str):
                    row["state"], row["reason"] = record["state"], record.get("action") or ""
                self._touched[name] = time.monotonic()
                self._show_row(name)
            self._refresh()
        if kind != "state":  # state changes are in the table; the rest is the stream
            self.event_line(record.get("ts"), str(kind), str(record.get("message", "")))
        if kind in ("switchover", "redundancy-role"):
            self._refresh_pair()

    # --- pmon's status, coalesced (threads) -----------------------------------------------
    def _refresh(self) -> None:
        """One `status` soon; changes meanwhile are covered by one more, not one each."""
        self._refresh_again.set()
        if self._refreshing.acquire(blocking=False):
            threading.Thread(target=self._refresh_loop, daemon=True).start()

    def _refresh_loop(self) -> None:
        try:
            while self._refresh_again.is_set() and not self._quitting.is_set():
                self._refresh_again.clear()
                asked = time.monotonic()
                try:
                    status = call(self.where, "status", timeout=10.0)
                except Exception:
                    return  # the feed thread says when pmon is gone
                self._from_thread(self._apply_status, status, asked)
        finally:
            self._refreshing.release()
        if self._refresh_again.is_set():  # asked for between the last check and the release
            self._refresh()

    def _apply_status(self, status: dict[str, Any], asked: float | None = None) -> None:
        """Take pmon's status (asked for at `asked`). A row that a record changed after
        the question may be newer than the answer: it waits for the next one (every record
        asks for one more)."""
        table = self.query_one("#managers", DataTable)
        rows = {row["name"]: row for row in status.get("managers", [])}
        if list(rows) != list(self.rows):  # added, removed or another project: rebuild
            table.clear()
            self._shown.clear()
            for name in rows:
                table.add_row(*([""] * len(COLUMNS)), key=name)
        if asked is not None:
            for name in rows:
                if self._touched.get(name, 0.0) > asked and name in self.rows:
                    rows[name] = self.rows[name]
        old, self.rows = self.rows, rows
        self.is_pair = "role" in status and "partner" in status  # the redundancy service's keys
        self.pmon_pid = status.get("pmon_pid")
        self.project_state = status.get("project_state", "?")
        for name, row in rows.items():
            if row != old.get(name) or name not in self._shown:  # 500 rows: only changed ones
                self._show_row(name)
        self._show_project()
        if self.selected is None and rows:
            self._select(next(iter(rows)))

    def _refresh_pair(self) -> None:
        if not self.is_pair:
            return

        def fetch() -> None:
            try:
                pair = call(self.where, "redu-status", timeout=5.0)
            except Exception:
                return
            self._from_thread(self._show_pair, pair)

        threading.Thread(target=fetch, daemon=True).start()

    def _pair_tick(self) -> None:
        if self.connected:
            self._refresh_pair()

    # --- showing ----------------------------------------------------------------------------
    def _show_row(self, name: str) -> None:
        row = self.rows.get(name)
        if row is None:
            return
        table = self.query_one("#managers", DataTable)
        rss, cpu = self.usage.get(name, (None, None)) if row.get("pid") else (None, None)
        started = row.get("started_at")
        alive = row.get("state") in ("starting", "running", "stopping")
        reason = row.get("held") or ("" if row.get("state") == "running" else row.get("reason") or "")
        state = row.get("state", "?") + (" (not ready)" if row.get("ready_failed") else "")
        cells = {
            "index": str(row.get("index", "")), "name": name, "state": state,
            "pid": str(row.get("pid") or ""), "start": str(row.get("start", "")),
            "restarts": str(row.get("restarts", "")),
            "uptime": duration(time.time() - started) if alive and started else "",
            "cpu": "" if cpu is None else f"{cpu:.1f}%", "rss": megabytes(rss), "reason": reason[:REASON_WIDTH],
        }
        shown = self._shown.setdefault(name, {})
        for column, text in cells.items():
            if shown.get(column) == text:
                continue  # 500 rows: touch only what changed (each update redraws)
            shown[column] = text
            wider = len(text) > self._widths.get(column, 0)
            if wider:
                self._widths[column] = len(text)
            table.update_cell(name, column, styled(text) if column == "state" else text,
                              update_width=wider)

    def _show_project(self) -> None:
        where = f"pmon {self.pmon_pid}" if self.connected else Text("not connected", style="bold red")
        line = Text.assemble(
            "project ", (self.where.project, "bold"), ": ", styled(self.project_state), "   ", where,
            f"   {len(self.rows)} managers" if self.rows else "",
        )
        self._put("#project", line)

    def _show_pair(self, pair: dict[str, Any]) -> None:
        self.pair = pair
        widget = self.query_one("#pair", Static)
        if not widget.display:
            widget.display = True

        def breakdown(parts: Any) -> str:
            return ", ".join(f"{k} {v:g}" for k, v in (parts or {}).items()) if parts else ""

        me = Text.assemble(
            "this server ", (pair["server"], "bold"), ": ", styled_role(pair.get("role")),
            f", error state {pair.get('error_state', '?')}",
            f" ({breakdown(pair.get('error_breakdown'))})" if pair.get("error_breakdown") else "",
        )
        if isinstance(pair.get("group"), dict):
            self._put("#pair", Text.assemble(me, "\n", _group_line(pair["group"])))
            return
        if pair.get("partner_connected"):
            other = Text.assemble(
                "   partner ", (pair["partner"], "bold"), ": ", styled_role(pair.get("partner_role")),
                f", error state {pair.get('partner_error_state')}",
                f" ({breakdown(pair.get('partner_error_breakdown'))})" if pair.get("partner_error_breakdown") else "",
                "" if pair.get("partner_available") else ("  not available", "bold red"),
            )
        else:
            other = Text.assemble("   partner ", (pair["partner"], "bold"), ": ", ("not connected", "bold red"))
        links = pair.get("links") or []
        up = sum(1 for link in links if link.get("up"))
        link_text = Text(f"   links {up}/{len(links)} up", style="" if up == len(links) else "bold red")
        for link in links:
            heard = link.get("last_heard")
            link_text.append(f"  [{link.get('link')}: {'up' if link.get('up') else 'DOWN'}"
                             + ("" if heard is None else f", {heard:.1f} s"), style="")
            link_text.append("]")
        preferred = Text(f"   preferred {pair.get('preferred')}")
        self._put("#pair", Text.assemble(me, other, "\n", link_text, preferred))

    def event_line(self, ts: Any, kind: str, message: str) -> None:
        when = time.strftime("%H:%M:%S", time.localtime(ts)) if isinstance(ts, (int, float)) else "--:--:--"
        style = "bold red" if kind in ("project-blocked", "command-refused", "console") else ""
        self.query_one("#events", RichLog).write(Text.assemble((when, "dim"), " ", (message or kind, style)))

    def say(self, message: str, error: bool = False) -> None:
        self.last_message = message
        self._put("#message", Text(message, style="bold red" if error else ""))

    def _put(self, selector: str, text: Text) -> None:
        """Update a line only when it changed, without a new layout (fixed heights): a
        layout of the whole screen per record would cost more than the record."""
        if self._lines.get(selector) != text:
            self._lines[selector] = text
            self.query_one(selector, Static).update(text, layout=False)

    # --- selection and the manager's log ---------------------------------------------------
    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        key = event.row_key.value
        if key is not None and key != self.selected:
            self._select(key)

    def _select(self, name: str) -> None:
        self.selected = name
        log = self.query_one("#log", RichLog)
        log.clear()
        log.border_title = f"log of {name}"
        path = self._log_path(name)
        try:
            size = path.stat().st_size
        except OSError:
            size = 0
        self._log_offset = max(0, size - LOG_TAIL)
        self._follow_log()

    def _log_path(self, name: str) -> Path:
        return self.where.state_dir / "log" / f"{name}.log"

    def _follow_log(self) -> None:
        if self.selected is None:
            return
        path = self._log_path(self.selected)
        try:
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if size < self._log_offset:
                    self._log_offset = 0  # rotated (copy-truncate): from the top again
                if size == self._log_offset:
                    return
                handle.seek(self._log_offset)
                data = handle.read(max(0, min(size - self._log_offset, 1 << 20)))
        except OSError:
            return
        self._log_offset += len(data)
        log = self.query_one("#log", RichLog)
        for line in data.decode("utf-8", "replace").splitlines():
            log.write(line)

    # --- CPU and memory (a thread) ---------------------------------------------------------
    def _sample(self) -> None:
        if self._sampling:
            return
        self._sampling = True
        roots = {name: row["pid"] for name, row in self.rows.items() if row.get("pid")}

        def sample() -> None:
            try:
                usage = self._sampler.sample(roots)
            except Exception:
                usage = {}
            self._from_thread(self._show_usage, usage)

        threading.Thread(target=sample, daemon=True).start()

    def _show_usage(self, usage: dict[str, tuple[int, float | None]]) -> None:
        self._sampling = False
        self.usage = usage
        for name, row in self.rows.items():
            if row.get("pid") or name in usage:
                self._show_row(name)

    # --- commands ---------------------------------------------------------------------------
    def action_manager(self, command: str) -> None:
        if self.selected is None:
            self.say("no manager selected", error=True)
            return
        self._run(command, f"{command} {self.selected}", target=self.selected)

    def action_project(self, command: str) -> None:
        self._run(command, command.replace("-all", " --all"))

    def action_pair(self, command: str, partner: bool) -> None:
        if self.pair is None:
            self.say("this server is not one of a redundant pair", error=True)
            return
        if partner and isinstance(self.pair.get("group"), dict):
            self.say("a group has no one partner: name the member, e.g. `pmon redu set-active "
                     f"{next(iter(self.pair['group'].get('order') or []), 'NAME')}`", error=True)
            return
        server = self.pair["partner"] if partner else self.pair["server"]
        self._run(command, f"{command.replace('redu-', 'redu ')} {server}", server=server)

    def _run(self, command: str, label: str, **args: Any) -> None:
        self.say(f"{label} ...")

        def work() -> None:
            try:
                call(self.where, command, timeout=600.0, **args)
            except RemoteError as exc:
                self._from_thread(self._refused, command, label, args, str(exc))
                return
            except Exception as exc:
                self._from_thread(self.say, f"{label}: {exc}", True)
                return
            self._from_thread(self.say, f"{label}: done")

        threading.Thread(target=work, daemon=True).start()

    def _refused(self, command: str, label: str, args: dict[str, Any], message: str) -> None:
        self.event_line(time.time(), "command-refused", f"{label}: {message}")
        if FORCE_HINT not in message or args.get("force"):
            self.say(f"refused: {message}", error=True)
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._run(command, f"{label} --force", **args, force=True)
            else:
                self.say(f"{label}: not done ({message})")

        self.push_screen(Confirm(message), answered)


def _close(records: Any) -> None:
    close = getattr(records, "close", None)  # the subscription's generator: closes its socket
    if close is not None:
        close()


def styled_role(role: Any) -> Text:
    role = str(role or "starting")
    return Text(role, style={"active": "bold green", "passive": "cyan"}.get(role, "yellow"))


def run(where: Endpoint) -> int:
    """Run the console until q; returns the exit code."""
    return Console(where).run() or 0


def _group_line(group: dict[str, Any]) -> Text:
    """A group of three or more: every member as etcd has its record, the leader first."""
    members = [m for m in group.get("members") or [] if isinstance(m, dict)]
    line = Text(f"   group of {len(members)}, leader ")
    line.append(str(group.get("leader") or "none"), style="bold" if group.get("leader") else "bold red")
    for m in members:
        line.append(f"   {m.get('name')}: ")
        if not m.get("live"):
            line.append("not in etcd", style="bold red")
            continue
        line.append_text(styled_role(m.get("role")))
        line.append(f", error state {m.get('error', '?')}")
        if not m.get("available"):
            line.append("  not available", style="bold red")
    return line
