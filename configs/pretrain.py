"""Span-corruption pretraining of a small T5 (``python -m t5vae_jax.pretrain``): every setting.

    python -m t5vae_jax.pretrain --config configs/pretrain.py --out runs/t5 \\
        --config.text=data/ptb/train.txt --config.valid=data/ptb/valid.txt --config.steps=2000

Override any key on the command line (``--config.d_model=512``); ``configs/pretrain_ptb.py``
is the recipe of the PTB study (docs/ptb-study.md). ``text`` has no default and must be given.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # ---- data ---------------------------------------------------------------------------------
  config.text = config_dict.placeholder(str)  # training text, one example per line (required)
  config.valid = config_dict.placeholder(str)  # validation text; its loss is logged
  # A directory of an existing T5 tokenizer (with <extra_id_*> sentinels); None: train a
  # SentencePiece unigram tokenizer of vocab_size pieces (+ extra_ids sentinels) on ``text``.
  config.tokenizer = config_dict.placeholder(str)
  config.vocab_size = 8000
  config.extra_ids = 100  # sentinel tokens
  # The model's vocab_size is len(tokenizer) rounded up to this multiple (t5-small: 32100
  # tokens, vocab_size 32128); 1: no rounding.
  config.vocab_multiple = 128
  # chunks: concatenate the lines (reshuffled per epoch) and cut them to fit max_len (T5's
  # recipe, no padding); lines: one line per example, padded per batch to a multiple of
  # pad_multiple (each new length compiles the step once).
  config.examples = "chunks"
  config.pad_multiple = 32
  config.max_len = 128  # encoder input length after corruption, EOS included
  config.noise_density = 0.15  # fraction of tokens masked
  config.mean_span_length = 3.0  # mean noise span length
  # False: T5's original mask (first token never noise, last always); True: randomly rotated.
  config.rotate = True

  # ---- model (T5 v1.0 by default: ReLU, tied embeddings, scaled output) --------------------
  config.d_model = 256
  config.num_layers = 4  # encoder layers
  config.num_decoder_layers = config_dict.placeholder(int)  # None: num_layers
  config.num_heads = 4
  config.d_kv = 64
  config.d_ff = 1024
  config.feed_forward_proj = "relu"  # relu (T5 v1.0) | gated-gelu (v1.1; then untie too)
  # False: a separate LM head and no d_model**-0.5 output scaling (T5 v1.1).
  config.tie_word_embeddings = True
  config.relative_attention_num_buckets = 32
  config.relative_attention_max_distance = 128
  config.dropout_rate = 0.0  # during this pretraining (T5 v1.1 pretrained without)
  config.save_dropout_rate = 0.1  # written to config.json: finetuning's default (t5-small's)
  # Compute dtype (params stay float32); auto: bfloat16 on TPU/GPU, float32 on CPU.
  config.dtype = "auto"

  # ---- optimization -------------------------------------------------------------------------
  config.steps = 5000  # training steps (the schedule's length)
  config.batch_size = 64  # global batch (examples)
  config.optimizer = "adamw"  # adamw | adafactor
  config.lr = config_dict.placeholder(float)  # peak; None: 1e-3 (adamw), 1e-2 (adafactor)
  config.schedule = "cosine"  # after linear warm-up: cosine | rsqrt | constant
  config.warmup_steps = 200  # linear warm-up (at most a tenth of the steps)
  config.final_lr_fraction = 0.1  # cosine: learning rate at the last step / peak
  config.weight_decay = 0.01  # decoupled, on matrices (adamw); adafactor's decay rate
  config.clip_grad_norm = 1.0  # 0: no clipping
  # The shared embedding's step is this many times the others' (its init std is 1, so a plain
  # Adam step moves it relatively little).
  config.embedding_lr_multiplier = 1.0
  config.seed = 0
  config.num_devices = config_dict.placeholder(int)  # the first N devices; None: all
  config.fsdp = False  # shard params and optimizer state over the data axis

  # ---- logging, checkpoints, budget ---------------------------------------------------------
  config.log_every = 50
  config.eval_every = 500  # validation every N steps
  config.valid_max_batches = 20
  config.save_every = 500  # orbax checkpoint every N steps
  config.keep_checkpoints = 2
  # Wall-clock budget of the whole command: stop training in time, then save, validate and
  # write OUT as usual.
  config.max_minutes = config_dict.placeholder(float)
  # Stop after this step as max_minutes would, while the schedule still runs over ``steps``:
  # a budget that reproduces exactly (e.g. a run that max_minutes once stopped).
  config.stop_at_step = config_dict.placeholder(int)
  return config
