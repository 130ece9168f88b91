"""A manager that leaves helpers behind the way real ones do (stdlib only): a helper in a
session of its own (start_new_session=True) and a classic double-forking daemon. Each
helper appends "<kind> <pid>" to the file given, then sleeps; the manager sleeps too."""

import os
import subprocess
import sys
import time

record = sys.argv[1]
sleeper = [sys.executable, "-c", "import time; time.sleep(3600)"]


def note(kind: str, pid: int) -> None:
    with open(record, "a") as handle:
        handle.write(f"{kind} {pid}\n")


helper = subprocess.Popen(sleeper, start_new_session=True)
note("setsid", helper.pid)

pid = os.fork()
if pid == 0:  # the daemon's dance: fork, setsid, fork again, the middle one exits
    os.setsid()
    if os.fork() == 0:
        note("daemon", os.getpid())
        os.execv(sys.executable, sleeper)
    os._exit(0)
os.waitpid(pid, 0)
note("manager", os.getpid())
while True:
    time.sleep(3600)
