"""Only what pyproject.toml cannot say: the folder supervisor/ installs under the import name
`pmon` (a top-level `supervisor` would clash with supervisord's package, which people who run
pmon often have installed), and plugins/ installs as `pmon_plugins` (never a generic
top-level `plugins`). All the rest is in pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=["pmon", *(f"pmon.{name}" for name in find_packages("supervisor")), "pmon_plugins"],
    package_dir={"pmon": "supervisor", "pmon_plugins": "plugins"},
)
