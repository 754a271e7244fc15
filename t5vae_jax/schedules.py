"""KL weight (beta) schedules, as optax schedules: jittable callables step -> float32 beta.

The step may be a Python int or a traced integer array (the train state's step), so the
schedules use jnp ops only and no Python control flow on the step. Negative steps are
treated as step 0.
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import numpy as np

from t5vae_jax.choices import BETA_SCHEDULES

Schedule = Callable[..., jnp.ndarray]  # optax.Schedule: step -> value
BETA_SCHEDULE_KINDS = BETA_SCHEDULES + ("zero",)  # "zero": phase 1's beta


def _require_positive(name: str, value) -> None:
  if not np.isfinite(value) or value <= 0:
    raise ValueError(f"{name} must be positive, got {value!r}")


def _as_step(step) -> jnp.ndarray:
  return jnp.maximum(jnp.asarray(step, jnp.float32), 0.0)


def constant_beta(value: float) -> Schedule:
  """beta = value at every step (value = 0 in phase 1, the autoencoder warm-up)."""
  if not np.isfinite(value) or value < 0:
    raise ValueError(f"value must be a finite number >= 0, got {value!r}")

  def schedule(step):
    del step
    return jnp.asarray(value, jnp.float32)

  return schedule


def linear_beta(steps_per_epoch: int, epochs: float = 50) -> Schedule:
  """beta = step / (steps_per_epoch * epochs), capped at 1 (paper eq. 6)."""
  _require_positive("steps_per_epoch", steps_per_epoch)
  _require_positive("epochs", epochs)
  ramp_steps = float(steps_per_epoch) * float(epochs)

  def schedule(step):
    return jnp.minimum(_as_step(step) / ramp_steps, 1.0)

  return schedule


def cyclical_beta(total_steps: int, n_cycles: int = 4, ratio: float = 0.5) -> Schedule:
  """Cyclical annealing (Fu et al. 2019): repeated linear ramps, so the KL term keeps
  coming back after phases where the decoder had to rely on z.

  total_steps is split into n_cycles cycles of equal (possibly fractional) length P.
  Within each cycle beta rises linearly from 0 to 1 over the first ratio * P steps and is
  held at 1 for the rest; from total_steps on it stays at 1. This is the continuous form of
  Fu et al.'s `frange_cycle_linear`, which rounds positions down when P is not an integer.
  """
  _require_positive("total_steps", total_steps)
  _require_positive("n_cycles", n_cycles)
  if int(n_cycles) != n_cycles:
    raise ValueError(f"n_cycles must be a positive integer, got {n_cycles!r}")
  if not 0 < ratio <= 1:
    raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")
  cycle_steps = float(total_steps) / int(n_cycles)
  ramp_steps = cycle_steps * float(ratio)

  def schedule(step):
    step = _as_step(step)
    position_in_cycle = jnp.mod(step, cycle_steps)
    beta = jnp.minimum(position_in_cycle / ramp_steps, 1.0)
    return jnp.where(step >= total_steps, 1.0, beta)

  return schedule


def make_beta_schedule(
    kind: str,
    *,
    steps_per_epoch: int | None,
    value: float = 1.0,
    epochs: float = 50,
    total_steps: int | None = None,
    n_cycles: int = 4,
    ratio: float = 0.5,
) -> Schedule:
  """Builds the beta schedule named by a config.

  Args:
    kind: "constant" (beta = value), "linear" (ramp over `epochs` epochs), "cyclical"
      (over `total_steps`, which defaults to steps_per_epoch * epochs) or "zero" (beta = 0,
      phase 1).
    steps_per_epoch: needed by "linear", and by "cyclical" when total_steps is None; the
      other kinds ignore it (None is accepted), so phase 1 can run where the epoch length
      is unknown.

  Only the arguments the chosen kind uses are validated.
  """
  if kind not in BETA_SCHEDULE_KINDS:
    raise ValueError(f"beta schedule kind={kind!r} is not one of {BETA_SCHEDULE_KINDS}")
  if kind == "zero":
    return constant_beta(0.0)
  if kind == "constant":
    return constant_beta(value)
  if kind == "linear":
    if steps_per_epoch is None:
      raise ValueError("steps_per_epoch must be given for the 'linear' beta schedule")
    return linear_beta(steps_per_epoch, epochs)
  # kind == "cyclical"
  if total_steps is None:
    if steps_per_epoch is None:
      raise ValueError(
          "the 'cyclical' beta schedule needs total_steps, or steps_per_epoch to derive it"
      )
    _require_positive("steps_per_epoch", steps_per_epoch)
    _require_positive("epochs", epochs)
    total_steps = int(round(steps_per_epoch * epochs))
  return cyclical_beta(total_steps, n_cycles, ratio)
