"""Redundancy: a hot-standby pair of servers that agrees on which one is active.

arbitration.py  the pure decision (priorities: failure, forced, error state, preference)
messages.py     the versioned heartbeat datagram and the gatekeeper that drops bad ones
link.py         the UDP sockets of the links to the partner
daemon.py       the redundancy manager program (`python -m pmon.redundancy -c FILE`)
service.py      pmon's side: error state, role, run_on = "active" managers, switchover events
commands.py     the control commands redu-status, redu-set-active, redu-prefer, redu-sync
settings.py     the [redundancy] section
"""
