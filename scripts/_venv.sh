# Sourced by scripts/*.sh: create .venv in the checkout (once) and install the pinned requirements.
# Re-installs only when a requirements file, pyproject.toml or the accelerator changes (a stamp).
# T5VAE_ACCELERATOR=cpu (default) | tpu | cuda12 picks JAX's accelerator plugin: the project's
# extra of that name (jax[tpu] / jax[cuda12], pyproject.toml). Without it, a TPU VM or a GPU box
# runs JAX on the CPU (the start-up line of every command says which backend it got).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
REQ="${1:-requirements.txt}"
PY="${PYTHON:-python3}"
ACCELERATOR="${T5VAE_ACCELERATOR:-cpu}"
case "$ACCELERATOR" in
  cpu|tpu|cuda12) ;;
  *) echo "error: T5VAE_ACCELERATOR=$ACCELERATOR is not allowed; allowed: cpu, tpu, cuda12" >&2
     exit 2 ;;
esac
if [ ! -x .venv/bin/python ]; then
  if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "error: $PY is not Python 3.11+ (jax 0.10.2 needs it); name one: PYTHON=python3.11" >&2
    exit 2
  fi
  "$PY" -m venv .venv
fi
STAMP=".venv/.t5vae-installed-$(cat requirements*.txt pyproject.toml | sha256sum | cut -c1-16)-$(basename "$REQ")-$ACCELERATOR"
if [ ! -f "$STAMP" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q -r "$REQ"
  # setuptools' "Editable installation" banner (a warning of pip's build step) is harmless.
  QUIET_EDITABLE="${PYTHONWARNINGS:+$PYTHONWARNINGS,}ignore:Editable installation"
  if [ "$ACCELERATOR" = cpu ]; then
    PYTHONWARNINGS="$QUIET_EDITABLE" .venv/bin/python -m pip install -q --no-deps -e .
  else
    PYTHONWARNINGS="$QUIET_EDITABLE" .venv/bin/python -m pip install -q -e ".[$ACCELERATOR]"
  fi
  if [ "$(basename "$REQ")" = requirements-test.txt ] && [ "$(uname -sm)" = "Linux x86_64" ]; then
    # libtpu's compile-only client for tests/test_aot.py, kept out of the venv's site-packages:
    # a libtpu that JAX can import makes every run on a machine without a TPU probe for one
    # and print libtpu's warnings (the demo after the tests would).
    .venv/bin/python -m pip install -q --no-deps --upgrade --target .venv/libtpu "libtpu==0.0.42"
  fi
  touch "$STAMP"
fi
export PATH="$ROOT/.venv/bin:$PATH"
