"""One process of a multi-process run on localhost (tests/test_multiprocess.py launches it).

  python tests/_multiprocess_worker.py OUT_DIR PROCESS_ID NUM_PROCESSES PORT TFDS_DIR

With NUM_PROCESSES > 1 it joins a jax.distributed job through t5vae_jax.runtime.setup_runtime
(CPU collectives through gloo), exactly as train.py does when launched that way. It then:
  1. records the example ids of its data shard for the first batches,
  2. trains phase 1 for a few steps in OUT_DIR/work (multi-process orbax checkpoints; the last
     validation gathers mu/logvar across processes),
  3. restores the params of OUT_DIR/../restore_from (a checkpoint written by another number of
     processes), when that exists,
and writes what it saw to OUT_DIR/process<i>.npz.
"""

import faulthandler
import json
import os
import pathlib
import signal
import sys

faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test's dump when a run is stuck

out_dir = pathlib.Path(sys.argv[1])
process_id, num_processes, port = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
tfds_dir = sys.argv[5]
root = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(root), str(root / "tests")]
if num_processes > 1:
  os.environ["T5VAE_COORDINATOR_ADDRESS"] = f"127.0.0.1:{port}"
  os.environ["T5VAE_NUM_PROCESSES"] = str(num_processes)
  os.environ["T5VAE_PROCESS_ID"] = str(process_id)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from t5vae_jax import checkpoint as ckpt_lib  # noqa: E402
from t5vae_jax import runtime
from t5vae_jax import data as data_lib  # noqa: E402
from t5vae_jax import train_lib  # noqa: E402

runtime.setup_runtime()
assert jax.process_count() == num_processes and jax.process_index() == process_id
from test_train import tiny_config  # noqa: E402

# Token packing on (configs/demo.py turns it off): each process packs its own shards with the
# largest capacity over processes.
config = tiny_config(
    tfds_dir,
    mesh_devices=0,
    log_every_steps=1,
    checkpoint_every_steps=2,
    pack_tokens=True,
    eval_max_examples=40,
    eval_num_samples=0,  # MI, AU, rec and KL are what is compared; no IW-NLL passes
    **{"phase1.epochs": 1.0, "model.t5.num_layers": 1, "model.t5.num_decoder_layers": 1},
)
workdir = out_dir / "work"
record = {}

# 1. This process's rows of the first global batches.
setup = train_lib.build_setup(config, workdir)
examples, _ = data_lib.load_split(config.data, "train", setup.tokenizer)
iterator = data_lib.BatchIterator(
    examples,
    bucket_lengths=config.data.bucket_lengths,
    batch_size=config.batch_size,
    seed=3,
    drop_remainder=True,
)
record["shard_ids"] = np.stack([next(iterator)["example_ids"] for _ in range(4)])

# 2. Train a few steps; validation at the end gathers across processes.
result = train_lib.train_and_evaluate(config, str(workdir), phase=1, max_steps=3)
record["val_mi"], record["val_au"] = result["mi"], result["au"]
record["val_rec"], record["val_kl"] = result["rec"], result["kl"]
params, step = ckpt_lib.restore_params(workdir / "phase1")
record["step"] = step
for path, value in jax.tree_util.tree_flatten_with_path(params)[0]:
  record["param" + jax.tree_util.keystr(path)] = np.asarray(jax.device_get(value))

# 3. A checkpoint written by another number of processes.
other = out_dir.parent / "restore_from"
if (other / "phase1" / "checkpoints").exists():
  restored, _ = ckpt_lib.restore_params(other / "phase1", ckpt_lib.abstract_tree(params))
  for path, value in jax.tree_util.tree_flatten_with_path(restored)[0]:
    record["restored" + jax.tree_util.keystr(path)] = np.asarray(jax.device_get(value))

if jax.process_index() == 0:
  rows = train_lib.read_metrics(workdir / "phase1" / "metrics.jsonl")
  record["losses"] = np.array([r["train/loss"] for r in rows if "train/loss" in r])
np.savez(out_dir / f"process{process_id}.npz", **record)
print(json.dumps({"process": process_id, "step": step, "mi": result["mi"]}))
