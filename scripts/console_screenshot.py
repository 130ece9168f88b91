"""Make docs/console.svg, the README's picture of `pmon console`: the sample pair
(etc/pair-a.toml, etc/pair-b.toml) runs, a driver is killed once (a restart to show), and
textual saves what the console of server a shows.

  .venv/bin/python scripts/console_screenshot.py [--out docs/console.svg]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support import Pmon, poll_for  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "console.svg")
    args = parser.parse_args()
    from textual.widgets import DataTable

    from pmon.cli.console_app import Console
    from pmon.control.client import Endpoint

    a = Pmon(ROOT / "etc" / "pair-a.toml")
    b = Pmon(ROOT / "etc" / "pair-b.toml")
    try:
        a.wait_ready(60)
        b.wait_ready(60)
        poll_for(lambda: a.call("redu-status")["partner_available"], 60, "the pair")
        driver = a.manager("driver1")["pid"]
        os.kill(driver, signal.SIGKILL)
        poll_for(lambda: a.manager("driver1")["pid"] not in (None, driver), 30, "driver1 again")

        async def shoot() -> None:
            app = Console(Endpoint.read(a.config_path))
            async with app.run_test(size=(150, 36)) as pilot:
                deadline = time.monotonic() + 30
                while not (app.connected and app.pair and app.usage) and time.monotonic() < deadline:
                    await pilot.pause(0.05)
                table = app.query_one("#managers", DataTable)
                table.move_cursor(row=table.get_row_index("driver1"))
                await pilot.pause(2.5)  # a CPU sample and the driver's log
                args.out.parent.mkdir(parents=True, exist_ok=True)
                app.save_screenshot(filename=args.out.name, path=str(args.out.parent))

        asyncio.run(shoot())
        print(f"wrote {args.out}")
    finally:
        for server in (a, b):
            server.stop()


if __name__ == "__main__":
    main()
