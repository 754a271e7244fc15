"""One process of a 2-process phase-1 run on localhost (tests/test_preemption_multihost.py).

  python tests/_preemption_worker.py BASE_DIR PROCESS_ID NUM_PROCESSES PORT TFDS_DIR TOKENIZER MODE

MODE "interrupted": trains BASE_DIR/killed with a slow loop (STEP_SLEEP_S seconds of host
sleep per step, so that a signal lands mid-run; the compiled programs are the usual ones) and
records every step this process saves at in BASE_DIR/saves<i>.json; the test sends SIGTERM to
one process only. MODE "resume": resumes BASE_DIR/killed to the end, then trains
BASE_DIR/straight uninterrupted, and writes both final params to BASE_DIR/params<i>.npz.
"""

import faulthandler
import json
import os
import pathlib
import signal
import sys
import time

T0 = time.perf_counter()
faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test's dump when a run is stuck

base = pathlib.Path(sys.argv[1])
process_id, num_processes, port = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
tfds_dir, tokenizer_dir, mode = sys.argv[5:8]
root = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(root), str(root / "tests")]
os.environ["T5VAE_COORDINATOR_ADDRESS"] = f"127.0.0.1:{port}"
os.environ["T5VAE_NUM_PROCESSES"] = str(num_processes)
os.environ["T5VAE_PROCESS_ID"] = str(process_id)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from t5vae_jax import checkpoint as ckpt_lib  # noqa: E402
from t5vae_jax import runtime
from t5vae_jax import train_lib  # noqa: E402

runtime.setup_runtime()
print(f"joined the job after {time.perf_counter() - T0:.1f} s", flush=True)
assert jax.process_count() == num_processes and jax.process_index() == process_id
from test_preemption_multihost import CONFIG_OVERRIDES, slow_compile_train_step  # noqa: E402
from test_train import tiny_config  # noqa: E402

config = tiny_config(tfds_dir, **CONFIG_OVERRIDES, **{"data.tokenizer": tokenizer_dir})

if mode == "interrupted":
  saves = []
  real_save = ckpt_lib.PhaseCheckpoints.save

  def save(self, step, *args, **kwargs):
    saves.append(step)
    (base / f"saves{process_id}.json").write_text(json.dumps(saves))
    return real_save(self, step, *args, **kwargs)

  ckpt_lib.PhaseCheckpoints.save = save
  train_lib.compile_train_step = slow_compile_train_step(float(os.environ["STEP_SLEEP_S"]))
  train_lib.train_and_evaluate(config, str(base / "killed"), phase=1)
  sys.exit(0)  # not reached when the signal landed mid-run: SystemExit(143) above

record = {}
for name in ("killed", "straight"):
  train_lib.train_and_evaluate(config, str(base / name), phase=1)
  print(f"{name} done after {time.perf_counter() - T0:.1f} s", flush=True)
  params, step = ckpt_lib.restore_params(base / name / "phase1")
  record[f"{name}_step"] = step
  for path, value in jax.tree_util.tree_flatten_with_path(params)[0]:
    record[f"{name}{jax.tree_util.keystr(path)}"] = np.asarray(jax.device_get(value))
np.savez(base / f"params{process_id}.npz", **record)
