"""SIGTERM (a preemption notice) and Ctrl-C turned into one stop step that every process agrees on.

The training loops call ``should_stop(step)`` once per step, at the same place on every
process, and save and exit when it says so. With one process that is the local flag.

With several processes the signal may reach one host only, or the hosts at different times. A
host that enters the collective save at step n while another goes on to step n+1 hangs both, so
the stop step is agreed through the distributed runtime's key-value store (the coordination
service ``jax.distributed.initialize`` starts): the first process that sees a signal proposes
"stop at my step + ``STEPS_IN_FLIGHT``" under a key of this run; the store keeps the first
proposal only (a later one fails with ALREADY_EXISTS and reads the first), and every process
reads the key after each step (one small RPC, ~0.3 ms on localhost, overlapping the step the
device is running; none with one process). Why that margin is enough: a step is a collective
program, so no process can finish step k before every process has dispatched it. The proposer
writes the key at the end of its step a, before it dispatches step a+1. Another process ends
its step a+2 only after step a+1 has finished (the loops keep at most two steps in flight), so
its read at the end of step a+2 comes after the write and finds the key: every process learns
the stop step a+2 before it has passed it. No process blocks on another (a blocking agreement
could deadlock against a validation or checkpoint barrier another host has already entered),
and a process that finds itself past the agreed step stops with an error, not a hung save.

jax's own ``multihost_utils.reached_preemption_sync_point`` was tried first (jax 0.10.2, CPU,
gloo): it agrees on max(step) + 1, but it owns SIGTERM through a C++ handler that Python's
handlers replace (so no Ctrl-C through it, and our handler disables it), it polls for the signal
once a second, and a SIGTERM that arrives before the loop's first call (during compilation or
a restore) was never acted on: the run went on to the end.

Ctrl-C: the first press is a stop request like SIGTERM (exit status 130 instead of 143); the
second exits at once (the default SIGINT action: killed by SIGINT, the shell reports 130),
without waiting for the step or the save.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
from typing import Optional

EXIT_CODES = {"SIGTERM": 143, "SIGINT": 130}  # 128 + the signal's number, as a shell reports
STEPS_IN_FLIGHT = 2  # the training loops' bound; see the module docstring
_KEY_PREFIX = "t5vae_jax/stop_step"
_runs = itertools.count()  # every process enters its flags in the same order: one key each


def _distributed_client():
  """The coordination service client of a multi-process job, or None (one process)."""
  import jax

  if jax.process_count() == 1:
    return None
  from jax._src import distributed  # no public accessor; multihost_utils reads it the same way

  return distributed.global_state.client


class PreemptionFlag:
  """SIGTERM and SIGINT handlers for the life of a ``with`` block, and the agreed stop step.

  ``signal_name`` is the signal this process got ("SIGTERM", "SIGINT"), None if none (it may
  still stop: another process got one); ``exit_code`` the status to exit with after the save.
  """

  def __init__(self):
    self.signal_name: Optional[str] = None
    self.stop_step: Optional[int] = None  # agreed (several processes) once known
    self._previous = {}
    self._client = None
    self._key_dir = None
    self._proposed = False

  @property
  def requested(self) -> bool:
    """A signal reached this process."""
    return self.signal_name is not None

  @property
  def exit_code(self) -> int:
    return EXIT_CODES.get(self.signal_name, 143)

  @property
  def description(self) -> str:
    """What stopped the run, for the log line."""
    return self.signal_name or "SIGTERM on another process"

  def __enter__(self):
    self._client = _distributed_client()
    self._key_dir = f"{_KEY_PREFIX}/{next(_runs)}"
    for signum in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[signum] = signal.signal(signum, self._handle)
      except ValueError:  # not the main thread: no handlers, the flag stays down
        pass
    return self

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
    self._previous = {}

  def _handle(self, signum, frame):
    name = signal.Signals(signum).name
    if name == "SIGINT" and self.signal_name == "SIGINT":
      print("second SIGINT: exiting at once, without saving", file=sys.stderr, flush=True)
      signal.signal(signal.SIGINT, signal.SIG_DFL)
      os.kill(os.getpid(), signal.SIGINT)
      return
    if name == "SIGINT":
      print(
          "SIGINT: saving after this step, then exiting (Ctrl-C again to exit at once)",
          file=sys.stderr,
          flush=True,
      )
    self.signal_name = self.signal_name or name

  def should_stop(self, step: int) -> bool:
    """Whether to save and exit after ``step`` (call once per step, on every process)."""
    if self._client is None:
      return self.requested
    if self.stop_step is None:
      if self.requested and not self._proposed:
        self._proposed = True
        try:
          self._client.key_value_set(f"{self._key_dir}/step", str(step + STEPS_IN_FLIGHT))
        except Exception as e:  # another process proposed first: its step holds
          if "ALREADY_EXISTS" not in str(e):
            raise
      found = dict(self._client.key_value_dir_get(self._key_dir))
      if not found:
        return False
      self.stop_step = int(next(iter(found.values())))
    if step > self.stop_step:
      raise RuntimeError(
          f"this process is at step {step}, past the stop step {self.stop_step} agreed after a "
          f"signal; the processes' loops are not in step (more than {STEPS_IN_FLIGHT} steps in "
          "flight?)"
      )
    return step == self.stop_step
