"""`validate` refuses everything `run` would not start, and no input makes it (or `add`)
end in a traceback; whatever goes wrong while spawning is a start that failed, never a
manager left `starting` with no pid."""

from __future__ import annotations

import random
import textwrap

import pytest
import tomli_w
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mutate_toml
from pmon.cli import main as cli
from support import child, pmon_cli, poll_for, write_project

BAD = [
    ({"env": {"A=B": "x"}}, "key 'env'", "without '='"),
    ({"env": {"A\0B": "x"}}, "key 'env'", "NUL"),
    ({"env": {"A": "x\0y"}}, "key 'env'", "NUL"),
    ({"name": "a\0b"}, "key 'name'", "NUL"),
    ({"command": [child()[0], "a\0b"]}, "key 'command'", "NUL"),
    ({"cwd": "a\0b"}, "key 'cwd'", "NUL"),
    ({"seconds_to_kill": float("inf")}, "key 'seconds_to_kill'", "a number >= 0"),
    ({"seconds_to_kill": float("nan")}, "key 'seconds_to_kill'", "a number >= 0"),
    ({"start_timeout": float("inf")}, "key 'start_timeout'", "a number >= 0"),
    ({"reset_after": 0}, "key 'reset_after'", "no backoff"),
    ({"reset_after": 0.2}, "key 'reset_after'", "no backoff"),
    ({"name": "-x"}, "key 'name'", "a name of at most"),
    ({"name": "--"}, "key 'name'", "a name of at most"),
    ({"name": "\x1b[31mred"}, "key 'name'", "a name of at most"),
    ({"name": "n" * 300}, "key 'name'", "a name of at most"),
]


@pytest.mark.parametrize("keys, where, what", BAD, ids=[repr(b[0])[:40] for b in BAD])
def test_validate_refuses_what_run_could_not_start(tmp_path, keys, where, what):
    config = write_project(tmp_path, [{"name": "ok", "command": child()},
                                      {"name": "m", "command": child(), **keys}])
    result = pmon_cli(config, "validate")
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert where in result.stderr and what in result.stderr, result.stderr
    assert "\x1b" not in result.stderr  # no terminal escape reaches the operator's screen


@pytest.mark.parametrize("sections, where", [
    ({"project": {"state_dir": "v\0ar"}}, "[project], key 'state_dir'"),
    ({"pmon_tcp": {"password_file": "p\0w"}}, "[pmon_tcp], key 'password_file'"),
    ({"plugins": {"paths": ["p\0d"]}}, "[plugins], key 'paths'"),
    ({"defaults": {"reset_after": 0}}, "[defaults], key 'reset_after'"),
])
def test_validate_refuses_nul_and_no_backoff_in_sections(tmp_path, sections, where):
    config = write_project(tmp_path, [{"name": "ok", "command": child()}], **sections)
    result = pmon_cli(config, "validate")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result
    assert where in result.stderr, result.stderr


def test_add_of_a_bad_entry_is_refused_and_the_file_is_kept(tmp_path, pmon):
    config = write_project(tmp_path, [{"name": "a", "command": child()}])
    before = config.read_text()
    instance = pmon(config)
    for bad in ({"name": "b", "command": child(), "env": {"A=B": "1"}},
                {"name": "b", "command": [*child(), "x\0"]},
                {"name": "-b", "command": child()}):
        with pytest.raises(Exception) as refused:
            instance.call("add", manager=bad)
        assert "internal" not in str(refused.value), refused.value
    assert config.read_text() == before
    assert [m["name"] for m in instance.status()["managers"]] == ["a"]


PLUGIN = """
    from pmon.hookspecs import StartAdvice, hookimpl

    @hookimpl
    def pmon_before_start(manager):
        if manager.name == "bad":
            return StartAdvice(env={"PMON_TEST_VAR": "nul\\0inside"})
        return None
"""


def test_a_spawn_that_raises_is_a_failed_start_and_the_next_ones_start(tmp_path, pmon):
    folder = tmp_path / "pd"
    folder.mkdir()
    (folder / "nul_env.py").write_text(textwrap.dedent(PLUGIN))
    config = write_project(tmp_path, [
        {"name": "bad", "command": child(), "restart_count": 1},
        {"name": "after", "command": child()},
    ], plugins={"paths": ["pd"]})
    instance = pmon(config, wait=False)
    poll_for(lambda: instance.manager("after")["state"] == "running", what="the next one")
    bad = poll_for(lambda: (m := instance.manager("bad"))["state"] == "blocked" and m,
                   what="bad blocked after its failed starts")
    assert bad["pid"] is None
    failed = instance.wait_event("spawn-failed", manager="bad")
    assert "null" in failed["message"] or "NUL" in failed["message"], failed


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False))
def test_validate_never_tracebacks_on_mutated_files(tmp_path_factory, rng):
    path = tmp_path_factory.mktemp("fuzz") / "pmon.toml"
    path.write_text(mutate_toml.mutate(rng), encoding="utf-8", errors="surrogateescape")
    result = CliRunner().invoke(cli, ["validate", "-c", str(path)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code in (0, 2), result.output


def test_a_sample_of_accepted_mutated_files_starts(tmp_path, pmon):
    """Seeded: the first accepted mutations run, and every manager they accept starts."""
    rng, runner, ran = random.Random(14), CliRunner(), 0
    for attempt in range(400):
        folder = tmp_path / f"f{attempt}"
        folder.mkdir()
        path = folder / "pmon.toml"
        path.write_text(mutate_toml.mutate(rng, f"fz{attempt}-{tmp_path.name}"[-30:]))
        if runner.invoke(cli, ["validate", "-c", str(path)]).exit_code != 0:
            continue
        instance = pmon(path, wait=False)
        status = poll_for(lambda: (s := _answer(instance)) and s["project_state"] in (
            "running", "blocked") and s, timeout=30, what=f"the project of {path}")
        stuck = [m for m in status["managers"] if m["state"] == "starting" and m["pid"] is None]
        assert not stuck, (path.read_text(), stuck)
        assert instance.stop() == 0
        ran += 1
        if ran == 3:
            return
    raise AssertionError(f"only {ran} accepted files in 400 mutations")


def _answer(instance):
    try:
        return instance.status()
    except Exception:
        return None


def test_the_base_file_of_the_fuzzer_is_valid(tmp_path):
    path = tmp_path / "pmon.toml"
    path.write_text(tomli_w.dumps(mutate_toml.base()))
    assert pmon_cli(path, "validate").returncode == 0


def test_validate_says_plainly_when_a_cwd_name_is_too_long(tmp_path):
    """Found by the fuzz test above: a cwd of 300 characters made `pmon validate` trace back
    (ENAMETOOLONG from the stat of it) instead of naming the key."""
    path = write_project(tmp_path, [{"name": "m", "command": ["sleep", "1"], "cwd": "x" * 300}])
    result = CliRunner().invoke(cli, ["validate", "-c", str(path)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 2 and "key 'cwd'" in result.output, result.output
