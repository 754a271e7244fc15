"""One process of tests/test_bf16.py: the demo's phase 2 for a few hundred steps at one dtype.

  python tests/_dtype_run.py DTYPE WORKDIR TFDS_DIR STEPS

Prints one JSON line: the logged train rows (loss, rec, kl, num_skipped, finite) and the
final validation (eval.py's evaluator).
"""

import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from _demo_checkpoint import demo_config  # noqa: E402
from t5vae_jax import train_lib  # noqa: E402

dtype, workdir, tfds_dir, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
config = demo_config(tfds_dir)
config.model.dtype = dtype
config.eval_every_steps = config.checkpoint_every_steps = 10**6  # only the final ones
config.log_every_steps = 25
config.eval_num_samples = 0
validation = train_lib.train_and_evaluate(config, workdir, 2, max_steps=steps)
rows = [
    r
    for r in train_lib.read_metrics(pathlib.Path(workdir) / "phase2" / "metrics.jsonl")
    if "train/loss" in r
]
print(json.dumps({"rows": rows, "validation": validation}))
