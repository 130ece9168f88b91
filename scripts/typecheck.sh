#!/usr/bin/env bash
# mypy --strict (configured in pyproject.toml's [tool.mypy]) on the packages pmon and
# pmon_plugins, with the python of the current venv:
#   .venv/bin/pip install -e '.[typecheck]' && PYTHON=.venv/bin/python scripts/typecheck.sh
# The folders supervisor/ and plugins/ install under other names (see setup.py), and the
# editable install maps the names with an import hook that mypy cannot follow. So the folders
# are linked under their import names in build/mypy-path/ (pyproject.toml's mypy_path), and
# the paths in mypy's messages are turned back into the real ones (supervisor/..., plugins/...).
set -euo pipefail
cd "$(dirname "$0")/.."
links=build/mypy-path
mkdir -p "$links"
ln -sfn ../../supervisor "$links/pmon"
ln -sfn ../../plugins "$links/pmon_plugins"
"${PYTHON:-python}" -m mypy -p pmon -p pmon_plugins "$@" \
  | sed -e "s#$links/pmon/#supervisor/#g" -e "s#$links/pmon_plugins/#plugins/#g"
