"""pmon as a Windows service, through pywin32 (an optional dependency: `pip install
pmon[windows]`, installed only on Windows).

This module imports on every platform: pywin32 is imported only where Windows is needed.
Everything pmon decides is plain code here, tested on Linux with the pywin32 modules
faked (tests/test_windows_service.py); nothing of it has run on Windows:

- the registration: name `pmon-<project>`, the class the service host loads, the project
  file (a service option), restart-on-failure actions *with* SERVICE_CONFIG_FAILURE_ACTIONS_FLAG
  (without it a service that stops with an error, as pythonservice.exe reports a Python
  exception, never gets its failure actions), the preshutdown timeout, an event-log source
  of its own (`pmon-<project>`, registered at install, removed at uninstall), and for a venv
  the PYTHONPATH that pythonservice.exe lacks (pywin32 issue 1450, see venv_environment);
- the runner: the supervisor on a loop of its own in the service thread, reporting
  START_PENDING with wait hints until the project is up (the READY=1 of Windows), then
  RUNNING, and STOP_PENDING with wait hints through the ordered stop;
- the service class (make_service_class): stop, shutdown and preshutdown controls all start
  the ordered stop (every manager in reverse order, each with its seconds_to_kill); a
  configuration error is logged and ends the service without an error code, so the failure
  actions do not restart it every second for ever.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from pmon.service import service_name, start_timeout, stop_timeout

if TYPE_CHECKING:
    from pmon.config import Config
    from pmon.runtime.supervisor import Supervisor

SERVICE_CLASS = "pmon.service.windows.PmonService"
CONFIG_OPTION = "config"  # the service's custom option (registry) holding the project file
SC_ACTION_RESTART = 1  # winsvc.h: restart the service
RESTART_DELAY_MS = 1000
RESET_FAILURES_AFTER = 86400  # seconds without failure before the failure count resets
PENDING_EVERY = 2.0  # seconds between START_PENDING / STOP_PENDING reports
PENDING_HINT_MS = 10_000  # each report promises the next within this (>> PENDING_EVERY)
# winsvc.h values pywin32 may not name (older builds)
SERVICE_ACCEPT_PRESHUTDOWN = 0x100
SERVICE_CONTROL_PRESHUTDOWN = 0x0F

# What the runner tells the service manager (mapped to SERVICE_* by the service class).
START_PENDING, RUNNING, STOP_PENDING = "start-pending", "running", "stop-pending"
Report = Callable[[str, int], None]  # (state, wait hint in ms)


def failure_actions() -> dict[str, Any]:
    """Restart the service whenever it dies; the restarted pmon adopts the managers."""
    return {
        "ResetPeriod": RESET_FAILURES_AFTER,
        "RebootMsg": "",
        "Command": "",
        "Actions": [(SC_ACTION_RESTART, RESTART_DELAY_MS)] * 3,
    }


def venv_environment(prefix: str | None = None, base_prefix: str | None = None) -> list[str]:
    """pywin32 issue 1450: pythonservice.exe runs the base Python, whose sys.path lacks the
    venv's site-packages (pmon and pywin32 themselves): "ModuleNotFoundError" in the event
    log. In a venv the service gets PYTHONPATH with them (the service's Environment value,
    REG_MULTI_SZ). Outside a venv: nothing."""
    import ntpath  # Windows paths, also when the tests build them on Linux

    prefix = sys.prefix if prefix is None else prefix
    base_prefix = sys.base_prefix if base_prefix is None else base_prefix
    if ntpath.normcase(prefix) == ntpath.normcase(base_prefix):
        return []
    site = ntpath.join(prefix, "Lib", "site-packages")
    paths = [site, ntpath.join(site, "win32"), ntpath.join(site, "win32", "lib"),
             ntpath.join(site, "pythonwin")]
    return ["PYTHONPATH=" + ";".join(paths)]


@dataclass(frozen=True)
class Registration:
    """Everything the service manager is told about one project's service."""

    name: str
    display_name: str
    description: str
    class_string: str
    config_path: str
    stop_wait_ms: int
    event_source: str
    environment: list[str] = field(default_factory=venv_environment)
    failure_actions: dict[str, Any] = field(default_factory=failure_actions)
    failure_actions_on_error_exit: bool = True  # SERVICE_CONFIG_FAILURE_ACTIONS_FLAG

    @property
    def preshutdown_ms(self) -> int:
        """At OS shutdown the whole ordered stop must fit (the default is much shorter)."""
        return self.stop_wait_ms


def registration(config: "Config") -> Registration:
    name = service_name(config)
    return Registration(
        name=name,
        display_name=f"pmon project {config.project.name}",
        description=f"pmon process monitor for project {config.project.name} ({config.path})",
        class_string=SERVICE_CLASS,
        config_path=str(config.path),
        stop_wait_ms=int(stop_timeout(config) * 1000),
        event_source=name,  # what pywin32's RemoveService removes: the service's own name
    )


class ServiceRunner:
    """Runs a project's supervisor on a loop of its own in the calling thread (the service
    thread); `request_stop` may be called from any other thread (the stop controls).
    `report(state, wait_hint_ms)` tells the service manager how far it got."""

    def __init__(self, config: "Config", echo: bool = False, report: Report | None = None) -> None:
        self.config = config
        self.echo = echo
        self.report: Report = report or (lambda state, hint: None)
        self.sup: Supervisor | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._running = threading.Event()
        self._stopping = False

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

        self.report(START_PENDING, int(start_timeout(self.config) * 1000))
        self.sup = build(self.config, echo=self.echo)
        task = asyncio.ensure_future(self.sup.run())
        await asyncio.sleep(0)  # run() is under way: it can take a stop request now
        self._running.set()
        progress = asyncio.ensure_future(self._progress(self.sup, task))
        try:
            return await task
        finally:
            progress.cancel()

    async def _progress(self, sup: "Supervisor", task: "asyncio.Future[int]") -> None:
        """START_PENDING (checkpoint after checkpoint) until the project is up, RUNNING,
        then STOP_PENDING from the stop request on, until the run ends."""
        while not (sup.project_ready.is_set() or self._stopping):
            self.report(START_PENDING, PENDING_HINT_MS)
            await _first(sup.project_ready.wait(), PENDING_EVERY)
        if not self._stopping:
            self.report(RUNNING, 0)
        while not self._stopping:
            await asyncio.sleep(PENDING_EVERY)
        while not task.done():
            self.report(STOP_PENDING, PENDING_HINT_MS)
            await _first(asyncio.shield(task), PENDING_EVERY)

    def request_stop(self, reason: str = "Windows service stop", timeout: float = 30) -> bool:
        """Start the ordered stop. False when the supervisor never got running."""
        if not self._running.wait(timeout) or self.loop is None or self.sup is None:
            return False
        self.loop.call_soon_threadsafe(self._stop, reason)
        return True

    def _stop(self, reason: str) -> None:
        self._stopping = True
        assert self.sup is not None
        self.sup.request_shutdown(reason)


async def _first(awaitable: Any, timeout: float) -> None:
    try:
        await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        pass


def make_service_class(win32service: Any, win32serviceutil: Any, servicemanager: Any) -> type:
    """The class pywin32's service host loads, built on the pywin32 modules given (the real
    ones on Windows, fakes in the tests)."""

    class PmonService(win32serviceutil.ServiceFramework):  # type: ignore[misc]
        """One installed service per project; its name (args[0]) says which."""

        _svc_name_ = "pmon"
        _svc_display_name_ = "pmon"

        def __init__(self, args: list[str]) -> None:
            self._svc_name_ = args[0]  # before the base class: it names the event source
            super().__init__(args)
            servicemanager.SetEventSourceName(args[0])  # pmon-<project>, registered at install
            self.runner: ServiceRunner | None = None
            self._stop_requested = threading.Event()

        def GetAcceptedControls(self) -> int:
            return int(super().GetAcceptedControls()) | getattr(
                win32service, "SERVICE_ACCEPT_PRESHUTDOWN", SERVICE_ACCEPT_PRESHUTDOWN)

        def _report(self, state: str, hint: int) -> None:
            kind = {START_PENDING: win32service.SERVICE_START_PENDING,
                    RUNNING: win32service.SERVICE_RUNNING,
                    STOP_PENDING: win32service.SERVICE_STOP_PENDING}[state]
            self.ReportServiceStatus(kind, waitHint=hint)

        def SvcRun(self) -> None:
            """Not pywin32's SvcRun (RUNNING at once): the runner reports RUNNING once the
            project is up."""
            from pmon import config as config_module
            from pmon.errors import ConfigError

            self.ReportServiceStatus(win32service.SERVICE_START_PENDING, waitHint=PENDING_HINT_MS)
            path = win32serviceutil.GetServiceCustomOption(self._svc_name_, CONFIG_OPTION)
            try:
                config = config_module.load(path)
            except (ConfigError, OSError, TypeError) as exc:
                # no error code: the failure actions would restart it every second for ever
                servicemanager.LogErrorMsg(
                    f"{self._svc_name_}: cannot start, configuration error in {path}: {exc}; "
                    f"fix the file (pmon validate -c FILE), then start the service again")
                return
            self.runner = ServiceRunner(config, report=self._report)
            servicemanager.LogInfoMsg(f"{self._svc_name_}: running {config.path}")
            if self._stop_requested.is_set():
                return
            code = self.runner.run()
            if code:  # an error exit: the failure actions (FLAG) restart the service
                self.ReportServiceStatus(win32service.SERVICE_STOPPED, win32ExitCode=1066,
                                         svcExitCode=code)  # ERROR_SERVICE_SPECIFIC_ERROR

        def _ordered_stop(self, why: str) -> None:
            self._stop_requested.set()
            wait = PENDING_HINT_MS if self.runner is None else registration(self.runner.config).stop_wait_ms
            self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING, waitHint=min(wait, PENDING_HINT_MS))
            if self.runner is not None:
                self.runner.request_stop(why)

        def SvcStop(self) -> None:
            self._ordered_stop("Windows service stop")

        def SvcShutdown(self) -> None:
            self._ordered_stop("Windows shutdown")

        def SvcOtherEx(self, control: int, event_type: int, data: Any) -> None:
            preshutdown = getattr(win32service, "SERVICE_CONTROL_PRESHUTDOWN", SERVICE_CONTROL_PRESHUTDOWN)
            if control == preshutdown:
                self._ordered_stop("Windows shutdown (preshutdown)")
            else:
                super().SvcOtherEx(control, event_type, data)

    return PmonService


# --- install / uninstall (the pywin32 modules are passed in by the tests) -----------------
def _pywin32() -> dict[str, Any]:  # pragma: no cover (Windows only)
    import servicemanager
    import win32api
    import win32con
    import win32evtlogutil
    import win32service
    import win32serviceutil

    return {"win32service": win32service, "win32serviceutil": win32serviceutil,
            "win32evtlogutil": win32evtlogutil, "servicemanager": servicemanager,
            "win32api": win32api, "win32con": win32con}


def install(config: "Config", modules: dict[str, Any] | None = None) -> Registration:
    m = modules or _pywin32()
    svc, util = m["win32service"], m["win32serviceutil"]
    reg = registration(config)
    util.InstallService(
        reg.class_string, reg.name, reg.display_name,
        startType=svc.SERVICE_AUTO_START, description=reg.description,
    )
    util.SetServiceCustomOption(reg.name, CONFIG_OPTION, reg.config_path)
    m["win32evtlogutil"].AddSourceToRegistry(reg.event_source, m["servicemanager"].__file__)
    manager = svc.OpenSCManager(None, None, svc.SC_MANAGER_ALL_ACCESS)
    try:
        handle = svc.OpenService(manager, reg.name, svc.SERVICE_ALL_ACCESS)
        try:
            svc.ChangeServiceConfig2(handle, svc.SERVICE_CONFIG_FAILURE_ACTIONS, reg.failure_actions)
            svc.ChangeServiceConfig2(handle, svc.SERVICE_CONFIG_FAILURE_ACTIONS_FLAG,
                                     reg.failure_actions_on_error_exit)
            svc.ChangeServiceConfig2(handle, svc.SERVICE_CONFIG_PRESHUTDOWN_INFO, reg.preshutdown_ms)
        finally:
            svc.CloseServiceHandle(handle)
    finally:
        svc.CloseServiceHandle(manager)
    if reg.environment:
        api, con = m["win32api"], m["win32con"]
        key = api.RegOpenKeyEx(con.HKEY_LOCAL_MACHINE,
                               f"SYSTEM\\CurrentControlSet\\Services\\{reg.name}", 0,
                               con.KEY_SET_VALUE)
        try:
            api.RegSetValueEx(key, "Environment", 0, con.REG_MULTI_SZ, reg.environment)
        finally:
            api.RegCloseKey(key)
    return reg


def uninstall(config: "Config", modules: dict[str, Any] | None = None) -> str:
    """Stop the service (the ordered stop) if it runs, then remove it; pywin32's
    RemoveService also removes the event-log source of the same name, ours."""
    m = modules or _pywin32()
    svc, util = m["win32service"], m["win32serviceutil"]
    reg = registration(config)
    try:
        util.StopService(reg.name)
        util.WaitForServiceStatus(reg.name, svc.SERVICE_STOPPED, int(reg.stop_wait_ms / 1000) + 5)
    except Exception:
        pass  # not running (pywin32 raises its own error type)
    util.RemoveService(reg.name)
    return reg.name


try:  # pragma: no cover (Windows only)
    import servicemanager as _servicemanager
    import win32service as _win32service
    import win32serviceutil as _win32serviceutil
except ImportError:
    HAVE_PYWIN32 = False
else:  # pragma: no cover (Windows only)
    HAVE_PYWIN32 = True
    PmonService = make_service_class(_win32service, _win32serviceutil, _servicemanager)
