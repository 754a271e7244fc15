"""Beta schedules against hand-computed values and a loop-based numpy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from t5vae_jax import schedules


def evaluate(schedule, steps):
  """Values at many steps in one jitted call, the step traced."""
  return np.asarray(jax.jit(jax.vmap(schedule))(jnp.asarray(steps, jnp.int32)))


def np_cyclical(total_steps, n_cycles, ratio):
  """Fu et al. (2019)'s frange_cycle_linear, written as loops: ones, then a ramp 0 -> 1
  over the first ratio of every cycle."""
  betas = np.ones(total_steps)
  period = total_steps / n_cycles
  increment = 1.0 / (period * ratio)
  for cycle in range(n_cycles):
    value, i = 0.0, 0
    while value <= 1.0 and int(i + cycle * period) < total_steps:
      betas[int(i + cycle * period)] = value
      value += increment
      i += 1
  return betas


def test_constant_and_zero():
  np.testing.assert_allclose(evaluate(schedules.constant_beta(0.3), [0, 1, 10**6]), 0.3)
  zero = schedules.make_beta_schedule("zero", steps_per_epoch=None)
  np.testing.assert_array_equal(evaluate(zero, [0, 5, 10**6]), 0.0)
  assert schedules.constant_beta(0.5)(7).dtype == jnp.float32


def test_linear_hand_computed():
  schedule = schedules.linear_beta(steps_per_epoch=10, epochs=10)  # ramp over 100 steps
  steps = [0, 1, 25, 50, 99, 100, 101, 5000]
  want = [0.0, 0.01, 0.25, 0.5, 0.99, 1.0, 1.0, 1.0]
  np.testing.assert_allclose(evaluate(schedule, steps), want, rtol=1e-6)
  assert float(schedule(-3)) == 0.0


def test_linear_paper_default_is_fifty_epochs():
  schedule = schedules.make_beta_schedule("linear", steps_per_epoch=200)
  steps = np.arange(0, 12000, 37)
  np.testing.assert_allclose(
      evaluate(schedule, steps), np.minimum(steps / 10000.0, 1.0), rtol=1e-6, atol=1e-7
  )


def test_cyclical_four_cycles_over_80_steps():
  schedule = schedules.cyclical_beta(total_steps=80, n_cycles=4, ratio=0.5)
  steps = np.arange(0, 120)
  got = evaluate(schedule, steps)
  want = np.concatenate([np_cyclical(80, 4, 0.5), np.ones(40)])
  np.testing.assert_allclose(got, want, atol=1e-6)
  # By hand: cycles of 20 steps, ramp 0 -> 1 over the first 10.
  by_hand = {
      0: 0.0,
      3: 0.3,
      5: 0.5,
      9: 0.9,
      10: 1.0,
      15: 1.0,
      19: 1.0,
      20: 0.0,
      25: 0.5,
      40: 0.0,
      47: 0.7,
      60: 0.0,
      69: 0.9,
      70: 1.0,
      79: 1.0,
      80: 1.0,
      81: 1.0,
      10**6: 1.0,
  }
  np.testing.assert_allclose(evaluate(schedule, list(by_hand)), list(by_hand.values()), atol=1e-6)


@pytest.mark.parametrize("total_steps,n_cycles,ratio", [(100, 2, 0.25), (90, 3, 1.0), (7, 1, 0.5)])
def test_cyclical_against_loop_reference(total_steps, n_cycles, ratio):
  schedule = schedules.cyclical_beta(total_steps, n_cycles, ratio)
  got = evaluate(schedule, np.arange(total_steps))
  np.testing.assert_allclose(got, np_cyclical(total_steps, n_cycles, ratio), atol=1e-6)


def test_make_beta_schedule_kinds():
  steps = np.arange(0, 200, 7)
  np.testing.assert_allclose(
      evaluate(schedules.make_beta_schedule("constant", steps_per_epoch=10, value=0.2), steps), 0.2
  )
  np.testing.assert_allclose(
      evaluate(schedules.make_beta_schedule("linear", steps_per_epoch=10, epochs=5), steps),
      np.minimum(steps / 50, 1.0),
      rtol=1e-6,
  )
  cyclical = schedules.make_beta_schedule("cyclical", steps_per_epoch=10, total_steps=80)
  np.testing.assert_allclose(evaluate(cyclical, np.arange(80)), np_cyclical(80, 4, 0.5), atol=1e-6)
  # total_steps defaults to steps_per_epoch * epochs.
  derived = schedules.make_beta_schedule(
      "cyclical", steps_per_epoch=4, epochs=20, n_cycles=2, ratio=0.25
  )
  np.testing.assert_allclose(evaluate(derived, np.arange(80)), np_cyclical(80, 2, 0.25), atol=1e-6)


def test_works_as_an_optax_schedule():
  schedule = schedules.linear_beta(steps_per_epoch=1, epochs=4)
  optimizer = optax.scale_by_schedule(schedule)
  state = optimizer.init(jnp.zeros(()))

  @jax.jit
  def step(state):
    updates, state = optimizer.update(jnp.ones(()), state)
    return updates, state

  seen = []
  for _ in range(6):
    update, state = step(state)
    seen.append(float(update))
  np.testing.assert_allclose(seen, [0.0, 0.25, 0.5, 0.75, 1.0, 1.0])


def test_unknown_kind():
  with pytest.raises(ValueError, match=r"'sigmoid'.*'constant'.*'linear'.*'cyclical'.*'zero'"):
    schedules.make_beta_schedule("sigmoid", steps_per_epoch=10)


@pytest.mark.parametrize(
    "make,argument",
    [
        (lambda: schedules.linear_beta(0, 50), "steps_per_epoch"),
        (lambda: schedules.linear_beta(-5, 50), "steps_per_epoch"),
        (lambda: schedules.linear_beta(10, 0), "epochs"),
        (lambda: schedules.cyclical_beta(0, 4, 0.5), "total_steps"),
        (lambda: schedules.cyclical_beta(80, 0, 0.5), "n_cycles"),
        (lambda: schedules.cyclical_beta(80, 2.5, 0.5), "n_cycles"),
        (lambda: schedules.cyclical_beta(80, 4, 0.0), "ratio"),
        (lambda: schedules.cyclical_beta(80, 4, 1.5), "ratio"),
        (lambda: schedules.constant_beta(-1.0), "value"),
        (lambda: schedules.make_beta_schedule("linear", steps_per_epoch=0), "steps_per_epoch"),
        (lambda: schedules.make_beta_schedule("linear", steps_per_epoch=None), "steps_per_epoch"),
        (lambda: schedules.make_beta_schedule("cyclical", steps_per_epoch=None), "total_steps"),
        (
            lambda: schedules.make_beta_schedule("cyclical", steps_per_epoch=10, total_steps=-1),
            "total_steps",
        ),
        (lambda: schedules.make_beta_schedule("cyclical", steps_per_epoch=10, ratio=2.0), "ratio"),
    ],
)
def test_invalid_arguments_are_named(make, argument):
  with pytest.raises(ValueError, match=argument):
    make()
