"""The Windows service's logic on Linux: only the pywin32 modules (and kernel32) are fakes,
written after pywin32's own win32serviceutil.ServiceFramework (checkpoints, accepted
controls); pmon's service class, its runner and a real project with real managers run as
they would on Windows. Nothing here proves what Windows itself does."""

from __future__ import annotations

import json
import threading
import time
import types

import psutil

from pmon import config as config_module
from pmon.runtime import winproc
from pmon.service import service_name, windows
from support import child, kill_project_processes, poll_for, write_project

# winsvc.h
STOPPED, START_PENDING, STOP_PENDING, RUNNING = 1, 2, 3, 4
ACCEPT_STOP, ACCEPT_SHUTDOWN, ACCEPT_PRESHUTDOWN = 0x1, 0x4, 0x100


class FakePywin32:
    """win32service, win32serviceutil, servicemanager, win32evtlogutil, win32api, win32con:
    what pmon calls, recorded; the registry and the event-log sources as dicts."""

    def __init__(self) -> None:
        self.statuses: list[dict] = []  # every SetServiceStatus, as the SCM would see it
        self.config2: dict[int, object] = {}
        self.options: dict[tuple[str, str], object] = {}
        self.sources: set[str] = set()
        self.event_source: str | None = None
        self.log: list[tuple[str, str]] = []
        self.registry: dict[tuple[str, str], object] = {}
        self.services: set[str] = set()
        fake = self

        svc = types.SimpleNamespace(
            SERVICE_STOPPED=STOPPED, SERVICE_START_PENDING=START_PENDING,
            SERVICE_STOP_PENDING=STOP_PENDING, SERVICE_RUNNING=RUNNING,
            SERVICE_ACCEPT_STOP=ACCEPT_STOP, SERVICE_ACCEPT_SHUTDOWN=ACCEPT_SHUTDOWN,
            SERVICE_AUTO_START=2, SC_MANAGER_ALL_ACCESS=0xF003F, SERVICE_ALL_ACCESS=0xF01FF,
            SERVICE_CONFIG_FAILURE_ACTIONS=2, SERVICE_CONFIG_FAILURE_ACTIONS_FLAG=4,
            SERVICE_CONFIG_PRESHUTDOWN_INFO=7,
            OpenSCManager=lambda *a: "scm", OpenService=lambda *a: "service",
            CloseServiceHandle=lambda h: None,
            ChangeServiceConfig2=lambda h, level, info: fake.config2.__setitem__(level, info),
        )

        class ServiceFramework:  # after pywin32's: accepted controls, checkpoints
            def __init__(self, args):
                fake.event_source = self._svc_name_
                self.checkPoint = 0

            def GetAcceptedControls(self):
                accepted = 0
                if hasattr(self, "SvcStop"):
                    accepted |= ACCEPT_STOP
                if hasattr(self, "SvcShutdown"):
                    accepted |= ACCEPT_SHUTDOWN
                return accepted

            def ReportServiceStatus(self, status, waitHint=5000, win32ExitCode=0, svcExitCode=0):
                accepted = 0 if status == START_PENDING else self.GetAcceptedControls()
                if status in (RUNNING, STOPPED):
                    checkpoint = 0
                else:
                    self.checkPoint += 1
                    checkpoint = self.checkPoint
                fake.statuses.append({"status": status, "accepted": accepted, "checkpoint": checkpoint,
                                      "hint": waitHint, "exit": win32ExitCode, "at": time.time()})

            def SvcOtherEx(self, control, event_type, data):
                fake.log.append(("other", str(control)))

        def remove_service(name):
            fake.services.discard(name)
            fake.sources.discard(name)  # as pywin32: RemoveSourceFromRegistry(serviceName)

        util = types.SimpleNamespace(
            ServiceFramework=ServiceFramework,
            InstallService=lambda cls, name, display, **kw: fake.services.add(name),
            SetServiceCustomOption=lambda name, opt, value: fake.options.__setitem__((name, opt), value),
            GetServiceCustomOption=lambda name, opt, default=None: fake.options.get((name, opt), default),
            StopService=lambda name: fake.log.append(("stop", name)),
            WaitForServiceStatus=lambda name, status, secs: None,
            RemoveService=remove_service,
        )
        manager = types.SimpleNamespace(
            __file__="C:\\venv\\Lib\\site-packages\\win32\\servicemanager.pyd",
            SetEventSourceName=lambda name, register=False: setattr(fake, "event_source", name),
            LogInfoMsg=lambda text: fake.log.append(("info", text)),
            LogErrorMsg=lambda text: fake.log.append(("error", text)),
        )
        evtlog = types.SimpleNamespace(
            AddSourceToRegistry=lambda name, dll=None, *a, **k: fake.sources.add(name),
        )
        api = types.SimpleNamespace(
            RegOpenKeyEx=lambda root, path, res, access: path,
            RegSetValueEx=lambda key, name, res, kind, value: fake.registry.__setitem__((key, name), value),
            RegCloseKey=lambda key: None,
        )
        con = types.SimpleNamespace(HKEY_LOCAL_MACHINE="HKLM", KEY_SET_VALUE=2, REG_MULTI_SZ=7)
        self.modules = {"win32service": svc, "win32serviceutil": util, "servicemanager": manager,
                        "win32evtlogutil": evtlog, "win32api": api, "win32con": con}

    def service_class(self):
        m = self.modules
        return windows.make_service_class(m["win32service"], m["win32serviceutil"], m["servicemanager"])


def project(tmp_path, managers):
    path = write_project(tmp_path, managers)
    return path, config_module.load(path)


def test_install_sets_the_failure_flag_preshutdown_and_a_source_uninstall_removes(tmp_path, monkeypatch):
    _, config = project(tmp_path, [{"name": "a", "command": child(), "seconds_to_kill": 30}])
    monkeypatch.setattr(windows.sys, "prefix", "C:\\plant\\venv")
    monkeypatch.setattr(windows.sys, "base_prefix", "C:\\Python311")
    fake = FakePywin32()
    reg = windows.install(config, fake.modules)
    name = service_name(config)
    assert fake.services == {name} and fake.options[(name, "config")] == str(config.path)
    assert fake.config2[4] is True  # SERVICE_CONFIG_FAILURE_ACTIONS_FLAG: errors restart too
    assert all(kind == windows.SC_ACTION_RESTART for kind, _ in fake.config2[2]["Actions"])
    assert fake.config2[7] == reg.stop_wait_ms >= 30_000  # preshutdown: the whole stop fits
    assert fake.sources == {name}  # registered under the project's own name
    (env,) = fake.registry[(f"SYSTEM\\CurrentControlSet\\Services\\{name}", "Environment")]
    assert env.startswith("PYTHONPATH=C:\\plant\\venv") and "site-packages" in env  # issue 1450
    windows.uninstall(config, fake.modules)
    assert ("stop", name) in fake.log  # stopped (ordered) before it is removed
    assert fake.services == set() and fake.sources == set()  # the very source it registered


def test_no_service_environment_outside_a_venv():
    assert windows.venv_environment("C:\\Python311", "C:\\Python311") == []


def test_service_is_start_pending_until_the_project_runs_and_preshutdown_stops_in_order(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(windows, "PENDING_EVERY", 0.3)
    _, config = project(tmp_path, [
        {"name": "a", "command": child()},
        {"name": "slow", "command": child("--ready-after", "1.2"), "ready": "notify"},
        {"name": "c", "command": child()},
    ])
    fake = FakePywin32()
    name = service_name(config)
    fake.options[(name, "config")] = str(config.path)
    service = fake.service_class()([name])
    assert fake.event_source == name  # not "pmon" for every project
    thread = threading.Thread(target=service.SvcRun)
    thread.start()
    try:
        poll_for(lambda: any(s["status"] == RUNNING for s in fake.statuses), 30, "RUNNING")
        service.SvcOtherEx(windows.SERVICE_CONTROL_PRESHUTDOWN, 0, None)  # OS shutdown
        thread.join(60)
        assert not thread.is_alive()
    finally:
        if thread.is_alive() and service.runner is not None:
            service.runner.request_stop()
            thread.join(30)
        kill_project_processes(config.project.name)
    events = [json.loads(line) for line in
              (config.project.state_dir / "log" / "events.jsonl").read_text().splitlines()]
    started = next(e["ts"] for e in events if e["event"] == "project-started")
    kinds = [s["status"] for s in fake.statuses]
    running = next(s for s in fake.statuses if s["status"] == RUNNING)
    pending = [s for s in fake.statuses if s["status"] == START_PENDING]
    # START_PENDING, checkpoint after checkpoint, no stop accepted, until the project is up
    assert kinds.index(RUNNING) == len(pending) and len(pending) >= 3
    assert [s["checkpoint"] for s in pending] == list(range(1, len(pending) + 1))
    assert all(s["accepted"] == 0 and s["hint"] > 0 for s in pending)
    assert running["at"] >= started - 0.01
    assert running["accepted"] & ACCEPT_STOP and running["accepted"] & ACCEPT_SHUTDOWN
    assert running["accepted"] & ACCEPT_PRESHUTDOWN
    assert STOP_PENDING in kinds[kinds.index(RUNNING):]
    assert [e["manager"] for e in events if e["event"] == "exited"] == ["c", "slow", "a"]


def test_config_error_ends_the_service_without_an_error_so_it_is_not_restarted(tmp_path):
    path = tmp_path / "pmon.toml"
    path.write_text('[project]\nname = "w"\n[[managers]]\nname = "a"\ncomand = ["x"]\n')
    fake = FakePywin32()
    fake.options[("pmon-w", "config")] = str(path)
    service = fake.service_class()(["pmon-w"])
    service.SvcRun()  # returns: the host then reports SERVICE_STOPPED with exit code 0
    errors = [text for kind, text in fake.log if kind == "error"]
    assert errors and "configuration error" in errors[0] and "comand" in errors[0]
    assert not any(s["exit"] for s in fake.statuses)


# --- Job objects and the stop event (kernel32 faked) --------------------------------------
class FakeKernel32:
    def __init__(self, events: set[str] = frozenset()) -> None:
        self.calls: list[tuple] = []
        self.events = set(events)

    def __getattr__(self, name):
        def call(*args):
            self.calls.append((name, *args))
            if name == "OpenEventW":
                return f"event:{args[2]}" if args[2] in self.events else 0
            if name == "CreateJobObjectW":
                return f"job:{args[1]}"
            if name == "GetConsoleWindow":
                return 0
            return 1
        return call


def test_each_manager_gets_its_own_job_and_the_kill_takes_its_whole_tree(tmp_path):
    import subprocess
    import sys

    env = {"PMON_PROJECT": "plant", "PMON_MANAGER": "drv"}
    names = winproc.names(env)
    assert names[winproc.JOB_ENV].startswith("Local\\pmon-plant-drv-")
    assert names != winproc.names(env)  # unique per spawn
    grandchild = tmp_path / "grandchild.pid"
    proc = subprocess.Popen([*child("--grandchild", str(grandchild))])
    try:
        k32 = FakeKernel32()
        assert winproc.contain(proc.pid, {**env, **names}, k32)
        assert ("CreateJobObjectW", None, names[winproc.JOB_ENV]) in k32.calls
        assert any(c[0] == "AssignProcessToJobObject" for c in k32.calls)
        pid = int(poll_for(lambda: grandchild.exists() and grandchild.read_text().strip(), 10, "grandchild"))
        winproc.kill_tree(proc.pid, k32)
        assert ("TerminateJobObject", f"job:{names[winproc.JOB_ENV]}", winproc.KILLED_EXIT_CODE) in k32.calls
        proc.wait(10)
        poll_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
                 10, "the grandchild to die")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_polite_stop_sets_the_managers_event_without_a_console():
    k32 = FakeKernel32(events={"Local\\pmon-p-m-1-stop"})
    winproc._stop_events[4242] = "Local\\pmon-p-m-1-stop"
    try:
        assert winproc.stop_politely(4242, k32)  # the manager listens: its event is set
        assert ("SetEvent", "event:Local\\pmon-p-m-1-stop") in k32.calls
        assert not any(c[0] == "GenerateConsoleCtrlEvent" for c in k32.calls)
        winproc._stop_events[4242] = "Local\\nobody-listens"
        assert not winproc.stop_politely(4242, k32, has_console=False)  # then the kill does it
    finally:
        winproc._stop_events.pop(4242, None)
