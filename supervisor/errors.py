"""One root for every error pmon raises on purpose.

Our side got it wrong (configuration, a refused command) versus the other side sent
nonsense (a malformed control message, a partner's garbage): h11's split.
"""

from __future__ import annotations


class PmonError(Exception):
    """Root of pmon's own errors. `code` is stable and shown to clients."""

    code = "error"


class ConfigError(PmonError):
    """The TOML file is not a valid project. The message names file, manager and key."""

    code = "config"


class CommandError(PmonError):
    """A control command was understood but refused (unknown manager, not allowed now)."""

    code = "refused"


class UnknownManager(CommandError):
    code = "unknown-manager"


class ProtocolError(PmonError):
    """A client sent something that is not a control message."""

    code = "protocol"


class NotRunning(PmonError):
    """No supervisor answers on the project's control channel."""

    code = "not-running"


class SpawnRefused(PmonError):
    """A plugin refused to let a manager start (the message is its reason)."""

    code = "start-refused"


class NotSaved(PmonError):
    """A change was made but could not be written to the state file (disk full, ...): it
    would not survive pmon's own restart until the write (retried) succeeds."""

    code = "not-saved"


class Busy(PmonError):
    """pmon runs but its control channel accepts no connection now (a full backlog, every
    connection slot taken): not the same as "not running"."""

    code = "busy"
