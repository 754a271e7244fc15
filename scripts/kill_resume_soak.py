"""Kills demo-sized training with SIGKILL at random moments, resuming each time, and checks
that the final params equal those of an uninterrupted run with the same seed.

  python scripts/kill_resume_soak.py --kills 20 --workdir /tmp/soak

Each kill comes after a completed checkpoint exists, so every restart must resume from a saved
step (a kill during a checkpoint save must never leave a checkpoint that looks complete).
Extra ``--config.x=y`` arguments go to train.py. Exit status 0 on success.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import random
import shutil
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_OVERRIDES = [
    "--config.data.synthetic.num_train=512", "--config.data.synthetic.num_valid=32",
    "--config.data.synthetic.num_test=32", "--config.batch_size=16", "--config.phase1.epochs=2",
    "--config.log_every_steps=1", "--config.eval_every_steps=1000",
    "--config.checkpoint_every_steps=3", "--config.progress_bar=False",
    "--config.model.t5.d_model=32", "--config.model.t5.d_ff=64", "--config.model.t5.d_kv=8",
    "--config.model.latent_dim=4", "--config.data.bucket_lengths=(16,)",
    "--config.mesh_devices=1",
]


def train_cmd(workdir, overrides):
  return [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs/demo.py"),
          "--phase", "1", "--workdir", str(workdir)] + overrides


def final_params(workdir):
  import jax
  import numpy as np
  from t5vae_jax import checkpoint as ckpt_lib
  params, step = ckpt_lib.restore_params(pathlib.Path(workdir) / "phase1")
  return step, {jax.tree_util.keystr(p): np.asarray(v)
                for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}


def completed_steps(workdir) -> list[int]:
  """Steps of the completed checkpoints (orbax writes ``<step>.orbax-checkpoint-tmp-*`` and
  renames it to ``<step>`` when the save is whole). Read from the listing alone: opening a
  CheckpointManager here would clean up the running trainer's temporary directories."""
  directory = pathlib.Path(workdir) / "phase1" / "checkpoints"
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def resumed_step(output: str):
  """The step a train.py run said it resumed from, or None (a fresh start)."""
  for line in output.splitlines():
    if line.startswith("resuming ") and " at step " in line:
      return int(line.rsplit(" at step ", 1)[1].split()[0])
  return None


def run(kills: int, workdir: pathlib.Path, overrides: list[str], seed: int, log=print) -> bool:
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  # Restarts reuse compiled programs: each costs an import, not a compilation.
  env.setdefault("JAX_COMPILATION_CACHE_DIR", str(workdir / "jax_cache"))
  env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  env.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
  straight, killed = workdir / "straight", workdir / "killed"
  for d in (straight, killed):
    shutil.rmtree(d, ignore_errors=True)
  t0 = time.time()
  subprocess.run(train_cmd(straight, overrides), env=env, check=True, capture_output=True)
  straight_time = time.time() - t0
  log(f"uninterrupted run: {straight_time:.1f} s")
  rng = random.Random(seed)
  metrics = killed / "phase1" / "metrics.jsonl"
  restarts, last_saved = 0, []
  for k in range(kills):
    proc = subprocess.Popen(train_cmd(killed, overrides), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    # Wait until it trains (a new metrics row) and a completed checkpoint exists, then kill at a
    # random moment after that: the next restart must resume.
    rows = len(metrics.read_text().splitlines()) if metrics.exists() else 0
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
      if (metrics.exists() and len(metrics.read_text().splitlines()) > rows
          and completed_steps(killed)):
        break
      time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 1.5))
    if proc.poll() is not None:
      out = proc.communicate()[0]
      if proc.returncode != 0:
        log(f"restart {k} failed (exit {proc.returncode}):\n{out[-3000:]}")
        return False
      log(f"kill {k}: run finished before the kill")
      break
    saved_before = completed_steps(killed)
    proc.kill()
    out = proc.communicate()[0]
    restarts += 1
    resumed = resumed_step(out)
    log(f"kill {k}: SIGKILL after {len(metrics.read_text().splitlines())} metric rows, "
        f"checkpoints {saved_before}; "
        f"{'fresh start' if resumed is None else f'resumed at step {resumed}'}")
    if k > 0 and (resumed is None or resumed < last_saved[-1]):
      log(f"restart {k} did not resume from step {last_saved[-1]} or later, although the last "
          "kill came after that checkpoint was complete")
      return False
    last_saved = saved_before
  saved_before = completed_steps(killed)
  done = subprocess.run(train_cmd(killed, overrides), env=env, capture_output=True, text=True)
  if done.returncode != 0:
    log(f"final resume failed:\n{done.stderr[-3000:]}")
    return False
  resumed = resumed_step(done.stderr)
  log(f"final run: checkpoints {saved_before}; "
      f"{'fresh start' if resumed is None else f'resumed at step {resumed}'}")
  if restarts and resumed != saved_before[-1]:
    log(f"the final run did not resume from the last completed checkpoint ({saved_before[-1]})")
    return False
  step_a, a = final_params(straight)
  step_b, b = final_params(killed)
  import numpy as np
  same = step_a == step_b and a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
  log(f"{restarts} kills; final step {step_b} vs {step_a}; params identical: {same}")
  return same


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--kills", type=int, default=20)
  parser.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("/tmp/t5vae_soak"))
  parser.add_argument("--seed", type=int, default=0)
  args, extra = parser.parse_known_args()
  args.workdir.mkdir(parents=True, exist_ok=True)
  overrides = DEFAULT_OVERRIDES + [f"--config.data.tfds_dir={args.workdir / 'tfds'}"] + extra
  return 0 if run(args.kills, args.workdir, overrides, args.seed) else 1


if __name__ == "__main__":
  sys.exit(main())
