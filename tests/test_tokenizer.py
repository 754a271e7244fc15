"""SentencePiece tokenizers with T5's conventions, trained on a tiny corpus and loaded offline."""

import os
import shutil

import pytest
import transformers

from t5vae_jax import synthetic
from t5vae_jax import tokenizer as tokenizer_lib

VOCAB_SIZE = 48
EXTRA_IDS = 8


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
  lines = [r["text"] for r in synthetic.generate(400, seed=0)]
  lines += [
      "a quick brown fox jumps over the lazy dog .",
      "pack my box with five dozen liquor jugs !",
  ] * 20
  path.write_text("\n".join(lines) + "\n")
  return path


@pytest.fixture(scope="module")
def tokenizer_dir(corpus_file, tmp_path_factory):
  out_dir = tmp_path_factory.mktemp("tokenizer")
  tokenizer_lib.train_sentencepiece_tokenizer(corpus_file, out_dir, VOCAB_SIZE, extra_ids=EXTRA_IDS)
  return out_dir


def test_writes_the_files_transformers_loads(tokenizer_dir):
  assert {"spiece.model", "tokenizer.json", "tokenizer_config.json"} <= set(
      os.listdir(tokenizer_dir)
  )
  for load in (
      transformers.T5TokenizerFast.from_pretrained,
      transformers.AutoTokenizer.from_pretrained,
  ):
    tokenizer = load(str(tokenizer_dir), local_files_only=True)
    assert tokenizer.is_fast
    assert len(tokenizer) == VOCAB_SIZE + EXTRA_IDS


def test_t5_special_tokens(tokenizer_dir):
  tokenizer = tokenizer_lib.load_tokenizer(tokenizer_dir)
  assert (tokenizer.pad_token, tokenizer.eos_token, tokenizer.unk_token) == (
      "<pad>",
      "</s>",
      "<unk>",
  )
  assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
  assert tokenizer.bos_token is None
  # Sentinels follow the vocabulary in reverse order, as in T5: <extra_id_0> is the last id.
  sentinel_ids = tokenizer.convert_tokens_to_ids([f"<extra_id_{i}>" for i in range(EXTRA_IDS)])
  assert sentinel_ids == list(range(VOCAB_SIZE + EXTRA_IDS - 1, VOCAB_SIZE - 1, -1))
  ids = tokenizer("the dog <extra_id_3> a ball")["input_ids"]
  assert tokenizer.convert_tokens_to_ids("<extra_id_3>") in ids


def test_encoding_appends_eos_and_decodes_back(tokenizer_dir):
  tokenizer = tokenizer_lib.load_tokenizer(tokenizer_dir)
  texts = [
      "the children will paint the old wooden chair near the river .",
      "the cat sees the ball .",
  ]
  for ids, text in zip(tokenizer(texts)["input_ids"], texts):
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.eos_token_id not in ids[:-1]
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_bare_spiece_model_loads(tokenizer_dir, tmp_path):
  shutil.copy(tokenizer_dir / "spiece.model", tmp_path / "spiece.model")
  tokenizer = tokenizer_lib.load_tokenizer(tmp_path)
  reference = tokenizer_lib.load_tokenizer(tokenizer_dir)
  text = "the teachers carried some fresh bread ."
  assert tokenizer(text)["input_ids"] == reference(text)["input_ids"]
  assert len(tokenizer) == VOCAB_SIZE + 100  # T5's default number of sentinels


def test_trains_from_an_iterable_of_sentences(corpus_file, tmp_path):
  sentences = (line for line in corpus_file.read_text().splitlines())
  tokenizer = tokenizer_lib.train_sentencepiece_tokenizer(
      sentences, tmp_path, VOCAB_SIZE, extra_ids=0
  )
  assert len(tokenizer) == VOCAB_SIZE
  assert tokenizer("the dog")["input_ids"][-1] == 1


def test_load_error_names_the_path(tmp_path):
  for path in (tmp_path / "missing", tmp_path):
    with pytest.raises(OSError, match=str(path)):
      tokenizer_lib.load_tokenizer(path)
