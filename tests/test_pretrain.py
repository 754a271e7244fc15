"""Span-corruption pretraining (t5vae_jax/pretrain.py): the objective by hand, then a tiny run.

The end-to-end tests share one tiny run (module fixture): it trains a tokenizer and a 1+1 layer
T5 for 20 steps on 2 of the 8 simulated devices, and its output directory must load in our
code and, with torch installed, in Hugging Face's PyTorch T5 with the same logits. The resume and
budget tests reuse the compiled step of that run (same settings, same process).
"""

import json
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import torch_available
from t5vae_jax import config_files
from t5vae_jax import pretrain
from t5vae_jax import pretrain_lib
from t5vae_jax import span_corruption as corruption
from t5vae_jax import pretrained
from t5vae_jax import t5 as t5_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
pretrain_configs = config_files.load_module(ROOT / "configs" / "pretrain.py")
SENT0 = 199  # <extra_id_0> in the hand-made cases (sentinels count down from it)
EOS = 1


def _corrupt(tokens, mask):
  return corruption.apply_noise_mask(np.array(tokens), np.array(mask, bool), SENT0, EOS)


# ---------------------------------------------------------------------------------------------
# The objective, by hand
# ---------------------------------------------------------------------------------------------
def test_hand_checked_example():
  # tokens a..h = 10..17, noise at c d and g (the module docstring's example).
  inputs, targets = _corrupt([10, 11, 12, 13, 14, 15, 16, 17], [0, 0, 1, 1, 0, 0, 1, 0])
  assert inputs.tolist() == [10, 11, SENT0, 14, 15, SENT0 - 1, 17, EOS]
  assert targets.tolist() == [SENT0, 12, 13, SENT0 - 1, 16, EOS]


def test_hand_checked_spans_at_both_ends():
  inputs, targets = _corrupt([10, 11, 12, 13, 14, 15], [1, 0, 1, 1, 0, 1])
  assert inputs.tolist() == [SENT0, 11, SENT0 - 1, 14, SENT0 - 2, EOS]
  assert targets.tolist() == [SENT0, 10, SENT0 - 1, 12, 13, SENT0 - 2, 15, EOS]
  # No noise at all: the input is the text, the target just EOS.
  inputs, targets = _corrupt([10, 11], [0, 0])
  assert inputs.tolist() == [10, 11, EOS] and targets.tolist() == [EOS]


def test_too_many_spans_for_the_sentinels_is_an_error():
  with pytest.raises(ValueError, match="sentinels"):
    corruption.apply_noise_mask(
        np.arange(10, 16), np.array([1, 0, 1, 0, 1, 0], bool), SENT0, EOS, num_sentinels=2
    )


def test_noise_counts_follow_t5():
  assert corruption.noise_counts(141, 0.15, 3) == (21, 7)
  assert corruption.noise_counts(20, 0.15, 3) == (3, 1)
  assert corruption.noise_counts(1, 0.15, 3) == (0, 0)  # nothing to mask and keep
  assert corruption.noise_counts(2, 0.15, 3) == (1, 1)  # at least one noise token
  assert corruption.noise_counts(10, 0.9, 1) == (9, 1)  # spans bounded by the kept tokens
  assert corruption.noise_counts(10, 0.0, 3) == (0, 0)


@pytest.mark.parametrize("rotate", [True, False])
def test_spans_reconstruct_exactly(rotate):
  """Merging inputs and targets gives back the original tokens, for many random cases."""
  rng = np.random.default_rng(0)
  for case in range(400):
    length = int(rng.integers(0, 120))
    density = float(rng.choice([0.05, 0.15, 0.3, 0.5]))
    span = float(rng.choice([1.0, 2.0, 3.0, 5.0]))
    tokens = rng.integers(3, 99, length)
    inputs, targets = corruption.span_corruption(
        tokens,
        np.random.default_rng(case),
        noise_density=density,
        mean_span_length=span,
        first_sentinel_id=SENT0,
        eos_id=EOS,
        rotate=rotate,
    )
    np.testing.assert_array_equal(
        corruption.merge_span_corruption(inputs, targets, SENT0, EOS), tokens
    )
    # EOS exactly once, at the end of both.
    assert inputs[-1] == EOS and targets[-1] == EOS
    assert EOS not in inputs[:-1] and EOS not in targets[:-1]
    # Sentinels in order <extra_id_0>, <extra_id_1>, ... = descending ids, same in both.
    sent_in = [t for t in inputs if t > 99]
    sent_tg = [t for t in targets if t > 99]
    assert sent_in == sent_tg == list(range(SENT0, SENT0 - len(sent_in), -1))
    num_noise, num_spans = corruption.noise_counts(length, density, span)
    assert len(targets) - 1 - len(sent_tg) == num_noise
    assert len(sent_tg) in ((num_spans, num_spans + 1) if rotate else (num_spans,))
    max_in, max_tg = corruption.corrupted_lengths(length, density, span, rotate)
    assert len(inputs) <= max_in and len(targets) <= max_tg


def test_t5_original_mask_keeps_first_and_masks_last():
  rng = np.random.default_rng(1)
  for _ in range(50):
    mask = corruption.random_spans_noise_mask(40, 0.15, 3, rng, rotate=False)
    assert not mask[0] and mask[-1]


def test_noise_fraction_span_length_and_uniform_positions():
  rng = np.random.default_rng(2)
  masks = np.stack([corruption.random_spans_noise_mask(100, 0.15, 3, rng) for _ in range(3000)])
  assert masks.mean() == pytest.approx(0.15, abs=1e-9)  # exactly 15 of 100 in every row
  starts = masks & ~np.concatenate([np.zeros((len(masks), 1), bool), masks[:, :-1]], axis=1)
  # Mean span length: 3 in T5's mask (15 tokens / 5 spans); the random cut of the circle
  # splits a span in about 15% of the rows.
  assert masks.sum() / starts.sum() == pytest.approx(3.0, rel=0.1)
  # Every position, the first and the last included, is noise about 15% of the time.
  per_position = masks.mean(axis=0)
  assert np.all(np.abs(per_position - 0.15) < 0.04), per_position
  # Over many tokens of varying length, the fraction is close to the density too.
  total = noise = 0
  for length in rng.integers(10, 200, 500):
    m = corruption.random_spans_noise_mask(int(length), 0.15, 3, rng)
    total, noise = total + len(m), noise + m.sum()
  assert noise / total == pytest.approx(0.15, abs=0.005)


def test_eos_handling():
  with pytest.raises(ValueError, match="without EOS"):
    corruption.span_corruption(
        np.array([5, 6, EOS, 7]),
        np.random.default_rng(0),
        noise_density=0.15,
        mean_span_length=3,
        first_sentinel_id=SENT0,
        eos_id=EOS,
    )
  for tokens in ([], [5]):  # too short to mask: the text and EOS; the target is EOS alone
    inputs, targets = corruption.span_corruption(
        np.array(tokens, np.int64),
        np.random.default_rng(0),
        noise_density=0.15,
        mean_span_length=3,
        first_sentinel_id=SENT0,
        eos_id=EOS,
    )
    assert inputs.tolist() == tokens + [EOS] and targets.tolist() == [EOS]
  with pytest.raises(ValueError, match="EOS"):
    corruption.merge_span_corruption([5, SENT0], [SENT0, 6, EOS], SENT0, EOS)


def test_fit_length_fills_max_len():
  content, target = corruption.fit_length(128, 0.15, 3)
  assert corruption.corrupted_lengths(content, 0.15, 3)[0] <= 128
  assert corruption.corrupted_lengths(content + 1, 0.15, 3)[0] > 128
  rng = np.random.default_rng(3)
  lengths_in, lengths_tg = set(), set()
  for i in range(300):
    inputs, targets = corruption.span_corruption(
        rng.integers(3, 99, content),
        rng,
        noise_density=0.15,
        mean_span_length=3,
        first_sentinel_id=SENT0,
        eos_id=EOS,
    )
    lengths_in.add(len(inputs))
    lengths_tg.add(len(targets))
  assert max(lengths_in) == 128 and max(lengths_tg) <= target


def _spec(**kw):
  return corruption.CorruptionSpec(first_sentinel_id=SENT0, eos_id=EOS, pad_id=0, **kw)


def test_batches_are_deterministic_and_cover_the_text():
  rng = np.random.default_rng(4)
  lines = [rng.integers(3, 99, int(n)) for n in rng.integers(1, 30, 200)]
  make = lambda: corruption.SpanCorruptionData(
      lines, mode="chunks", max_len=32, spec=_spec(), seed=7  # noqa: E731
  )
  a, b = make(), make()
  for step in (0, 5, 3 * a.num_examples // 4):  # the last batch crosses into later epochs
    x, y = a.train_batch(step, 4), b.train_batch(step, 4)
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  batch = a.train_batch(0, 4)
  assert batch["input_ids"].shape == (4, 32) and batch["targets"].shape == (4, a.target_len)
  # Every chunk of an epoch, merged back, is a piece of that epoch's reshuffled text.
  epoch0 = np.concatenate(
      [
          corruption.merge_span_corruption(
              *[
                  r[m > 0]
                  for r, m in (
                      (bt["input_ids"][i], bt["attention_mask"][i]),
                      (bt["targets"][i], bt["target_mask"][i]),
                  )
              ],
              SENT0,
              EOS,
          )
          for bt in [a.batch_from(range(a.num_examples))]
          for i in range(a.num_examples)
      ]
  )
  assert len(epoch0) == a.num_examples * a.content_len
  stream = a._epoch_stream(0)
  np.testing.assert_array_equal(epoch0, stream[: len(epoch0)])
  np.testing.assert_array_equal(np.sort(stream), np.sort(np.concatenate(lines)))
  # Another epoch: other chunk boundaries (the lines are reshuffled) and other noise.
  assert not np.array_equal(a.content(0)[0], a.content(a.num_examples)[0])
  # The same seed and step in a different stream (validation) gives different noise.
  v = corruption.SpanCorruptionData(
      lines, mode="chunks", max_len=32, spec=_spec(), seed=7, stream=1
  )
  assert not np.array_equal(v.train_batch(0, 4)["input_ids"], batch["input_ids"])


def test_lines_mode_pads_per_batch():
  lines = [np.arange(3, 3 + n) for n in (2, 5, 9, 40, 1)]
  data = corruption.SpanCorruptionData(
      lines, mode="lines", max_len=16, spec=_spec(), seed=0, shuffle=False, pad_multiple=8
  )
  assert data.num_examples == 4 and data.num_truncated == 1  # the 1-token line is dropped
  batch = data.batch_from([0, 1])
  assert batch["input_ids"].shape[1] == 8 and batch["input_ids"].shape[1] % 8 == 0
  for i in range(4):
    inputs, targets = data.example(i)
    merged = corruption.merge_span_corruption(inputs, targets, SENT0, EOS)
    np.testing.assert_array_equal(merged, lines[i][: data.content_len])
    assert len(inputs) <= 16


def test_span_mask_marks_the_masked_words_only():
  lines = [np.arange(3, 3 + n) for n in (12, 20, 30, 7)]
  data = corruption.SpanCorruptionData(
      lines, mode="lines", max_len=32, spec=_spec(), seed=3, shuffle=False
  )
  batch = data.batch_from(range(4), rows=5)
  assert batch["span_mask"].shape == batch["target_mask"].shape
  for r in range(4):
    inputs, targets = data.example(r)
    num_spans = int(np.sum((inputs > SENT0 - 100) & (inputs <= SENT0)))
    assert num_spans >= 1
    # Targets are one sentinel per span, the span words, and EOS; only the words count.
    assert batch["span_mask"][r].sum() == len(targets) - num_spans - 1
    words = batch["targets"][r][batch["span_mask"][r] > 0]
    assert np.all(words >= 3) and np.all(words < 3 + 30)  # content ids, no marker
  assert batch["span_mask"][4].sum() == 0  # an empty padding row


def test_embedding_lr_multiplier_scales_only_the_shared_embedding():
  import jax.numpy as jnp

  params = {"shared": {"embedding": jnp.ones((4, 3))}, "encoder": {"kernel": jnp.ones((3, 3))}}
  grads = jax.tree.map(lambda x: 0.5 * x, params)
  updates = {}
  for k in (1.0, 7.0):
    opt = pretrain_lib.OptimizerSettings(
        lr=1e-2, schedule="constant", warmup_steps=0, weight_decay=0.0, embedding_lr_multiplier=k
    )
    tx = pretrain_lib.make_pretraining_optimizer(opt, pretrain_lib.make_schedule(opt))
    updates[k], _ = tx.update(grads, tx.init(params), params)
  # Adam's first step is -lr * sign(g) (up to eps): the embedding's is k times the others'.
  np.testing.assert_allclose(updates[1.0]["encoder"]["kernel"], -1e-2, rtol=1e-4)
  np.testing.assert_allclose(updates[7.0]["encoder"]["kernel"], -1e-2, rtol=1e-4)
  np.testing.assert_allclose(updates[1.0]["shared"]["embedding"], -1e-2, rtol=1e-4)
  np.testing.assert_allclose(updates[7.0]["shared"]["embedding"], -7e-2, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# End to end: a tiny run
# ---------------------------------------------------------------------------------------------
_NOUNS = "cat dog bird fish horse teacher farmer child".split()
_VERBS = "sees likes follows feeds watches helps".split()
_ADJS = "big small red old young happy".split()


def _write_text(path, n, seed):
  rng = np.random.default_rng(seed)
  with open(path, "w") as f:
    for _ in range(n):
      words = [
          "the",
          rng.choice(_ADJS),
          rng.choice(_NOUNS),
          rng.choice(_VERBS),
          "the",
          rng.choice(_NOUNS),
      ]
      if rng.random() < 0.5:
        words += ["and", "the", rng.choice(_NOUNS), rng.choice(_VERBS)]
      f.write(" ".join(words) + "\n")


def _config(text, valid, **overrides):
  """configs/pretrain.py for the tiny run: a 1+1 layer T5 for 20 steps on 2 devices."""
  config = pretrain_configs.get_config()
  config.update(
      dict(
          text=str(text),
          valid=str(valid),
          vocab_size=40,
          d_model=32,
          num_layers=1,
          num_heads=2,
          d_kv=16,
          d_ff=64,
          max_len=32,
          batch_size=16,
          steps=20,
          lr=3e-3,
          warmup_steps=2,
          log_every=5,
          eval_every=10,
          save_every=10,
          num_devices=2,
      )
  )
  config.update(overrides)
  return config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp("pretrain")
  _write_text(root / "train.txt", 400, seed=0)
  _write_text(root / "valid.txt", 60, seed=1)
  out = root / "out"
  summary = pretrain.run_command(_config(root / "train.txt", root / "valid.txt"), str(out))
  return root, out, summary


def _log(out):
  return [json.loads(line) for line in (out / pretrain.LOG_FILE).read_text().splitlines()]


def test_tiny_run_loss_goes_down(run):
  root, out, summary = run
  assert summary["step"] == 20 and summary["stopped_by"] == "steps"
  assert summary["last_loss"] < summary["first_loss"] - 1.0, summary
  valid = [r for r in _log(out) if "valid_loss" in r]
  assert len(valid) == 2 and valid[1]["valid_loss"] < valid[0]["valid_loss"]
  # The span words alone are harder than all targets (sentinels and EOS are easy).
  assert valid[1]["valid_span_loss"] > valid[1]["valid_loss"]
  assert 0.0 <= valid[1]["valid_span_accuracy"] < valid[1]["valid_accuracy"]
  # The logged unigram baseline is that of the run's own tokenized text.
  tokenizer = pretrained.load_tokenizer(str(out))
  flat = lambda name: np.concatenate(corruption.tokenize_lines(tokenizer, root / name))  # noqa
  want = corruption.unigram_cross_entropy(
      flat("train.txt"), flat("valid.txt"), pretrained.load_t5(str(out))[0].vocab_size
  )
  assert [r["unigram_span_loss"] for r in valid] == pytest.approx([want, want], rel=1e-9)


def test_unigram_cross_entropy_by_hand():
  train = np.array([3, 3, 3, 4])  # p(3) = 3.1 / 4.6, p(4) = 1.1 / 4.6, p(5) = 0.1 / 4.6
  got = corruption.unigram_cross_entropy(train, np.array([3, 4, 5]), vocab_size=6)
  want = -np.mean(np.log(np.array([3.1, 1.1, 0.1]) / (4 + 0.6)))
  np.testing.assert_allclose(got, want, rtol=1e-12)


def test_output_loads_like_a_hugging_face_checkpoint(run):
  import orbax.checkpoint as ocp
  import transformers

  _, out, _ = run
  config, params = pretrained.load_t5(str(out))
  assert config.d_model == 32 and config.num_layers == 1 and config.feed_forward_proj == "relu"
  assert config.tie_word_embeddings and config.scale_decoder_outputs
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
  assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1)
  assert tokenizer.convert_tokens_to_ids("<extra_id_0>") == len(tokenizer) - 1
  assert config.vocab_size % 128 == 0 and config.vocab_size >= len(tokenizer)
  assert (
      tokenizer.decode(tokenizer("the big cat sees the dog")["input_ids"], skip_special_tokens=True)
      == "the big cat sees the dog"
  )
  # The exported weights are the trained ones (the last orbax checkpoint), bit for bit.
  saved = ocp.StandardCheckpointer().restore(out / pretrain.CKPT_DIR / "20" / "params")
  for (path, a), (_, b) in zip(
      jax.tree_util.tree_leaves_with_path(params),
      jax.tree_util.tree_leaves_with_path(jax.device_get(saved)),
  ):
    np.testing.assert_array_equal(a, np.asarray(b), err_msg=str(path))


def _span_corrupted_batch(root, out):
  tokenizer = pretrained.load_tokenizer(str(out))
  spec = corruption.CorruptionSpec(
      first_sentinel_id=corruption.sentinel_ids(tokenizer, 100), eos_id=1, pad_id=0
  )
  data = corruption.SpanCorruptionData(
      corruption.tokenize_lines(tokenizer, root / "valid.txt"),
      mode="lines",
      max_len=32,
      spec=spec,
      seed=5,
  )
  batch = data.batch_from(range(4))
  batch["decoder_input_ids"] = np.asarray(t5_lib.shift_right(batch["targets"], 0))
  return batch


@pytest.mark.skipif(not torch_available(), reason="torch not installed")
def test_parity_pretrained_output_with_hugging_face(run):
  import torch
  import transformers

  root, out, _ = run
  batch = _span_corrupted_batch(root, out)
  config, params = pretrained.load_t5(str(out))
  ours = np.asarray(
      jax.jit(t5_lib.T5(config).apply)(
          {"params": params},
          batch["input_ids"],
          batch["attention_mask"],
          batch["decoder_input_ids"],
      )
  )
  hf = transformers.T5ForConditionalGeneration.from_pretrained(str(out)).eval()
  with torch.no_grad():
    theirs = hf(
        input_ids=torch.from_numpy(batch["input_ids"].astype(np.int64)),
        attention_mask=torch.from_numpy(batch["attention_mask"].astype(np.int64)),
        decoder_input_ids=torch.from_numpy(batch["decoder_input_ids"].astype(np.int64)),
    ).logits.numpy()
  assert theirs.shape == ours.shape == batch["targets"].shape + (config.vocab_size,)
  assert np.abs(ours - theirs).max() < 1e-4
  assert np.std(theirs) > 0.1  # not a vacuous comparison


def test_resume_gives_the_uninterrupted_result(run, tmp_path, capfd):
  """Resumed past a damaged newest checkpoint (step 20 without its params metadata, as after
  a partial copy): step 10 restores, step 20 is moved aside and trained again, identically."""
  root, out, _ = run
  resumed = tmp_path / "out"
  shutil.copytree(out, resumed)
  (resumed / pretrain.CKPT_DIR / "20" / "params" / "_METADATA").unlink()
  for name in ("model.safetensors", "config.json"):
    (resumed / name).unlink()
  with pytest.raises(pretrain.PretrainError, match="--resume"):  # never clobbers a run by accident
    pretrain.run_command(_config(root / "train.txt", root / "valid.txt"), str(resumed))
  summary = pretrain.run_command(
      _config(root / "train.txt", root / "valid.txt"), str(resumed), resume=True
  )
  assert summary["step"] == 20
  err = capfd.readouterr().err
  assert "checkpoint step 20" in err and "does not restore, skipping it" in err
  assert "at step 10" in err and (resumed / "damaged" / "20").is_dir()
  _, expected = pretrained.load_t5(str(out))
  _, got = pretrained.load_t5(str(resumed))
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(pretrain.PretrainError, match="max_len"):  # other settings than the stored run
    pretrain.run_command(
        _config(root / "train.txt", root / "valid.txt", max_len=40), str(resumed), resume=True
    )


def test_max_minutes_stops_and_still_writes_the_checkpoint(run, tmp_path):
  root, out, _ = run
  budget = tmp_path / "out"
  summary = pretrain.run_command(
      _config(root / "train.txt", root / "valid.txt", tokenizer=str(out), max_minutes=0.0001),
      str(budget),
  )
  assert summary["stopped_by"] == "max_minutes" and summary["step"] == 1
  config, _ = pretrained.load_t5(str(budget))
  assert config.vocab_size == pretrained.load_config(out).vocab_size
  assert pretrained.load_tokenizer(str(budget)).convert_tokens_to_ids(
      "<extra_id_0>"
  ) == pretrained.load_tokenizer(str(out)).convert_tokens_to_ids("<extra_id_0>")
  assert (budget / pretrain.CKPT_DIR / "1").exists()


def test_stop_at_step_equals_the_full_schedule_cut_there(run, tmp_path):
  """stop_at_step N keeps the schedule of ``steps``: its params are the uninterrupted run's at step N
  (the run's own checkpoint at step 10), and the stop is reported as such."""
  root, out, _ = run
  cut = tmp_path / "out"
  summary = pretrain.run_command(
      _config(root / "train.txt", root / "valid.txt", tokenizer=str(out), stop_at_step=10),
      str(cut),
  )
  assert summary["stopped_by"] == "stop_at_step" and summary["step"] == 10
  assert summary["valid_loss"] is not None  # validated and written like a --max_minutes stop
  _, got = pretrained.load_t5(str(cut))
  _, full = pretrained.load_t5(str(out))
  import orbax.checkpoint as ocp

  restored = ocp.StandardCheckpointer().restore(
      (out / pretrain.CKPT_DIR / "10" / "params").resolve()
  )
  assert len(jax.tree.leaves(got)) == len(jax.tree.leaves(restored))
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(got)):
    np.testing.assert_array_equal(a, b)
  assert any(np.abs(a - b).max() > 0 for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(got)))
  with pytest.raises(pretrain.PretrainError, match="config.stop_at_step=0"):
    pretrain.run_command(
        _config(root / "train.txt", root / "valid.txt", stop_at_step=0), str(tmp_path / "x")
    )


def _command(*flags):
  return subprocess.run(
      [sys.executable, "-m", "t5vae_jax.pretrain", *flags],
      capture_output=True,
      text=True,
      timeout=120,
      cwd=ROOT,
  )


def test_help_documents_the_flags_and_the_config_file():
  result = _command("--help")
  assert result.returncode == 0
  for flag in ("--config", "--out", "--resume", "configs/pretrain.py"):
    assert flag in result.stdout
  keys = set(pretrain_configs.get_config())  # every setting has its key and default there
  assert {"text", "tokenizer", "noise_density", "max_minutes", "stop_at_step", "dtype"} <= keys
  assert set(pretrain.CHOICES) <= keys


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--config.noise_density=1.5"], "config.noise_density=1.5 must lie in (0, 1)"),
        (["--config.optimizer=sgd"], "config.optimizer='sgd' is not allowed; allowed: adamw"),
        (["--config.d_modle=8"], "d_modle"),
        ([], "config.text is required"),
    ],
)
def test_a_config_mistake_is_one_line_naming_the_key(tmp_path, flags, message):
  text = tmp_path / "train.txt"
  text.write_text("a line\n")
  given = [] if not flags else [f"--config.text={text}"]
  result = _command(
      "--config", "configs/pretrain.py", "--out", str(tmp_path / "out"), *given, *flags
  )
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
  assert not (tmp_path / "out").exists()


def test_the_ptb_study_config_is_the_recipe_of_the_study():
  """configs/pretrain_ptb.py: the settings of docs/ptb-study.md section 1, on pretrain.py."""
  study = config_files.load_module(ROOT / "configs" / "pretrain_ptb.py").get_config()
  base = pretrain_configs.get_config()
  changed = {k: study[k] for k in base if study[k] != base[k]}
  assert changed == {
      "noise_density": 0.3,
      "lr": 2e-3,
      "warmup_steps": 100,
      "steps": 800,
      "stop_at_step": 603,
      "embedding_lr_multiplier": 30.0,
      "eval_every": 100,
      "save_every": 100,
  }


def test_check_context_use_script(run, capsys):
  """scripts/check_context_use.py on the tiny run: losses per word kind, own vs other input."""
  import importlib.util
  import pathlib

  root, out, _ = run
  path = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "check_context_use.py"
  spec = importlib.util.spec_from_file_location("check_context_use", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert module.main([str(out), "--text", str(root / "valid.txt"), "--lines", "40"]) == 0
  rows = {
      line[:14].strip(): line[14:].split()
      for line in capsys.readouterr().out.splitlines()
      if line[:14].strip() in ("first of span", "later in span", "all")
  }
  assert set(rows) == {"first of span", "later in span", "all"}
  counts = {k: int(v[0]) for k, v in rows.items()}
  assert counts["all"] == counts["first of span"] + counts["later in span"] > 0
  for values in rows.values():
    assert all(np.isfinite(float(x)) and float(x) > 0 for x in values[1:])
