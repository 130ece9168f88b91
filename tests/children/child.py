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
parser.add_argument("--fail-once-file", help="exit 3 if this file does not exist (then create it)")
parser.add_argument("--on-usr1", help="append '<name> <pid> usr1' to this file on each SIGUSR1")
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
if args.record:
    with open(args.record, "a") as handle:
        handle.write(f"{name} {os.getpid()} start\n")
if args.text:
    print(args.text, flush=True)
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
while True:
    signal.pause() if hasattr(signal, "pause") else time.sleep(3600)
