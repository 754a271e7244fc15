"""The PTB study's pretrained T5 (docs/ptb-study.md section 1): 9.44M parameters, 603 steps.

    python -m t5vae_jax.pretrain --config configs/pretrain_ptb.py --out runs/t5-ptb \\
        --config.text=../shared/data/ptb/train.txt --config.valid=../shared/data/ptb/valid.txt
"""

from t5vae_jax import config_files

pretrain = config_files.sibling(__file__, "pretrain")


def get_config():
  config = pretrain.get_config()
  config.d_model = 256
  config.num_layers = 4
  config.num_heads = 4
  config.d_ff = 1024
  config.batch_size = 64
  config.noise_density = 0.3
  config.lr = 2e-3
  config.warmup_steps = 100
  config.steps = 800  # the cosine schedule's length ...
  config.stop_at_step = 603  # ... cut where the study's 42-minute budget once stopped it
  config.embedding_lr_multiplier = 30.0
  config.eval_every = 100
  config.save_every = 100
  return config
