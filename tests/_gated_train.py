"""train.py, held at one step until a signal arrives (tests/test_train.py's SIGTERM test).

  GATE_STEP=6 GATE_FILE=/tmp/x python tests/_gated_train.py --config ... (train.py's flags)

When the training loop asks whether to stop after step GATE_STEP, this process writes
GATE_FILE and waits (up to 120 s) until a signal has reached it, then answers as usual. So the
signal lands mid-run at a known step however loaded the machine is; the compiled programs, and so
the params, are a normal run's.
"""

import os
import pathlib
import runpy
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from t5vae_jax import preemption  # noqa: E402

GATE_STEP = int(os.environ["GATE_STEP"])
GATE_FILE = pathlib.Path(os.environ["GATE_FILE"])
real_should_stop = preemption.PreemptionFlag.should_stop


def gated_should_stop(self, step):
  if step == GATE_STEP:
    GATE_FILE.write_text(str(step))
    deadline = time.monotonic() + 120
    while not self.requested and time.monotonic() < deadline:
      time.sleep(0.05)  # the signal handler runs in this thread, between these sleeps
  return real_should_stop(self, step)


preemption.PreemptionFlag.should_stop = gated_should_stop
sys.argv[0] = str(ROOT / "train.py")
runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
