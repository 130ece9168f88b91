"""Demo driver: listens on 127.0.0.1:$DRIVER_PORT so a port monitor can check it.

Connections are accepted and closed at once (a port monitor only needs the
connect to succeed). SIGUSR1, sent after a switchover, triggers a general query.
"""

import os
import selectors
import socket
import sys

from _common import log, ready, run_forever, setup


def main() -> None:
    polls = 0

    def general_query() -> None:
        log("general query: 64 values re-read and sent to the event manager")

    args = setup("demo driver", on_switchover=general_query)
    port_text = os.environ.get("DRIVER_PORT", "")
    if not port_text.isdigit():
        log(f"DRIVER_PORT must be a port number, got {port_text!r}")
        sys.exit(2)
    port = int(port_text)

    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # a quick restart must be able to rebind while old connections sit in TIME_WAIT
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        srv.bind(("127.0.0.1", port))
    except OSError as e:
        log(f"cannot listen on 127.0.0.1:{port}: {e}")
        sys.exit(1)
    srv.listen(16)
    srv.setblocking(False)
    log(f"driver {args.num} listening on 127.0.0.1:{port}")
    ready()

    def accept(sock: socket.socket) -> None:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return
        conn.close()

    def poll() -> None:
        nonlocal polls
        polls += 1
        log(f"poll cycle {polls}: 64 values read from the PLC")

    sel = selectors.DefaultSelector()
    sel.register(srv, selectors.EVENT_READ, accept)
    run_forever([(10.0, poll)], sel)


if __name__ == "__main__":
    main()
