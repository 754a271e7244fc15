# Sourced by scripts/*.sh: create .venv in the checkout (once) and install the pinned requirements.
# Re-installs only when a requirements file changes (a stamp holds their hash).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
REQ="${1:-requirements.txt}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
STAMP=".venv/.t5vae-installed-$(cat requirements*.txt pyproject.toml | sha256sum | cut -c1-16)-$(basename "$REQ")"
if [ ! -f "$STAMP" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q -r "$REQ"
  .venv/bin/python -m pip install -q --no-deps -e .
  touch "$STAMP"
fi
export PATH="$ROOT/.venv/bin:$PATH"
