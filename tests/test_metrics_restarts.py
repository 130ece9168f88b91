"""pmon_project_restarts_total counts each project restart once (review 1, finding 5): a
restart resumed by the next pmon is not counted again; one that begins at adoption (a core
manager died while no pmon watched) is counted. Real pmon processes, SIGKILLed."""

from __future__ import annotations


from support import Pmon, child, kill_project_processes, poll_for, project_processes, saved_state, write_project
from test_metrics import scrape, value

WAIT = 20.0


def saved(instance: Pmon) -> dict:
    return saved_state(instance.config.project.state_dir)


def restarts(instance: Pmon) -> float | None:
    return value(scrape(instance), "pmon_project_restarts_total", project=instance.config.project.name)


def fresh_pmon(config, previous: Pmon | None = None) -> Pmon:
    if previous is not None:  # the dead pmon's address file would point nowhere
        (previous.config.project.state_dir / "metrics.addr").unlink(missing_ok=True)
    instance = Pmon(config)
    instance.wait_ready(WAIT, project_state=None)
    return instance


def test_a_resumed_restart_is_counted_once_and_a_restart_begun_at_adoption_once(tmp_path):
    config = write_project(tmp_path, [
        {"name": "core1", "command": child(), "core": True},
        {"name": "slow", "command": child("--ignore-term", "--ready-after", "0"), "ready": "notify",
         "seconds_to_kill": 3},  # READY=1 once it ignores SIGTERM: the restart's stop waits
    ], metrics={"listen": "127.0.0.1:0"})
    instances: list[Pmon] = []
    try:
        first = fresh_pmon(config)
        instances.append(first)
        first.wait_ready(WAIT)
        first.call("restart-all", wait=False)
        poll_for(lambda: saved(first).get("project_state") == "restarting", WAIT, "the restart on disk")
        assert restarts(first) == 1
        first.kill()  # in the restart's stop phase

        second = fresh_pmon(config, first)
        instances.append(second)
        second.wait_ready(WAIT)  # the resumed restart is done
        assert restarts(second) == 1  # the dead pmon counted it; resuming it is no new one
        poll_for(lambda: (s := saved(second)).get("project_state") == "running" and s["job"] is None,
                 WAIT, "the finished restart on disk")
        second.kill()
        for process in project_processes(second.config.project.name, "core1"):
            process.kill()  # a core death no pmon sees: the next pmon restarts the project

        third = fresh_pmon(config, second)
        instances.append(third)
        third.wait_ready(WAIT)
        poll_for(lambda: restarts(third) == 2, WAIT, "the restart begun at adoption counted")
        assert any(e["event"] == "project-restart" and "while pmon was away" in e["message"]
                   for e in third.events())
    finally:
        for instance in instances:
            instance.stop()
        kill_project_processes(instances[0].config.project.name if instances else "")
