"""Plugins: loaded the three ways, every hook heard, bad plugins isolated."""

from __future__ import annotations

import json
import os
import re
import signal
import textwrap
from pathlib import Path

from support import child, pmon_cli, poll_for, write_project


def write_plugin(folder: Path, name: str, code: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(code))
    return path


RECORDER = """
    from pmon.hookspecs import PluginSetup, StartAdvice, Verdict, hookimpl

    log = None

    def write(line):
        with open(log, "a") as handle:
            handle.write(line + "\\n")

    @hookimpl
    def pmon_configure(settings):
        global log
        log = settings.tables["recorder"]["log"]
        return PluginSetup(tables=("recorder",), interval=0.2)

    @hookimpl
    def pmon_project_started(project):
        write(f"project-started {project.name} {len(project.managers)}")

    @hookimpl
    def pmon_project_stopped(project):
        write(f"project-stopped {project.state}")

    @hookimpl
    def pmon_manager_state(manager, old, new, exit_code):
        write(f"state {manager.name} {old} {new} {exit_code}")

    @hookimpl
    def pmon_before_start(manager):
        return StartAdvice(env={"PMON_TEST_VAR": "from-plugin-" + manager.name})

    @hookimpl
    def pmon_monitor_check(project):
        return [Verdict("a", "warning", "a looks odd", error_state=2.5, key="odd")]
"""


def test_folder_plugin_hears_every_hook_and_its_verdict_shows(tmp_path, pmon):
    write_plugin(tmp_path / "plugins.d", "recorder", RECORDER)
    log, env_file = tmp_path / "hooks.log", tmp_path / "env.txt"
    config = write_project(
        tmp_path, [{"name": "a", "command": child("--env-to", str(env_file))}],
        plugins={"paths": ["plugins.d"], "recorder": {"log": str(log)}},
    )
    instance = pmon(config)
    poll_for(lambda: env_file.exists() and env_file.read_text() == "from-plugin-a\n", what="env")
    status = poll_for(lambda: (s := instance.status())["verdicts"] and s, what="a verdict")
    assert status["verdicts"] == [{
        "plugin": "recorder", "target": "a", "severity": "warning", "message": "a looks odd",
        "error_state": 2.5, "action": None, "key": "odd",
    }]
    assert status["plugin_error_state"] == 2.5
    assert instance.wait_event("verdict", plugin="recorder")["target"] == "a"

    listing = json.loads(pmon_cli(config, "plugins", "--json").stdout)
    recorder = next(p for p in listing["plugins"] if p["name"] == "recorder")
    assert recorder["source"] == f"folder {tmp_path / 'plugins.d' / 'recorder.py'}"
    assert "pmon_before_start" in recorder["hooks"] and recorder["failure_streak"] == 0
    table = pmon_cli(config, "plugins").stdout
    assert "recorder" in table and "folder" in table
    assert "a looks odd" in pmon_cli(config, "status").stdout

    assert instance.stop() == 0
    lines = log.read_text().splitlines()
    assert "project-started " + instance.config.project.name + " 1" in lines
    assert "state a None running None" in lines  # ready = spawn: running at once
    assert "state a stopping stopped -15" in lines  # SIGTERM at shutdown
    assert lines[-1] == "project-stopped stopped"


def test_installed_package_plugin_found_by_its_entry_point(tmp_path, pmon):
    site = tmp_path / "site"
    write_plugin(site, "pmon_probe_plugin", """
        from pmon.hookspecs import Verdict, hookimpl

        @hookimpl
        def pmon_monitor_check(project):
            return [Verdict(None, "info", "probe was here")]
    """)
    dist = site / "pmon_probe-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: pmon-probe\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[pmon.plugins]\nprobe = pmon_probe_plugin\n")
    config = write_project(tmp_path, [{"name": "a", "command": child()}])
    instance = pmon(config, env={"PYTHONPATH": str(site)})
    status = poll_for(lambda: (s := instance.status())["verdicts"] and s, what="the probe's verdict")
    assert status["verdicts"][0]["message"] == "probe was here"
    listing = instance.call("plugins")["plugins"]
    probe = next(p for p in listing if p["name"] == "probe")
    assert probe["source"] == "entry point pmon_probe_plugin (pmon-probe 1.0)"
    assert probe["hooks"] == ["pmon_monitor_check"] and probe["interval"] == 1.0
    # pmon's bundled monitors come through the very same door
    memory = next(p for p in listing if p["name"] == "memory")
    assert memory["source"].startswith("entry point pmon_plugins.memory:plugin (pmon ")


def test_enable_and_disable_choose_the_plugins(tmp_path):
    write_plugin(tmp_path / "pd", "extra", "")
    config = write_project(tmp_path, [], plugins={"paths": ["pd"], "enable": ["extra", "port"]})
    done = pmon_cli(config, "validate")
    assert done.returncode == 0 and done.stdout.rstrip().endswith("plugins: port, extra")
    config = write_project(
        tmp_path, [], plugins={"paths": ["pd"], "disable": ["memory", "extra"],
                               "memory": {"max_rss_mb": 10}},  # a disabled plugin's table is fine
    )
    assert pmon_cli(config, "validate").stdout.rstrip().endswith("plugins: alive, command, port, server")
    config = write_project(tmp_path, [], plugins={"disable": ["memroy"]})
    done = pmon_cli(config, "validate")
    assert done.returncode == 2 and "no plugin 'memroy' (did you mean 'memory'?)" in done.stderr


def test_bad_plugins_and_settings_fail_at_start_naming_the_plugin(tmp_path):
    folder = tmp_path / "pd"
    write_plugin(folder, "typo", """
        from pmon.hookspecs import hookimpl

        @hookimpl
        def pmon_monitor_chek(project):
            return []
    """)
    config = write_project(tmp_path, [{"name": "a", "command": child()}], plugins={"paths": ["pd"]})
    for args in (("validate",), ("run", "-q")):
        done = pmon_cli(config, *args)
        assert done.returncode == 2, done
        assert f"plugin 'typo' (folder {folder / 'typo.py'}) implements an unknown hook " \
               "'pmon_monitor_chek' (did you mean 'pmon_monitor_check'?)" in done.stderr

    (folder / "typo.py").write_text("raise RuntimeError('half written')\n")
    done = pmon_cli(config, "validate")
    assert done.returncode == 2 and "plugin 'typo'" in done.stderr
    assert "RuntimeError: half written at typo.py:1" in done.stderr
    (folder / "typo.py").unlink()

    cases = [
        ({"memory": {"max_rss_mb": "lots"}}, {},
         "[plugins.memory], key 'max_rss_mb': expected a number >= 0 (seconds), got 'lots'"),
        ({"memroy": {"max_rss_mb": 1}}, {},
         "[plugins.memroy]: no loaded plugin reads this table (did you mean 'memory'?)"),
        ({}, {"monitor": {"prot": {"port": 1}}},
         "manager 'a' (managers[1]), key 'monitor.prot': no loaded plugin reads it (did you mean 'port'?)"),
        ({}, {"monitor": {"alive": {"alive_second": 1}}},
         "manager 'a', monitor.alive, key 'alive_second': unknown key (did you mean 'alive_seconds'?)"),
        ({"timeuot": 3}, {}, "[plugins], key 'timeuot': unknown key (did you mean 'timeout'?)"),
        ({"memory": {"checks": 2}}, {}, "[plugins.memory]: set max_rss_mb or max_cpu_percent"),
    ]
    for plugins, manager, message in cases:
        config = write_project(
            tmp_path, [{"name": "a", "command": child(), **manager}], plugins={"paths": ["pd"], **plugins}
        )
        done = pmon_cli(config, "validate")
        assert done.returncode == 2 and message in done.stderr, (message, done.stderr)


ADVISOR = """
    from pmon.hookspecs import RestartAdvice, StartAdvice, hookimpl

    @hookimpl
    def pmon_restart_decision(manager, exit_code, delay):
        if manager.name == "a":
            return RestartAdvice(veto=True, reason="under maintenance")
        if manager.name == "b":
            return RestartAdvice(delay=60, reason="let it cool down")

    @hookimpl
    def pmon_before_start(manager):
        if manager.name == "c":
            return StartAdvice(refuse="licence missing")
"""


def test_plugins_veto_delay_and_refuse(tmp_path, pmon):
    write_plugin(tmp_path / "pd", "advisor", ADVISOR)
    config = write_project(
        tmp_path,
        [{"name": n, "command": child(), "restart_count": 1} for n in ("a", "b", "c")],
        plugins={"paths": ["pd"]},
    )
    instance = pmon(config)
    refused = instance.wait_event("start-refused", manager="c")
    assert refused["message"] == "c not started: plugin advisor refused: licence missing"
    instance.wait_state("c", "blocked")  # a refused start counts as a failed one
    for name in ("a", "b"):
        os.kill(instance.wait_state(name, "running")["pid"], signal.SIGKILL)
    instance.wait_state("a", "blocked")
    instance.wait_state("b", "backoff")
    vetoed = instance.wait_event("exited", manager="a")
    assert vetoed["action"] == "restart vetoed by a plugin (advisor: under maintenance)"
    delayed = instance.wait_event("exited", manager="b")
    assert delayed["action"] == "restarting in 60 s, delayed by a plugin (advisor: let it cool down)"


BAD_PLUGINS = {
    "raiser": """
        from pmon.hookspecs import PluginSetup, hookimpl

        @hookimpl
        def pmon_configure(settings):
            return PluginSetup(interval=0.1)

        @hookimpl
        def pmon_monitor_check(project):
            return 1 / 0

        @hookimpl
        def pmon_manager_state(manager):
            raise RuntimeError("no")
    """,
    "sleeper": """
        import time
        from pmon.hookspecs import PluginSetup, hookimpl

        @hookimpl
        def pmon_configure(settings):
            return PluginSetup(interval=0.1)

        @hookimpl
        def pmon_monitor_check(project):
            time.sleep(3600)

        @hookimpl
        def pmon_before_start(manager):
            time.sleep(3600)
    """,
    "garbage": """
        from pmon.hookspecs import PluginSetup, Verdict, hookimpl

        calls = 0

        @hookimpl
        def pmon_configure(settings):
            return PluginSetup(interval=0.1)

        @hookimpl
        def pmon_monitor_check(project):
            global calls
            calls += 1
            return ["nonsense", {"x": 1}, Verdict("nobody", "bad", "?"), 42][calls % 4]
    """,
    "good": """
        from pmon.hookspecs import PluginSetup, Verdict, hookimpl

        @hookimpl
        def pmon_configure(settings):
            return PluginSetup(interval=0.1)

        @hookimpl
        def pmon_monitor_check(project):
            return [Verdict(m.name, "info", "pid %s" % m.pid) for m in project.managers]
    """,
}


def test_plugins_that_raise_hang_or_return_garbage_do_not_stop_pmon(tmp_path, pmon):
    for name, code in BAD_PLUGINS.items():
        write_plugin(tmp_path / "pd", name, code)
    config = write_project(
        tmp_path, [{"name": "a", "command": child()}, {"name": "b", "command": child()}],
        plugins={"paths": ["pd"], "timeout": 0.5, "hook_timeout": 0.2},
    )
    instance = pmon(config)
    expected = {
        "raiser": r"ZeroDivisionError: division by zero at raiser\.py:|RuntimeError: no at raiser\.py:",
        # hung: first a call times out, then it is not asked again while that call runs
        "sleeper": r"timed out after 0\.5 s|no answer within 0\.2 s|skipped: its previous call has been running",
        "garbage": "returned garbage",
    }

    def streaks() -> dict[str, dict] | None:
        rows = {p["name"]: p for p in instance.call("plugins")["plugins"]}
        return rows if all(rows[n]["failure_streak"] >= 3 for n in expected) else None

    rows = poll_for(streaks, 15, "three failures in a row of each bad plugin")
    for name, text in expected.items():
        assert re.search(text, rows[name]["last_error"]), rows[name]
    assert rows["good"]["failure_streak"] == 0

    # deaths are still noticed at once and the managers restarted, the sleeper notwithstanding
    old = instance.wait_state("a", "running")["pid"]
    os.kill(old, signal.SIGKILL)
    poll_for(lambda: instance.manager("a")["pid"] not in (None, old), 10, "a restarted")
    verdicts = poll_for(
        lambda: [v for v in instance.status()["verdicts"] if v["target"] == "a"
                 and v["message"] != f"pid {old}"], 10, "the good plugin's fresh verdict",
    )
    assert verdicts[0]["plugin"] == "good"
    failed = [e for e in instance.events() if e["event"] == "plugin-failed"]
    by_plugin = {name: [e for e in failed if e["plugin"] == name] for name in expected}
    assert len(by_plugin["garbage"]) == 1 and len(by_plugin["sleeper"]) == 1  # once per streak
    assert {e["hook"] for e in by_plugin["raiser"]} <= {"pmon_monitor_check", "pmon_manager_state"}
    assert instance.stop() == 0  # a plugin thread stuck in sleep does not hold pmon up


def test_switchover_reaches_the_plugins(tmp_path):
    """The extension seam sup.switchover(active, previous, why) calls on every extension."""
    import asyncio

    from pmon import config as config_module
    from pmon.app import build
    from pmon.extensions.plugin_host import PluginHost
    from pmon.runtime.logs import EventLog

    log = tmp_path / "switch.log"
    write_plugin(tmp_path / "pd", "listener", f"""
        from pmon.hookspecs import hookimpl

        @hookimpl
        def pmon_switchover(active, previous, reason):
            with open({str(log)!r}, "a") as handle:
                handle.write(f"{{active}} {{previous}} {{reason}}\\n")
    """)
    config = config_module.load(write_project(tmp_path, [], plugins={"paths": ["pd"]}))

    async def switch() -> None:
        sup = build(config, echo=False)
        sup.loop = asyncio.get_running_loop()
        sup.events = EventLog(tmp_path / "events.jsonl", 0, 0, echo=False)
        host = sup.extension(PluginHost)
        assert host is not None
        await host.start(sup)
        host.on_switchover("serverB", "serverA", "error state")  # what sup.switchover calls
        await host.stop()  # lets the last notifications finish
        assert sup.plugin_error_state() == 0.0

    asyncio.run(switch())
    assert log.read_text() == "serverB serverA error state\n"
