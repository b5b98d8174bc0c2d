#!/usr/bin/env bash
# Install llama-tui with its test peers into .venv, then run the whole test suite.
# Exit code 5 from pytest (no tests collected) is a failure here, never a silent pass.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test || exit 1
VENV="${VENV:-.venv}"
"$VENV/bin/lint-imports" --no-cache || exit 1       # the engine never imports the TUI
"$VENV/bin/python" scripts/import_cycles.py || exit 1  # no module imports itself round a circle
"$VENV/bin/ruff" check engine tui tests scripts || exit 1
"$VENV/bin/mypy" || exit 1                          # typed engine (pyproject [tool.mypy])
"$VENV/bin/python" -m pytest "$@"
status=$?
if [[ $status -eq 5 ]]; then
    echo "llama-tui: pytest collected no tests: failing" >&2
    exit 1
fi
exit $status
