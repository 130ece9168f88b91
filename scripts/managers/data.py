"""Demo data manager: recovers its "database", reports READY=1, then heartbeats.

A core manager with ready = "notify": pmon counts it as running only once it
has sent READY=1, and it keeps sending WATCHDOG=1 every 2 s.
"""

import time

from _common import log, ready, run_forever, setup, watchdog

RECOVERY_S = 0.3


def main() -> None:
    args = setup("demo data manager")
    log(f"data manager {args.num} starting, recovering database")
    time.sleep(RECOVERY_S)  # stands in for replaying the last value archive
    ready()
    log("database recovered, ready")
    beats = 0

    def heartbeat() -> None:
        nonlocal beats
        beats += 1
        log(f"heartbeat {beats}: 1024 datapoints, 0 pending writes")

    run_forever([(2.0, watchdog), (10.0, heartbeat)])


if __name__ == "__main__":
    main()
