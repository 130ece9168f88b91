"""A configurable manager for tests (stdlib only). Every behaviour a test needs is a flag."""

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--record", help="append '<name> <pid> start' to this file at start")
parser.add_argument("--exit-after", type=float, help="exit after this many seconds")
parser.add_argument("--code", type=int, default=0, help="exit code for --exit-after")
parser.add_argument("--ignore-term", action="store_true", help="ignore SIGTERM")
parser.add_argument("--grandchild", help="start a grandchild that writes its pid to this file")
parser.add_argument("--ready-after", type=float, help="send READY=1 after this many seconds")
parser.add_argument("--print", dest="text", help="print this line at start")
parser.add_argument("--print-every", type=float, help="print a numbered line this often")
parser.add_argument("--fail-once-file", help="exit 3 if this file does not exist (then create it)")
parser.add_argument("--allocate-mb", type=int, help="hold this many MB of memory (touched)")
parser.add_argument("--spin", action="store_true", help="burn CPU in a busy loop")
parser.add_argument("--listen", type=int, help="accept TCP connections on this loopback port")
parser.add_argument("--close-after", type=float, help="with --listen: stop listening after s")
parser.add_argument("--watchdog-every", type=float, help="send WATCHDOG=1 this often")
parser.add_argument("--watchdog-for", type=float, help="... but only for this many seconds")
parser.add_argument("--env-to", help="append the value of $PMON_TEST_VAR to this file")
parser.add_argument("--on-usr1", help="append '<name> <pid> usr1' to this file on each SIGUSR1")
parser.add_argument("--stamp", help="append 'start <time>' at start, 'stop <time>' on SIGTERM")
parser.add_argument("--stop-delay", type=float,
                    help="on SIGTERM, run on this many seconds before exiting (a slow stop)")
args, _ = parser.parse_known_args()
name = os.environ.get("PMON_MANAGER", "?")


def notify(message: str) -> None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.encode(), address)


if args.on_usr1:
    def usr1(_signum, _frame):
        with open(args.on_usr1, "a") as handle:
            handle.write(f"{name} {os.getpid()} usr1\n")

    signal.signal(signal.SIGUSR1, usr1)
if args.stamp or args.stop_delay:
    def stamped_stop(_signum, _frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one stop, however many SIGTERMs
        time.sleep(args.stop_delay or 0)  # still running: the stop stamp is its real end
        if not args.stamp:
            sys.exit(0)
        with open(args.stamp, "a") as handle:
            handle.write(f"stop {time.time():.6f} {os.getpid()}\n")
        sys.exit(0)

    signal.signal(signal.SIGTERM, stamped_stop)
if args.stamp:
    with open(args.stamp, "a") as handle:
        handle.write(f"start {time.time():.6f} {os.getpid()}\n")
if args.record:
    with open(args.record, "a") as handle:
        handle.write(f"{name} {os.getpid()} start\n")
if args.text:
    print(args.text, flush=True)
if args.env_to:
    with open(args.env_to, "a") as handle:
        handle.write(f"{os.environ.get('PMON_TEST_VAR', '')}\n")
if args.allocate_mb:
    ballast = bytearray(args.allocate_mb * 1024 * 1024)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1  # touch every page so that it is resident
if args.listen:
    import threading

    server = socket.create_server(("127.0.0.1", args.listen))
    server.settimeout(0.05)  # so that the loop below sees the end of --close-after
    until = time.monotonic() + (args.close_after if args.close_after is not None else float("inf"))

    def serve() -> None:
        while time.monotonic() < until:
            try:
                conn, _addr = server.accept()
                conn.close()
            except socket.timeout:
                continue
        server.close()  # the port now refuses connections

    threading.Thread(target=serve, daemon=True).start()
if args.watchdog_every:
    import threading

    def beat() -> None:
        end = time.monotonic() + (args.watchdog_for or float("inf"))
        while time.monotonic() < end:
            notify("WATCHDOG=1")
            time.sleep(args.watchdog_every)

    threading.Thread(target=beat, daemon=True).start()
if args.spin:
    while True:
        pass
if args.fail_once_file and not os.path.exists(args.fail_once_file):
    open(args.fail_once_file, "w").close()
    sys.exit(3)
if args.ignore_term:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if args.grandchild:
    code = "import os, time; open(%r, 'w').write(str(os.getpid())); time.sleep(3600)" % args.grandchild
    subprocess.Popen([sys.executable, "-c", code])
if args.ready_after is not None:
    time.sleep(args.ready_after)
    notify("READY=1")
if args.exit_after is not None:
    time.sleep(args.exit_after)
    sys.exit(args.code)
count = 0
while args.print_every:
    count += 1
    print(f"{name} line {count}", flush=True)
    time.sleep(args.print_every)
while True:
    signal.pause() if hasattr(signal, "pause") else time.sleep(3600)
