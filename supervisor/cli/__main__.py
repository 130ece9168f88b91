"""`python -m pmon.cli`: the `pmon` command."""

from pmon.cli import main

main(prog_name="pmon")  # help, usage and shell completion (_PMON_COMPLETE) say pmon
