"""train/eval on 2 processes x 2 simulated CPU devices (localhost, gloo) against 1 process x 4.

One launch of each topology does everything (data shards, training with multi-process
checkpoints, gathered validation, cross-topology restore); the tests below read its results.
"""

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "_multiprocess_worker.py"
TIMEOUT_S = 360


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(out_dir: pathlib.Path, num_processes: int, devices_per_process: int, tfds_dir):
  out_dir.mkdir(parents=True, exist_ok=True)
  env = dict(
      os.environ,
      JAX_PLATFORMS="cpu",
      PYTHONPATH=str(ROOT),
      XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}",
  )
  port = str(_free_port())
  logs = [out_dir / f"process{i}.log" for i in range(num_processes)]
  procs = []
  try:
    for i, log in enumerate(logs):
      with log.open("w") as log_file:
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(WORKER),
                    str(out_dir),
                    str(i),
                    str(num_processes),
                    port,
                    str(tfds_dir),
                ],
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        )
    deadline = time.monotonic() + TIMEOUT_S
    for p in procs:
      p.wait(timeout=max(1.0, deadline - time.monotonic()))
  except subprocess.TimeoutExpired:
    for p in procs:  # a stuck run: every Python thread's stack goes into its log first
      if p.poll() is None:
        p.send_signal(signal.SIGUSR1)
    time.sleep(3)
  finally:
    for p in procs:  # never leave a stray process behind, even when a test fails
      if p.poll() is None:
        p.kill()
        p.wait()
  tails = "\n".join(
      f"--- process {i} (exit {p.returncode}):\n{log.read_text()[-3000:]}"
      for i, (p, log) in enumerate(zip(procs, logs))
  )
  assert all(p.returncode == 0 for p in procs), tails
  return [dict(np.load(out_dir / f"process{i}.npz")) for i in range(num_processes)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  base = tmp_path_factory.mktemp("multiprocess")
  tfds_dir = base / "tfds"
  # 1 process x 4 devices first; its checkpoint is what the 2-process run restores.
  single = _launch(base / "single", 1, 4, tfds_dir)
  (base / "restore_from").symlink_to(base / "single" / "work")
  multi = _launch(base / "multi", 2, 2, tfds_dir)
  return base, single[0], multi


def _params(record, prefix="param"):
  return {k[len(prefix) :]: v for k, v in record.items() if k.startswith(prefix)}


def test_multiprocess_data_shards_are_disjoint_and_cover_the_global_batch(runs):
  _, single, multi = runs
  a, b = multi[0]["shard_ids"], multi[1]["shard_ids"]
  for step in range(a.shape[0]):
    assert not set(a[step]) & set(b[step])
    np.testing.assert_array_equal(np.concatenate([a[step], b[step]]), single["shard_ids"][step])


def test_multiprocess_training_matches_one_process(runs):
  _, single, multi = runs
  assert single["step"] == multi[0]["step"] == multi[1]["step"] == 3
  np.testing.assert_allclose(multi[0]["losses"], single["losses"], rtol=1e-6, atol=1e-6)
  p1, p2 = _params(single), _params(multi[0])
  assert p1.keys() == p2.keys()
  for k in p1:
    np.testing.assert_allclose(p2[k], p1[k], rtol=1e-5, atol=1e-6, err_msg=k)
    np.testing.assert_array_equal(_params(multi[1])[k], p2[k], err_msg=k)  # same on both hosts


def test_multiprocess_checkpoints_restore_across_process_counts(runs):
  base, single, multi = runs
  # 1 -> 2: what the two processes restored from the single-process checkpoint is bit-identical.
  for record in multi:
    restored = _params(record, "restored")
    for k, v in _params(single).items():
      np.testing.assert_array_equal(restored[k], v, err_msg=k)
  # 2 -> 1: this (single) process restores the 2-process checkpoint bit-identically.
  from t5vae_jax import checkpoint as ckpt_lib
  import jax

  params, _ = ckpt_lib.restore_params(base / "multi" / "work" / "phase1")
  flat = {
      jax.tree_util.keystr(p): np.asarray(v)
      for p, v in jax.tree_util.tree_flatten_with_path(params)[0]
  }
  for k, v in _params(multi[0]).items():
    np.testing.assert_array_equal(flat[k], v, err_msg=k)


def test_multiprocess_eval_mi_au_match_one_process(runs):
  _, single, multi = runs
  for record in multi:
    for key in ("val_mi", "val_au", "val_rec", "val_kl"):
      np.testing.assert_allclose(record[key], single[key], rtol=1e-4, atol=1e-4, err_msg=key)
