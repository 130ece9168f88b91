"""The real redundancy manager, whose beat timer's re-arm fails (EBADF) after N arms:
`arm_fails.py N -c FILE`. The fault of tests/test_redundancy_self_fence.py's failed
re-arm test; nothing else of the manager is changed."""

from __future__ import annotations

import errno
import sys

from pmon.redundancy import __main__ as manager
from pmon.redundancy import beat_timer

limit = int(sys.argv.pop(1))
real_arm = beat_timer.arm
arms = 0


def failing_arm(fd: int, seconds: float) -> None:
    global arms
    arms += 1
    if arms > limit:
        raise OSError(errno.EBADF, "re-arm failed (injected by the test)")
    real_arm(fd, seconds)


beat_timer.arm = failing_arm
sys.exit(manager.run())
