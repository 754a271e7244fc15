"""Defaults for every run: the paper's appendix values (Park & Lee 2021, appendix B).

Every ablation of the paper and every departure of the released code is one key here; override any of them on
the command line, e.g. ``--config.batch_size=64 --config.model.pooling=mean``.

The files of ``configs/`` are loaded by path (``--config configs/ptb.py``) and are not an
installed package (no generic top-level ``configs`` in site-packages): a config that starts from
these defaults loads this file as its sibling, by path, so it works from any working directory,
with ``python train.py`` and with the ``t5vae-train`` entry point::

    from t5vae_jax import config_files
    default = config_files.sibling(__file__, "default")   # then default.get_config()

A config kept elsewhere names this file:
``config_files.load_module("<checkout>/configs/default.py")``.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  # ---- model -------------------------------------------------------------------------------
  config.model = ml_collections.ConfigDict()
  # A Hugging Face T5 checkpoint (local directory or hub id). Empty: a T5 initialised from
  # scratch with the shape in ``model.t5`` (demo and tests).
  config.model.pretrained = "t5-small"
  config.model.t5 = ml_collections.ConfigDict(
      dict(
          vocab_size=32128,
          d_model=512,
          d_kv=64,
          d_ff=2048,
          num_layers=6,
          num_decoder_layers=6,
          num_heads=8,
          relative_attention_num_buckets=32,
          relative_attention_max_distance=128,
          feed_forward_proj="relu",
          tie_word_embeddings=True,
      )
  )
  config.model.dropout_rate = 0.1
  config.model.latent_dim = 32
  config.model.pooling = "max"  # max | mean
  # last (released code) | all (the paper's text: every encoder layer, each through the final
  # RMS norm, pooled jointly) | all_raw (ablation: raw intermediate layers next to the normed
  # final output; the deep raw layers' larger scale wins a joint max)
  config.model.pool_layers = "last"
  config.model.pool_padding = False  # True: pool over pads too (the released code's bug)
  # True: pool the encoder output after T5's final dropout, as the released code does; the max
  # of dropped-out states differs between training and evaluation (docs/ptb-study.md).
  config.model.pool_dropout = False
  config.model.latent_injection = "cross_attention"  # cross_attention (paper) | self_prefix
  # Compute dtype; params stay float32. "auto": bfloat16 on TPU/GPU, float32 on CPU, resolved on
  # the devices the run uses; saved as "auto", so a checkpoint loaded on a CPU computes in
  # float32. "float32" / "bfloat16" are kept everywhere.
  config.model.dtype = "auto"
  # Activation rematerialisation of each T5 block in training (t5.REMAT_POLICIES): "none" |
  # "full" (keep block inputs, recompute the rest) | "dots" (keep matmul outputs). Trades
  # compute for memory: what makes a big model's batch fit (python -m t5vae_jax.aot).
  config.model.remat = "none"

  # ---- data --------------------------------------------------------------------------------
  config.data = ml_collections.ConfigDict()
  config.data.name = "ptb"  # ptb | snli | yahoo | yelp | synthetic
  config.data.dir = ""  # local directory with train.txt / valid.txt / test.txt (offline)
  config.data.tfds_dir = ""  # where TFDS builds its array_record files ("" = ~/tensorflow_datasets)
  config.data.tokenizer = ""  # "" = the pretrained checkpoint's tokenizer
  config.data.max_len = 64  # tokens incl. EOS; longer sentences are truncated (and counted)
  config.data.bucket_lengths = (16, 32, 48, 64)  # padded lengths; few shapes, few compilations
  config.data.train_split = "train"
  config.data.eval_split = "validation"
  config.data.on_bad_line = "skip"  # skip (and count) | fail (naming file and line)
  config.data.max_line_chars = 20000  # longer lines are bad data (skip or fail, as above)
  # Scratch models only: a SentencePiece tokenizer is trained on the training split.
  config.data.extra_ids = 0  # sentinel tokens to add
  config.data.tokenizer_model_type = "unigram"  # unigram (T5's) | bpe | word
  config.data.synthetic = ml_collections.ConfigDict(
      dict(num_train=10000, num_valid=1000, num_test=1000, seed=0)  # name=synthetic only
  )

  # ---- optimisation ------------------------------------------------------------------------
  config.batch_size = 32  # global, across all devices and hosts
  # AdamW as the paper's appendix (lr, b1, b2, eps). It names AdamW (Loshchilov & Hutter) but no
  # decay; 0.01 is torch.optim.AdamW's default, which the released code uses on every parameter
  # (optax.adamw here decays every trainable leaf the same way). weight_decay=0.0 is plain Adam.
  config.optimizer = ml_collections.ConfigDict(
      dict(learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-3, weight_decay=0.01, grad_clip_norm=0.0)
  )

  # Phase 1: encoder warm-up (beta = 0, decoder frozen). Phase 2: full VAE.
  config.phase1 = ml_collections.ConfigDict(
      dict(
          epochs=5.0,
          # False (ablation, the released code without its freeze): everything trains in phase 1,
          # the shared embedding and so the tied LM head included.
          freeze_decoder=True,
      )
  )
  config.phase2 = ml_collections.ConfigDict(
      dict(
          epochs=3.0,
          from_phase1=True,  # False: phase 2 from the pretrained T5 directly (no phase 1)
      )
  )

  # ---- objective ---------------------------------------------------------------------------
  config.beta = ml_collections.ConfigDict(
      dict(
          schedule="linear",  # constant | linear | cyclical  (phase 2; phase 1 is always 0)
          value=1.0,  # constant
          epochs=50.0,  # linear: ramp 0 -> 1 over this many epochs (paper eq. 6)
          n_cycles=4,
          ratio=0.5,  # cyclical (Fu et al. 2019), over the whole phase
      )
  )
  config.kl_floor = 0.0  # per-dimension KL threshold lambda (free bits); 0 = off
  # The reconstruction term of the training loss: "sum" over the real tokens, nats per sentence
  # (paper eq. 1, the ELBO) | "max_len": that sum / data.max_len, the released code's mean over
  # its 256 padded positions (pads count 0), which weighs the KL max_len times more. Logged
  # rec, kl, neg_elbo and evaluation stay per sentence either way (configs/released_recipe.py).
  config.rec_normalizer = "sum"
  config.kl_threshold_mode = "batch"  # batch (Kingma et al.) | example (released code)
  config.denoise_rate = 0.0  # token deletion probability for the encoder input: 0, 0.15, 0.4
  config.denoise_mode = "bernoulli"  # bernoulli | uniform_count (released code)

  # ---- loop, logging, checkpoints ----------------------------------------------------------
  config.log_every_steps = 50
  config.eval_every_steps = 500  # also at the end of each phase
  config.eval_max_examples = 0  # 0 = the whole eval split
  # Validation runs eval.py's evaluator: K importance samples per sentence for val/nll and
  # val/ppl (0: none; eval.py's default is 500) and the seed of its latent draws (eval.py's
  # --seed): at equal K and seed, val/* of a step equals eval.py on that step's checkpoint.
  config.eval_num_samples = 10
  config.eval_seed = 0
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 3
  config.best_metric = "val/neg_elbo"  # lower is better
  config.on_nonfinite = "skip"  # skip the update (counted) | stop (keep the last good checkpoint)
  config.fsdp = False  # shard params and optimizer state over devices too
  # Tensor parallelism: devices per model column of the (data, model) mesh; heads, d_ff and the
  # vocabulary are split over them as sharding_rules says (t5vae_jax/sharding.py), the batch
  # over the rest. 1: data parallel only.
  config.model_parallel = 1
  config.sharding_rules = "heads:model,mlp:model,vocab:model"  # <logical axis>:<mesh axis>,...
  # Run the per-token layers (projections, feed-forward, output layer, loss) of a train step on
  # the real tokens only (t5vae_jax/packing.py); same loss, a few compilations per padded length.
  config.pack_tokens = True
  config.mesh_devices = 0  # 0: all devices (of all hosts); n > 0: the first n (single host)
  config.progress_bar = True
  return config
