from support import child, write_project


def test_runs_and_restarts_a_killed_manager(tmp_path, pmon):
    import os, signal
    config = write_project(tmp_path, [{"name": "a", "command": child()}])
    instance = pmon(config)
    first = instance.wait_state("a", "running")
    os.kill(first["pid"], signal.SIGKILL)
    from support import poll_for
    again = poll_for(lambda: (m := instance.manager("a"))["pid"] not in (None, first["pid"]) and m)
    assert again["restarts"] == 1
