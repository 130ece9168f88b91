"""A manager that reports how it was started (stdlib only): its uid, gid, groups, umask,
rlimits and environment as one JSON line in argv[1]; the name of each stop signal it gets is
appended to argv[1] + ".signals", and it exits on it."""

import json
import os
import resource
import signal
import sys
import time

path = sys.argv[1]
umask = os.umask(0)
os.umask(umask)
report = {
    "uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups()), "umask": umask,
    "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
    "core": resource.getrlimit(resource.RLIMIT_CORE),
    "as": resource.getrlimit(resource.RLIMIT_AS), "env": dict(os.environ),
}


def stop(signum, _frame):
    with open(path + ".signals", "a") as handle:
        handle.write(signal.Signals(signum).name + "\n")
    sys.exit(0)


for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
    signal.signal(sig, stop)
with open(path + ".tmp", "w") as handle:
    json.dump(report, handle)
os.replace(path + ".tmp", path)
while True:
    time.sleep(3600)
