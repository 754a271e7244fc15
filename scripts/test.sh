#!/usr/bin/env bash
# Set up .venv (first run only) and run the whole test suite, in parallel over
# T5VAE_TEST_WORKERS pytest-xdist workers (default 2; 0 runs in this process only).
# T5VAE_ACCELERATOR=tpu|cuda12 installs JAX's TPU / CUDA plugin too (scripts/_venv.sh).
source "$(dirname "$0")/_venv.sh" requirements-test.txt
exec python -m pytest -q -n "${T5VAE_TEST_WORKERS:-2}" "$@"
