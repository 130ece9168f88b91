"""Demo archive manager: a core manager with ready = "spawn" that flushes every 10 s."""

from _common import log, ready, run_forever, setup


def main() -> None:
    args = setup("demo archive manager")
    log(f"archive manager {args.num} started")
    ready()  # harmless when pmon does not wait for it (no NOTIFY_SOCKET)
    flushed = 0

    def flush() -> None:
        nonlocal flushed
        flushed += 250
        log(f"archive flushed, {flushed} values stored")

    run_forever([(10.0, flush)])


if __name__ == "__main__":
    main()
