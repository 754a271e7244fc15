"""Sentences from a small grammar whose latent attributes are known.

A VAE trained on them can be probed for what its latent code captures (each attribute is a label),
and the demo and the tests run anywhere, without downloads. 4 subjects x 2 numbers x 4 verbs x
3 tenses x 4 objects x 2 places = 768 sentence types, 6 to 12 words long (the final "." counts as a
word, as in the tokenized PTB and SNLI files).
"""

from collections.abc import Sequence
import json

from etils import epath
import numpy as np

_SUBJECTS = (("dog", "dogs"), ("cat", "cats"), ("teacher", "teachers"), ("child", "children"))
# (base form, third person singular present, past)
_VERBS = (
    ("chase", "chases", "chased"),
    ("carry", "carries", "carried"),
    ("see", "sees", "saw"),
    ("paint", "paints", "painted"),
)
_OBJECTS = ("the ball", "some fresh bread", "a small red box", "the old wooden chair")
_PLACES = ("", " near the river")

# Attribute name -> the names of its values; a record's attributes are indices into these.
ATTRIBUTES = {
    "subject": tuple(singular for singular, _ in _SUBJECTS),
    "number": ("singular", "plural"),
    "verb": tuple(base for base, _, _ in _VERBS),
    "tense": ("past", "present", "future"),
    "object": _OBJECTS,
    "place": ("none", "near the river"),
}
NUM_SENTENCE_TYPES = int(np.prod([len(values) for values in ATTRIBUTES.values()]))

SPLIT_FILES = {"train": "train.txt", "validation": "valid.txt", "test": "test.txt"}


def attributes_file_name(split_file: str) -> str:
  """train.txt -> train.attributes.jsonl: the attributes of each line, in the same order."""
  return split_file.removesuffix(".txt") + ".attributes.jsonl"


def render(attributes: dict[str, int]) -> str:
  """The sentence that a set of attribute values stands for."""
  plural = attributes["number"] == 1
  subject = _SUBJECTS[attributes["subject"]][int(plural)]
  base, third_person, past = _VERBS[attributes["verb"]]
  tense = ATTRIBUTES["tense"][attributes["tense"]]
  if tense == "past":
    verb = past
  elif tense == "present":
    verb = base if plural else third_person
  else:
    verb = "will " + base
  obj = _OBJECTS[attributes["object"]]
  place = _PLACES[attributes["place"]]
  return f"the {subject} {verb} {obj}{place} ."


def generate(num_examples: int, seed: int | Sequence[int]) -> list[dict]:
  """`num_examples` records {"text": str, "attributes": {name: int}}, each attribute uniform.

  The same seed gives the same records (the seed goes to `np.random.default_rng`, so a tuple such
  as (seed, split_index) works too).
  """
  rng = np.random.default_rng(seed)
  draws = {
      name: rng.integers(len(values), size=num_examples) for name, values in ATTRIBUTES.items()
  }
  records = []
  for i in range(num_examples):
    attributes = {name: int(values[i]) for name, values in draws.items()}
    records.append({"text": render(attributes), "attributes": attributes})
  return records


def write_splits(
    directory: epath.PathLike, num_train: int, num_valid: int, num_test: int, seed: int = 0
) -> dict[str, epath.Path]:
  """Writes train/valid/test.txt (+ .attributes.jsonl) so the data takes the same path as PTB.

  Each split has its own stream (seed, split index), so changing one split's size leaves the
  others unchanged. Returns {split: path of its text file}.
  """
  directory = epath.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  sizes = {"train": num_train, "validation": num_valid, "test": num_test}
  paths = {}
  for split_index, (split, file_name) in enumerate(SPLIT_FILES.items()):
    records = generate(sizes[split], seed=(seed, split_index))
    (directory / attributes_file_name(file_name)).write_text(
        "".join(json.dumps(r["attributes"], sort_keys=True) + "\n" for r in records)
    )
    # The text file goes last: a directory with all three text files is complete.
    paths[split] = directory / file_name
    paths[split].write_text("".join(r["text"] + "\n" for r in records))
  return paths
