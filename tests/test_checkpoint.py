"""Checkpoints of a phase: best-by-validation selection (and its survival across a resume),
retention of the last k, and what the training loop leaves in a phase directory (checked on
the shared demo run: best/, checkpoints/, TensorBoard event files)."""

import json
import pathlib
import sys

import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from _demo_checkpoint import demo_workdir  # noqa: E402
from configs import demo  # noqa: E402
from t5vae_jax import checkpoint as ckpt_lib
from t5vae_jax import train_lib


def _params(value):
  return {"w": jnp.full((2, 3), float(value)), "b": {"c": jnp.arange(3.0) + value}}


def _steps(directory):
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def test_best_is_the_lowest_value_and_survives_a_resume(tmp_path):
  """maybe_save_best keeps the params of the lowest value so far; a reopened phase directory
  (a resumed run) compares against the stored best value, not against nothing."""
  ckpts = ckpt_lib.PhaseCheckpoints(tmp_path, keep=3)
  assert ckpts.maybe_save_best(10, _params(10), 5.0, "val/neg_elbo")
  assert not ckpts.maybe_save_best(20, _params(20), 6.0, "val/neg_elbo")  # worse
  assert ckpts.maybe_save_best(30, _params(30), 4.0, "val/neg_elbo")
  assert not ckpts.maybe_save_best(35, _params(35), 4.0, "val/neg_elbo")  # a tie is no better
  ckpts.wait()
  ckpts.close()

  resumed = ckpt_lib.PhaseCheckpoints(tmp_path, keep=3)
  assert not resumed.maybe_save_best(40, _params(40), 4.5, "val/neg_elbo")  # worse than 4.0
  resumed.wait()
  params, step = ckpt_lib.restore_params(tmp_path, which="best")
  assert step == 30
  np.testing.assert_array_equal(params["w"], _params(30)["w"])
  np.testing.assert_array_equal(params["b"]["c"], _params(30)["b"]["c"])
  assert resumed.maybe_save_best(50, _params(50), 3.0, "val/neg_elbo")
  resumed.wait()
  resumed.close()
  params, step = ckpt_lib.restore_params(tmp_path, which="best")
  assert step == 50 and _steps(tmp_path / "best") == [50]  # one best kept
  np.testing.assert_array_equal(params["w"], _params(50)["w"])
  # "max" mode (a metric where higher is better) keeps the highest.
  other = ckpt_lib.PhaseCheckpoints(tmp_path / "max", keep=3)
  for step, value in ((1, 0.2), (2, 0.5), (3, 0.4)):
    other.maybe_save_best(step, _params(step), value, "val/mi", mode="max")
  other.wait()
  other.close()
  assert ckpt_lib.restore_params(tmp_path / "max", which="best")[1] == 2


def test_keep_checkpoints_keeps_the_last_k_across_a_resume(tmp_path):
  opt_state = {"m": jnp.zeros(3)}
  ckpts = ckpt_lib.PhaseCheckpoints(tmp_path, keep=2)
  for step in range(1, 6):
    ckpts.save(step, _params(step), opt_state, {"step": step})
  ckpts.wait()
  ckpts.close()
  assert _steps(tmp_path / "checkpoints") == [4, 5]
  resumed = ckpt_lib.PhaseCheckpoints(tmp_path, keep=2)
  assert resumed.latest_step() == 5
  resumed.save(6, _params(6), opt_state, {"step": 6})
  resumed.wait()
  resumed.close()
  assert _steps(tmp_path / "checkpoints") == [5, 6]
  params, step = ckpt_lib.restore_params(tmp_path, step=5)
  assert step == 5
  np.testing.assert_array_equal(params["w"], _params(5)["w"])


@pytest.fixture(scope="module")
def demo_phase(tmp_path_factory):
  return demo_workdir(tmp_path_factory) / "phase2"


def test_training_loop_keeps_the_best_validation_and_the_last_checkpoints(demo_phase):
  """The demo run validated at 200, 400, 600, 800 and saved a checkpoint at each
  (keep_checkpoints=3): best/ holds the step of the lowest val/neg_elbo (config.best_metric)
  with its value, and its params equal that step's checkpoint; 400, 600, 800 are kept."""
  config = json.loads((demo_phase / "config.json").read_text())
  assert config["best_metric"] == "val/neg_elbo" and config["keep_checkpoints"] == 3
  rows = [r for r in train_lib.read_metrics(demo_phase / "metrics.jsonl") if "val/neg_elbo" in r]
  assert [r["step"] for r in rows] == [200, 400, 600, 800]
  best_row = min(rows, key=lambda r: r["val/neg_elbo"])
  assert _steps(demo_phase / "checkpoints") == [400, 600, 800]
  assert _steps(demo_phase / "best") == [best_row["step"]]
  meta = json.loads((demo_phase / "best" / str(best_row["step"]) / "meta" / "metadata").read_text())
  assert meta["metric"] == "val/neg_elbo" and meta["step"] == best_row["step"]
  assert meta["value"] == pytest.approx(best_row["val/neg_elbo"], rel=1e-12)
  best, step = ckpt_lib.restore_params(demo_phase, which="best")
  assert step == best_row["step"]
  if step in (400, 600, 800):
    same, _ = ckpt_lib.restore_params(demo_phase, step=step)
    for a, b in zip(_leaves(best), _leaves(same)):
      np.testing.assert_array_equal(a, b)


def _leaves(tree):
  import jax

  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_training_writes_tensorboard_event_files(demo_phase):
  """TensorBoard event files beside metrics.jsonl, with the train and validation scalars."""
  files = sorted((demo_phase / "tensorboard").glob("events.out.tfevents.*"))
  assert files, list(demo_phase.iterdir())
  data = b"".join(f.read_bytes() for f in files)
  assert b"brain.Event:2" in data  # the event file's version record
  for tag in (b"train/loss", b"train/beta", b"val/neg_elbo", b"val/mi"):
    assert tag in data, tag


def test_a_checkpoint_restores_into_another_mesh_layout(tmp_path):
  """Saved from 8 data shards with FSDP, restored into a 2 x 4 tensor-parallel mesh (and back
  into one device): the same values, each placed as the new layout says."""
  import jax

  from t5vae_jax import model as model_lib
  from t5vae_jax import sharding
  from t5vae_jax import t5 as t5_lib

  assert jax.device_count() == 8
  t5_config = t5_lib.T5Config(
      vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
      relative_attention_num_buckets=8, relative_attention_max_distance=16,
  )  # fmt: skip
  model = model_lib.T5VAEModel(t5_config, vae=model_lib.VAEConfig(latent_dim=4))
  params = jax.device_get(model_lib.init_params(model, jax.random.key(0)))
  tx = train_lib.make_optimizer(demo.get_config(), 2, params)

  def state_on(mesh, fsdp):
    return train_lib.create_train_state(params, tx, mesh, fsdp)

  saved, saved_shardings = state_on(sharding.make_mesh(), True)
  ckpts = ckpt_lib.PhaseCheckpoints(tmp_path / "phase2")
  ckpts.save(3, saved.params, saved.opt_state, {"step": 3})
  ckpts.wait()
  tensor_parallel = sharding.make_mesh(model_parallel=4)
  for mesh in (tensor_parallel, sharding.make_mesh(jax.devices()[:1])):
    target, shardings = state_on(mesh, False)
    step, got_params, got_opt, _ = ckpts.restore_newest(
        ckpt_lib.abstract_tree(target.params, shardings.params),
        ckpt_lib.abstract_tree(target.opt_state, shardings.opt_state),
    )
    assert step == 3
    for want, got, where in zip(
        jax.tree.leaves((saved.params, saved.opt_state)),
        jax.tree.leaves((got_params, got_opt)),
        jax.tree.leaves((shardings.params, shardings.opt_state)),
    ):
      np.testing.assert_array_equal(np.asarray(want), np.asarray(got))
      assert got.sharding.is_equivalent_to(where, got.ndim)
    if mesh is tensor_parallel:  # the new layout really splits over the model axis
      assert any(sharding.MODEL_AXIS in s.spec for s in jax.tree.leaves(shardings.params))
  ckpts.close()
