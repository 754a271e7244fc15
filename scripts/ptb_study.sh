#!/usr/bin/env bash
# The PTB study of docs/ptb-study.md: one row of the paper's Table 2 grid per call.
#
#   bash scripts/ptb_study.sh ROW [T5_DIR]
#
# ROW is one of
#   a        phase 2 only (no phase 1), max pooling
#   b        phase 1 (decoder frozen) then phase 2, max pooling
#   b_open   as b, but the decoder and memory projection also train in phase 1
#   c015     b + denoising 0.15 (both phases)
#   c04      b + denoising 0.4
#   d05      c015 + KL thresholding 0.5 (phase 2; shares c015's phase 1)
#   d3       c015 + KL thresholding 3
#   e_mean   b with mean pooling
#   f_prefix b with the released code's self-attention prefix instead of cross-attention
#   r_released b in the released code's regime (configs/released_recipe.py: every departure of
#            the released code at once; its beta ramp is twice the paper's, 100 epochs, so
#            BETA_EPOCHS is doubled for this row)
# T5_DIR is the pretrained checkpoint (default runs/t5-ptb, written by t5vae_jax.pretrain).
# Runs go to runs/ptb-study/ROW; each phase is resumable (rerun the same command), and
# eval.py writes eval.json into each phase directory. Environment: P1_EPOCHS (default 5) and
# P2_EPOCHS (default 3) as in the paper's appendix; BETA_EPOCHS (default 50: beta's linear
# ramp, paper eq. 6; scale it with P2_EPOCHS to keep the paper's final beta on a shorter run);
# DATA (default ../shared/data/ptb); TRAIN_ARGS (more train.py flags for both phases, e.g.
# "--config.eval_every_steps=100 --config.eval_max_examples=500" for denser curves);
# EVAL_ARGS (default: K = 500 importance samples on the test split).
set -euo pipefail
cd "$(dirname "$0")/.."
row=${1:?usage: scripts/ptb_study.sh ROW [T5_DIR]}
t5=${2:-runs/t5-ptb}
data=${DATA:-../shared/data/ptb}
p1=${P1_EPOCHS:-5}
p2=${P2_EPOCHS:-3}
beta_epochs=${BETA_EPOCHS:-50}
eval_args=${EVAL_ARGS:---num_samples=500 --split=test}
work=runs/ptb-study/$row

config=configs/ptb.py
if [[ "$row" == r_released ]]; then
  config=configs/released_recipe.py
  beta_epochs=$(python3 -c "print(2 * float('$beta_epochs'))")
fi
common=(--config "$config" --config.model.pretrained="$t5" --config.data.dir="$data"
        --config.phase1.epochs="$p1" --config.phase2.epochs="$p2" --config.beta.epochs="$beta_epochs"
        --config.progress_bar=False ${TRAIN_ARGS:-})
share_phase1=""
case "$row" in
  a)        extra=(--config.phase2.from_phase1=False) ;;
  b)        extra=() ;;
  b_open)   extra=(--config.phase1.freeze_decoder=False) ;;
  c015)     extra=(--config.denoise_rate=0.15) ;;
  c04)      extra=(--config.denoise_rate=0.4) ;;
  d05)      extra=(--config.denoise_rate=0.15 --config.kl_floor=0.5); share_phase1=c015 ;;
  d3)       extra=(--config.denoise_rate=0.15 --config.kl_floor=3.0); share_phase1=c015 ;;
  e_mean)   extra=(--config.model.pooling=mean) ;;
  f_prefix) extra=(--config.model.latent_injection=self_prefix) ;;
  r_released) extra=() ;;
  *) echo "unknown row '$row' (see the header of $0)" >&2; exit 2 ;;
esac

mkdir -p "$work"
run() { echo "+ $*" >&2; "$@"; }
if [[ "$row" != a ]]; then
  if [[ -n "$share_phase1" ]]; then
    # KL thresholding acts in phase 2 only (beta is 0 in phase 1): reuse that row's phase 1.
    if [[ ! -d "$work/phase1" ]]; then
      [[ -d runs/ptb-study/$share_phase1/phase1 ]] || bash "$0" "$share_phase1" "$t5"
      cp -r "runs/ptb-study/$share_phase1/phase1" "$work/phase1"
    fi
  else
    run python train.py "${common[@]}" "${extra[@]}" --phase 1 --workdir "$work"
  fi
fi
run python train.py "${common[@]}" "${extra[@]}" --phase 2 --workdir "$work"
run python eval.py --workdir "$work" --phase 2 $eval_args
