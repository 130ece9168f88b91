"""pmon's side of a group of three or more servers (`[redundancy] group`): the pair's
extension (redundancy.py) with what differs for a group.

- The other members are not one partner: what pmon knows of them is the redundancy
  manager's report (`group`: every member's record in etcd, the leader, the ranking).
- `set-active X` names any member; it is refused while X is not available (unless forced);
  `prefer` is refused: a group's preference is its configuration (`preferred`, then the
  order of `group`).
- pmon stops its run_on = "active" managers itself when its redundancy manager has not
  synced for pmon_timeout (a frozen or hung redundancy manager stops renewing its lease, and
  another member takes the role once it expired; pmon_timeout + fence_grace + 1 <= ttl,
  checked in settings.py, leaves that stop the time it needs).
"""

from __future__ import annotations

import asyncio
from typing import Any

from pmon.errors import CommandError
from pmon.extensions.redundancy import RedundancyService


class GroupService(RedundancyService):
    name = "redundancy"
    _sync_silence: asyncio.TimerHandle | None = None

    def group(self) -> dict[str, Any]:
        report = self.report if self.fresh() else {}
        group = report.get("group")
        return group if isinstance(group, dict) else {}

    def member(self, name: str) -> dict[str, Any] | None:
        return next((m for m in self.group().get("members", []) if m.get("name") == name), None)

    # --- the redundancy manager's sync --------------------------------------------------
    def sync(self, report: dict[str, Any]) -> dict[str, Any]:
        reply = super().sync(report)
        if reply.get("stale"):
            return reply  # taken for none: the silence counts on (a hung loop's reports)
        if self._sync_silence is not None:
            self._sync_silence.cancel()
        self._sync_silence = self.sup.loop.call_later(self.spec.pmon_timeout, self._sync_silent)
        return reply

    def _sync_silent(self) -> None:
        """The redundancy manager did not sync for pmon_timeout: it may not renew its lease
        any more, so the role is not sure; stop the drivers now, before another member may
        take the role (when the lease expires)."""
        self._sync_silence = None
        if self.role is None:
            return
        self.role = None
        self.sup.set_condition(
            "active", False, f"this server ({self.spec.name}) has not heard its redundancy "
            f"manager for {self.spec.pmon_timeout:g} s; the role is not sure", enforce=True,
            kill_in=self.spec.fence_grace)  # done before the lease can expire (the ttl rule)

    def _watch(self) -> None:
        """No watchdog on the beat (a pair's self-fence): a group's redundancy manager does
        not send WATCHDOG=1; its silence is judged by its syncs (`_sync_silent`), well within
        its lease's TTL."""

    def _self_fence_status(self) -> dict[str, Any] | None:
        return None  # no beat, no watchdog: nothing to show

    def _signature(self) -> tuple[Any, ...]:
        """What commands wait on (set-active: the leader and its role) wakes them."""
        group = self.report.get("group") if isinstance(self.report.get("group"), dict) else {}
        roles = tuple((m.get("name"), m.get("role"), m.get("available"))
                      for m in (group or {}).get("members", []))
        return (*super()._signature(), (group or {}).get("leader"), roles)

    def _active_and_previous(self, role: str, report: dict[str, Any]) -> tuple[str, str]:
        group = report.get("group") if isinstance(report.get("group"), dict) else {}
        handover = (group or {}).get("handover") or {}
        if role == "active":
            return self.spec.name, str(handover.get("from") or "-")
        return str(handover.get("to") or (group or {}).get("leader") or "-"), self.spec.name

    # --- operators -----------------------------------------------------------------------
    def server_available(self, server: str) -> tuple[bool, str]:
        if server == self.spec.name:
            return super().server_available(server)
        member = self.member(server)
        if member is None or not member.get("live"):
            return False, f"member {server} is not in etcd (not running, or its lease expired)"
        if not member.get("available"):
            return False, (f"member {server} is not available: project not fully started, "
                           "blocked managers, or its pmon does not answer")
        return True, ""

    def set_active(self, server: str, force: bool) -> None:
        if server not in self.spec.group:
            raise CommandError(f"no server '{server}' in this group; members: "
                               f"{', '.join(self.spec.group)}")
        if self.role is None:
            raise CommandError("the redundancy manager has not decided this server's role yet; "
                               "try again in a moment")
        ok, why = self.server_available(server)
        live = server == self.spec.name or bool((self.member(server) or {}).get("live"))
        if not ok and (not force or not live):
            raise CommandError(f"set-active refused: {why}" +
                               ("; add --force to switch anyway" if live else ""))
        self.requests.append({"op": "force", "server": server,
                              "by": f"set-active on {self.spec.name}"})
        self._poke(always=True)

    def prefer(self, server: str) -> None:
        raise CommandError(
            "a group's preference is its configuration: [redundancy] preferred, then the order "
            f"of group ({', '.join(self.spec.preference)}); change it there on every member")

    def active_server(self) -> str | None:
        if self.role == "active":
            return self.spec.name
        leader = self.group().get("leader")
        member = self.member(leader) if isinstance(leader, str) else None
        return leader if member is not None and member.get("role") == "active" else None

    def stop_refusal(self) -> str | None:
        if self.role != "active":
            return None
        others = [m for m in self.group().get("members", [])
                  if m.get("name") != self.spec.name and m.get("live") and m.get("available")]
        if not others:
            return (f"this server ({self.spec.name}) is active and no other member of the group "
                    "is available")
        return None

    def status(self) -> dict[str, Any]:
        return {**super().status(), "group": {
            "members": self.group().get("members", []), "leader": self.group().get("leader"),
            "order": self.group().get("order", []), "handover": self.group().get("handover"),
            # what the group ranks by (every member's own while they differ)
            "preference": self.group().get("preference") or list(self.spec.preference),
            "preferences": self.group().get("preferences"), "groups": self.group().get("groups")}}
