"""When things go wrong with checkpoints: a damaged newest checkpoint, failed saves, and how
soon SIGTERM is honoured.

The damage is done to orbax-checkpoint's real on-disk layout (a step directory holds
``params/``, ``opt_state/`` (each ``_METADATA``, ``manifest.ocdbt`` and the array data under
``ocdbt.process_0/d/``) and ``meta/metadata``, the JSON of step and data position); the failed
saves come from patching the filesystem call orbax makes (tests run as root, whom chmod does
not stop).
"""
import json
import shutil

import numpy as np
import pytest

from t5vae_jax import checkpoint as ckpt_lib
from t5vae_jax import train_lib
from test_train import tiny_config, _flat  # noqa: F401  (shared tiny config)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds_damage")


def _config(tfds_dir, **extra):
  return tiny_config(tfds_dir, checkpoint_every_steps=2, keep_checkpoints=10, **extra)


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory, tfds_dir):
  """A workdir whose phase 1 has checkpoints 2 and 4, and step 4's params (flattened)."""
  workdir = tmp_path_factory.mktemp("two_ckpts")
  train_lib.train_and_evaluate(_config(tfds_dir), str(workdir), phase=1, max_steps=4)
  params, step = ckpt_lib.restore_params(workdir / "phase1")
  assert step == 4
  return workdir, _flat(params)


def _truncate_an_array_file(step_dir):
  biggest = max((step_dir / "params" / "ocdbt.process_0" / "d").iterdir(),
                key=lambda p: p.stat().st_size)
  with open(biggest, "r+b") as f:
    f.truncate(biggest.stat().st_size // 3)


def _delete_the_metadata(step_dir):
  (step_dir / "params" / "_METADATA").unlink()


def _delete_the_meta_item(step_dir):
  (step_dir / "meta" / "metadata").unlink()


def _corrupt_the_data_position(step_dir):
  path = step_dir / "meta" / "metadata"
  meta = json.loads(path.read_text())
  meta["data"]["batch_in_epoch"] = 1000  # past the end of an epoch of 16 batches
  path.write_text(json.dumps(meta))


DAMAGES = {"truncated array file": (_truncate_an_array_file, "Exception: "),
           "missing metadata": (_delete_the_metadata, "params/_METADATA is missing"),
           "missing meta item": (_delete_the_meta_item, ""),
           "corrupt data position": (_corrupt_the_data_position, "Invalid iterator state")}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_resume_falls_back_past_a_damaged_newest_checkpoint(two_checkpoints, tfds_dir,
                                                            tmp_path, capsys, damage):
  """Step 4 damaged: one warning line names it and why, the run resumes at step 2, the damaged
  step is moved to damaged/4, and the rerun of steps 3-4 ends with bit-identical params."""
  source, params_4 = two_checkpoints
  workdir = tmp_path / "work"
  shutil.copytree(source, workdir)
  pdir = workdir / "phase1"
  damage_fn, reason = DAMAGES[damage]
  damage_fn(pdir / "checkpoints" / "4")
  capsys.readouterr()
  train_lib.train_and_evaluate(_config(tfds_dir), str(workdir), phase=1, max_steps=4)
  err = capsys.readouterr().err
  warnings = [line for line in err.splitlines() if line.startswith("warning: checkpoint")]
  assert len(warnings) == 1, err
  assert warnings[0].startswith(f"warning: checkpoint step 4 in {pdir / 'checkpoints'} does "
                                f"not restore, skipping it: ")
  assert reason in warnings[0], warnings[0]
  assert f"resuming {pdir} at step 2" in err
  assert (pdir / "damaged" / "4" / "params" / "manifest.ocdbt").exists()
  params, step = ckpt_lib.restore_params(pdir)
  assert step == 4
  resumed = _flat(params)
  for k in params_4:
    np.testing.assert_array_equal(resumed[k], params_4[k], err_msg=k)


def test_no_checkpoint_restores_is_an_error_naming_each_step(two_checkpoints, tfds_dir,
                                                             tmp_path):
  """Every step damaged: an error naming each step and why; nothing moved, no fresh start."""
  source, _ = two_checkpoints
  workdir = tmp_path / "work"
  shutil.copytree(source, workdir)
  pdir = workdir / "phase1"
  _delete_the_metadata(pdir / "checkpoints" / "4")
  _corrupt_the_data_position(pdir / "checkpoints" / "2")
  with pytest.raises(ckpt_lib.CheckpointDamagedError,
                     match=r"no checkpoint in .*phase1/checkpoints restores \(tried step 4: .*; "
                           r"step 2: ValueError: Invalid iterator state"):
    train_lib.train_and_evaluate(_config(tfds_dir), str(workdir), phase=1, max_steps=4)
  assert sorted(p.name for p in (pdir / "checkpoints").iterdir()) == ["2", "4"]
  assert not (pdir / "damaged").exists()
