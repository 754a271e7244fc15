"""The training steps since the last log line: their metrics, tokens and wall-clock time.

Both training loops (train_lib for the VAE, pretrain_lib for span corruption) log the mean of
each metric over the steps of a window and the window's speed, then start a new one. The
metrics stay device arrays until the window is read, so adding a step does not wait for it.
"""

from __future__ import annotations

import time
from typing import Any, Optional, Sequence

import jax
import numpy as np


class MetricsWindow:
  """``add`` each step's metrics (a dict of scalars) and token count; ``means`` at log time."""

  def __init__(self):
    self.reset()

  def reset(self) -> None:
    """An empty window whose clock starts now."""
    self.metrics: list[Any] = []
    self.tokens = 0
    self.start = time.perf_counter()

  def restart_clock(self) -> None:
    """Leave out of the speed the time since the window began (e.g. a validation pass)."""
    self.start = time.perf_counter()

  def add(self, metrics: dict, tokens: int) -> None:
    self.metrics.append(metrics)
    self.tokens += tokens

  def __len__(self) -> int:
    return len(self.metrics)

  def means(self, keys: Optional[Sequence[str]] = None) -> dict[str, float]:
    """The mean over the window's steps of each metric (of ``keys``, default all)."""
    host = jax.device_get(self.metrics)
    keys = host[0].keys() if keys is None else keys
    return {k: float(np.mean([m[k] for m in host])) for k in keys}

  def last(self, key: str) -> float:
    return float(jax.device_get(self.metrics[-1][key]))

  def seconds(self) -> float:
    return max(time.perf_counter() - self.start, 1e-9)

  def tokens_per_second(self) -> float:
    return self.tokens / self.seconds()

  def steps_per_second(self) -> float:
    return len(self.metrics) / self.seconds()
