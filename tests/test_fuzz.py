"""Property-based fuzzing of what users feed in: dataset files (line parser, builder, TFDS
preparation, tokenization) and config overrides (validation and flag parsing)."""

import pathlib
import sys
import tempfile

from hypothesis import HealthCheck, assume, event, given, settings, strategies as st
import ml_collections
import pytest

from conftest import parse_training_flags
from t5vae_jax import config_validation as cv
from t5vae_jax import data
from t5vae_jax import datasets

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from configs import default  # noqa: E402

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Lines: mostly words, some tabs, spaces, non-UTF-8 bytes, control characters, long runs.
WORDS = st.sampled_from(["the", "cat", "sat", ".", "N", "<unk>", "café", "über", "日本", "😀", "a"])
TEXT_LINE = st.lists(WORDS, min_size=0, max_size=12).map(lambda ws: " ".join(ws).encode())
NOISE_LINE = st.binary(max_size=60).map(lambda b: b.replace(b"\n", b" "))
LONG_LINE = st.integers(50, 400).map(lambda n: b"x" * n)
TAB_LINE = st.tuples(st.sampled_from([b"3", b"12", b" 4", b"", b"x"]), TEXT_LINE).map(
    lambda t: t[0] + b"\t" + t[1]
)
LINE = st.one_of(
    TEXT_LINE,
    TEXT_LINE,
    TEXT_LINE,
    TEXT_LINE,
    NOISE_LINE,
    LONG_LINE,
    TAB_LINE,
    st.sampled_from([b"", b"  ", b"\r", b"\xef\xbb\xbfbom", b"\x00", b"\xff\xfe"]),
)
MAX_CHARS = 120


def file_bytes(lines, final_newline):
  body = b"\n".join(lines)
  return body + b"\n" if final_newline and lines else body


def count_lines(content: bytes) -> int:
  if not content:
    return 0
  return content.count(b"\n") + (not content.endswith(b"\n"))


@FUZZ
@given(raw=st.one_of(NOISE_LINE, LINE), has_labels=st.booleans(), first=st.booleans())
def test_parse_line_returns_an_example_or_a_reason(raw, has_labels, first):
  try:
    result = datasets.parse_line(
        raw, has_labels=has_labels, max_line_chars=MAX_CHARS, first_line=first
    )
  except ValueError as e:  # only a Yelp label that is not an integer
    assert has_labels and "expected an integer label" in str(e)
    return
  if isinstance(result, str):
    assert result in datasets.SKIP_REASONS
    return
  text = result["text"]
  assert text and text == text.strip() and len(text) <= MAX_CHARS
  assert has_labels or ("\t" not in text and result["label"] == -1)
  assert raw.decode("utf-8-sig" if first else "utf-8")  # only valid UTF-8 gets through


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
  from t5vae_jax import tokenizer as tokenizer_lib

  sentences = ["the cat sat .", "a cat sat on the mat .", "N <unk> the", "café über 日本"] * 10
  return tokenizer_lib.train_sentencepiece_tokenizer(
      sentences,
      tmp_path_factory.mktemp("tok"),
      vocab_size=40,
      extra_ids=0,
      model_type="char",
      hard_vocab_limit=False,
  )


@FUZZ
@given(
    lines=st.lists(LINE, max_size=25),
    final_newline=st.booleans(),
    builder_cls=st.sampled_from([datasets.Ptb, datasets.Yelp]),
    policy=st.sampled_from(["skip", "skip", "fail"]),
    max_len=st.integers(2, 12),
)
def test_reading_random_files_counts_every_line(
    lines, final_newline, builder_cls, policy, max_len, tiny_tokenizer
):
  content = file_bytes(lines, final_newline)
  with tempfile.TemporaryDirectory() as tmp:
    path = pathlib.Path(tmp) / "train.txt"
    path.write_bytes(content)
    builder = builder_cls(
        data_dir=pathlib.Path(tmp) / "tfds",
        raw_dir=tmp,
        config=datasets.TextLinesConfig(on_bad_line=policy, max_line_chars=MAX_CHARS),
    )
    try:
      examples = [example for _, example in builder._generate_examples("train", path)]
    except datasets.DataError as e:  # the documented failures, naming the file
      event("DataError")
      message = str(e)
      assert str(path) in message
      assert (
          policy == "fail"
          or "expected an integer label" in message
          or "has no non-empty line" in message
          or "has no usable line" in message
      )
      return
    skipped = builder.info.metadata["num_skipped"]["train"]
  event(f"read, {'some' if sum(skipped.values()) else 'no'} lines skipped")
  assert len(examples) + sum(skipped.values()) == count_lines(content)
  assert skipped["empty"] == builder.info.metadata["num_skipped_empty"]["train"]
  if policy == "fail":
    assert sum(skipped.values()) == 0
  ids, num_truncated = data.tokenize([e["text"] for e in examples], tiny_tokenizer, max_len)
  assert len(ids) == len(examples) and 0 <= num_truncated <= len(examples)
  assert all(
      2 <= len(x) + 1 and len(x) <= max_len and x[-1] == tiny_tokenizer.eos_token_id for x in ids
  )


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(LINE, min_size=1, max_size=15), policy=st.sampled_from(["skip", "skip", "fail"])
)
def test_prepared_datasets_agree_with_the_reader(lines, policy, tiny_tokenizer):
  """A few whole TFDS preparations: load_split's counts add up to the file's lines."""
  content = file_bytes(lines, True)
  with tempfile.TemporaryDirectory() as tmp:
    raw = pathlib.Path(tmp) / "raw"
    raw.mkdir()
    (raw / "train.txt").write_bytes(content)
    (raw / "valid.txt").write_bytes(b"a cat .\n")
    (raw / "test.txt").write_bytes(b"the mat .\n")
    config = ml_collections.ConfigDict(
        {
            "name": "snli",
            "dir": str(raw),
            "tfds_dir": f"{tmp}/tfds",
            "max_len": 8,
            "on_bad_line": policy,
            "max_line_chars": MAX_CHARS,
        }
    )
    try:
      examples, stats = data.load_split(config, "train", tiny_tokenizer)
    except datasets.DataError as e:
      event("DataError")
      assert "train.txt" in str(e)
      return
  event("prepared")
  skipped = sum(v for k, v in stats.items() if k.startswith("num_skipped_"))
  assert stats["num_examples"] + skipped == count_lines(content)
  assert all(len(e["input_ids"]) <= 8 for e in examples)


# ----------------------------------------------------------------------------- configs

ALL_KEYS = sorted(cv.flatten(default.get_config()))
KEY = st.one_of(st.sampled_from(ALL_KEYS), st.from_regex(r"\A[a-z_]{1,8}(\.[a-z_]{1,8}){0,2}\Z"))
VALUE = st.one_of(
    st.integers(-3, 300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=12),
    st.sampled_from(["max", "mean", "skip", "fail", "linear", "ptb", "float32"]),
    st.lists(st.integers(-2, 300), max_size=4).map(tuple),
)


def mentions(line: str, key: str) -> bool:
  return f"config.{key}" in line or f"'{key}'" in line


@FUZZ
@given(
    overrides=st.dictionaries(KEY, VALUE, min_size=1, max_size=3), phase=st.sampled_from([1, 2, 3])
)
def test_validation_of_random_overrides_names_the_keys(overrides, phase):
  config = default.get_config()
  config.unlock()
  applied = {}
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
      if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
        break
      node = node[part]
    else:
      if isinstance(node.get(leaf), ml_collections.ConfigDict):
        continue  # replacing a whole group: covered by the missing-keys check
      with node.ignore_type():
        node[leaf] = value
      applied[key] = value
  assume(applied)
  errors = cv.collect_errors(config, phase)
  event("invalid" if errors else "valid")
  for line in errors:
    assert "\n" not in line
    assert line.startswith("--phase") or any(mentions(line, k) for k in applied), (line, applied)
  if phase == 3:
    assert errors and errors[0].startswith("--phase=3")


FLAG_VALUE = st.one_of(
    st.integers(-5, 500).map(str),
    st.floats(allow_nan=False).map(str),
    st.sampled_from(
        [
            "True",
            "false",
            "max",
            "avg",
            "()",
            "(8, 16)",
            "[1]",
            "",
            "none",
            "1e3",
            "skip",
            "fail",
            "0.5",
        ]
    ),
    st.text(
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\x00"), max_size=10
    ),
)


@FUZZ
@given(items=st.lists(st.tuples(KEY, FLAG_VALUE), min_size=1, max_size=2))
def test_random_flags_parse_or_fail_with_one_line_naming_the_key(items):
  flag_values = parse_training_flags(
      f"--config={ROOT / 'configs/demo.py'}",
      "--phase=1",
      "--workdir=/tmp/unused",
      *(f"--config.{key}={value}" for key, value in items),
  )
  if isinstance(flag_values, tuple):
    event("flag error")
    code, stderr = flag_values
    assert code == 2
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert any(f"--config.{key}" in lines[0] or f"'{key}'" in lines[0] for key, _ in items), lines[
        0
    ]
    return
  errors = cv.collect_errors(flag_values.config, 1, check_paths=False)
  event("parsed, invalid" if errors else "parsed, valid")
  for line in errors:
    assert any(mentions(line, key) for key, _ in items), (line, items)
