"""Bad lines in the dataset files (empty, not UTF-8, a label column where none is expected,
over-long), under both policies of config.data.on_bad_line: skip (and count) or fail (naming
file and line)."""

import pathlib

import ml_collections
import pytest

from t5vae_jax import data
from t5vae_jax import datasets

GOOD = [b"the cat sat .", b"a dog ran .", b"two birds sang ."]

# case -> (bad line, reason counted under skip, what the fail message says)
CASES = {
    "empty": (b"   ", "empty", "empty"),
    "non_utf8": (b"caf\xe9 au lait", "non_utf8", "not valid UTF-8"),
    "unexpected_label": (b"3\tthe food was great .", "unexpected_label", "has a TAB"),
    "too_long": (b"word " * 30, "too_long", "longer than max_line_chars=100"),
}


def write_raw(directory: pathlib.Path, train: list[bytes]) -> pathlib.Path:
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "train.txt").write_bytes(b"".join(line + b"\n" for line in train))
  (directory / "valid.txt").write_bytes(b"a b c .\n")
  (directory / "test.txt").write_bytes(b"d e f .\n")
  return directory


def data_config(raw, tfds_dir, policy, name="ptb"):
  return ml_collections.ConfigDict(
      {
          "name": name,
          "dir": str(raw),
          "tfds_dir": str(tfds_dir),
          "max_len": 16,
          "on_bad_line": policy,
          "max_line_chars": 100,
      }
  )


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_line_is_skipped_and_counted_or_fails_naming_the_line(case, tmp_path):
  bad, reason, says = CASES[case]
  raw = write_raw(tmp_path / "raw", [GOOD[0], bad, GOOD[1], GOOD[2]])
  # skip: the three good lines, the bad one counted under its reason (and only there).
  examples, skipped = data.read_split(data_config(raw, tmp_path / "tfds", "skip"), "train")
  assert [e["text"] for e in examples] == [g.decode() for g in GOOD]
  assert skipped == {r: int(r == reason) for r in datasets.SKIP_REASONS}
  # fail: the file and the (1-based) line number, and how to skip instead.
  with pytest.raises(datasets.DataError, match=rf"train\.txt:2: .*{says}.*on_bad_line=skip"):
    data.read_split(data_config(raw, tmp_path / "tfds", "fail"), "train")


def test_load_split_reports_every_reason_and_truncations(tmp_path):
  from t5vae_jax import tokenizer as tokenizer_lib

  lines = (
      GOOD + [bad for bad, _, _ in CASES.values()] + [b"one two three four five six seven eight"]
  )
  raw = write_raw(tmp_path / "raw", lines)
  tokenizer = tokenizer_lib.train_sentencepiece_tokenizer(
      [g.decode() for g in GOOD] * 5 + ["one two three four five six seven eight"] * 5,
      tmp_path / "tok",
      vocab_size=40,
      extra_ids=0,
      model_type="word",
      hard_vocab_limit=False,
  )
  config = data_config(raw, tmp_path / "tfds", "skip")
  config.max_len = 6
  examples, stats = data.load_split(config, "train", tokenizer)
  assert stats["num_examples"] == len(examples) == 4
  assert {k: v for k, v in stats.items() if k.startswith("num_skipped_")} == {
      f"num_skipped_{r}": 1 for r in datasets.SKIP_REASONS
  }
  assert stats["num_truncated"] == 1  # the eight-word line: cut to max_len, counted
  assert max(len(e["input_ids"]) for e in examples) == 6
  # A slice of the split still reports the file's counts.
  _, sliced = data.load_split(config, "train[:2]", tokenizer)
  assert sliced["num_examples"] == 2 and sliced["num_skipped_non_utf8"] == 1


def test_a_tab_is_a_label_in_yelp_and_a_bad_label_always_fails(tmp_path):
  raw = write_raw(tmp_path / "raw", [b"3\tgood food .", b"no label here", b"   \t  "])
  examples, skipped = data.read_split(data_config(raw, tmp_path / "tfds", "skip", "yelp"), "train")
  assert [(e["text"], e["label"]) for e in examples] == [("good food .", 3), ("no label here", -1)]
  assert skipped["empty"] == 1 and skipped["unexpected_label"] == 0
  raw = write_raw(tmp_path / "raw2", [b"3\tgood", b"five\tstars"])
  for policy in ("skip", "fail"):
    with pytest.raises(datasets.DataError, match=r"raw2/train\.txt:2: expected an integer label"):
      data.read_split(data_config(raw, tmp_path / f"tfds_{policy}", policy, "yelp"), "train")


def test_a_dataset_prepared_under_one_policy_is_not_reused_under_the_other(tmp_path):
  raw = write_raw(tmp_path / "raw", [GOOD[0], b"\xff\xfe", GOOD[1]])
  tfds_dir = tmp_path / "tfds"
  examples, skipped = data.read_split(data_config(raw, tfds_dir, "skip"), "train")
  assert len(examples) == 2 and skipped["non_utf8"] == 1
  with pytest.raises(datasets.DataError, match=r"train\.txt:2"):
    data.read_split(data_config(raw, tfds_dir, "fail"), "train")
  # Each policy (and line limit) has its own prepared copy.
  prepared = sorted(p.name for p in (tfds_dir / "ptb").iterdir() if not p.name.startswith("."))
  assert prepared == ["fail_max100", "skip_max100"]


def test_a_changed_source_file_is_prepared_again(tmp_path):
  raw = write_raw(tmp_path / "raw", [GOOD[0], b"\xff\xfe"])
  config = data_config(raw, tmp_path / "tfds", "skip")
  examples, skipped = data.read_split(config, "train")
  assert len(examples) == 1 and skipped["non_utf8"] == 1
  write_raw(raw, [GOOD[0], b"fixed line ."])  # the user repairs the file
  examples, skipped = data.read_split(config, "train")
  assert [e["text"] for e in examples] == [GOOD[0].decode(), "fixed line ."]
  assert skipped["non_utf8"] == 0


def test_file_with_only_bad_lines_fails_under_skip_too(tmp_path):
  raw = write_raw(tmp_path / "raw", [b"\xff", b"x\ty"])
  with pytest.raises(
      datasets.DataError,
      match=r"train\.txt has no usable line: 2 lines, all "
      r"skipped \(non_utf8: 1, unexpected_label: 1\)",
  ):
    data.read_split(data_config(raw, tmp_path / "tfds", "skip"), "train")


def test_line_reader_edge_cases(tmp_path):
  # CRLF endings, a byte-order mark, no final newline, a huge line read without holding it.
  path = tmp_path / "f.txt"
  path.write_bytes(b"\xef\xbb\xbffirst\r\nsecond\r\n" + b"x" * 1_000_000 + b"\nlast")
  with path.open("rb") as f:
    lines = list(datasets.builders.iter_raw_lines(f, 402))
  assert lines[:2] == [b"\xef\xbb\xbffirst", b"second"] and lines[3] == b"last"
  assert len(lines) == 4 and len(lines[2]) == 403
  parse = lambda raw, **kw: datasets.parse_line(raw, has_labels=False, max_line_chars=100, **kw)
  assert parse(lines[0], first_line=True)["text"] == "first"
  assert parse(lines[2]) == "too_long"
  assert parse("é".encode() * 100)["text"] == "é" * 100  # characters, not bytes, are counted
  assert parse("é".encode() * 101) == "too_long"


def test_missing_data_directory_and_unreachable_download_fail_fast(tmp_path, monkeypatch):
  with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
    datasets.get_builder("ptb", data_dir=tmp_path / "tfds", raw_dir=tmp_path / "nowhere")
  for variable in datasets._PROXY_VARIABLES:
    monkeypatch.delenv(variable, raising=False)
  monkeypatch.setattr(datasets, "download_hosts", lambda cls: ["files.example.invalid"])
  with pytest.raises(
      datasets.DataError,
      match=r"snli: config\.data\.dir is empty, so the files "
      r"would be downloaded from files\.example\.invalid",
  ):
    datasets.get_builder("snli", data_dir=tmp_path / "tfds")
