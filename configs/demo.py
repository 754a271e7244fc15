"""The offline demo: a tiny T5 from scratch on the synthetic grammar, both phases on 2 CPU cores.

No download: the sentences come from ``t5vae_jax.synthetic`` and a SentencePiece tokenizer is
trained on them in the workdir.
"""

from t5vae_jax import config_files

default = config_files.sibling(__file__, "default")


def get_config():
  config = default.get_config()
  config.model.pretrained = ""
  config.model.t5.update(
      dict(
          vocab_size=128,
          d_model=64,
          d_kv=16,
          d_ff=128,
          num_layers=2,
          num_decoder_layers=2,
          num_heads=4,
          feed_forward_proj="relu",
          relative_attention_num_buckets=16,
          relative_attention_max_distance=32,
      )
  )
  config.model.dropout_rate = 0.0
  config.model.latent_dim = 16
  config.data.name = "synthetic"
  config.data.synthetic.update(dict(num_train=8000, num_valid=500, num_test=500, seed=0))
  config.data.tokenizer_model_type = "word"  # the grammar has a few dozen words
  config.data.max_len = 16
  config.data.bucket_lengths = (12, 16)
  config.batch_size = 32
  config.phase1.epochs = 4
  config.phase2.epochs = 6
  config.beta.epochs = 2.0  # short ramp: the demo has few epochs
  config.kl_floor = (
      0.5  # 16 dims x 0.5 nats: room for the ~6.6 nats a sentence of the grammar carries
  )
  config.denoise_rate = 0.15
  config.log_every_steps = 25
  config.eval_every_steps = 125
  config.checkpoint_every_steps = 250
  # At d_model 64 the gathers that packing adds cost more than the padding they skip (demo
  # training: 38 s unpacked vs 46-48 s packed, one more compilation included); larger models
  # gain (t5-small's shape: 9.97 vs 12.87 s per train step, bench/RESULTS.md).
  config.pack_tokens = False
  return config
