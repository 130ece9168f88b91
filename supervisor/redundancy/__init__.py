"""Redundancy: a hot-standby pair of servers that agrees on which one is active.

arbitration.py  the pure decision (priorities: failure, forced, error state, preference)
messages.py     the versioned heartbeat datagram and the gatekeeper that drops bad ones
link.py         the UDP sockets of the links to the partner
fence.py        stopping this server's run_on = "active" managers when pmon does not answer
beat.py         the heartbeat loop's beat to pmon (its self-fence watches it)
beat_timer.py   the beat as a kernel timer pmon holds (Linux): no wake-up per beat
daemon.py       the redundancy manager program (`python -m pmon.redundancy -c FILE`)
settings.py     the [redundancy] section

pmon's side lives elsewhere: extensions/redundancy.py (error state, role -> the project
machine's condition "active", switchover events) and commands/redundancy.py (redu-status,
redu-set-active, redu-prefer, redu-sync).
"""
