"""Demo event manager: connects to the data manager, reports READY=1, then heartbeats.

A core manager with ready = "notify", like data.py; WATCHDOG=1 every 2 s.
"""

import time

from _common import log, ready, run_forever, setup, watchdog

CONNECT_S = 0.2


def main() -> None:
    args = setup("demo event manager")
    log(f"event manager {args.num} starting, connecting to data manager")
    time.sleep(CONNECT_S)  # stands in for loading the current process image
    ready()
    log("process image loaded, ready")
    events = 0

    def heartbeat() -> None:
        nonlocal events
        events += 37  # a made-up but steady event rate
        log(f"heartbeat: {events} value changes dispatched")

    run_forever([(2.0, watchdog), (10.0, heartbeat)])


if __name__ == "__main__":
    main()
