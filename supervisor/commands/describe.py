"""`describe`: everything about one manager in one answer: how it is configured (command,
cwd, environment with secret-looking values hidden, start type, limits, log file), where it
is (its status row, with the explainer's reason), its restarts within the reset window and
its last events."""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from pmon.commands.registry import command

if TYPE_CHECKING:
    from pmon.runtime.supervisor import Supervisor

SECRET = re.compile(r"PASS|SECRET|TOKEN|KEY|CREDENTIAL|AUTH|PWD|PRIVATE", re.IGNORECASE)
HIDDEN = "***"


@command("describe")
async def describe(sup: "Supervisor", target: str | int) -> dict[str, Any]:
    """One manager in full: its configuration (secrets hidden), status, restart history in
    the window and last events."""
    from pmon.extensions.explain import Explainer
    from pmon.runtime.process import log_path

    manager = sup.find(target)
    spec = manager.spec
    now, wall = sup.now(), time.time()
    explainer = sup.extension(Explainer)
    events = list(explainer.recent.get(spec.name, ())) if explainer is not None else []
    return {
        **sup.row(manager),
        "command": list(spec.command),
        "cwd": str(spec.cwd),
        "env": {k: HIDDEN if SECRET.search(k) else v for k, v in spec.env.items()},
        "ready": spec.ready.value,
        "ready_seconds": spec.ready_seconds,
        "start_timeout": spec.start_timeout,
        "seconds_to_kill": spec.seconds_to_kill,
        "restart_count": spec.restart_count,
        "reset_after": spec.reset_after,
        "run_on": spec.run_on,
        "weight": spec.weight,
        "notify_switchover": spec.notify_switchover,
        "monitor": {k: dict(v) for k, v in spec.monitor.items()},
        "log_file": str(log_path(sup.state_dir, spec.name)),
        "restarts_in_window": [{"at": round(wall - (now - t), 3)} for t in manager.recent],
        "events": events,
    }
