"""Linear probes: how much of a known label the latent code carries, read off by a linear map.

A probe is an L2-regularised multinomial logistic regression on the posterior means mu of a
split, fitted on a fixed part of the split and scored on the rest (held-out accuracy), beside
the majority-class baseline (the training part's most frequent class, scored on the held-out
part). A latent that encodes a label linearly beats the baseline by far; a collapsed one does
not. Targets are the labels the data carries: ``label`` (Yelp's ``label<TAB>text`` column;
lines without a label, -1, are left out) and, on the synthetic grammar, each attribute
(``subject``, ``number``, ``verb``, ``tense``, ``object``, ``place``; t5vae_jax.synthetic).

Deterministic, in numpy float64, no new dependency: features are standardised with the
training part's mean and standard deviation (so the L2 weight means the same whatever the
latent's scale), and the convex objective

    mean_i -log softmax(W x_i + b)_{y_i} + l2 / 2 * |W|^2   (+ 1e-8 / 2 * |b|^2)

is minimised by Newton's method with a backtracking line search (a few dozen parameters per
class, so the Hessian is small). The bias is not penalised beyond the 1e-8 that removes the
softmax's free shift. The held-out part is a seeded permutation of the split's example indices
(the first 20%), the same for every target and every phase of a run, so probe accuracies of
phase 1 and phase 2 are measured on the same sentences.

Used by eval.py ``--probe_labels auto | label | tense,number,...`` (``evaluation.evaluate_phase``
``probe_labels=``): eval.json gets "probes" {target: result} and the Markdown row an extra
column ``target held-out accuracy (majority baseline)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from t5vae_jax.datasets.errors import DataError

HOLDOUT_FRACTION = 0.2
SPLIT_SEED = 0
DEFAULT_L2 = 1e-3
_BIAS_L2 = 1e-8
LABEL_COLUMN = "label"
AUTO = "auto"


# --------------------------------------------------------------------------------------------
# The split and the baseline
# --------------------------------------------------------------------------------------------
def holdout_split(
    num_examples: int, fraction: float = HOLDOUT_FRACTION, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
  """(train indices, held-out indices), both sorted: the first round(fraction * n) (at least
  one) of a seeded permutation of range(n) are held out."""
  if num_examples < 2:
    raise ValueError(f"a probe needs at least 2 examples, got {num_examples}")
  order = np.random.default_rng(seed).permutation(num_examples)
  num_heldout = min(num_examples - 1, max(1, round(fraction * num_examples)))
  return np.sort(order[num_heldout:]), np.sort(order[:num_heldout])


def majority_class(labels: np.ndarray) -> int:
  """The most frequent label (the smallest of those tied)."""
  values, counts = np.unique(np.asarray(labels), return_counts=True)
  return int(values[np.argmax(counts)])


# --------------------------------------------------------------------------------------------
# Logistic regression
# --------------------------------------------------------------------------------------------
class LogisticProbe:
  """A fitted multinomial logistic regression: ``predict(features)`` -> labels."""

  def __init__(
      self,
      classes: np.ndarray,
      mean: np.ndarray,
      scale: np.ndarray,
      theta: np.ndarray,
      iterations: int,
      converged: bool,
  ):
    self.classes = classes  # (C,) the labels seen in training
    self.mean, self.scale = mean, scale  # (D,) standardisation
    self.theta = theta  # (D + 1, C): weights, then the bias row
    self.iterations, self.converged = iterations, converged

  def logits(self, features) -> np.ndarray:
    return _design(features, self.mean, self.scale) @ self.theta

  def predict(self, features) -> np.ndarray:
    return self.classes[np.argmax(self.logits(features), axis=-1)]


def _design(features, mean, scale) -> np.ndarray:
  """Standardised features with a column of ones (the bias) appended: (N, D + 1)."""
  x = (np.asarray(features, np.float64) - mean) / scale
  return np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)


def _objective(theta, x, onehot, penalty):
  """Loss, gradient (D+1, C) and probabilities of the penalised mean cross-entropy."""
  logits = x @ theta
  logits -= logits.max(axis=1, keepdims=True)
  log_norm = np.log(np.exp(logits).sum(axis=1, keepdims=True))
  log_p = logits - log_norm
  p = np.exp(log_p)
  n = x.shape[0]
  loss = -np.sum(onehot * log_p) / n + 0.5 * np.sum(penalty * theta**2)
  grad = x.T @ (p - onehot) / n + penalty * theta
  return loss, grad, p


def _hessian(x, p, penalty) -> np.ndarray:
  """The objective's Hessian over theta flattened row-major ((D+1) * C square)."""
  n, d = x.shape
  c = p.shape[1]
  xp = (x[:, :, None] * p[:, None, :]).reshape(n, d * c)  # x_ia p_ic
  hessian = -(xp.T @ xp) / n  # -sum_i x_ia p_ic x_ib p_id
  for k in range(c):  # + sum_i x_ia x_ib p_ic on the c = d blocks
    block = (x * p[:, k : k + 1]).T @ x / n
    hessian[k::c, k::c] += block
  hessian[np.diag_indices_from(hessian)] += penalty.reshape(-1)
  return hessian


def fit(
    features, labels, l2: float = DEFAULT_L2, max_iterations: int = 100, tolerance: float = 1e-9
) -> LogisticProbe:
  """Fits the probe (Newton's method, backtracking line search) on (N, D) features and (N,)
  integer labels; deterministic. Stops when the largest gradient entry is under tolerance."""
  features = np.asarray(features, np.float64)
  labels = np.asarray(labels)
  classes, y = np.unique(labels, return_inverse=True)
  mean = features.mean(axis=0)
  scale = features.std(axis=0)
  scale = np.where(scale > 1e-12, scale, 1.0)  # a constant dimension stays 0
  x = _design(features, mean, scale)
  onehot = np.eye(len(classes))[y]
  penalty = np.full((x.shape[1], len(classes)), float(l2))
  penalty[-1] = _BIAS_L2
  theta = np.zeros_like(penalty)
  loss, grad, p = _objective(theta, x, onehot, penalty)
  converged, iteration = False, 0
  for iteration in range(1, max_iterations + 1):
    if np.max(np.abs(grad)) < tolerance:
      converged = True
      break
    step = np.linalg.solve(_hessian(x, p, penalty), grad.reshape(-1)).reshape(theta.shape)
    slope = float(np.sum(grad * step))
    t = 1.0
    while True:
      candidate = theta - t * step
      new_loss, new_grad, new_p = _objective(candidate, x, onehot, penalty)
      if new_loss <= loss - 1e-4 * t * slope or t < 1e-10:
        break
      t *= 0.5
    theta, loss, grad, p = candidate, new_loss, new_grad, new_p
  else:
    converged = bool(np.max(np.abs(grad)) < tolerance)
  return LogisticProbe(classes, mean, scale, theta, iteration, converged)


# --------------------------------------------------------------------------------------------
# Probing a split
# --------------------------------------------------------------------------------------------
def probe(
    features,
    labels,
    *,
    l2: float = DEFAULT_L2,
    fraction: float = HOLDOUT_FRACTION,
    seed: int = SPLIT_SEED,
) -> dict[str, Any]:
  """Held-out accuracy of a probe on (N, D) features for (N,) labels (-1: unlabelled, left
  out), beside the majority baseline. The split is ``holdout_split`` over all N indices, then
  restricted to the labelled ones, so it does not depend on which examples carry a label."""
  features = np.asarray(features)
  labels = np.asarray(labels, np.int64)
  if features.shape[:1] != labels.shape:
    raise ValueError(f"{features.shape[0]} feature rows for {labels.shape[0]} labels")
  train, heldout = holdout_split(len(labels), fraction, seed)
  train, heldout = train[labels[train] >= 0], heldout[labels[heldout] >= 0]
  if not len(train) or not len(heldout):
    raise DataError(
        f"too few labelled examples for a probe ({len(train)} to fit, " f"{len(heldout)} held out)"
    )
  fitted = fit(features[train], labels[train], l2=l2)
  majority = majority_class(labels[train])
  return {
      "accuracy": float(np.mean(fitted.predict(features[heldout]) == labels[heldout])),
      "majority": float(np.mean(labels[heldout] == majority)),
      "train_accuracy": float(np.mean(fitted.predict(features[train]) == labels[train])),
      "majority_class": majority,
      "num_classes": len(np.unique(labels[labels >= 0])),
      "num_train": len(train),
      "num_heldout": len(heldout),
      "l2": float(l2),
      "holdout_fraction": float(fraction),
      "converged": bool(fitted.converged),
  }


def parse_names(probe_labels: str | Sequence[str] | None) -> list[str]:
  """'tense,number' / ["tense", "number"] / 'auto' -> a list of names ([] for none)."""
  if not probe_labels:
    return []
  if isinstance(probe_labels, str):
    probe_labels = probe_labels.split(",")
  return [name.strip() for name in probe_labels if name.strip()]


def available_targets(examples: Sequence[dict]) -> list[str]:
  """The targets the examples carry: "label" where any has a label >= 0, then the attributes."""
  names = []
  if any(e.get(LABEL_COLUMN, -1) >= 0 for e in examples):
    names.append(LABEL_COLUMN)
  for example in examples[:1]:
    names.extend(example.get("attributes", {}))
  return names


def targets(
    examples: Sequence[dict], probe_labels, where: str = "the split"
) -> dict[str, np.ndarray]:
  """{name: (N,) int labels, -1 where unlabelled} for ``probe_labels`` ("auto": every
  available target). A name the data does not carry is a DataError naming what it has."""
  names = parse_names(probe_labels)
  available = available_targets(examples)
  if names == [AUTO]:
    names = available
    if not names:
      raise DataError(
          f"--probe_labels auto: {where} has no labels (neither label<TAB>text "
          "lines nor synthetic attributes)"
      )
  unknown = [n for n in names if n not in available]
  if unknown:
    raise DataError(
        f"--probe_labels {','.join(unknown)}: {where} has no such label "
        f"(it has: {', '.join(available) or 'none'})"
    )
  columns = {}
  for name in names:
    if name == LABEL_COLUMN:
      columns[name] = np.asarray([e.get(LABEL_COLUMN, -1) for e in examples], np.int64)
    else:
      columns[name] = np.asarray([e["attributes"][name] for e in examples], np.int64)
  return columns


def run_probes(mu, columns: dict[str, np.ndarray], **kwargs) -> dict[str, dict]:
  """``probe`` of mu (N, L) for each target column of ``targets``."""
  return {name: probe(mu, labels, **kwargs) for name, labels in columns.items()}


def markdown_cell(probes: dict[str, dict]) -> str:
  """'tense 0.98 (0.34), number 1.00 (0.52)': held-out accuracy (majority baseline)."""
  return ", ".join(
      f"{name} {r['accuracy']:.2f} ({r['majority']:.2f})" for name, r in probes.items()
  )
