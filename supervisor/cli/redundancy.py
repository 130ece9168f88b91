"""`pmon redu ...`: thin click commands over the redu-* control commands.

`register(main, call, config_option)` is called by cli/__init__.py with its own helpers
(this module does not import pmon.cli: `python -m pmon.cli` would import it twice).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import click

def _when(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at else "-"


def _errors(total: Any, breakdown: dict[str, float] | None) -> str:
    if total is None:
        return "-"
    parts = ", ".join(f"{k} {v:g}" for k, v in (breakdown or {}).items())
    return f"{total:g}" + (f" ({parts})" if parts else "")


def print_status(s: dict[str, Any]) -> None:
    if s["role"] == "standalone":
        click.echo(f"project {s['project']}: standalone (no [redundancy] section)")
        return
    if s.get("group"):
        print_group(s)
        return
    click.echo(f"server {s['server']}: {s['role']}  (epoch {s['epoch']})")
    click.echo(f"  error state: {_errors(s['error_state'], s['error_breakdown'])}")
    partner = "available" if s["partner_available"] else (
        "connected, not available" if s["partner_connected"] else "not connected")
    click.echo(f"partner {s['partner']}: {s['partner_role'] or '-'}, {partner}")
    click.echo(f"  error state: {_errors(s['partner_error_state'], s['partner_error_breakdown'])}")
    for i, link in enumerate(s["links"], 1):
        heard = "never" if link["last_heard"] is None else f"{link['last_heard']:.2f} s ago"
        click.echo(f"link {i} {link['link']}: {'up' if link['up'] else 'DOWN'} (heard {heard}, "
                   f"send errors {link['send_errors']})")
        if link.get("strangers"):
            click.echo(f"  {link['strangers']} datagrams dropped from {link['stranger']}, which is "
                       f"not the partner's host {link.get('partner_address')}: another server "
                       "sends here by mistake, or the partner's link `local` is not the address "
                       "this side's `partner` names ([[redundancy.links]])")
    mine, theirs = s.get("own_timing"), s.get("partner_timing")
    if mine and theirs and any(theirs.get(k) != v for k, v in mine.items()):
        differ = ", ".join(f"{k} {theirs.get(k, 0):g} s (here {v:g} s)" for k, v in mine.items()
                           if theirs.get(k) != v)
        click.echo(f"the partner's timing differs: {differ}; both sides wait the longer of "
                   "each, so failover takes the longer timeout. Give both projects the same "
                   "[redundancy] heartbeat_interval, timeout and fence_grace")
    if s.get("settings_differ"):
        from pmon.redundancy.settings import differ_text
        click.echo(f"the partner's [redundancy] settings differ: {differ_text(s['settings_differ'])}; "
                   "give both projects the same values")
    click.echo(f"preferred: {s['preferred']}")
    forced = s.get("forced")
    if forced:
        given = f"given {_when(forced.get('at'))} by {forced.get('by') or '-'}"
        state = (f"ended {_when(forced.get('ended_at'))} ({forced['ended']})"
                 if forced.get("ended") else "in force")
        click.echo(f"forced: {forced['server']}, {state}; {given}")
    if s.get("fencing"):
        click.echo("fencing: stopping the run_on = \"active\" managers (pmon does not answer or the lease is lost)")
    if s.get("fence_overrun"):
        click.echo("fence overrun: the last fence ended by its bound with processes of it alive "
                   "(the redundancy manager's log names them)")
    if s.get("releasing"):
        click.echo('releasing: handed over; pmon still stops the run_on = "active" managers '
                   "(the partner waits)")
    guard = s.get("self_fence")
    if guard and guard.get("fenced"):
        fenced = guard["fenced"]
        click.echo(f"{fenced['why']} ({_when(fenced.get('at'))}); the run_on = \"active\" "
                   "managers stay stopped until the redundancy manager gives the role up")
    elif guard and guard.get("watching"):
        ago = guard.get("beat_ago")
        heard = "no beat yet" if ago is None else f"beat {ago:.2f} s ago"
        click.echo(f"self-fence: watching the redundancy manager ({heard}; self-fences after "
                   f"{guard['after']:g} s of silence)")
    witness = s.get("witness")
    if witness:
        state = "held" if witness.get("held") else ("wanted, not held" if witness.get("wanted")
                                                    else "not held")
        failsafe = "; failsafe: active without it, the partner agrees" if witness.get("failsafe") else ""
        error = f"; etcd: {witness['error']}" if witness.get("error") else ""
        click.echo(f"witness {witness.get('key')}: lease {state}{failsafe}{error}")
    last = s.get("last_switchover")
    if last:
        click.echo(f"last switchover: {_when(last['at'])}, {last['active']} active ({last['reason']})")
    else:
        click.echo("last switchover: none")
    dropped = {k: v for k, v in (s.get("dropped") or {}).items() if v}
    if dropped:
        click.echo("dropped datagrams: " + ", ".join(f"{k} {v}" for k, v in dropped.items()))
    wrong = s.get("misaddressed")
    if dropped.get("unknown") and wrong:
        own = list(wrong) == [s["server"], s["partner"]]
        click.echo(f"  the last unknown one came from '{wrong[0]}' for '{wrong[1]}', but this "
                   f"server is '{s['server']}' and hears only '{s['partner']}': "
                   + (f"another server is also called '{wrong[0]}', or a link's `partner` "
                      "names this server's own `local`" if own else
                      "the two servers' [redundancy] name and partner must mirror each other"))
    if s["redundancy_manager"] != "connected":
        click.echo("redundancy manager: not connected")


def print_group(s: dict[str, Any]) -> None:
    """A group: every member (as etcd has its record), its role, error state, availability."""
    group = s["group"]
    click.echo(f"server {s['server']}: {s['role']}  (group of {len(group['members'])}, "
               f"leader {group.get('leader') or '-'})")
    for m in group["members"]:
        here = " (this server)" if m["name"] == s["server"] else ""
        if not m.get("live"):
            click.echo(f"  {m['name']}{here}: not in etcd (down, or its lease expired)")
            continue
        state = "available" if m.get("available") else "not available"
        pmon = "" if m.get("can_act") else ", pmon silent"
        fencing = ", fencing" if m.get("fencing") else ""
        rank = f", rank {m['rank']}" if m.get("rank") else ""
        click.echo(f"  {m['name']}{here}: {m.get('role') or '-'}, {state}{pmon}{fencing}{rank}; "
                   f"error state {_errors(m.get('error'), m.get('breakdown'))}")
    click.echo(f"preference: {', '.join(group.get('preference', []))}")
    differ = group.get("preferences")
    if differ:
        each = "; ".join(f"{name} {', '.join(order)}" for name, order in sorted(differ.items()))
        click.echo(f"  the members' preferences differ ({each}): the group follows "
                   f"{min(differ)}'s, the first name (also while it is down), until they "
                   "agree; give every member the same [redundancy] preferred and group order")
    lists = group.get("groups")
    if lists:
        each = "; ".join(f"{name} {', '.join(names)}" for name, names in sorted(lists.items()))
        click.echo(f"  the members' group lists differ ({each}): a member reads only the "
                   "records of those in its own list; give every member the same [redundancy] group")
    handover = group.get("handover")
    if handover:
        click.echo(f"handover: to {handover['to']} ({handover['reason']}), stopping the drivers")
    forced = s.get("forced")
    if forced:
        state = (f"ended {_when(forced.get('ended_at'))} ({forced['ended']})"
                 if forced.get("ended") else "in force")
        click.echo(f"forced: {forced['server']}, {state}; given {_when(forced.get('at'))} "
                   f"by {forced.get('by') or '-'}")
    witness = s.get("witness") or {}
    error = f"; etcd: {witness['error']}" if witness.get("error") else ""
    click.echo(f"witness {witness.get('key')}: lease {'held' if witness.get('held') else 'NOT held'}{error}")
    last = s.get("last_switchover")
    click.echo(f"last switchover: {_when(last['at'])}, {last['active']} active ({last['reason']})"
               if last else "last switchover: none")
    if s["redundancy_manager"] != "connected":
        click.echo("redundancy manager: not connected")


def register(main: click.Group, call: Callable[..., Any], config_option: Callable[..., Any]) -> None:
    @main.group()
    def redu() -> None:
        """The redundant pair: status, set-active, prefer."""

    @redu.command()
    @config_option
    @click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
    def status(config_path: Path | None, as_json: bool) -> None:
        """This server's role, both error states, the links, the partner, the last switchover."""
        result = call(config_path, "redu-status", as_json=as_json)
        if as_json:
            from pmon.control.protocol import with_iso

            click.echo(json.dumps(with_iso(result), indent=1))
        else:
            print_status(result)

    @redu.command(name="set-active")
    @config_option
    @click.argument("server", required=False, default="")
    @click.option("--force", is_flag=True, help="Switch even if the server to take over is not available.")
    def set_active(config_path: Path | None, server: str, force: bool) -> None:
        """Make SERVER (default: this server) active now (priority 2: forced)."""
        result = call(config_path, "redu-set-active", server=server, force=force)
        click.echo(result["message"])

    @redu.command()
    @config_option
    @click.argument("server", required=False, default="")
    def prefer(config_path: Path | None, server: str) -> None:
        """Prefer SERVER (default: this server) when both error states are equal (priority 4)."""
        result = call(config_path, "redu-prefer", server=server)
        click.echo(result["message"])
