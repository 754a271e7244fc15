"""Kills demo-sized training with SIGKILL and SIGTERM at random moments, resuming each time,
and checks that the final params equal those of an uninterrupted run with the same seed.

  python scripts/kill_resume_soak.py --kills 20 --workdir /tmp/soak
  python scripts/kill_resume_soak.py --kills 20 --sigterms 10 --slow --workdir /tmp/soak

Each signal comes after a completed checkpoint exists, so every restart must resume from a saved
step (a kill during a checkpoint save must never leave a checkpoint that looks complete). A
SIGTERM must end the run with status 143 and a checkpoint of the step it names, which the next
restart resumes from exactly, within 3 step times (measured in that run, from the metric rows'
arrival) plus ``--save-allowance-s`` (the save and the process's exit). ``--slow`` trains a
larger model (about 1 s a step on 2 CPU cores) so that the signal lands mid-step. The signals'
kinds are shuffled with ``--seed``. Extra ``--config.x=y`` arguments go to train.py. Exit
status 0 on success.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_OVERRIDES = [
    "--config.data.synthetic.num_train=512",
    "--config.data.synthetic.num_valid=32",
    "--config.data.synthetic.num_test=32",
    "--config.batch_size=16",
    "--config.phase1.epochs=2",
    "--config.log_every_steps=1",
    "--config.eval_every_steps=1000",
    "--config.checkpoint_every_steps=3",
    "--config.progress_bar=False",
    "--config.model.t5.d_model=32",
    "--config.model.t5.d_ff=64",
    "--config.model.t5.d_kv=8",
    "--config.model.latent_dim=4",
    "--config.data.bucket_lengths=(16,)",
    "--config.mesh_devices=1",
]
# --slow: a model of about 1 s a step or more on 2 CPU cores (256 wide, batch 256), 64 steps.
SLOW_OVERRIDES = [
    "--config.data.synthetic.num_train=1024",
    "--config.batch_size=256",
    "--config.phase1.epochs=16",
    "--config.model.t5.d_model=256",
    "--config.model.t5.d_ff=1024",
    "--config.model.t5.d_kv=32",
    "--config.model.t5.num_heads=8",
    "--config.model.latent_dim=16",
]


def train_cmd(workdir, overrides):
  return [
      sys.executable,
      str(ROOT / "train.py"),
      "--config",
      str(ROOT / "configs/demo.py"),
      "--phase",
      "1",
      "--workdir",
      str(workdir),
  ] + overrides


def final_params(workdir):
  import jax
  import numpy as np
  from t5vae_jax import checkpoint as ckpt_lib

  params, step = ckpt_lib.restore_params(pathlib.Path(workdir) / "phase1")
  return step, {
      jax.tree_util.keystr(p): np.asarray(v)
      for p, v in jax.tree_util.tree_flatten_with_path(params)[0]
  }


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


class _Watched:
  """A train.py process whose output lines, and the arrival of its metric rows, are timed."""

  def __init__(self, cmd, env, metrics: pathlib.Path):
    self.metrics = metrics
    self.proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    self.lines: list[tuple[float, str]] = []
    self.row_times: list[float] = []  # when each new metric row was first seen
    self._rows = self.rows()
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self):
    for line in self.proc.stdout:
      self.lines.append((time.perf_counter(), line))

  def rows(self) -> int:
    return len(self.metrics.read_text().splitlines()) if self.metrics.exists() else 0

  def poll_for(self, seconds: float, until=lambda: False) -> None:
    """Watches the metric rows for ``seconds`` (or until ``until()`` or the process's end)."""
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline and self.proc.poll() is None and not until():
      rows = self.rows()
      if rows > self._rows:
        self.row_times.append(time.perf_counter())
        self._rows = rows
      time.sleep(0.02)

  def step_intervals(self) -> list[float]:
    return [b - a for a, b in zip(self.row_times, self.row_times[1:])]

  def finish(self, timeout: float = 300) -> str:
    self.proc.wait(timeout=timeout)
    self._reader.join(timeout=10)
    return "".join(line for _, line in self.lines)


def run(
    kills: int,
    workdir: pathlib.Path,
    overrides: list[str],
    seed: int,
    log=print,
    sigterms: int = 0,
    save_allowance_s: float = 5.0,
    records: list | None = None,
) -> bool:
  """``kills`` SIGKILLs and ``sigterms`` SIGTERMs in a shuffled order; ``records`` (a list)
  receives one dict per signal (kind, seconds to exit, step time, saved and resumed steps)."""
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
  plan = ["SIGKILL"] * kills + ["SIGTERM"] * sigterms
  rng.shuffle(plan)
  records = [] if records is None else records
  metrics = killed / "phase1" / "metrics.jsonl"
  restarts, last_saved, exact_resume = 0, [], None
  all_intervals: list[float] = []  # step times seen in every run so far
  late: list[int] = []  # SIGTERMs that took longer than 3 step times + the save allowance
  for k, kind in enumerate(plan):
    run_ = _Watched(train_cmd(killed, overrides), env, metrics)
    # Wait until it trains (a new metrics row; two before a SIGTERM: the step time of this run,
    # under this load, is the yardstick) and a completed checkpoint exists, then signal at a
    # random moment after that: the next restart must resume.
    rows_needed = 1 if kind == "SIGKILL" else 2
    run_.poll_for(
        300, until=lambda: (len(run_.row_times) >= rows_needed and bool(completed_steps(killed)))
    )
    run_.poll_for(rng.uniform(0.0, 1.5))
    if run_.proc.poll() is not None:
      out = run_.finish()
      if run_.proc.returncode != 0:
        log(f"restart {k} failed (exit {run_.proc.returncode}):\n{out[-3000:]}")
        return False
      log(f"{kind} {k}: run finished before the signal")
      break
    saved_before = completed_steps(killed)
    all_intervals += run_.step_intervals()
    step_s = statistics.median(run_.step_intervals() or all_intervals or [float("nan")])
    sent = time.perf_counter()
    run_.proc.send_signal(signal.SIGKILL if kind == "SIGKILL" else signal.SIGTERM)
    out = run_.finish()
    took = time.perf_counter() - sent
    restarts += 1
    resumed = resumed_step(out)
    resumed_text = "fresh start" if resumed is None else f"resumed at step {resumed}"
    if k > 0 and exact_resume is not None and resumed != exact_resume:
      log(
          f"restart {k} {resumed_text}, not at step {exact_resume}, which the SIGTERM before "
          "saved"
      )
      return False
    if k > 0 and (resumed is None or resumed < last_saved[-1]):
      log(
          f"restart {k} did not resume from step {last_saved[-1]} or later, although the last "
          "signal came after that checkpoint was complete"
      )
      return False
    record = {
        "kind": kind,
        "exit_s": took,
        "step_s": step_s,
        "resumed": resumed,
        "exit": run_.proc.returncode,
    }
    records.append(record)
    if kind == "SIGKILL":
      log(
          f"kill {k}: SIGKILL after {run_.rows()} metric rows, checkpoints {saved_before}; "
          f"{resumed_text}"
      )
      last_saved, exact_resume = saved_before, None
      continue
    saved_lines = [(t, line) for t, line in run_.lines if line.startswith("SIGTERM: saved step ")]
    saved = int(saved_lines[0][1].split()[3]) if saved_lines else None
    record.update(saved=saved, to_saved_s=saved_lines[0][0] - sent if saved_lines else None)
    limit = 3 * step_s + save_allowance_s
    log(
        f"term {k}: SIGTERM after {run_.rows()} metric rows; {resumed_text}; exit "
        f"{run_.proc.returncode} {took:.2f} s after the signal (saved step {saved} after "
        f"{record['to_saved_s'] or float('nan'):.2f} s; limit {limit:.2f} s = 3 x {step_s:.2f} s "
        f"step + {save_allowance_s:g} s)"
    )
    if run_.proc.returncode != 143 or saved is None or saved not in completed_steps(killed):
      log(f"SIGTERM {k} did not exit 143 with a complete checkpoint:\n{out[-3000:]}")
      return False
    if not took < limit:  # noted, and the soak goes on: the params check still counts
      log(f"SIGTERM {k}: {took:.2f} s from the signal to the exit, over {limit:.2f} s")
      late.append(k)
    last_saved, exact_resume = completed_steps(killed), saved
  saved_before = completed_steps(killed)
  done = subprocess.run(train_cmd(killed, overrides), env=env, capture_output=True, text=True)
  if done.returncode != 0:
    log(f"final resume failed:\n{done.stderr[-3000:]}")
    return False
  resumed = resumed_step(done.stderr)
  log(
      f"final run: checkpoints {saved_before}; "
      f"{'fresh start' if resumed is None else f'resumed at step {resumed}'}"
  )
  if restarts and resumed != saved_before[-1]:
    log(f"the final run did not resume from the last completed checkpoint ({saved_before[-1]})")
    return False
  step_a, a = final_params(straight)
  step_b, b = final_params(killed)
  import numpy as np

  same = step_a == step_b and a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
  terms = [r for r in records if r["kind"] == "SIGTERM"]
  if terms:
    log(
        f"SIGTERM to exit: max {max(r['exit_s'] for r in terms):.2f} s, median "
        f"{statistics.median(r['exit_s'] for r in terms):.2f} s over {len(terms)}; step time "
        f"median {statistics.median(all_intervals):.2f} s"
    )
  log(
      f"{restarts} signals ({len(terms)} SIGTERM, {len(late)} of them late); final step "
      f"{step_b} vs {step_a}; params identical: {same}"
  )
  return same and not late


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--kills", type=int, default=20)
  parser.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("/tmp/t5vae_soak"))
  parser.add_argument("--sigterms", type=int, default=0)
  parser.add_argument("--slow", action="store_true", help="a model of about 1 s a step")
  parser.add_argument("--save-allowance-s", type=float, default=5.0)
  parser.add_argument("--seed", type=int, default=0)
  args, extra = parser.parse_known_args()
  args.workdir.mkdir(parents=True, exist_ok=True)
  overrides = (
      DEFAULT_OVERRIDES
      + (SLOW_OVERRIDES if args.slow else [])
      + [f"--config.data.tfds_dir={args.workdir / 'tfds'}"]
      + extra
  )
  ok = run(
      args.kills,
      args.workdir,
      overrides,
      args.seed,
      sigterms=args.sigterms,
      save_allowance_s=args.save_allowance_s,
  )
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
