"""pmon's side of redundancy: an extension beside the supervisor (see app.py).

It knows what only pmon knows, and acts where only pmon can:
- this server's error state from its managers (a manager that should run and does not, with
  its weight) and from the monitor plugins (the seam below);
- whether this server is available: project fully started, no blocked manager;
- the role the redundancy manager decided: it starts the `run_on = "active"` managers when
  this server becomes active and stops them when it becomes passive, restarts the project
  after a lost split brain, writes the switchover event, sends SIGUSR1 to the managers with
  `notify_switchover = true`, and hands the event to plugins;
- the operators' set-active / prefer requests, passed to the redundancy manager at its next
  sync, which a poke (SIGUSR2) makes immediate; the redundancy manager syncs by itself on a
  change of its view and every second otherwise;
- the pids of the run_on = "active" managers, which the redundancy manager fences itself
  when pmon stops answering (docs/redundancy.md "Fencing"); pmon refuses to start one while
  its last sync is older than pmon_timeout;
- the self-fence, the mirror case: on the active server, when the redundancy manager's
  heartbeat loop has not beaten (WATCHDOG=1 on the notify socket, or on Linux the beat's
  timer expired: beat_timer.py, pmon holds it and is woken only by its expiry) for
  `self_fence`, pmon
  stops those managers itself (SIGKILL after `self_fence_kill` at most), before the partner,
  which hears no heartbeat either, may take the role (`timeout`). It lasts until the
  redundancy manager says it is passive (it gives the role up when it hears of it, or when
  it finds itself thawed): only a new activation starts them again.

The role is handed to the project machine as the condition "active": it (not this
module) stops the `run_on = "active"` managers when the condition turns off and starts the
ones it held back when it turns on, and refuses to start them meanwhile.

What the plugins add to the error state comes from `api.plugin_error_state()`; every
switchover goes to the other extensions through `api.switchover` (the plugins'
`pmon_switchover` hook).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from typing import TYPE_CHECKING, Any, Mapping

from pmon.config import Config
from pmon.core.project import ProjectState
from pmon.states import ManagerState, StartType
from pmon.errors import CommandError, SpawnRefused
from pmon.redundancy import beat_timer
from pmon.runtime.api import Api, Extension
from pmon.runtime.statefile import write_atomically

if TYPE_CHECKING:
    from pmon.core.manager import Manager
    from pmon.redundancy.settings import RedundancySpec

S = ManagerState


class RedundancyService(Extension):
    name = "redundancy"

    def __init__(self, config: Config) -> None:
        assert config.redundancy is not None
        self.spec = config.redundancy
        self.role: str | None = None  # "active" | "passive" | None (not decided yet)
        self.report: dict[str, Any] = {}  # the redundancy manager's last sync
        self.synced_at: float | None = None
        self.requests: list[dict[str, Any]] = []
        self.epoch = 0
        self.last_switchover: dict[str, Any] | None = None
        self.queries = 0  # the redundancy manager's count of split brains won (general query)
        self.strangers_told: set[tuple[int, str]] = set()  # (link, sender) written as events
        self.differ_told: dict[str, Any] = {}  # the settings that differ, as last written
        self.differ_events = 0
        self.damp_until = 0.0  # failure damping, kept across a restart of the redundancy manager
        # the partner's timing as its heartbeats last said it, kept likewise (and on disk): a
        # new run of the redundancy manager waits the partner's timeout before it claims the
        # role at start
        self.partner_timing: dict[str, Any] | None = None
        self.preferred: dict[str, Any] | None = None  # an operator's prefer, kept across restarts
        self._poked: tuple[Any, ...] = ()
        # the self-fence (loop time): the last beat, since when this pmon knows it is active
        self.beat_at: float | None = None
        self.watch_from = 0.0
        self.self_fenced: dict[str, Any] | None = None  # when and why, while in force
        self._watchdog: asyncio.TimerHandle | None = None
        # the beat's timer, taken from the redundancy manager: (its pid, its fd, our fd)
        self._timer: tuple[int, int, int] | None = None
        self._timer_refused: tuple[int, int] | None = None  # not taken: not tried again
        self._reading_timer = False

    # --- lifecycle ----------------------------------------------------------------
    async def start(self, api: Api) -> None:
        self.sup = sup = api
        self.epoch_file = sup.state_dir / "redundancy.json"
        try:
            saved = json.loads(self.epoch_file.read_text())
            self.epoch = int(saved.get("epoch", 0))
            self.last_switchover = saved.get("last_switchover")
            timing = saved.get("partner_timing")
            self.partner_timing = timing if isinstance(timing, dict) else None
            # an operator's `redu prefer` outlives a restart of both servers; an edit of the
            # configured preference since (the file is the newer word) drops it
            if saved.get("configured") == self.spec.preferred:
                self.preferred = _preference(saved.get("preferred"), self.spec)
        except (OSError, ValueError, AttributeError):
            pass
        # The project machine starts with "active" off (not decided yet): nothing to tell.

    async def stop(self) -> None:
        self._drop_timer()
        self._save()

    def _save(self) -> None:
        data = {"epoch": self.epoch, "last_switchover": self.last_switchover,
                "preferred": self.preferred, "configured": self.spec.preferred,
                "partner_timing": self.partner_timing}
        try:
            write_atomically(self.epoch_file, json.dumps(data).encode())
        except OSError as exc:
            self.sup.events.write("state-write-failed", f"cannot write {self.epoch_file}: {exc}")

    def on_manager(self, manager: "Manager", old: ManagerState | None) -> None:
        # Without its redundancy manager this server does not know its role any more.
        if manager.spec.redundancy and not manager.alive and self.role is not None:
            self.role = None
            self.report = {}
            self._unwatch()
            self._drop_timer()
            self.self_fenced = None  # a new redundancy manager decides anew (from passive)
            self.sup.loop.call_soon(self._tell_role)  # not from inside the machine's report
        self.sup.loop.call_soon(self._poke)

    def on_project(self, state: ProjectState) -> None:
        self.sup.loop.call_soon(self._poke)

    def _poke(self, always: bool = False) -> None:
        """Wake the redundancy manager's sync (SIGUSR2) when what it gets from pmon changed,
        so an error state or an operator's request reaches the pair without waiting for the
        idle sync. POSIX only; elsewhere the idle sync (1 s) carries it."""
        pid = self.report.get("pid")
        if not isinstance(pid, int) or not hasattr(signal, "SIGUSR2") or self.sup.pid_of(pid) is None:
            return
        now = (self.error_breakdown(), self.available(), tuple(self._fence_pids()))
        if now == self._poked and not always:
            return
        self._poked = now
        try:
            os.kill(pid, signal.SIGUSR2)
        except OSError:
            pass

    # --- the self-fence ------------------------------------------------------------------
    def on_notify(self, manager: "Manager", fields: Mapping[str, str]) -> None:
        """The redundancy manager's beat: five a second, so only a time and a timer here."""
        if manager.spec.redundancy and fields.get("WATCHDOG") == "1":
            self.beat_at = self.sup.loop.time()
            self._watch()

    def _watch(self) -> None:
        """(Re)arm the watchdog at the last beat (or the activation) + self_fence. With the
        beat's timer the kernel keeps the last beat: pmon waits on the timer's expiry, and
        on a timer of its own only while the activation is newer than an expired beat."""
        if self.role != "active" or self.self_fenced is not None:
            return
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        now = self.sup.loop.time()
        if self._timer is not None:
            if not self._reading_timer:
                self.sup.loop.add_reader(self._timer[2], self._expired)
                self._reading_timer = True
            if self._timer_left() > 0:
                return  # the expiry wakes pmon (_expired)
        due = now + max(0.0, self.spec.self_fence - self._silence(now))
        self._watchdog = self.sup.loop.call_at(due, self._silent)

    def _unwatch(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._reading_timer and self._timer is not None:
            self.sup.loop.remove_reader(self._timer[2])
        self._reading_timer = False

    def _beat_ago(self, now: float) -> float:
        """How long ago the redundancy manager last beat (inf: never, or its timer expired:
        more than self_fence ago): by the beat's timer while pmon holds it, or by the last
        datagram if that is later. A redundancy manager whose re-arm failed drops its timer
        and beats by datagram at once; pmon's copy of the timer then expires, and until the
        next sync tells pmon so, the datagrams are the beat (not a self-fence)."""
        datagram = float("inf") if self.beat_at is None else now - self.beat_at
        if self._timer is not None:
            left = self._timer_left()
            return min(self.spec.self_fence - left if left > 0 else float("inf"), datagram)
        return datagram

    def _silence(self, now: float) -> float:
        """The beat's silence, counted from the activation at the latest (the beat is owed
        from then on)."""
        return min(self._beat_ago(now), now - self.watch_from)

    def _timer_left(self) -> float:
        assert self._timer is not None
        try:
            return beat_timer.remaining(self._timer[2])
        except OSError:
            return 0.0  # as good as expired: the fence decides by the time since watch_from

    def _expired(self) -> None:
        """The beat's timer expired: the loop has not beaten for self_fence."""
        if self._timer is not None:
            beat_timer.clear(self._timer[2])
        self._silent()

    def _take_timer(self, report: dict[str, Any]) -> str:
        """Hold the beat's timer of the redundancy manager that sent `report` (only of the
        one pmon runs); what the reply tells it: "timer" (no datagram needed) or "datagram"."""
        pid, fd = report.get("pid"), report.get("beat_timer")
        ours = any(m.spec.redundancy and m.pid == pid and m.alive for m in self.sup.managers.values())
        wanted = (pid, fd) if ours and type(pid) is int and type(fd) is int else None
        if wanted != (self._timer[:2] if self._timer else None):
            watching = self._reading_timer or self._watchdog is not None
            self._unwatch()
            self._drop_timer()
            if wanted is not None and wanted != self._timer_refused and beat_timer.available():
                try:
                    self._timer = (*wanted, beat_timer.take(*wanted))
                except OSError:  # not allowed (ptrace_scope), or too old a kernel
                    self._timer_refused = wanted
            if watching:
                self._watch()
        return "timer" if self._timer is not None else "datagram"

    def _drop_timer(self) -> None:
        if self._timer is not None:
            now = self.sup.loop.time()
            ago = self._beat_ago(now)
            if ago < float("inf"):  # the datagram's watch goes on from the timer's last beat
                self.beat_at = max(self.beat_at or float("-inf"), now - ago)
            self._unwatch()
            os.close(self._timer[2])
            self._timer = None

    def _silent(self) -> None:
        self._watchdog = None
        # After a stall of pmon itself (a SIGSTOP), this timer can run before the reader of
        # the beats that waited meanwhile: take them first (each re-arms the watchdog).
        self.sup.take_notifications()
        if self._watchdog is not None:
            return
        now = self.sup.loop.time()
        silent = self._silence(now)
        if self.role != "active" or self.self_fenced is not None:
            return
        if silent < self.spec.self_fence:  # a beat came (the timer was not moved): later
            self._watch()
            return
        if self._timer is not None:  # an expired timer tells no more than that
            silent = self.spec.self_fence
        why = f"self-fenced: redundancy manager silent for {silent:.2f} s"
        self.self_fenced = {"at": time.time(), "silent": round(silent, 3), "why": why}
        self.sup.events.write(
            "self-fenced", f"{why} (bound {self.spec.self_fence:g} s); stopping the run_on = "
            f'"active" managers, SIGKILL after {self.spec.self_fence_kill:g} s at most',
            server=self.spec.name, silent=round(silent, 3), bound=self.spec.self_fence)
        self._unwatch()  # (the timer's reader) until the next activation
        self.sup.set_condition("active", False, why, enforce=True,
                               kill_in=self.spec.self_fence_kill)
        self._poke(always=True)  # the redundancy manager hears of it at its next sync
        self.sup.changed()

    def _end_self_fence(self, role: str) -> None:
        if self.self_fenced is None:
            return
        self.self_fenced = None
        self.sup.events.write(
            "self-fence-ended", f"self-fence ended: the redundancy manager is back and says "
            f"this server ({self.spec.name}) is {role}", server=self.spec.name, role=role)

    def _fence_pids(self) -> list[int]:
        """The run_on = "active" managers that run: what the redundancy manager fences when
        pmon stops answering (each is the leader of its own process group)."""
        return sorted(m.pid for m in self.sup.managers.values()
                      if m.spec.run_on == "active" and m.alive and m.pid)

    def spawn_env(self, manager: "Manager") -> dict[str, str]:
        """A run_on = "active" manager starts only while the redundancy manager confirmed the
        role within pmon_timeout: after a stall of pmon it may have fenced and handed over."""
        if manager.spec.run_on == "active" and self.synced_at is not None and (
                time.monotonic() - self.synced_at >= self.spec.pmon_timeout):
            raise SpawnRefused(f"this server ({self.spec.name}) has not heard its redundancy "
                               f"manager for {self.spec.pmon_timeout:g} s; the role is not sure")
        if manager.spec.run_on == "active" and self.self_fenced is not None:
            raise SpawnRefused(f"this server ({self.spec.name}) is self-fenced: "
                               f"{self.self_fenced['why']}")
        if manager.spec.run_on == "active" and self.report.get("fencing"):
            raise SpawnRefused(f"this server ({self.spec.name}) is fencing its run_on = "
                               '"active" managers (it lost the witness\'s lease)')
        return {}

    def release_bound(self) -> float:
        """How long a handover may wait for the old active's drivers to stop (the release,
        docs/redundancy.md "Fencing"); the redundancy manager gets it at every sync."""
        from pmon.redundancy.settings import release_bound
        return release_bound((m.spec.seconds_to_kill for m in self.sup.managers.values()
                              if m.spec.run_on == "active"), self.spec)

    def _tell_role(self) -> None:
        """The project machine's condition "active" follows this server's role. Not knowing
        the role stops nothing (the pair decides soon); passive stops the drivers."""
        if self.self_fenced is not None:
            return  # stays off until the redundancy manager is passive (_end_self_fence)
        if self.role == "active" and self.report.get("fencing"):
            # the redundancy manager fences (a lost lease; pmon late): it ends passive, and
            # its own signals follow; pmon's stop keeps its exits from counting as crashes
            self.sup.set_condition(
                "active", False, f'this server ({self.spec.name}) is fencing its run_on = '
                '"active" managers (its redundancy manager lost the witness\'s lease, or its pmon)',
                enforce=True, kill_in=self.spec.fence_grace)
            return
        self.sup.set_condition(
            "active", self.role == "active",
            f"this server ({self.spec.name}) is {self.role or 'not decided yet'}",
            enforce=self.role is not None,
        )

    # --- what pmon knows -------------------------------------------------------------
    def should_run(self, manager: "Manager") -> bool:
        spec = manager.spec
        return (manager.wanted and spec.start is not StartType.ONCE and not spec.redundancy
                and (spec.run_on != "active" or self.role == "active"))

    def error_breakdown(self) -> dict[str, float]:
        """This server's error sources, from pmon's view (links are added by the manager)."""
        out: dict[str, float] = {}
        for manager in self.sup.managers.values():
            weight = manager.spec.weight if manager.spec.weight is not None else self.spec.manager_weight
            if weight and self.should_run(manager) and (not manager.alive or manager.ready_failed):
                out[f"manager {manager.spec.name}"] = weight
        try:
            verdict = self.sup.plugin_error_state()
            if verdict > 0:
                out["plugins"] = verdict
        except Exception as exc:  # a plugin's bug must not stop the pair
            self.sup.events.write("plugin-error", f"plugin error state failed: {exc!r}")
        return out

    def available(self) -> bool:
        return self.sup.project_state is ProjectState.RUNNING and not any(
            m.state is S.BLOCKED and m.wanted for m in self.sup.managers.values()
        )

    def pair_timing(self) -> tuple[float, float]:
        """(heartbeat_interval, timeout) as the pair waits them: the longer of both sides',
        as the redundancy manager reports them; this side's own until it does."""
        timing = self.report.get("timing")
        waits = [self.spec.heartbeat_interval, self.spec.timeout]
        for i, key in enumerate(("heartbeat_interval", "timeout")):
            said = timing.get(key) if isinstance(timing, dict) else None
            if isinstance(said, (int, float)) and 0 < said <= 3600:
                waits[i] = max(waits[i], float(said))
        return waits[0], waits[1]

    def partner(self) -> dict[str, Any] | None:
        return self.report.get("partner") if self.fresh() else None

    def fresh(self) -> bool:
        return self.synced_at is not None and time.monotonic() - self.synced_at < max(
            2.0, 3 * self.spec.timeout)

    def partner_available(self) -> bool:
        partner = self.partner()
        return bool(partner and partner.get("available"))

    # --- the redundancy manager's sync ----------------------------------------------------
    def sync(self, report: dict[str, Any]) -> dict[str, Any]:
        sent = report.get("sent")
        if isinstance(sent, (int, float)) and time.monotonic() - sent > self.spec.pmon_timeout:
            # it waited out a stall of pmon in the socket: its sender gave up on it (and may
            # have fenced and handed over since); its word would reopen the start gate
            return {"stale": True}
        before = self._signature()
        was_fencing = bool(self.report.get("fencing"))
        self.report = report
        self.synced_at = time.monotonic()
        self._tell_strangers(report)
        self._tell_differ(report)
        beat = self._take_timer(report)  # before a role change arms the watchdog
        epoch = report.get("epoch")
        changed = False
        if isinstance(epoch, int) and epoch > self.epoch:
            self.epoch, changed = epoch, True
        preferred = _preference(report.get("preferred"), self.spec)
        if preferred is not None and preferred["seq"] > 0 and preferred != self.preferred:
            self.preferred, changed = preferred, True  # an operator's prefer: kept on disk
        timing = report.get("partner_timing")
        if isinstance(timing, dict) and timing != self.partner_timing:
            self.partner_timing, changed = timing, True  # for its next run: on disk, as the epoch
        if changed:
            self._save()
        role = report.get("role")
        if self.self_fenced is not None and role == "passive":
            self._end_self_fence(role)  # it gave the role up: from here on, as it decides
        if role in ("active", "passive") and role != self.role:
            self._role_changed(role, report)
        elif bool(report.get("fencing")) != was_fencing:
            self._tell_role()  # a fence: pmon stops the drivers itself, and restarts none
        damp = report.get("damp")
        if isinstance(damp, (int, float)) and not isinstance(damp, bool):
            self.damp_until = max(self.damp_until, time.monotonic() + min(float(damp), 3600.0))
        queries = report.get("queries")
        if isinstance(queries, int) and queries != self.queries:
            if queries > self.queries and role == self.role == "active":
                self._general_query("the partner lost a split brain")
            self.queries = queries
        if self._signature() != before:
            self.sup.changed()  # wake waiters (set-active waits for the new role)
        requests, self.requests = self.requests, []
        self._poked = (self.error_breakdown(), self.available(), tuple(self._fence_pids()))
        # "seq" names the report this answers: the redundancy manager takes a restart or
        # the end of a handover only from a reply to a report that asked for it
        return {"seq": report.get("seq"), "breakdown": self._poked[0], "available": self._poked[1],
                "epoch": self.epoch, "requests": requests, "fence": list(self._poked[2]),
                "preferred": self.preferred, "release_bound": self.release_bound(),
                "fence_names": [m.spec.name for m in self.sup.managers.values()
                                if m.spec.run_on == "active"],
                "damp": round(max(0.0, self.damp_until - time.monotonic()), 3),
                "partner_timing": self.partner_timing,
                "self_fenced": self.self_fenced is not None, "beat": beat,
                **self._fence_cgroups()}

    def _tell_differ(self, report: dict[str, Any]) -> None:
        """An event when the settings that differ from the partner's change (and are some):
        the first 16 such changes."""
        from pmon.redundancy.settings import differ_text
        differ = report.get("settings_differ")
        if not isinstance(differ, dict) or differ == self.differ_told:
            return
        self.differ_told = differ
        if differ and self.differ_events < 16:
            self.differ_events += 1
            self.sup.events.write("redundancy-settings-differ", f"the partner's [redundancy] "
                                  f"settings differ: {differ_text(differ)}", differ=differ)

    def _tell_strangers(self, report: dict[str, Any]) -> None:
        """An event for each new sender a link dropped (link.py: not the partner's host), the
        first 64: the redundancy manager's heartbeat loop writes to no disk itself."""
        links = report.get("links")
        for i, link in enumerate(links if isinstance(links, list) else [], 1):
            sender = link.get("stranger") if isinstance(link, dict) else None
            if not sender or (i, sender) in self.strangers_told or len(self.strangers_told) >= 64:
                continue
            self.strangers_told.add((i, sender))
            self.sup.events.write(
                "redundancy-stranger", f"link {i}: heartbeats from {sender} dropped: the partner "
                f"is {link.get('partner_address')} (another server sends here by mistake, or the "
                "partner's link `local` is not the address this side's `partner` names)",
                link=i, sender=sender, partner=link.get("partner_address"))

    def _fence_cgroups(self) -> dict[str, Any]:
        """With cgroup containment: the cgroups of the managers to fence (their helpers are
        in them, not in their process groups), and pmon's pid and home cgroup (pmon may sit
        in one of them for a spawn; the fence moves it out first)."""
        where = self.sup.cgroups()
        if where is None:
            return {}
        cgroup_of, home = where
        # every run_on = "active" manager's, running or not: one restarted after this sync
        # (just before a stall) is in its cgroup, and the fence finds it there
        return {"fence_cgroups": [str(cgroup_of(m.spec.name)) for m in self.sup.managers.values()
                                  if m.spec.run_on == "active"],
                "pmon": {"pid": os.getpid(), "home": str(home)}}

    def _signature(self) -> tuple[Any, ...]:
        """What commands wait on; a change wakes them (and rewrites the state file)."""
        partner = self.report.get("partner") or {}
        return (self.role, partner.get("role"), partner.get("available"),
                self.report.get("preferred"), self.report.get("forced"))  # (compared, not kept)

    def _role_changed(self, role: str, report: dict[str, Any]) -> None:
        old, self.role = self.role, role
        me, partner = self.spec.name, self.spec.partner
        active, previous = self._active_and_previous(role, report)
        reason = report.get("reason") or "start"
        event = {"server": me, "role": role, "active": active, "reason": reason,
                 "epoch": self.epoch, "at": time.time()}
        if old is None:
            self.sup.events.write(
                "redundancy-role", f"this server ({me}) is {role} ({reason})", **event)
        else:
            self.last_switchover = event
            self._save()
            self.sup.events.write(
                "switchover", f"switchover: {active} is active now ({reason}); "
                f"this server ({me}) is {role}", **event)
        running = self._notifiable()  # before the machine starts anything for the new role
        if role == "active":
            self.watch_from = self.sup.loop.time()  # the beat is owed from now on
            self._watch()
        else:
            self._unwatch()
        self._tell_role()  # the machine stops or starts the run_on = "active" managers
        # Only a project that runs diverged; a stopped, blocked or stopping one (an
        # operator's `stop --all --force`, a block, a shutdown) stays as it is.
        restart = bool(report.get("restart_project")) and self.sup.project_state in (
            ProjectState.STARTING, ProjectState.RUNNING)
        if restart:
            self.sup.restart_project(f"split-brain resolution: {partner} stays active")
        elif old is not None:
            self._general_query(f"switchover: {active} is active", running)
        if old is not None:
            self.sup.switchover(active, previous, reason)

    def _active_and_previous(self, role: str, report: dict[str, Any]) -> tuple[str, str]:
        """The newly and formerly active servers of a switchover to `role` (a pair's: this
        server and its partner)."""
        me, partner = self.spec.name, self.spec.partner
        return (me, partner) if role == "active" else (partner, me)

    def _notifiable(self) -> set[str]:
        return {m.spec.name for m in self.sup.managers.values()
                if m.spec.notify_switchover and m.state is S.RUNNING and m.pid}

    def _general_query(self, why: str, among: set[str] | None = None) -> None:
        """SIGUSR1 ("run your general query") to the running managers that asked for it and
        keep running in this server's new role: not to a run_on = "active" one on a server
        that is passive now (it is being stopped), nor to one that is not running yet (it
        has no handler, and queries everything at start anyway)."""
        if not hasattr(signal, "SIGUSR1"):
            return  # Windows: not offered (docs/redundancy.md)
        told = []
        for m in self.sup.managers.values():
            if not (m.spec.notify_switchover and m.state is S.RUNNING and m.pid):
                continue
            if among is not None and m.spec.name not in among:
                continue
            if m.spec.run_on == "active" and self.role != "active":
                continue
            try:
                os.kill(m.pid, signal.SIGUSR1)
                told.append(m.spec.name)
            except OSError:
                pass
        if told:
            self.sup.events.write("general-query", f"SIGUSR1 to {', '.join(told)} ({why})",
                                  managers=told, reason=why)

    # --- operators -----------------------------------------------------------------------
    def server_available(self, server: str) -> tuple[bool, str]:
        if server == self.spec.name:
            if self.available():
                return True, ""
            return False, f"this server ({server}) is not available (project {self.sup.project_state.value}" + (
                ", blocked managers)" if any(m.state is S.BLOCKED for m in self.sup.managers.values()) else ")")
        partner = self.partner()
        if partner is None:
            return False, f"the partner ({server}) is not available: not connected"
        if not partner.get("available"):
            return False, (f"the partner ({server}) is not available: project not fully "
                           "started or blocked managers")
        return True, ""

    def set_active(self, server: str, force: bool) -> None:
        if server not in (self.spec.name, self.spec.partner):
            raise CommandError(f"no server '{server}' in this pair; servers: "
                               f"{self.spec.name}, {self.spec.partner}")
        if self.role is None:
            raise CommandError("the redundancy manager has not decided this server's role yet; "
                               "try again in a moment")
        if self.partner() is None and server == self.spec.partner:
            raise CommandError(f"the partner ({server}) is not connected: it cannot be made active")
        if not force:
            if self.partner() is None:
                raise CommandError(f"a planned switchover needs the partner "
                                   f"({self.spec.partner}), which is not connected; "
                                   "add --force to switch anyway")
            ok, why = self.server_available(server)
            if not ok:
                raise CommandError(f"planned switchover refused: {why}; add --force to switch anyway")
        self.requests.append({"op": "force", "server": server,
                              "by": f"set-active on {self.spec.name}"})
        self._poke(always=True)

    def prefer(self, server: str) -> None:
        if server not in (self.spec.name, self.spec.partner):
            raise CommandError(f"no server '{server}' in this pair; servers: "
                               f"{self.spec.name}, {self.spec.partner}")
        self.requests.append({"op": "prefer", "server": server})
        self._poke(always=True)

    def active_server(self) -> str | None:
        if self.role == "active":
            return self.spec.name
        partner = self.partner()
        if partner and partner.get("role") == "active":
            return self.spec.partner
        return None

    def stop_refusal(self) -> str | None:
        """Why stopping this server's project would be unsafe (SIMATIC's exit prevention)."""
        if self.role != "active":
            return None
        partner = self.partner()
        if partner is None:
            return (f"this server ({self.spec.name}) is active and its partner "
                    f"({self.spec.partner}) is not connected")
        if not partner.get("available"):
            return (f"this server ({self.spec.name}) is active and its partner "
                    f"({self.spec.partner}) is not available (project not fully started or "
                    "blocked managers)")
        return None

    def _self_fence_status(self) -> dict[str, Any] | None:
        now = self.sup.loop.time()
        ago = self._beat_ago(now)
        heard = None if ago == float("inf") else round(ago, 3)
        return {"after": self.spec.self_fence, "kill": round(self.spec.self_fence_kill, 3),
                "beat": "timer" if self._timer is not None else "datagram",
                "watching": self.role == "active" and self.self_fenced is None,
                "beat_ago": heard, "fenced": self.self_fenced}

    def status(self) -> dict[str, Any]:
        report = self.report if self.fresh() else {}
        partner = report.get("partner")
        return {
            "server": self.spec.name,
            "role": self.role or "starting",
            "partner": self.spec.partner,
            "partner_connected": partner is not None,
            "partner_available": bool(partner and partner.get("available")),
            "partner_role": partner.get("role") if partner else None,
            "error_state": report.get("error", sum(self.error_breakdown().values())),
            "error_breakdown": report.get("breakdown", self.error_breakdown()),
            "partner_error_state": partner.get("error") if partner else None,
            "partner_error_breakdown": partner.get("breakdown") if partner else None,
            "available": self.available(),
            "links": report.get("links", []),
            # what the pair waits (the longer of both sides'), the partner's own as its
            # heartbeats say, and this side's (docs "When the two sides' settings differ")
            "timing": report.get("timing"),
            "partner_timing": report.get("partner_timing"),
            "own_timing": report.get("own_timing"),  # as the running redundancy manager has it
            "settings_differ": report.get("settings_differ") or {},  # {key: {here, partner}}
            "preferred": (report.get("preferred") or {}).get("server", self.spec.preferred),
            "forced": report.get("forced"),  # the last one, also once ended (when, why)
            "fencing": bool(report.get("fencing")),
            # the last fence ended by its bound, something of it alive (docs "Fencing")
            "fence_overrun": bool(report.get("fence_overrun")),
            "releasing": bool(report.get("releasing")),
            # the last release ended by its bound, unconfirmed by pmon (docs "Fencing")
            "release_overrun": bool(report.get("release_overrun")),
            "release_bound": report.get("release_bound"),  # as the redundancy manager has it
            "self_fence": self._self_fence_status(),
            "witness": report.get("witness"),  # None without one
            "epoch": self.epoch,
            "last_switchover": self.last_switchover,
            "dropped": report.get("dropped", {}),
            "misaddressed": report.get("misaddressed"),  # the last unknown one's [from, to]
            # the redundancy manager's beats: at rest (the settled heartbeat repeated) or full
            "beats": report.get("beats"),
            "redundancy_manager": "connected" if self.fresh() else "not connected",
        }


def _preference(value: Any, spec: RedundancySpec) -> dict[str, Any] | None:
    """An operator's preference as the redundancy manager reports it, if well formed and
    naming a server of this pair."""
    if not isinstance(value, dict) or value.get("server") not in (spec.name, spec.partner) or \
            not isinstance(value.get("seq"), int) or isinstance(value.get("seq"), bool):
        return None
    return {"server": value["server"], "seq": value["seq"]}
