"""pmon as a Windows service, through pywin32 (an optional dependency: `pip install
pmon[windows]`, installed only on Windows).

This module imports on every platform: pywin32 is imported only where Windows is needed,
and the service class exists only when pywin32 is there. What does not need Windows is
plain code, tested on Linux: the registration (name, display name, the class the service
host loads, the project file, restart-on-failure actions, the stop wait hint) and the
runner, which runs the supervisor in the service's thread and turns the service manager's
stop control into pmon's ordered stop (every manager in reverse order, each with its
seconds_to_kill). The parts marked "Windows only" are not exercised by the test suite.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pmon.service import service_name, stop_timeout

if TYPE_CHECKING:
    from pmon.config import Config
    from pmon.runtime.supervisor import Supervisor

SERVICE_CLASS = "pmon.service.windows.PmonService"
CONFIG_OPTION = "config"  # the service's custom option (registry) holding the project file
SC_ACTION_RESTART = 1  # winsvc.h: restart the service
RESTART_DELAY_MS = 1000
RESET_FAILURES_AFTER = 86400  # seconds without failure before the failure count resets


def failure_actions() -> dict[str, Any]:
    """Restart the service whenever it dies; the restarted pmon adopts the managers."""
    return {
        "ResetPeriod": RESET_FAILURES_AFTER,
        "RebootMsg": "",
        "Command": "",
        "Actions": [(SC_ACTION_RESTART, RESTART_DELAY_MS)] * 3,
    }


@dataclass(frozen=True)
class Registration:
    """Everything the service manager is told about one project's service."""

    name: str
    display_name: str
    description: str
    class_string: str
    config_path: str
    stop_wait_ms: int
    failure_actions: dict[str, Any] = field(default_factory=failure_actions)


def registration(config: "Config") -> Registration:
    return Registration(
        name=service_name(config),
        display_name=f"pmon project {config.project.name}",
        description=f"pmon process monitor for project {config.project.name} ({config.path})",
        class_string=SERVICE_CLASS,
        config_path=str(config.path),
        stop_wait_ms=int(stop_timeout(config) * 1000),
    )


class ServiceRunner:
    """Runs a project's supervisor on a loop of its own in the calling thread (the service
    thread); `request_stop` may be called from any other thread (the stop control)."""

    def __init__(self, config: "Config", echo: bool = False) -> None:
        self.config = config
        self.echo = echo
        self.sup: Supervisor | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._running = threading.Event()

    def run(self) -> int:
        loop = asyncio.new_event_loop()
        self.loop = loop
        try:
            return loop.run_until_complete(self._main())
        finally:
            self._running.clear()
            loop.close()

    async def _main(self) -> int:
        from pmon.app import build

        self.sup = build(self.config, echo=self.echo)
        task = asyncio.ensure_future(self.sup.run())
        await asyncio.sleep(0)  # run() is under way: it can take a stop request now
        self._running.set()
        return await task

    def request_stop(self, reason: str = "Windows service stop", timeout: float = 30) -> bool:
        """Start the ordered stop. False when the supervisor never got running."""
        if not self._running.wait(timeout) or self.loop is None or self.sup is None:
            return False
        self.loop.call_soon_threadsafe(self.sup.request_shutdown, reason)
        return True


# --- Windows only -------------------------------------------------------------------------
def install(config: "Config") -> Registration:  # pragma: no cover (Windows only)
    import win32service
    import win32serviceutil

    reg = registration(config)
    win32serviceutil.InstallService(
        reg.class_string, reg.name, reg.display_name,
        startType=win32service.SERVICE_AUTO_START, description=reg.description,
    )
    win32serviceutil.SetServiceCustomOption(reg.name, CONFIG_OPTION, reg.config_path)
    manager = win32service.OpenSCManager(None, None, win32service.SC_MANAGER_ALL_ACCESS)
    try:
        handle = win32service.OpenService(manager, reg.name, win32service.SERVICE_ALL_ACCESS)
        try:
            win32service.ChangeServiceConfig2(
                handle, win32service.SERVICE_CONFIG_FAILURE_ACTIONS, reg.failure_actions
            )
        finally:
            win32service.CloseServiceHandle(handle)
    finally:
        win32service.CloseServiceHandle(manager)
    return reg


def uninstall(config: "Config") -> str:  # pragma: no cover (Windows only)
    import win32serviceutil

    name = service_name(config)
    win32serviceutil.RemoveService(name)
    return name


try:  # pragma: no cover (Windows only)
    import servicemanager
    import win32service
    import win32serviceutil
except ImportError:
    HAVE_PYWIN32 = False
else:  # pragma: no cover (Windows only)
    HAVE_PYWIN32 = True

if HAVE_PYWIN32:  # pragma: no cover (Windows only)

    class PmonService(win32serviceutil.ServiceFramework):
        """Loaded by pywin32's service host; one installed service per project."""

        _svc_name_ = "pmon"
        _svc_display_name_ = "pmon"

        def __init__(self, args: list[str]) -> None:
            super().__init__(args)
            from pmon import config as config_module

            path = win32serviceutil.GetServiceCustomOption(args[0], CONFIG_OPTION)
            self.runner = ServiceRunner(config_module.load(path))

        def SvcStop(self) -> None:
            wait = registration(self.runner.config).stop_wait_ms
            self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING, waitHint=wait)
            self.runner.request_stop()

        def SvcDoRun(self) -> None:
            servicemanager.LogInfoMsg(f"pmon: running {self.runner.config.path}")
            self.runner.run()
