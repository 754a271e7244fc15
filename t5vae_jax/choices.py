"""The allowed values of the config's choice keys, declared once.

The modules that act on a value (model.py, losses.py, noise.py, schedules.py, datasets/) and the
config validator (config_validation.py, which reports a bad value before anything heavy starts)
both import these tuples. Plain Python: nothing heavy is imported here.
"""

POOLINGS = ("max", "mean")
# "all": every encoder layer's output through the encoder's final RMS norm (and, with
# pool_dropout, its final dropout), i.e. each layer as it would leave the encoder were it the
# last, then one max / mean over layers and positions. "all_raw" (ablation): the intermediate
# layers un-normalised next to the normalised final output; their scale grows with depth, so a
# joint max is mostly the deep raw layers' and the final output barely counts.
POOL_LAYERS = ("last", "all", "all_raw")
INJECTIONS = ("cross_attention", "self_prefix")
# "auto": bfloat16 on TPU/GPU, float32 on CPU, resolved on the run's devices (accelerator.py).
DTYPES = ("float32", "bfloat16", "float16", "auto")
DATASETS = ("ptb", "snli", "yahoo", "yelp", "synthetic")
BAD_LINE_POLICIES = ("skip", "fail")
TOKENIZER_MODEL_TYPES = ("unigram", "bpe", "word", "char")
# The configurable KL weight schedules of phase 2 (phase 1 runs schedules' internal "zero").
BETA_SCHEDULES = ("constant", "linear", "cyclical")
KL_THRESHOLD_MODES = ("batch", "example")
# How the training loss scales the reconstruction term: "sum": nats per sentence, summed over
# the real target tokens (the paper's eq. 1, the ELBO); "max_len": that sum divided by the
# padded length, i.e. the released code's mean of the token CE over all positions of its
# 256-padded batch, pads contributing 0 (its F.cross_entropy ignores the pad id); since the KL
# is not divided too, this weighs the KL max_len times more.
REC_NORMALIZERS = ("sum", "max_len")
DENOISE_MODES = ("bernoulli", "uniform_count")
NONFINITE_POLICIES = ("skip", "stop")
FEED_FORWARD_PROJ = (
    "relu",
    "gelu",
    "gelu_new",
    "silu",
    "gated-relu",
    "gated-gelu",
    "gated-gelu_new",
    "gated-silu",
)
BEST_METRICS = ("val/neg_elbo", "val/rec", "val/kl", "val/rec_per_token", "val/ppl_elbo")
# The sharding rule table (config.sharding_rules, t5vae_jax/sharding.py): logical axes of the
# parameters and the mesh axes they may be split over.
LOGICAL_AXES = ("embed", "heads", "mlp", "vocab")
MESH_AXES = ("data", "model")


def parse_sharding_rules(text: str) -> tuple[tuple[str, str], ...]:
  """``"heads:model,mlp:model"`` -> (("heads", "model"), ("mlp", "model")); ValueError names
  the entry that is not ``<logical axis>:<mesh axis>`` with known names."""
  rules = []
  for item in filter(None, (part.strip() for part in text.split(","))):
    logical, sep, mesh_axis = (x.strip() for x in item.partition(":"))
    if not sep or logical not in LOGICAL_AXES or mesh_axis not in MESH_AXES:
      raise ValueError(
          f"{item!r} is not <logical axis>:<mesh axis> with a logical axis of "
          f"{', '.join(LOGICAL_AXES)} and a mesh axis of {', '.join(MESH_AXES)}"
      )
    rules.append((logical, mesh_axis))
  return tuple(rules)
