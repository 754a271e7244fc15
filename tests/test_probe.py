"""Linear probes (t5vae_jax.probe): the fit against an independent optimiser, held-out accuracy
and the majority baseline on data whose answer is known by construction, the label plumbing,
and eval's probes on the shared tiny demo checkpoint (synthetic attributes, and Yelp-style
``label<TAB>text`` lines through the data config)."""

import json

import numpy as np
import pytest
from _demo_checkpoint import demo_workdir

from t5vae_jax import probe
from t5vae_jax.datasets.errors import DataError


def _independent_objective(theta, z, y, l2, num_classes):
  """The probe's penalised mean cross-entropy, written again from the formula."""
  theta = theta.reshape(z.shape[1] + 1, num_classes)
  weights, bias = theta[:-1], theta[-1]
  total = 0.0
  for row, label in zip(z, y):
    logits = row @ weights + bias
    top = logits.max()
    total += -(logits[label] - top - np.log(np.sum(np.exp(logits - top))))
  return total / len(y) + 0.5 * l2 * np.sum(weights**2) + 0.5e-8 * np.sum(bias**2)


def test_fit_is_the_optimum_an_independent_optimiser_finds():
  optimize = pytest.importorskip("scipy.optimize")  # scipy comes with jax
  rng = np.random.default_rng(0)
  features = rng.normal(size=(120, 5)) * [1.0, 3.0, 0.5, 2.0, 1.0] + 2.0
  labels = np.argmax(features @ rng.normal(size=(5, 3)) + rng.normal(size=(120, 3)), axis=1)
  l2 = 0.05
  fitted = probe.fit(features, labels, l2=l2)
  assert fitted.converged and fitted.iterations < 30
  z = (features - features.mean(0)) / features.std(0)
  reference = optimize.minimize(
      _independent_objective,
      np.zeros(18),
      args=(z, labels, l2, 3),
      method="L-BFGS-B",
      options={"gtol": 1e-10, "ftol": 1e-15},
  )
  ours = _independent_objective(fitted.theta.ravel(), z, labels, l2, 3)
  assert ours <= reference.fun + 1e-10
  # The softmax's free shift aside (the bias row sums to ~0 in ours), the parameters agree.
  theirs = reference.x.reshape(6, 3)
  theirs[-1] -= theirs[-1].mean()
  np.testing.assert_allclose(fitted.theta, theirs, atol=1e-4)
  np.testing.assert_array_equal(
      fitted.predict(features), np.argmax(z @ theirs[:-1] + theirs[-1], axis=1)
  )


def test_held_out_accuracy_and_majority_baseline_known_by_construction():
  # A 1-D threshold with a wide margin: a clean training part is separable, so the probe
  # predicts the side of 0; the labels of 3 held-out points are flipped on purpose, so the
  # held-out accuracy is exactly (n - 3) / n.
  rng = np.random.default_rng(1)
  num = 200
  x = rng.uniform(1.0, 3.0, num) * rng.choice([-1.0, 1.0], num)
  features = np.stack([x, rng.normal(size=num) * 0.1], axis=1)
  labels = (x > 0).astype(np.int64) + 4  # labels 4 and 5: not 0-based
  train, heldout = probe.holdout_split(num)
  assert len(heldout) == 40 and len(train) == 160 and not set(train) & set(heldout)
  labels[heldout[:3]] = 9 - labels[heldout[:3]]
  result = probe.probe(features, labels)
  assert result["accuracy"] == pytest.approx(37 / 40)
  assert result["train_accuracy"] == 1.0
  # The majority baseline by hand: the training part's most frequent label, counted in the
  # held-out part.
  counts = {}
  for i in train:
    counts[int(labels[i])] = counts.get(int(labels[i]), 0) + 1
  majority = max(sorted(counts), key=lambda k: counts[k])
  hits = sum(1 for i in heldout if labels[i] == majority)
  assert result["majority_class"] == majority
  assert result["majority"] == pytest.approx(hits / 40)
  assert (result["num_train"], result["num_heldout"], result["num_classes"]) == (160, 40, 2)
  # Features that say nothing: accuracy near chance, not above the baseline by much.
  noise = probe.probe(rng.normal(size=(num, 2)), labels)
  assert noise["accuracy"] < noise["majority"] + 0.15


def test_unlabelled_examples_are_left_out_and_the_split_is_fixed():
  rng = np.random.default_rng(2)
  features = rng.normal(size=(50, 3))
  labels = (features[:, 0] > 0).astype(np.int64)
  train, heldout = probe.holdout_split(50)
  np.testing.assert_array_equal(probe.holdout_split(50)[1], heldout)  # deterministic
  unlabelled = labels.copy()
  unlabelled[heldout[:2]] = -1
  unlabelled[train[:5]] = -1
  result = probe.probe(features, unlabelled)
  assert (result["num_train"], result["num_heldout"]) == (len(train) - 5, len(heldout) - 2)
  assert [len(part) for part in probe.holdout_split(2)] == [1, 1]
  with pytest.raises(DataError, match="too few labelled"):
    probe.probe(features, np.full(50, -1))


def test_targets_from_labels_and_attributes():
  yelp = [
      {"text": "good .", "label": 5},
      {"text": "bad .", "label": 1},
      {"text": "no tab .", "label": -1},
  ]
  columns = probe.targets(yelp, "auto")
  assert list(columns) == ["label"]
  np.testing.assert_array_equal(columns["label"], [5, 1, -1])
  synthetic = [{"text": "t", "label": -1, "attributes": {"number": 1, "tense": 2}}]
  assert list(probe.targets(synthetic, "auto")) == ["number", "tense"]
  assert list(probe.targets(synthetic, "tense")) == ["tense"]
  assert list(probe.targets(synthetic, ["tense", "number"])) == ["tense", "number"]
  with pytest.raises(
      DataError, match=r"colour: the test split has no such label \(it has: " r"number, tense\)"
  ):
    probe.targets(synthetic, "tense,colour", "the test split")
  with pytest.raises(DataError, match="auto: the split has no labels"):
    probe.targets([{"text": "t", "label": -1}], "auto")
  assert probe.markdown_cell({"tense": {"accuracy": 0.975, "majority": 1 / 3}}) == (
      "tense 0.97 (0.33)"
  )


# ---------------------------------------------------------------------------- on a checkpoint
@pytest.fixture(scope="module")
def phase_dir(tmp_path_factory):
  return demo_workdir(tmp_path_factory) / "phase2"


def _evaluate(phase_dir, probe_labels, config_overrides=("data.bucket_lengths=(16,)",), **kwargs):
  import jax

  from t5vae_jax import evaluation, sharding
  # The settings of test_report's evaluation: one set of compiled programs for both modules.
  return evaluation.evaluate_phase(
      phase_dir,
      num_samples=4,
      iw_chunk=4,
      batch_size=32,
      mi_batch_size=32,
      progress=False,
      mesh=sharding.make_mesh(jax.devices()[:1]),
      probe_labels=probe_labels,
      config_overrides=list(config_overrides),
      **kwargs,
  )


def test_eval_probes_the_synthetic_attributes(phase_dir):
  from t5vae_jax import api, evaluation
  from t5vae_jax import data as data_lib

  result = _evaluate(phase_dir, "auto", output="eval_probe.json")
  saved = json.loads((phase_dir / "eval_probe.json").read_text())
  assert set(saved["probes"]) == {"subject", "number", "verb", "tense", "object", "place"}
  assert saved["probes"] == result["probes"]
  # The demo VAE reconstructs most sentences, so the attributes are in mu: each held-out
  # accuracy beats its majority baseline (measured: 0.54-1.00 against 0.00-0.92).
  for name, r in result["probes"].items():
    assert r["num_heldout"] == 13 and r["num_train"] == 51, name
    assert r["accuracy"] >= r["majority"], (name, r)
  assert result["probes"]["subject"]["accuracy"] > result["probes"]["subject"]["majority"] + 0.4
  # The same probe on mu from the notebook API (independent of evaluate's batching/order).
  config = api.load_config(phase_dir)
  examples, _ = data_lib.read_split(config.data, "test")
  mu, _ = api.T5VAE.load(phase_dir).encode([e["text"] for e in examples])
  tense = np.asarray([e["attributes"]["tense"] for e in examples])
  assert probe.probe(mu, tense)["accuracy"] == result["probes"]["tense"]["accuracy"]
  # The Markdown row has one more column, named by the header.
  cells = result["row"].strip("|").split("|")
  header = evaluation.markdown_header(probes=True).splitlines()[0].strip("|").split("|")
  assert len(cells) == len(header) and "tense " in cells[-1]
  no_probe = evaluation.markdown_row("x", {k: v for k, v in result.items() if k != "probes"})
  assert len(no_probe.strip("|").split("|")) == len(header) - 1


def test_eval_probes_yelp_style_labels(phase_dir, tmp_path):
  from t5vae_jax import synthetic
  # label<TAB>text lines whose label is the sentence's tense (1-based, as Yelp's stars), a few
  # without a label (-1, left out of the probe).
  records = synthetic.generate(60, seed=7)
  lines = [
      f"{r['attributes']['tense'] + 1}\t{r['text']}" if i % 10 else r["text"]
      for i, r in enumerate(records)
  ]
  for name in ("train.txt", "valid.txt", "test.txt"):
    (tmp_path / name).write_text("\n".join(lines) + "\n")
  result = _evaluate(
      phase_dir,
      "auto",
      output=None,
      data_dir=str(tmp_path),
      tfds_dir=str(tmp_path / "tfds"),
      config_overrides=["data.name=yelp", "data.bucket_lengths=(16,)"],
  )
  label = result["probes"]["label"]
  assert list(result["probes"]) == ["label"]
  assert label["num_train"] + label["num_heldout"] == 54
  assert label["num_classes"] == 3
  assert label["accuracy"] > label["majority"] + 0.2, label
  with pytest.raises(DataError, match="tense: the yelp test split has no such label"):
    _evaluate(
        phase_dir,
        "tense",
        output=None,
        data_dir=str(tmp_path),
        tfds_dir=str(tmp_path / "tfds"),
        config_overrides=["data.name=yelp", "data.bucket_lengths=(16,)"],
    )
