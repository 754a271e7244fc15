"""Data pipeline: TFDS builders on tiny files, synthetic data, tokenization, bucketed batches."""

import json

from hypothesis import given, settings, strategies as st
import ml_collections
import numpy as np
import pytest

from t5vae_jax import data
from t5vae_jax import datasets
from t5vae_jax import synthetic
from t5vae_jax import tokenizer as tokenizer_lib


def write_split_files(directory, **split_lines):
  directory.mkdir(parents=True, exist_ok=True)
  for file_name, lines in split_lines.items():
    (directory / f"{file_name}.txt").write_text("".join(line + "\n" for line in lines))
  return directory


def texts_and_labels(builder, split):
  return [(r["text"].decode(), int(r["label"])) for r in builder.as_data_source(split)]


# ----------------------------------------------------------------------------- builders


def test_ptb_builder_strips_lines_and_counts_empty_ones(tmp_path):
  raw = write_split_files(
      tmp_path / "raw",
      train=[" no it was n't black monday ", "", " the N <unk> fell ", "   "],
      valid=[" a b c "],
      test=[" d e "],
  )
  builder = datasets.get_builder("ptb", data_dir=tmp_path / "tfds", raw_dir=raw)
  assert texts_and_labels(builder, "train") == [
      ("no it was n't black monday", -1),
      ("the N <unk> fell", -1),
  ]
  assert texts_and_labels(builder, "validation") == [("a b c", -1)]
  assert builder.info.metadata["num_skipped_empty"] == {"train": 2, "validation": 0, "test": 0}
  assert builder.info.splits["train"].num_examples == 2
  # Reading the prepared dataset again, its metadata comes back from disk.
  again = datasets.get_builder("ptb", data_dir=tmp_path / "tfds", raw_dir=raw)
  assert again.info.metadata["num_skipped_empty"]["train"] == 2


def test_yelp_builder_reads_labels(tmp_path):
  raw = write_split_files(
      tmp_path / "raw",
      train=["3\tthe food was great .", "no label here", "1\t  bad service  "],
      valid=["5\tok"],
      test=["2\t", "4\tfine"],
  )
  builder = datasets.get_builder("yelp", data_dir=tmp_path / "tfds", raw_dir=raw)
  assert texts_and_labels(builder, "train") == [
      ("the food was great .", 3),
      ("no label here", -1),
      ("bad service", 1),
  ]
  assert texts_and_labels(builder, "test") == [("fine", 4)]
  assert builder.info.metadata["num_skipped_empty"]["test"] == 1


def test_bad_files_fail_naming_the_file(tmp_path):
  raw = write_split_files(
      tmp_path / "raw", train=["1\tfine", "five\tnot a number"], valid=["1\tx"], test=["1\ty"]
  )
  with pytest.raises(ValueError, match=r"train\.txt:2"):
    datasets.get_builder("yelp", data_dir=tmp_path / "tfds", raw_dir=raw)
  raw = write_split_files(tmp_path / "raw2", train=["a"], valid=["", " "], test=["b"])
  with pytest.raises(ValueError, match=r"valid\.txt has no non-empty line"):
    datasets.get_builder("ptb", data_dir=tmp_path / "tfds", raw_dir=raw)


def test_missing_split_names_its_file_and_others_still_build(tmp_path):
  raw = write_split_files(
      tmp_path / "raw", valid=["a man sleeps ."], test=["a dog runs .", "two cats ."]
  )
  config = ml_collections.ConfigDict(
      {"name": "snli", "dir": str(raw), "tfds_dir": str(tmp_path / "tfds")}
  )
  builder = data.get_builder(config)
  assert texts_and_labels(builder, "test") == [("a dog runs .", -1), ("two cats .", -1)]
  with pytest.raises(FileNotFoundError, match=str(raw / "train.txt")):
    builder.as_data_source("train")
  with pytest.raises(FileNotFoundError, match="train.txt"):
    data.read_split(config, "train[:10]")
  # Once the file appears, the dataset is prepared again with it.
  write_split_files(raw, train=["a woman reads ."])
  assert texts_and_labels(data.get_builder(config), "train") == [("a woman reads .", -1)]


def test_no_split_files_at_all_fails_clearly(tmp_path):
  (tmp_path / "raw").mkdir()
  with pytest.raises(FileNotFoundError, match="none of the split files"):
    datasets.get_builder("yahoo", data_dir=tmp_path / "tfds", raw_dir=tmp_path / "raw")


# ----------------------------------------------------------------------------- synthetic data


def test_synthetic_is_deterministic_and_varied():
  records = synthetic.generate(2000, seed=7)
  assert records == synthetic.generate(2000, seed=7)
  assert records != synthetic.generate(2000, seed=8)
  assert 300 <= len({r["text"] for r in records}) <= synthetic.NUM_SENTENCE_TYPES
  lengths = [len(r["text"].split()) for r in records]
  assert 5 <= min(lengths) and max(lengths) <= 12
  for r in records[:50]:
    assert r["text"] == synthetic.render(r["attributes"])
    assert set(r["attributes"]) == set(synthetic.ATTRIBUTES)
    assert all(0 <= v < len(synthetic.ATTRIBUTES[k]) for k, v in r["attributes"].items())


def test_synthetic_files_go_through_the_builder(tmp_path):
  paths = synthetic.write_splits(tmp_path / "raw", 30, 5, 6, seed=3)
  lines = paths["train"].read_text().splitlines()
  attributes = [
      json.loads(line)
      for line in (tmp_path / "raw" / "train.attributes.jsonl").read_text().splitlines()
  ]
  assert [r["text"] for r in synthetic.generate(30, seed=(3, 0))] == lines
  assert [synthetic.render(a) for a in attributes] == lines

  config = datasets.SyntheticConfig(num_train=30, num_valid=5, num_test=6, seed=3)
  builder = datasets.get_builder("synthetic", data_dir=tmp_path / "tfds", config=config)
  assert [len(builder.as_data_source(s)) for s in ("train", "validation", "test")] == [30, 5, 6]
  record = builder.as_data_source("train")[4]
  assert record["text"].decode() == lines[4]
  assert {k: int(v) for k, v in record["attributes"].items()} == attributes[4]


# ----------------------------------------------------------------------------- tokenization


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  lines = [r["text"] for r in synthetic.generate(400, seed=0)]
  lines += ["a quick brown fox jumps over the lazy dog ."] * 20
  out_dir = tmp_path_factory.mktemp("tokenizer")
  return tokenizer_lib.train_sentencepiece_tokenizer(lines, out_dir, 48, extra_ids=4)


def test_tokenize_appends_eos_and_truncates_keeping_it(tokenizer):
  texts = [
      "the dog saw the ball .",
      "the children will paint the old wooden chair near the river .",
  ]
  full = tokenizer(texts)["input_ids"]  # T5 tokenizers append EOS themselves
  ids, num_truncated = data.tokenize(texts, tokenizer, max_len=100)
  assert [list(x) for x in ids] == full and num_truncated == 0
  max_len = len(full[0]) + 1  # the first fits, the second is cut
  ids, num_truncated = data.tokenize(texts, tokenizer, max_len=max_len)
  assert num_truncated == 1
  assert list(ids[0]) == full[0]
  assert len(ids[1]) == max_len and ids[1][-1] == tokenizer.eos_token_id
  assert list(ids[1][:-1]) == full[1][: max_len - 1]
  assert all(x.dtype == np.int32 for x in ids)


def test_load_split_on_synthetic_data(tmp_path, tokenizer):
  config = ml_collections.ConfigDict(
      {
          "name": "synthetic",
          "tfds_dir": str(tmp_path / "tfds"),
          "max_len": 12,
          "synthetic": {"num_train": 200, "num_valid": 20, "num_test": 20, "seed": 1},
      }
  )
  examples, stats = data.load_split(config, "validation", tokenizer)
  assert stats["num_examples"] == len(examples) == 20
  assert stats["num_skipped_empty"] == 0
  lengths = [len(e["input_ids"]) for e in examples]
  assert stats["num_tokens"] == sum(lengths) and stats["mean_length"] == pytest.approx(
      np.mean(lengths)
  )
  assert max(lengths) <= 12 and all(e["input_ids"][-1] == 1 for e in examples)
  untruncated = [len(ids) for ids in tokenizer([e["text"] for e in examples])["input_ids"]]
  assert stats["num_truncated"] == sum(n > 12 for n in untruncated) > 0
  assert [e["text"] for e in examples] == [r["text"] for r in synthetic.generate(20, seed=(1, 1))]
  assert examples[0]["attributes"] == synthetic.generate(20, seed=(1, 1))[0]["attributes"]


# ----------------------------------------------------------------------------- batching

BUCKETS = (4, 8, 16, 24)


def random_examples(num_examples, seed=0, max_len=24):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, max_len + 1, size=num_examples)
  return [np.append(rng.integers(3, 50, size=n - 1), 1).astype(np.int32) for n in lengths]


def make_iterator(examples, **kwargs):
  options = dict(bucket_lengths=BUCKETS, batch_size=8, seed=0, process_index=0, process_count=1)
  options.update(kwargs)
  return data.BatchIterator(examples, **options)


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def test_default_bucket_lengths():
  assert data.default_bucket_lengths(64) == (8, 16, 24, 32, 48, 64)
  assert data.default_bucket_lengths(100) == (8, 16, 24, 32, 48, 64, 96, 100)
  config = ml_collections.ConfigDict({"max_len": 32, "bucket_lengths": (32, 8)})
  assert data.bucket_lengths_from_config(config) == (8, 32)


def test_batches_use_only_bucket_shapes_and_hold_their_examples():
  examples = random_examples(300)
  for batch in make_iterator(examples, num_epochs=1):
    batch_size, length = batch["input_ids"].shape
    assert batch_size == 8 and length in BUCKETS
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == np.int32
    assert batch["example_weights"].dtype == np.float32
    lower = max([b for b in BUCKETS if b < length], default=0)
    for row, example_id in enumerate(batch["example_ids"]):
      mask = batch["attention_mask"][row]
      if example_id < 0:  # a filler row: a lone EOS
        assert batch["example_weights"][row] == 0
        assert list(batch["input_ids"][row, :2]) == [1, 0] and mask.sum() == 1
        continue
      n = len(examples[example_id])
      assert lower < n <= length  # the smallest bucket that fits
      np.testing.assert_array_equal(batch["input_ids"][row, :n], examples[example_id])
      assert (batch["input_ids"][row, n:] == 0).all() and mask.sum() == n and mask[:n].all()


@pytest.mark.parametrize("options", [{}, {"shuffle": False}])
def test_one_epoch_holds_every_example_once(options):
  examples = random_examples(203)
  iterator = make_iterator(examples, num_epochs=1, drop_remainder=False, **options)
  batches = list(iterator)
  assert (
      len(batches)
      == iterator.num_batches_per_epoch
      == data.steps_per_epoch(
          examples,
          bucket_lengths=BUCKETS,
          batch_size=8,
          drop_remainder=False,
      )
  )
  ids = np.concatenate([b["example_ids"] for b in batches])
  weights = np.concatenate([b["example_weights"] for b in batches])
  np.testing.assert_array_equal(weights, ids >= 0)
  assert sorted(ids[ids >= 0]) == list(range(len(examples)))


def test_drop_remainder_gives_only_full_batches():
  examples = random_examples(203)
  iterator = make_iterator(examples, drop_remainder=True, num_epochs=2)
  batches = list(iterator)
  assert len(batches) == 2 * data.steps_per_epoch(examples, bucket_lengths=BUCKETS, batch_size=8)
  assert all(b["example_weights"].all() for b in batches)


def test_process_shards_are_disjoint_and_cover_the_global_batch():
  examples = random_examples(150)
  global_batches = take(make_iterator(examples, seed=5), 25)
  shards = [
      take(make_iterator(examples, seed=5, process_index=i, process_count=2), 25) for i in range(2)
  ]
  for step, global_batch in enumerate(global_batches):
    first, second = shards[0][step], shards[1][step]
    assert (
        first["input_ids"].shape
        == second["input_ids"].shape
        == (4, global_batch["input_ids"].shape[1])
    )
    for key in global_batch:
      np.testing.assert_array_equal(np.concatenate([first[key], second[key]]), global_batch[key])
    real = set(first["example_ids"][first["example_ids"] >= 0])
    assert not real & set(second["example_ids"][second["example_ids"] >= 0])


def test_resume_from_state_replays_the_same_batches():
  examples = random_examples(100)
  iterator = make_iterator(examples, seed=3, drop_remainder=True)
  steps = iterator.num_batches_per_epoch
  take(iterator, steps - 2)
  state = json.loads(json.dumps(iterator.get_state()))  # as a checkpoint stores it
  assert state["epoch"] == 0 and state["batch_in_epoch"] == steps - 2
  expected = take(iterator, 5)  # crosses into epoch 1
  assert iterator.get_state()["epoch"] == 1

  resumed = make_iterator(examples, seed=3, drop_remainder=True)
  resumed.set_state(state)
  assert_same_batches(take(resumed, 5), expected)

  with pytest.raises(ValueError, match="seed"):
    make_iterator(examples, seed=4, drop_remainder=True).set_state(state)


def test_order_is_a_function_of_seed_and_epoch():
  examples = random_examples(100)

  def epoch_order(seed, epoch):
    iterator = make_iterator(examples, seed=seed, num_epochs=epoch + 1)
    iterator.set_state({"epoch": epoch, "batch_in_epoch": 0})
    return np.concatenate([b["example_ids"] for b in iterator])

  np.testing.assert_array_equal(epoch_order(0, 0), epoch_order(0, 0))
  assert not np.array_equal(epoch_order(0, 0), epoch_order(0, 1))
  assert not np.array_equal(epoch_order(0, 0), epoch_order(1, 0))
  unshuffled = np.concatenate(
      [b["example_ids"] for b in make_iterator(examples, shuffle=False, num_epochs=2)]
  )
  half = len(unshuffled) // 2
  np.testing.assert_array_equal(unshuffled[:half], unshuffled[half:])


def test_rejects_what_it_cannot_batch():
  with pytest.raises(ValueError, match="largest bucket"):
    make_iterator([np.ones(30, np.int32)])
  with pytest.raises(ValueError, match="divide"):
    make_iterator(random_examples(20), batch_size=5, process_count=2)
  with pytest.raises(ValueError, match="no full batch"):
    make_iterator(random_examples(3), drop_remainder=True)


@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 24), min_size=1, max_size=60),
    batch_size=st.sampled_from([2, 4, 6]),
    seed=st.integers(0, 2**16),
)
def test_every_example_once_for_any_lengths(lengths, batch_size, seed):
  examples = [np.ones(n, np.int32) for n in lengths]
  batches = list(make_iterator(examples, batch_size=batch_size, seed=seed, num_epochs=1))
  ids = np.concatenate([b["example_ids"] for b in batches])
  assert sorted(ids[ids >= 0]) == list(range(len(lengths)))
  assert all(b["input_ids"].shape[1] in BUCKETS for b in batches)
  np.testing.assert_array_equal(
      np.concatenate([b["attention_mask"].sum(1) for b in batches])[ids >= 0],
      np.asarray(lengths)[ids[ids >= 0]],
  )
