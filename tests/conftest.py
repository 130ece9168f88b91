from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from support import Pmon, kill_project_processes, remove_project_cgroups


@pytest.fixture
def pmon(tmp_path: Path) -> Iterator[Callable[[Path], Pmon]]:
    """Start real pmon instances; each is stopped, and every process it started killed."""
    started: list[Pmon] = []

    def start(
        config: Path, wait: bool = True, env: dict[str, str] | None = None,
        cwd: Path | None = None, prefix: list[str] | None = None,
    ) -> Pmon:
        instance = Pmon(config, env, cwd, prefix)
        started.append(instance)
        instance.wait_ready(project_state="running" if wait else None)
        return instance

    yield start
    for instance in started:
        instance.stop()
        kill_project_processes(instance.config.project.name)
        remove_project_cgroups(instance.config)
