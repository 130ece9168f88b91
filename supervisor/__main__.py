"""`python -m pmon`: the `pmon` command."""

from pmon.cli import main

main()
