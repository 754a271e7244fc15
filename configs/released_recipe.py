"""The released PyTorch code's regime (github.com/seongminp/transformers-into-vaes), as one config.

Our defaults follow the paper's text; the code behind its Tables 1-4 departs from it in the ways
the README's table "The released code's regime in one flag" lists. Each departure is one key of ``configs/default.py``; ``RELEASED_CODE`` lists
them and ``apply(config)`` sets them on any config, so a run in the released code's regime is one
flag, and every departure can be switched back alone to see what it does::

    python train.py --config configs/released_recipe.py --phase 1 --workdir runs/released
    python train.py --config configs/released_recipe.py:yelp ...   # another dataset's config
    python train.py --config configs/released_recipe.py:demo ...   # the offline demo's

``:<name>`` names the config of ``configs/`` the recipe starts from (default ``ptb``). A config
kept elsewhere loads this file by path and calls ``apply(config)`` on its own ConfigDict.

Two of the released code's bugs are left out on purpose: its ``build_past``
mixes z across the examples of a batch, and its denoising swaps token ids and attention mask.
Its evaluation differences (no importance weighting, MI per batch) are not training keys:
eval.py reports those figures next to ours.
"""

import pathlib

from t5vae_jax import config_files

# key: (the released code's value, the paper's method / our default, what it is).
RELEASED_CODE = {
    "model.latent_injection": (
        "self_prefix",
        "cross_attention",
        "z reaches the decoder as a self-attention prefix",
    ),
    "model.pool_layers": (
        "last",
        "all (paper's text; our default is last too)",
        "only the last encoder layer is pooled",
    ),
    "model.pool_padding": (True, False, "pooling runs over pad positions too"),
    "model.pool_dropout": (True, False, "pooling sees the encoder output after its dropout"),
    "kl_threshold_mode": ("example", "batch", "the KL floor per example and dimension"),
    "denoise_mode": (
        "uniform_count",
        "bernoulli",
        "a uniform number of tokens < rate x length is deleted",
    ),
    "optimizer.learning_rate": (1e-4, 1e-3, "AdamW learning rate"),
    "optimizer.eps": (1e-8, 1e-3, "AdamW epsilon"),
    "optimizer.weight_decay": (
        0.01,
        "not given (our default: configs/default.py's)",
        "AdamW weight decay: torch's default, on every parameter",
    ),
    "beta.epochs": (100.0, 50.0, "the linear beta ramp's length in epochs"),
    "rec_normalizer": (
        "max_len",
        "sum",
        "reconstruction / 256: the mean token CE over all padded positions",
    ),
    "data.max_len": (256, "64 (PTB)", "sentences truncated to, and padded to, 256 tokens"),
    "data.bucket_lengths": ((256,), "(16, 32, 48, 64)", "every batch padded to max_len"),
}


def apply(config):
  """Sets every key of ``RELEASED_CODE`` on ``config`` (a ConfigDict) and returns it."""
  for key, (value, _, _) in RELEASED_CODE.items():
    node = config
    *parents, leaf = key.split(".")
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


def get_config(base: str = "ptb"):
  """``configs/<base>.py``'s config in the released code's regime."""
  here = pathlib.Path(__file__).resolve().parent
  bases = sorted(
      p.stem
      for p in here.glob("*.py")
      if p.stem not in ("__init__", "released_recipe") and not p.stem.startswith("pretrain")
  )  # the training configs (pretrain*.py configure t5vae_jax.pretrain)
  if base not in bases:
    raise ValueError(
        f"configs/released_recipe.py:{base}: no config {base!r} in {here}; "
        f"allowed: {', '.join(bases)}"
    )
  return apply(config_files.sibling(__file__, base).get_config())
