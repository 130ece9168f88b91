"""The app: a supervisor with the extensions a project's configuration asks for.

The top of the import graph: it is the one place that knows every extension. They start in
the order listed (and stop in reverse); the ones a project does not configure are not even
imported, so the daemon stays small.
"""

from __future__ import annotations

import asyncio

from pmon.config import Config
from pmon.runtime.api import Extension
from pmon.runtime.supervisor import Supervisor


def build_extensions(config: Config) -> list[Extension]:
    """The extensions of this project, in start order (one line per kind)."""
    from pmon.commands.changes import ReloadOnHangup
    from pmon.commands.project import DetachOnSignal
    from pmon.control.server import ControlServer
    from pmon.extensions.explain import Explainer
    from pmon.extensions.periodic import LogRotation, WriteProbe
    from pmon.extensions.plugin_host import PluginHost
    from pmon.extensions.sdnotify import SystemdNotifier

    extensions: list[Extension] = [ControlServer()]  # first up, last down: commands reach pmon
    redundancy = None
    if config.redundancy is not None:  # first: its daemon may sync as soon as pmon answers
        from pmon.extensions.redundancy import RedundancyService

        if config.redundancy.group:  # three or more servers (extensions/group.py)
            from pmon.extensions.group import GroupService

            service: RedundancyService = GroupService(config)
        else:
            service = RedundancyService(config)
        redundancy = service
        extensions.append(service)
    extensions += [PluginHost(config), LogRotation(), ReloadOnHangup(), DetachOnSignal(),
                   SystemdNotifier(), WriteProbe()]
    extensions.append(Explainer())  # reads only: why each manager is where it is
    if config.pmon_tcp is not None:
        from pmon.extensions.pmon_tcp.server import PmonTcpService

        extensions.append(PmonTcpService(config.pmon_tcp))
    if config.metrics is not None:  # prometheus_client is imported only here
        from pmon.extensions.metrics import MetricsExporter

        extensions.append(MetricsExporter(config.metrics, redundancy))
    return extensions


def build(config: Config, *, echo: bool = True) -> Supervisor:
    return Supervisor(config, build_extensions(config), echo=echo)


def run(config: Config, *, echo: bool = True) -> int:
    """Run the project in the foreground until it is told to stop; returns the exit code:
    0, or under a systemd unit EXIT_STOPPED after a final stop (the unit then stays down
    instead of Restart= bringing the project back; a detach still exits 0)."""
    import os

    from pmon.service import EXIT_STOPPED, UNIT_ENV

    supervisor = build(config, echo=echo)
    code = asyncio.run(supervisor.run())
    if code == 0 and not supervisor.leave_running and os.environ.get(UNIT_ENV):
        return EXIT_STOPPED
    return code
