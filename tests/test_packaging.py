"""pmon and supervisord installed side by side: pmon installs as `pmon` (and `pmon_plugins`),
never as a top-level `supervisor`, so `pip install` of both into one environment leaves both
working. Builds and installs this repository for real into a fresh virtual environment, so it
needs the package index (skipped, with the reason, when the index cannot be reached)."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# What a build must not see: a build in the source tree writes build/ and *.egg-info there.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", "var",
    ".pytest_cache", ".hypothesis", ".mypy_cache",
)
# pip's words for an index it could not reach (urllib3 and socket errors it reports).
NETWORK_ERRORS = (
    "NewConnectionError", "Failed to establish a new connection", "ConnectTimeoutError",
    "ReadTimeoutError", "Read timed out", "ProxyError", "Max retries exceeded",
    "Name or service not known", "Temporary failure in name resolution",
    "Network is unreachable", "connection broken",
)
# pip's own timeout per request (the environment may set a far longer one) and retries:
# an unreachable index costs seconds, not minutes.
PIP_NETWORK = ["--timeout", "15", "--retries", "2"]


def run(command: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)


def outer_pip_can_target() -> bool:
    """pip >= 22.3 installs into another environment (`pip --python`), so the new venv
    needs no pip of its own (ensurepip is most of a venv's creation time)."""
    try:
        major, minor = importlib.metadata.version("pip").split(".")[:2]
        return (int(major), int(re.match(r"\d+", minor).group())) >= (22, 3)
    except (importlib.metadata.PackageNotFoundError, ValueError, AttributeError):
        return False


@pytest.mark.packaging
@pytest.mark.timeout(600)
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX venv layout (bin/)")
def test_pmon_and_supervisord_install_and_work_in_one_venv(tmp_path):
    # Nothing from this checkout may leak in: the checks run outside it, without PYTHONPATH.
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    venv = tmp_path / "venv"
    targeted = outer_pip_can_target()
    made = run([sys.executable, "-m", "venv", *(["--without-pip"] if targeted else []), str(venv)],
               timeout=120, env=env, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    python, bin_dir = venv / "bin" / "python", venv / "bin"
    pip = ([sys.executable, "-m", "pip", "--python", str(python)] if targeted
           else [str(python), "-m", "pip"])
    install = [*pip, "install", "--disable-pip-version-check", "-q", *PIP_NETWORK]

    supervisord = run([*install, "supervisor"], timeout=180, env=env, cwd=tmp_path)
    if supervisord.returncode != 0:
        output = supervisord.stdout + supervisord.stderr
        if any(marker in output for marker in NETWORK_ERRORS):
            pytest.skip("package index unreachable: pip install supervisor failed on the network")
        pytest.fail(f"pip install supervisor failed:\n{output}")

    # A copy of the source (without .venv, build/, ...), so the build writes nothing here.
    source = tmp_path / "pmon-src"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)
    pmon_install = run([*install, str(source)], timeout=300, env=env, cwd=tmp_path)
    assert pmon_install.returncode == 0, (
        f"pip install of pmon failed:\n{pmon_install.stdout}{pmon_install.stderr}")

    validate = run([str(bin_dir / "pmon"), "validate", "-c", str(REPO / "etc" / "pmon.toml")],
                   timeout=60, env=env, cwd=tmp_path)
    assert validate.returncode == 0, validate.stdout + validate.stderr
    assert "valid" in validate.stdout

    helped = run([str(bin_dir / "pmon"), "--help"], timeout=60, env=env, cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert "validate" in helped.stdout and "service" in helped.stdout

    # The command a systemd unit written by this install runs (`-m pmon.cli` with the venv's
    # Python) works there: run it with `validate` in place of `run`.
    unit = run([str(bin_dir / "pmon"), "service", "install", "--print",
                "-c", str(REPO / "etc" / "pmon.toml")], timeout=60, env=env, cwd=tmp_path)
    assert unit.returncode == 0, unit.stderr
    exec_start = next(line for line in unit.stdout.splitlines() if line.startswith("ExecStart="))
    words = shlex.split(exec_start.removeprefix("ExecStart="))
    assert words[1:4] == ["-m", "pmon.cli", "run"], exec_start
    words[3] = "validate"
    by_unit = run(words, timeout=60, env=env, cwd=tmp_path)
    assert by_unit.returncode == 0, by_unit.stdout + by_unit.stderr

    version = run([str(bin_dir / "supervisord"), "--version"], timeout=60, env=env, cwd=tmp_path)
    assert version.returncode == 0, version.stderr
    assert re.fullmatch(r"\d+(\.\d+)+\S*", version.stdout.strip()), version.stdout

    # Both import, each from its own package in the venv; pmon installs no top-level
    # `supervisor` (nor a generic `plugins`) that could overwrite or shadow supervisord's.
    check = (
        "import importlib.metadata, os.path\n"
        "import pmon, pmon.cli, supervisor.states, supervisor.supervisord\n"
        "print(os.path.realpath(pmon.__file__))\n"
        "print(os.path.realpath(supervisor.states.__file__))\n"
        "print(sorted({str(f).split('/')[0] for f in importlib.metadata.files('pmon')}))\n"
    )
    imported = run([str(python), "-c", check], timeout=60, env=env, cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    pmon_file, supervisor_file, top_level = imported.stdout.splitlines()
    site = str(venv.resolve())
    assert pmon_file.startswith(site) and supervisor_file.startswith(site), imported.stdout
    assert "supervisor" not in top_level and "'plugins'" not in top_level, top_level
