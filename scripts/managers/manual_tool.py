"""Demo `manual` manager: started only on an operator's command, runs until stopped."""

from _common import log, ready, run_forever, setup


def main() -> None:
    args = setup("demo operator tool")
    log(f"tool {args.num} started by operator")
    ready()
    run_forever([(60.0, lambda: log("tool still running"))])


if __name__ == "__main__":
    main()
