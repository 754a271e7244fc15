#!/usr/bin/env bash
# The formatter (pyink: Flax's, 2-space indents, 100 columns) and the linter (ruff: pyflakes'
# checks), configured in pyproject.toml. `bash scripts/lint.sh` checks; `--fix` rewrites.
source "$(dirname "$0")/_venv.sh" requirements-test.txt
if [ "${1:-}" = "--fix" ]; then
  pyink -q .
  ruff check -q --fix .
else
  pyink --check -q .
  ruff check -q .
fi
