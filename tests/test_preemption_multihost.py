"""Preemption agreed across processes, and Ctrl-C (t5vae_jax/preemption.py).

Two processes on 127.0.0.1 (gloo), SIGTERM to one of them only: both save the same step and exit
143, and the resumed run ends bit-identical to an uninterrupted 2-process run. A first SIGINT
saves and exits 130; a second one exits at once.
"""

import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from t5vae_jax import checkpoint as ckpt_lib
from t5vae_jax import train_lib
from test_multiprocess import _free_port
from test_train import tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "_preemption_worker.py"
TIMEOUT_S = 240  # per launch of the two processes; a hang shows their stacks, not a stuck suite
# 1 epoch of 16 steps, the mesh over both processes' devices, validation of 16 lines at the end
# (no importance samples); one layer each side: few and small compilations.
CONFIG_OVERRIDES = {
    "mesh_devices": 0,
    "log_every_steps": 1,
    "checkpoint_every_steps": 1000,
    "eval_max_examples": 16,
    "eval_num_samples": 0,
    "phase1.epochs": 1.0,
    "model.t5.num_layers": 1,
    "model.t5.num_decoder_layers": 1,
}
STEP_SLEEP_S = 0.25


def slow_compile_train_step(sleep_s: float):
  """train_lib.compile_train_step whose step function sleeps ``sleep_s`` on the host before each
  step: a slow loop whose compiled programs, and so params, are exactly a normal run's."""
  real = train_lib.compile_train_step

  def compile_train_step(*args, **kwargs):
    step_fn = real(*args, **kwargs)

    def slow_step_fn(*step_args, **step_kwargs):
      time.sleep(sleep_s)
      return step_fn(*step_args, **step_kwargs)

    return slow_step_fn

  return compile_train_step


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """(tfds_dir, tokenizer_dir): the data set and tokenizer made once here, not by two processes
  racing to make them."""
  base = tmp_path_factory.mktemp("preemption_data")
  train_lib.build_setup(tiny_config(base / "tfds"), base / "setup")
  return base / "tfds", base / "setup" / "tokenizer"


@contextlib.contextmanager
def _two_processes(base: pathlib.Path, mode: str, prepared, **env_extra):
  """Starts both workers; on leaving, waits for them (a hard deadline: on timeout every Python
  thread's stack goes into each log, then they are killed) and kills any stray."""
  env = dict(
      os.environ,
      JAX_PLATFORMS="cpu",
      PYTHONPATH=str(ROOT),
      XLA_FLAGS="--xla_force_host_platform_device_count=1",
      **env_extra,
  )
  port = str(_free_port())
  logs = [base / f"{mode}{i}.log" for i in range(2)]
  procs = []
  result = {"procs": procs, "logs": logs}
  try:
    for i, log in enumerate(logs):
      with log.open("w") as log_file:
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(WORKER),
                    str(base),
                    str(i),
                    "2",
                    port,
                    *map(str, prepared),
                    mode,
                ],
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        )
    yield result
    deadline = time.monotonic() + TIMEOUT_S
    try:
      for p in procs:
        p.wait(timeout=max(1.0, deadline - time.monotonic()))
      result["ended"] = time.perf_counter()
    except subprocess.TimeoutExpired:
      for p in procs:
        if p.poll() is None:
          p.send_signal(signal.SIGUSR1)
      time.sleep(3)
      result["timed_out"] = True
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
    result["tails"] = _tails(result)


def _tails(run) -> str:
  return "\n".join(
      f"--- process {i} (exit {p.poll()}):\n{log.read_text()[-3000:]}"
      for i, (p, log) in enumerate(zip(run["procs"], run["logs"], strict=True))
  )


def _metric_rows(workdir) -> int:
  path = workdir / "phase1" / "metrics.jsonl"
  return len(path.read_text().splitlines()) if path.exists() else 0


def test_sigterm_on_one_process_stops_both_at_one_step_and_resume_is_bit_identical(
    tmp_path, prepared
):
  base = tmp_path
  with _two_processes(base, "interrupted", prepared, STEP_SLEEP_S=str(STEP_SLEEP_S)) as run:
    deadline = time.monotonic() + TIMEOUT_S
    while (
        _metric_rows(base / "killed") < 3
        and time.monotonic() < deadline
        and all(p.poll() is None for p in run["procs"])
    ):
      time.sleep(0.05)
    rows_at_signal = _metric_rows(base / "killed")
    assert rows_at_signal >= 3 and all(
        p.poll() is None for p in run["procs"]
    ), "no 3 logged steps while both ran\n" + _tails(run)
    sent = time.perf_counter()
    run["procs"][1].send_signal(signal.SIGTERM)  # the non-lead process only
  assert not run.get("timed_out"), run["tails"]  # with both processes' stacks at the end
  took = run["ended"] - sent
  assert [p.returncode for p in run["procs"]] == [143, 143], run["tails"]
  saves = [json.loads((base / f"saves{i}.json").read_text()) for i in range(2)]
  assert saves[0] == saves[1] and len(saves[0]) == 1, (saves, run["tails"])
  stopped = saves[0][0]
  assert rows_at_signal <= stopped < 16, (rows_at_signal, stopped)
  assert ckpt_lib.PhaseCheckpoints(base / "killed" / "phase1").latest_step() == stopped
  assert f"SIGTERM on another process: saved step {stopped} in" in run["logs"][0].read_text()
  print(
      f"SIGTERM to process 1 after {rows_at_signal} logged steps; both saved step {stopped} "
      f"and exited 143 {took:.2f} s after the signal"
  )

  with _two_processes(base, "resume", prepared) as run:
    pass
  assert not run.get("timed_out"), run["tails"]
  assert [p.returncode for p in run["procs"]] == [0, 0], run["tails"]
  assert f"resuming {base / 'killed' / 'phase1'} at step {stopped}" in run["tails"]
  for i in range(2):
    record = dict(np.load(base / f"params{i}.npz"))
    assert record["killed_step"] == record["straight_step"] == 16
    keys = [k[len("straight") :] for k in record if k.startswith("straight[")]
    assert keys
    for k in keys:
      np.testing.assert_array_equal(record["killed" + k], record["straight" + k], err_msg=k)


def test_first_sigint_saves_and_exits_130(tmp_path, prepared, monkeypatch, capsys):
  """Ctrl-C in a one-process run: the checkpoint of the step it finished, exit status 130, and
  the previous SIGINT handler back afterwards."""
  monkeypatch.setattr(train_lib, "compile_train_step", slow_compile_train_step(0.2))
  workdir = tmp_path / "work"
  config = tiny_config(
      prepared[0], **{**CONFIG_OVERRIDES, "mesh_devices": 1, "data.tokenizer": str(prepared[1])}
  )

  def interrupt():  # once two steps are logged
    deadline = time.monotonic() + 120
    while _metric_rows(workdir) < 2 and time.monotonic() < deadline:
      time.sleep(0.02)
    os.kill(os.getpid(), signal.SIGINT)

  ignore = lambda signum, frame: None  # a late SIGINT must not end the pytest session
  previous = signal.signal(signal.SIGINT, ignore)
  try:
    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(SystemExit) as exit_info:
      train_lib.train_and_evaluate(config, str(workdir), phase=1)
    assert signal.getsignal(signal.SIGINT) is ignore
  finally:
    signal.signal(signal.SIGINT, previous)
  assert exit_info.value.code == 130
  saved = ckpt_lib.PhaseCheckpoints(workdir / "phase1").latest_step()
  assert 2 <= saved < 16
  err = capsys.readouterr().err
  assert "SIGINT: saving after this step" in err
  assert f"SIGINT: saved step {saved} in {workdir / 'phase1'}" in err


_SECOND_SIGINT = """
import sys, time
from t5vae_jax.preemption import PreemptionFlag
with PreemptionFlag() as flag:
  print("ready", flush=True)
  while not flag.requested:
    time.sleep(0.01)
  print("requested", flush=True)
  time.sleep(60)  # a long step: only the second Ctrl-C ends it early
print("not killed", flush=True)
"""


def test_second_sigint_exits_at_once():
  proc = subprocess.Popen(
      [sys.executable, "-c", _SECOND_SIGINT],
      cwd=ROOT,
      env=dict(os.environ, PYTHONPATH=str(ROOT)),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
  )
  try:
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGINT)
    assert proc.stdout.readline() == "requested\n"
    sent = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=10)
    took = time.perf_counter() - sent
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  err = proc.stderr.read()
  assert proc.returncode == -signal.SIGINT, err  # killed by SIGINT: a shell reports 130
  assert "second SIGINT: exiting at once, without saving" in err
  assert took < 5, took
