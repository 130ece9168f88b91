"""`python -m pmon.redundancy -c FILE`: the redundancy manager (pmon starts it)."""

from __future__ import annotations

import argparse
import os
import sys

from pmon import config as config_module
from pmon.errors import ConfigError
from pmon.redundancy.daemon import main


def run() -> int:
    parser = argparse.ArgumentParser(prog="python -m pmon.redundancy",
                                     description="The redundancy manager of a pmon project.")
    parser.add_argument("-c", "--config", default=os.environ.get("PMON_CONFIG"),
                        help="the project's TOML file (default: $PMON_CONFIG)")
    args = parser.parse_args()
    if not args.config:
        print("redundancy: pass the project file with -c FILE", file=sys.stderr)
        return 2
    try:
        config = config_module.load(args.config)
    except ConfigError as exc:
        print(f"redundancy: {exc}", file=sys.stderr)
        return 2
    if config.redundancy is None:
        print(f"redundancy: {config.path} has no [redundancy] section; add one (see "
              "docs/redundancy.md) or remove this manager", file=sys.stderr)
        return 2
    if config.redundancy.group:  # three or more servers, through etcd only
        from pmon.redundancy.group_daemon import GroupManager

        return main(config, GroupManager)
    return main(config)


if __name__ == "__main__":
    sys.exit(run())
