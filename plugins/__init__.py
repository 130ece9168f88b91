"""pmon's bundled monitor plugins, installed as the package `pmon_plugins`.

Each module is a plugin, declared as an entry point of the group `pmon.plugins` in
pyproject.toml, so pmon loads it exactly as it loads a plugin from another package:

    memory   memory and CPU of each manager's whole process tree
    server   free disk space and free memory of the server
    port     TCP ports that must accept connections (a manager's, or a partner's)
    alive    managers that must send WATCHDOG=1 at least every alive_seconds
    command  a command whose exit status is the verdict (Nagios style)
"""
