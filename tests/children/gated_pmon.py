"""`pmon run` with one more extension whose start waits for a gate file, as a start_server
that resolves a name or a slow plugin would: a test can act inside pmon's start-up window.

    gated_pmon.py CONFIG first|last MARKER GATE

`first`: before every other extension (before the hot restart signal is armed); `last`:
after them all (the control server already answers). MARKER is created when the wait
begins; the start goes on once GATE exists."""

import asyncio
import sys
from pathlib import Path

from pmon import app, config as config_module
from pmon.runtime.api import Api, Extension

config_path, where, marker, gate = sys.argv[1:5]


class Gate(Extension):
    name = "gated start"

    async def start(self, api: Api) -> None:
        Path(marker).touch()
        while not Path(gate).exists():
            await asyncio.sleep(0.02)


built = app.build_extensions


def build_extensions(config):  # type: ignore[no-untyped-def]
    extensions = built(config)
    return [Gate(), *extensions] if where == "first" else [*extensions, Gate()]


app.build_extensions = build_extensions
sys.exit(app.run(config_module.load(config_path), echo=False))
