"""Checkpoints of one training phase, through orbax.

Layout of a phase directory (``<workdir>/phase1``, ``<workdir>/phase2``):

  config.json        the full training config (ml_collections, as JSON)
  model.json         the T5 config (Hugging Face keys) and the VAE config: enough to rebuild
                     the network with nothing beside the directory
  tokenizer/         the tokenizer files
  checkpoints/<step> orbax: params, opt_state, meta (step, data position, counters); the last
                     ``keep`` are kept; a save is written to a temporary name and renamed when
                     complete, so a kill mid-save never leaves a checkpoint that looks whole
  best/<step>        params of the best validation score so far (one kept)
  damaged/<step>     a checkpoint that did not restore, moved aside by a resume that fell back
                     to an older one (PhaseCheckpoints.restore_newest)
  metrics.jsonl      one JSON object per logged step / validation

Every path goes through etils.epath, so the workdir may be a ``gs://`` bucket. Cloud Storage has
no rename: there orbax writes a save in place and marks it complete with a last object,
``<step>/commit_success.txt``; a step directory without it is not a checkpoint (and is removed
when the next run opens the directory). tests/test_gcs.py runs all this against an emulator.

A save that fails (disk full, permission denied, bucket unreachable) raises CheckpointSaveError
from the save, the next ``check_for_errors`` or ``wait``: one line naming step and path, exit
status 1 (tests/test_checkpoint_damage.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from typing import Any, Callable, Optional

import jax
import orbax.checkpoint as ocp
from etils import epath

from t5vae_jax import hub
from t5vae_jax import model as model_lib
from t5vae_jax import t5 as t5_lib
from t5vae_jax import errors
from t5vae_jax.errors import UserError


class CheckpointNotFoundError(UserError, FileNotFoundError):
  pass


class CheckpointDamagedError(CheckpointNotFoundError):
  """Step directories exist but none restores; the message names each step tried and why.
  (A FileNotFoundError, so the CLI reports it as one ``error:`` line, exit 2.)"""


class CheckpointSaveError(SystemExit):
  """A save failed (disk full, permission denied, bucket unreachable): the run must end.

  A SystemExit whose code is the one line ``error: saving step N to PATH failed: why`` (or
  ``error: writing PATH failed: why``), so the program prints that line and exits with status 1,
  with no traceback from orbax's thread (the CLI's ``user_errors`` passes it through: it
  catches Exceptions only). What was written before stays intact: a checkpoint goes to a
  temporary name and is renamed only when complete, and so does eval.json."""

  def __init__(self, path, error: BaseException, step: Optional[int] = None):
    self.step, self.path = step, os.fspath(path)
    what = f"saving step {step} to" if step is not None else "writing"
    super().__init__(f"error: {what} {self.path} failed: {errors.describe(error)}")


def write_text_atomically(path, text: str) -> None:
  """Writes ``path`` through a temporary file renamed over it: a failed write (disk full)
  leaves the previous file whole and raises CheckpointSaveError naming ``path``."""
  path = epath.Path(path)
  tmp = path.parent / f"{path.name}.tmp"
  try:
    tmp.write_text(text)
    tmp.replace(path)
  except OSError as e:
    try:
      tmp.unlink(missing_ok=True)
    except OSError:
      pass
    raise CheckpointSaveError(path, e) from e


class _QuietOrbaxThreadErrors(logging.Filter):
  """Drops the tracebacks orbax's save threads log: the failure reaches the loop, which ends
  the run with CheckpointSaveError's one line (its reason is the same exception's)."""

  def filter(self, record: logging.LogRecord) -> bool:
    from_orbax = f"{os.sep}orbax{os.sep}" in (record.pathname or "")
    return not (from_orbax and record.levelno >= logging.ERROR and record.exc_info)


def _quiet_orbax_thread_errors() -> None:
  logger = logging.getLogger("absl")
  if not any(isinstance(f, _QuietOrbaxThreadErrors) for f in logger.filters):
    logger.addFilter(_QuietOrbaxThreadErrors())


def absolute(path) -> epath.Path:
  """orbax needs absolute paths: ``hub.absolute`` as an ``epath.Path``."""
  return epath.Path(hub.absolute(path))


def _manager(
    directory: epath.Path,
    keep: Optional[int],
    *,
    name: str,
    read_only: bool = False,
    asynchronous: bool = True,
) -> ocp.CheckpointManager:
  # The step directory is made in the caller's thread: made in orbax's (the default), a
  # failure (a read-only directory) leaves its other threads waiting 300 s for a signal.
  # ``name`` prefixes the manager's cross-process barriers: "latest" and "best" both saving
  # step N at once would otherwise meet at one barrier name ("async_write_complete.N") and,
  # as the threads interleave, time out on one host while the others hang.
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep,
      create=not read_only,
      read_only=read_only,
      enable_async_checkpointing=asynchronous,
      cleanup_tmp_directories=not read_only,
      async_options=ocp.AsyncOptions(create_directories_asynchronously=False),
      multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name),
  )
  return ocp.CheckpointManager(
      directory, options=options, item_names=("params", "opt_state", "meta")
  )


class PhaseCheckpoints:
  """Periodic/final saves (keep last k) and the best-by-validation params of one phase.

  Pretraining keeps its saves in ``OUT/pretrain_ckpt`` (``checkpoints="pretrain_ckpt"``) and
  has no best (``best=False``): the same saves, restores and fall-back past damage.
  """

  def __init__(
      self,
      phase_dir,
      keep: int = 3,
      asynchronous: bool = True,
      checkpoints: str = "checkpoints",
      best: bool = True,
  ):
    self.phase_dir = absolute(phase_dir)
    self.latest = _manager(
        self.phase_dir / checkpoints, keep, name="latest", asynchronous=asynchronous
    )
    self.best = (
        _manager(self.phase_dir / "best", 1, name="best", asynchronous=asynchronous)
        if best
        else None
    )
    self._best_value = self._read_best_value()
    self._saving: dict[str, int] = {}  # manager name -> step of its last save (for errors)
    _quiet_orbax_thread_errors()

  def latest_step(self) -> Optional[int]:
    return self.latest.latest_step()

  def has_checkpoints(self) -> bool:
    """Whether any step directory exists, restorable or not."""
    return self.latest.latest_step() is not None or bool(_step_dirs(self.latest.directory))

  def save(self, step: int, params, opt_state, meta: dict) -> None:
    """Starts the save of ``step`` (asynchronous); a failure, now or when the write completes,
    raises CheckpointSaveError from this call, :meth:`check_for_errors` or :meth:`wait`."""
    self.check_for_errors()
    self._saving["latest"] = step
    with self._save_errors("latest", self.latest):
      self.latest.save(
          step,
          args=ocp.args.Composite(
              params=ocp.args.StandardSave(params),
              opt_state=ocp.args.StandardSave(opt_state),
              meta=ocp.args.JsonSave(meta),
          ),
          force=True,
      )

  def _managers(self) -> list[tuple[str, ocp.CheckpointManager]]:
    return [("latest", self.latest)] + ([("best", self.best)] if self.best is not None else [])

  def check_for_errors(self) -> None:
    """Raises CheckpointSaveError if a background save has failed (cheap: call every step)."""
    for name, manager in self._managers():
      with self._save_errors(name, manager):
        manager.check_for_errors()

  @contextlib.contextmanager
  def _save_errors(self, name: str, manager: ocp.CheckpointManager):
    try:
      yield
    except CheckpointSaveError:
      raise
    except Exception as e:  # orbax re-raises its thread's error as whatever it was
      step = self._saving.get(name)
      raise CheckpointSaveError(manager.directory / str(step), e, step=step) from e

  def maybe_save_best(
      self, step: int, params, value: float, metric: str, mode: str = "min"
  ) -> bool:
    """Saves ``params`` as best if ``value`` beats the best so far (needs ``best=True``)."""
    better = self._best_value is None or (
        value < self._best_value if mode == "min" else value > self._best_value
    )
    if not better:
      return False
    self._best_value = value
    self.check_for_errors()
    self._saving["best"] = step
    with self._save_errors("best", self.best):
      self.best.save(
          step,
          args=ocp.args.Composite(
              params=ocp.args.StandardSave(params),
              meta=ocp.args.JsonSave({"step": step, "metric": metric, "value": value}),
          ),
          force=True,
      )
    return True

  def restore(self, step: int, abstract_params, abstract_opt_state):
    """(params, opt_state, meta) of ``step``, placed as the abstract trees' shardings say."""
    restored = self.latest.restore(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_params),
            opt_state=ocp.args.StandardRestore(abstract_opt_state),
            meta=ocp.args.JsonRestore(),
        ),
    )
    return restored["params"], restored["opt_state"], restored["meta"]

  def restore_newest(
      self,
      abstract_params,
      abstract_opt_state,
      check_meta: Optional[Callable[[int, dict], None]] = None,
      warn: Callable[[str], None] = print,
  ):
    """(step, params, opt_state, meta) of the newest checkpoint that restores; None if the
    phase has no checkpoint at all (a fresh start).

    A checkpoint that fails to restore (a truncated or missing file, a partial copy) or whose
    meta ``check_meta(step, meta)`` rejects (raises) is skipped with one ``warn`` line naming
    the step and why, and the next older one is tried. Once one restores, the skipped ones are
    moved to ``<phase>/damaged/<step>`` (kept for a look; the run will write those steps
    again). When step directories exist but none restores, CheckpointDamagedError names each
    step tried and why: never a silent start from step 0.
    """
    directory = self.latest.directory
    steps = sorted(set(self.latest.all_steps()) | set(_step_dirs(directory)), reverse=True)
    failures = []
    for step in steps:
      try:
        params, opt_state, meta = self.restore(step, abstract_params, abstract_opt_state)
        self._check_tree_metadata(step)
        if check_meta is not None:
          check_meta(step, meta)
      except Exception as e:  # orbax and TensorStore raise plain Exceptions
        failures.append((step, errors.describe(e)))
        warn(
            f"warning: checkpoint step {step} in {directory} does not restore, skipping it: "
            f"{failures[-1][1]}"
        )
        continue
      for bad_step, _ in failures:
        self._move_aside(bad_step)
      return step, params, opt_state, meta
    if failures:
      tried = "; ".join(f"step {s}: {why}" for s, why in failures)
      raise CheckpointDamagedError(
          f"no checkpoint in {directory} restores (tried {tried}); move the damaged step "
          f"directories away to start this phase from step 0"
      )
    return None

  def _check_tree_metadata(self, step: int) -> None:
    """A restore with a target tree does not read ``<item>/_METADATA``, but restore_params
    (eval, phase 2) does: a checkpoint without it must not be resumed from and saved over."""
    metadata = self.latest.item_metadata(step)
    for item in ("params", "opt_state"):
      if metadata.get(item) is None:
        raise ValueError(f"{item}/_METADATA is missing or unreadable")

  def _move_aside(self, step: int) -> None:
    source = self.latest.directory / str(step)
    if hub.is_remote(source) and not (source / "commit_success.txt").exists():
      # A save cut short on Cloud Storage (no rename there: orbax writes in place and marks the
      # end with commit_success.txt) holds no finished checkpoint, and a bucket has no folders
      # to move it into: removed, as orbax removes its unfinished temporary saves.
      source.rmtree()
      self.latest.reload()
      return
    target_dir = self.phase_dir / "damaged"
    target_dir.mkdir(parents=True, exist_ok=True)
    target, n = target_dir / str(step), 1
    while target.exists():
      target, n = target_dir / f"{step}.{n}", n + 1
    source.rename(target)
    self.latest.reload()

  def _read_best_value(self) -> Optional[float]:
    step = None if self.best is None else self.best.latest_step()
    if step is None:
      return None
    meta = self.best.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    return meta["value"]

  def wait(self) -> None:
    for name, manager in self._managers():
      with self._save_errors(name, manager):
        manager.wait_until_finished()

  def close(self) -> None:
    for _, manager in self._managers():
      manager.close()


def _step_dirs(directory: epath.Path) -> list[int]:
  """Steps of the digit-named directories, also those orbax does not list (no metadata)."""
  if not directory.exists():
    return []
  return [int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir()]


def restore_params(phase_dir, abstract_params=None, which: str = "latest", step=None):
  """Params only (no optimizer state) of a phase directory: for phase 2, eval and loading.

  ``which`` is "latest" or "best". Leaves of ``abstract_params`` without a sharding (or all
  of them, when it is None) are placed by :func:`default_sharding`, not by the device ids the
  checkpoint was written from, so a checkpoint restores on any number of processes/devices.
  Raises CheckpointNotFoundError naming the directory.
  """
  phase_dir = absolute(phase_dir)
  sub = {"latest": "checkpoints", "best": "best"}[which]
  directory = phase_dir / sub
  if not directory.exists():
    raise CheckpointNotFoundError(f"no checkpoint in {directory}")
  manager = ocp.CheckpointManager(
      directory,
      options=ocp.CheckpointManagerOptions(read_only=True, create=False),
      item_handlers={
          "params": ocp.StandardCheckpointHandler(),
          "opt_state": ocp.StandardCheckpointHandler(),
          "meta": ocp.JsonCheckpointHandler(),
      },
  )
  try:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise CheckpointNotFoundError(f"no checkpoint in {directory}")
    metadata = manager.item_metadata(step)["params"]  # a TreeMetadata: dict-like, not a dict
    on_disk = {k: metadata[k] for k in metadata.keys()}
    # The checkpoint's own tree is restored: a VAE finetuned from a Hugging Face T5 keeps that
    # T5's cross-attention k/v (unused: z's memory replaces them), which a freshly initialised
    # model has no leaf for. ``abstract_params`` gives the shardings; its leaves must exist.
    target = _restore_target(on_disk, abstract_params, default_sharding(), ())
    restored = manager.restore(
        step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target))
    )
    return restored["params"], step
  finally:
    manager.close()


def _restore_target(on_disk, abstract, placement, path: tuple):
  """ShapeDtypeStructs in the on-disk tree's structure, sharded as ``abstract`` where it has
  the leaf (else ``placement``); a leaf of ``abstract`` missing on disk is an error."""
  if isinstance(on_disk, dict):
    if isinstance(abstract, dict):
      missing = sorted(set(abstract) - set(on_disk))
      if missing:
        raise ValueError(
            f"the checkpoint has no parameter {'/'.join(path + (missing[0],))!r}"
            f" ({len(missing)} missing): it was written by another model"
        )
    sub = abstract if isinstance(abstract, dict) else {}
    return {k: _restore_target(v, sub.get(k), placement, path + (k,)) for k, v in on_disk.items()}
  sharding = getattr(abstract, "sharding", None)
  if not isinstance(abstract, jax.ShapeDtypeStruct) or sharding is None:
    sharding = placement
  if abstract is not None and tuple(abstract.shape) != tuple(on_disk.shape):
    raise ValueError(
        f"parameter {'/'.join(path)!r} has shape {tuple(on_disk.shape)} in the "
        f"checkpoint but {tuple(abstract.shape)} in the model"
    )
  return jax.ShapeDtypeStruct(on_disk.shape, on_disk.dtype, sharding=sharding)


def default_sharding() -> jax.sharding.Sharding:
  """One device on a single process; replicated over every device of a multi-process job."""
  if jax.process_count() == 1:
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  from t5vae_jax import sharding as sharding_lib

  return sharding_lib.replicated(sharding_lib.make_mesh())


# --------------------------------------------------------------------------------------------
# What makes a phase directory self-contained: the network's config and the tokenizer.
# --------------------------------------------------------------------------------------------
def write_model_spec(
    phase_dir, t5_config: t5_lib.T5Config, vae_config: model_lib.VAEConfig, dtype: str
) -> None:
  spec = {"t5": t5_config.to_hf_dict(), "vae": dataclasses.asdict(vae_config), "dtype": dtype}
  path = epath.Path(phase_dir)
  path.mkdir(parents=True, exist_ok=True)
  (path / "model.json").write_text(json.dumps(spec, indent=2))


def read_model_spec(phase_dir) -> tuple[t5_lib.T5Config, model_lib.VAEConfig, str]:
  path = epath.Path(phase_dir) / "model.json"
  if not path.exists():
    raise CheckpointNotFoundError(f"{path} is missing: not a t5vae-jax phase directory")
  spec = json.loads(path.read_text())
  return (
      t5_lib.T5Config.from_hf_dict(spec["t5"]),
      model_lib.VAEConfig(**spec["vae"]),
      spec.get("dtype", "float32"),
  )


def write_config(phase_dir, config) -> None:
  path = epath.Path(phase_dir)
  path.mkdir(parents=True, exist_ok=True)
  (path / "config.json").write_text(config.to_json_best_effort(indent=2))


def abstract_tree(tree: Any, shardings: Any = None) -> Any:
  """ShapeDtypeStructs (with shardings when given) for an orbax restore target."""
  if shardings is None:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
  )
