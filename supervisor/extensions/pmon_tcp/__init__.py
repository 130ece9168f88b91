"""WinCC OA's PMON TCP protocol, so tools written for WinCC OA's process monitor drive pmon.

protocol.py: the wire format, no I/O. face.py: each PMON command as calls of the command
registry. server.py: the TCP listener, an extension beside the supervisor.
"""
