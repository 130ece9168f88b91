"""`python -m pmon.cli`: the `pmon` command."""

from pmon.cli import main

main()
