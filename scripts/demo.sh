#!/usr/bin/env bash
# The offline demo: set up .venv (first run only), train both phases of configs/demo.py
# (a tiny T5 from scratch on the synthetic grammar), evaluate (with linear probes of the
# grammar's attributes), plot the curves, and write the HTML report ($WORKDIR/report.html).
# T5VAE_ACCELERATOR=tpu|cuda12 bash scripts/demo.sh: with JAX's TPU / CUDA plugin (_venv.sh).
source "$(dirname "$0")/_venv.sh" requirements.txt
WORKDIR="${1:-runs/demo}"
python train.py --config configs/demo.py --phase 1 --workdir "$WORKDIR"
python train.py --config configs/demo.py --phase 2 --workdir "$WORKDIR"
if [ -f eval.py ]; then
  python eval.py --workdir "$WORKDIR" --num_samples 50 --probe_labels auto
fi
python -m t5vae_jax.plot "$WORKDIR" --phase 1 --out "$WORKDIR/phase1_curves.png"
python -m t5vae_jax.plot "$WORKDIR" --phase 2 --out "$WORKDIR/phase2_curves.png"
python -m t5vae_jax.report "$WORKDIR"
