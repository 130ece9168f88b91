"""Demo `once` manager: does a short initialisation job, reports, exits 0."""

import time

from _common import log, setup


def main() -> None:
    args = setup("demo one-shot init job")
    log(f"init {args.num}: creating datapoint types")
    time.sleep(0.2)  # stands in for the real work
    log("init done: 3 datapoint types, 12 datapoints created")


if __name__ == "__main__":
    main()
