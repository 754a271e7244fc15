"""A tiny trained demo checkpoint, made once per test session and shared by the tests of
evaluation, the latent-space API and the notebook.

Phase 2 of configs/demo.py (straight from random init, no phase 1: the tests need a trained
VAE quickly) on a small synthetic set with one bucket length (one shape to compile), with
kl_floor 0.5 so that the latent carries the sentence (87% exact reconstructions). Trained
through train_lib.train_and_evaluate, so the phase directory is exactly what train.py writes:
validated every 200 steps (best/ holds the best of them), checkpoints 400, 600 and 800 kept.
Nothing here reads /work/shared/data.

    from _demo_checkpoint import demo_workdir   # in a test module (tests/ is on sys.path)
    workdir = demo_workdir(tmp_path_factory)    # <tmp>/demo with phase2/
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

_CACHE: dict[str, pathlib.Path] = {}

PHASE2_STEPS = 800


def demo_config(tfds_dir: str):
  from configs import demo

  config = demo.get_config()
  config.data.tfds_dir = tfds_dir
  config.data.synthetic.update(dict(num_train=2000, num_valid=64, num_test=64, seed=0))
  config.data.bucket_lengths = (16,)
  config.data.max_len = 16
  config.eval_max_examples = 64
  # Validations (best-checkpoint selection) and checkpoints at 200, 400, 600 and 800, of which
  # the last 3 are kept: eval.py --checkpoint <step> and retention have something to see.
  config.eval_every_steps = 200
  config.checkpoint_every_steps = 200
  config.keep_checkpoints = 3
  config.log_every_steps = 100
  config.progress_bar = False
  config.denoise_rate = 0.0
  config.kl_floor = 0.5  # 8 nats of free bits: the grammar has log(768) = 6.6 nats
  config.phase2.from_phase1 = False  # phase 2 alone: the tests need a trained VAE, fast
  config.phase2.epochs = 13.0
  config.beta.epochs = 2.0
  return config


def train(workdir: str, tfds_dir: str) -> None:
  """Phase 2, in this process, through train_lib (what train.py runs)."""
  from t5vae_jax import train_lib

  config = demo_config(tfds_dir)
  train_lib.train_and_evaluate(config, workdir, 2, max_steps=PHASE2_STEPS)


def demo_workdir(tmp_path_factory) -> pathlib.Path:
  """<tmp>/demo with phase2/ trained (cached for the session).

  Trained in a child process on one CPU device: the test session simulates 8 devices, on
  which a tiny model trains several times slower (collectives on 2 cores), and the
  checkpoint does not depend on the device count anyway. Under pytest-xdist the workers share
  one training (the first to get the lock trains; the others wait for it) and each gets its own
  copy, so a test that writes into the run (eval.json, ...) never meets another worker's.
  """
  if "workdir" not in _CACHE:
    import fcntl
    import shutil

    shared = _shared_root(tmp_path_factory) / "demo_checkpoint"
    shared.mkdir(parents=True, exist_ok=True)
    with open(shared / "lock", "w") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      if not (shared / "done").exists():
        _train_in_child(shared / "demo", shared / "tfds")
        (shared / "done").write_text("ok")
    root = tmp_path_factory.mktemp("demo_checkpoint")
    shutil.copytree(shared / "demo", root / "demo")
    _CACHE["workdir"] = root / "demo"
  return _CACHE["workdir"]


def _shared_root(tmp_path_factory) -> pathlib.Path:
  """The session's temporary root, common to all pytest-xdist workers (each has a subdir)."""
  base = tmp_path_factory.getbasetemp()
  return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _train_in_child(workdir: pathlib.Path, tfds_dir: pathlib.Path) -> None:
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  start = time.perf_counter()
  proc = subprocess.run(
      [sys.executable, __file__, str(workdir), str(tfds_dir)],
      env=env,
      cwd=str(ROOT),
      capture_output=True,
      text=True,
      timeout=600,
  )
  if proc.returncode:
    raise RuntimeError(f"training the demo checkpoint failed:\n{proc.stderr[-5000:]}")
  print(f"\n[demo checkpoint trained in {time.perf_counter() - start:.1f} s: {workdir}]")


def training_texts(workdir: pathlib.Path, split: str = "train") -> list[dict]:
  """The records (text, attributes) of a split of the demo data, via the saved config."""
  from t5vae_jax import api
  from t5vae_jax import data as data_lib

  config = api.load_config(workdir / "phase2")
  examples, _ = data_lib.read_split(config.data, split)
  return examples


if __name__ == "__main__":
  train(sys.argv[1], sys.argv[2])
