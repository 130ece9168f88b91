"""Demo control script: prints a computed value (a simulated tank level) every 5 s."""

import math
import time

from _common import log, ready, run_forever, setup


def main() -> None:
    args = setup("demo control script")
    log(f"control script {args.num} started")
    ready()
    t0 = time.monotonic()

    def compute() -> None:
        t = time.monotonic() - t0
        level = 50.0 + 40.0 * math.sin(t / 60.0)  # one slow fill/drain cycle
        log(f"tank level = {level:.1f} %")

    run_forever([(5.0, compute)])


if __name__ == "__main__":
    main()
