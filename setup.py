"""Only what pyproject.toml cannot say: install the bundled plugins in plugins/ under the
import name `pmon_plugins` (never a generic top-level `plugins`), while every package of
`supervisor` is still found by itself. All the rest is in pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["supervisor", "supervisor.*"]) + ["pmon_plugins"],
    package_dir={"pmon_plugins": "plugins"},
)
