"""SentencePiece tokenizers with T5's conventions, saved so that transformers loads them offline.

Training one matters for models trained from scratch and for tests (no hub access here); a
finetuned checkpoint keeps its own tokenizer. T5's conventions: unigram model, <pad>=0, </s>=1,
<unk>=2, no BOS, and `extra_ids` sentinels <extra_id_0>.. after the vocabulary in reverse order
(<extra_id_0> has the highest id), which span-corruption pretraining needs.
"""

from collections.abc import Iterable
import io
import os
import tempfile

from etils import epath
import sentencepiece as spm
import transformers

from t5vae_jax import hub

SPIECE_FILE = "spiece.model"
# Files that hold a vocabulary (besides SentencePiece's *.model): without one, no tokenizer.
_VOCABULARY_FILES = ("tokenizer.json", "vocab.json", "vocab.txt")


def _sentences(text_files_or_iterable) -> Iterable[str]:
  """Non-empty stripped lines of the given file(s), or the given strings.

  A str or path is one file; a list of paths, or of strings that are all existing files, is
  several files; anything else is an iterable of sentences.
  """
  if isinstance(text_files_or_iterable, (str, os.PathLike)):
    files = [text_files_or_iterable]
  else:
    items = list(text_files_or_iterable)
    is_file = [
        isinstance(x, os.PathLike) or (isinstance(x, str) and os.path.isfile(x)) for x in items
    ]
    if items and all(is_file):
      files = items
    elif any(isinstance(x, os.PathLike) for x in items):
      raise ValueError("Got a mix of paths and strings; pass either files or sentences.")
    else:
      files, sentences = None, items
  if files is None:
    yield from (s.strip() for s in sentences if s.strip())
    return
  for file in files:
    with epath.Path(file).open() as f:
      for line in f:
        if line.strip():
          yield line.strip()


def train_sentencepiece_tokenizer(
    text_files_or_iterable,
    out_dir: epath.PathLike,
    vocab_size: int,
    *,
    extra_ids: int = 100,
    character_coverage: float = 1.0,
    **sentencepiece_kwargs,
) -> transformers.PreTrainedTokenizerBase:
  """Trains a unigram SentencePiece model on the text and saves a T5 tokenizer to `out_dir`.

  `out_dir` gets spiece.model (for SentencePiece users), tokenizer.json (the fast tokenizer,
  converted here, so loading needs neither the hub nor a conversion) and tokenizer_config.json
  (which tells AutoTokenizer it is a T5 tokenizer). The tokenizer has vocab_size + extra_ids tokens.
  `sentencepiece_kwargs` go to `SentencePieceTrainer.train` (e.g. input_sentence_size,
  num_threads); a vocab_size too large for the text fails there with a message saying the maximum.
  Returns the tokenizer as `load_tokenizer(out_dir)` gives it.
  """
  options = dict(
      model_type="unigram",
      vocab_size=vocab_size,
      character_coverage=character_coverage,
      pad_id=0,
      pad_piece="<pad>",
      eos_id=1,
      eos_piece="</s>",
      unk_id=2,
      unk_piece="<unk>",
      bos_id=-1,
      num_threads=os.cpu_count() or 1,
      minloglevel=1,
  )
  options.update(sentencepiece_kwargs)
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(_sentences(text_files_or_iterable)), model_writer=model, **options
  )
  with tempfile.TemporaryDirectory() as local_dir:
    with open(os.path.join(local_dir, SPIECE_FILE), "wb") as f:
      f.write(model.getvalue())
    # transformers converts spiece.model into a `tokenizers` Unigram model (offline).
    tokenizer = transformers.T5TokenizerFast.from_pretrained(local_dir, extra_ids=extra_ids)
    save_tokenizer(tokenizer, out_dir)
    # save_pretrained of a converted tokenizer does not write the SentencePiece model; keep it.
    epath.Path(out_dir, SPIECE_FILE).write_bytes(model.getvalue())
  tokenizer = load_tokenizer(out_dir)
  special_ids = (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id)
  if special_ids != (0, 1, 2):
    raise AssertionError(f"Expected <pad>, </s>, <unk> = 0, 1, 2; got {special_ids}")
  return tokenizer


def save_tokenizer(tokenizer: transformers.PreTrainedTokenizerBase, path: epath.PathLike) -> None:
  """`tokenizer.save_pretrained` to any epath (e.g. gs://...), through a local copy."""
  path = epath.Path(path)
  path.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory() as local_dir:
    tokenizer.save_pretrained(local_dir)
    for name in os.listdir(local_dir):
      (path / name).write_bytes(epath.Path(local_dir, name).read_bytes())


def load_tokenizer(path: epath.PathLike) -> transformers.PreTrainedTokenizerBase:
  """The tokenizer saved in directory `path` (local or any epath), or of a hub model name.

  A directory with only T5's spiece.model also works (converted on load). The error names the
  path, and pad and EOS tokens are required since the data pipeline appends EOS and pads.
  """
  if hub.is_remote(path):
    if not epath.Path(path).is_dir():  # gcsfs's own error names a URL-encoded object
      raise FileNotFoundError(
          f"Could not load a tokenizer from {os.fspath(path)!r}: no such directory"
      )
    with tempfile.TemporaryDirectory() as local_dir:
      for file in epath.Path(path).iterdir():
        if file.is_file():
          epath.Path(local_dir, file.name).write_bytes(file.read_bytes())
      return load_tokenizer(local_dir)
  if not hub.is_hub_id(os.fspath(path)):  # a path (the program's one rule): ~ expanded
    path = hub.local_path(os.fspath(path))
    if not os.path.isdir(path):
      raise FileNotFoundError(f"Could not load a tokenizer from {path!r}: no such directory")
  is_local_dir = os.path.isdir(path)
  if is_local_dir and not any(
      name in _VOCABULARY_FILES or name.endswith(".model") for name in os.listdir(path)
  ):
    # transformers 5 would build an empty 104-token T5 tokenizer from a config.json alone.
    raise FileNotFoundError(
        f"{os.fspath(path)}: no tokenizer files in the directory (expected "
        "spiece.model or tokenizer.json)"
    )
  try:
    try:
      tokenizer = transformers.AutoTokenizer.from_pretrained(
          os.fspath(path), local_files_only=is_local_dir
      )
    except (OSError, ValueError):
      if not (is_local_dir and os.path.isfile(os.path.join(path, SPIECE_FILE))):
        raise
      # No tokenizer_config.json to name the class: a bare T5 SentencePiece model.
      tokenizer = transformers.T5TokenizerFast.from_pretrained(
          os.fspath(path), local_files_only=True
      )
  except Exception as e:
    raise OSError(f"Could not load a tokenizer from {os.fspath(path)!r}: {e}") from e
  if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
    raise ValueError(f"The tokenizer at {os.fspath(path)!r} has no pad or no EOS token.")
  return tokenizer


__all__ = ["load_tokenizer", "save_tokenizer", "train_sentencepiece_tokenizer"]
