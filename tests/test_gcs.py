"""A gs:// workdir for real: train.py, a SIGKILL, the resume, eval.py and T5VAE.load against a
Cloud Storage emulator on 127.0.0.1 (tests/gcs_stand_in.py).

Every byte goes over HTTP to the emulator: etils.epath (config, model.json, tokenizer,
metrics.jsonl, eval.json) through gcsfs, orbax's arrays through tensorstore's gcs driver,
TensorBoard events through tensorboardX's google-cloud-storage writer. The subprocesses run in
an empty directory that must stay empty (a gs:// path taken for a local one lands there).
"""

import json
import os
import pathlib
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

import gcs_stand_in

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUCKET = "t5vae-runs"
RUN = f"gs://{BUCKET}/run"
PHASE_DIR = f"{RUN}/phase1"
TOTAL_STEPS = 24  # 1.5 epochs of 256 sentences in batches of 16
LOG_EVERY = 2
CHECKPOINT_EVERY = 4
OVERRIDES = {
    "data.synthetic.num_train": 256,
    "data.synthetic.num_valid": 32,
    "data.synthetic.num_test": 32,
    "batch_size": 16,
    "phase1.epochs": 1.5,
    "log_every_steps": LOG_EVERY,
    "eval_every_steps": 1000,
    "checkpoint_every_steps": CHECKPOINT_EVERY,
    "progress_bar": False,
    "model.t5.d_model": 32,
    "model.t5.d_ff": 64,
    "model.t5.d_kv": 8,
    "model.latent_dim": 4,
    "data.bucket_lengths": "(16,)",
    "mesh_devices": 1,
    "eval_num_samples": 0,  # no IW-NLL in the validations (eval.py's own K is what is checked)
    "model.t5.num_layers": 1,
    "model.t5.num_decoder_layers": 1,
}


@pytest.fixture
def gcs(monkeypatch):
  """(environment for subprocesses, gcsfs file system) of a fresh emulator with BUCKET; this
  process talks to it too (fresh fsspec/etils file system instances before and after)."""
  with gcs_stand_in.emulator(BUCKET) as env:
    for key, value in env.items():
      monkeypatch.setenv(key, value)
    # google-auth reads NO_GCE_CHECK when first imported, which may have been before now.
    from google.auth.compute_engine import _metadata

    monkeypatch.setattr(_metadata, "_NO_GCE_CHECK", True)
    fresh_file_systems()
    import gcsfs

    yield dict(os.environ, **env), gcsfs.GCSFileSystem()
  fresh_file_systems()


def fresh_file_systems():
  """New fsspec / etils file system instances: no listing cached by an earlier one."""
  import fsspec
  from etils.epath import backend

  fsspec.filesystem("gcs").clear_instance_cache()
  backend.fsspec_backend._get_filesystem.cache_clear()


def objects(fs, prefix=f"{BUCKET}/run") -> list[str]:
  """Names of the objects under ``prefix``, relative to it, listed anew."""
  fs.invalidate_cache()
  return sorted(name[len(prefix) + 1 :] for name in fs.find(prefix))


def committed_steps(fs) -> list[int]:
  """Steps of the complete checkpoints (orbax marks a finished save on GCS so)."""
  return sorted(
      int(name.split("/")[2])
      for name in objects(fs)
      if name.startswith("phase1/checkpoints/")
      and name.count("/") == 3
      and name.endswith("/commit_success.txt")
  )


def metric_rows(fs) -> list[dict]:
  fs.invalidate_cache()
  text = fs.cat(f"{BUCKET}/run/phase1/metrics.jsonl").decode()
  return [json.loads(line) for line in text.splitlines()]


def event_scalars(data: bytes) -> dict[str, list[int]]:
  """tag -> steps of the scalars in a TensorBoard event file (TFRecord framing: length,
  its CRC, the Event proto, its CRC)."""
  from tensorboardX.proto import event_pb2

  scalars, offset = {}, 0
  while offset < len(data):
    (length,) = struct.unpack_from("<Q", data, offset)
    event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
    offset += 12 + length + 4
    for value in event.summary.value:
      scalars.setdefault(value.tag, []).append(event.step)
  return scalars


def test_stand_in_has_cloud_storage_generations_and_preconditions(gcs):
  """What tensorstore relies on and the bare emulator lacks (see tests/gcs_stand_in.py)."""
  import urllib.error
  import urllib.request

  env, _ = gcs
  base = env["STORAGE_EMULATOR_HOST"]
  opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

  def call(method, path, body=None):
    request = urllib.request.Request(base + path, data=body, method=method)
    try:
      with opener.open(request, timeout=10) as response:
        return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
      return e.code, dict(e.headers), e.read()

  upload = f"/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name=obj"
  status, _, body = call("POST", upload + "&ifGenerationMatch=0", b"one")
  assert status == 200
  first = json.loads(body)["generation"]
  assert call("POST", upload + "&ifGenerationMatch=0", b"two")[0] == 412  # it exists now
  status, _, body = call("POST", upload + f"&ifGenerationMatch={first}", b"two")
  assert status == 200
  second = json.loads(body)["generation"]
  assert int(second) > int(first)
  media = f"/storage/v1/b/{BUCKET}/o/obj?alt=media"
  status, headers, body = call("GET", media)
  assert (status, body, headers["x-goog-generation"]) == (200, b"two", second)
  assert headers["x-goog-metageneration"] == "1"
  assert call("GET", media + f"&ifGenerationNotMatch={second}")[0] == 304
  assert call("GET", media + f"&ifGenerationNotMatch={first}")[1]["x-goog-generation"] == second
  assert call("GET", media + f"&ifGenerationMatch={first}")[0] == 412
  assert call("GET", f"/storage/v1/b/{BUCKET}/o/missing?alt=media&ifGenerationMatch=0")[0] == 404
  delete = f"/storage/v1/b/{BUCKET}/o/obj?ifGenerationMatch="
  assert call("DELETE", delete + first)[0] == 412
  assert call("DELETE", delete + second)[0] in (200, 204)
  assert call("GET", media)[0] == 404


def train_cmd(tfds_dir) -> list[str]:
  return [
      sys.executable,
      str(ROOT / "train.py"),
      f"--config={ROOT / 'configs/demo.py'}",
      "--phase=1",
      f"--workdir={RUN}",
      f"--config.data.tfds_dir={tfds_dir}",
      *[f"--config.{k}={v}" for k, v in OVERRIDES.items()],
  ]


def test_gs_workdir_train_kill_resume_eval_load(gcs, tmp_path):
  """train.py is SIGKILLed once a checkpoint is complete in the bucket; the same command
  resumes at that step (its log line, its metrics rows and TensorBoard steps say so) and ends
  the phase; eval.py evaluates it there; T5VAE.load reads it from there."""
  env, fs = gcs
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  cwd = tmp_path / "cwd"  # the subprocesses' working directory: must stay empty
  cwd.mkdir()
  tfds_dir = tmp_path / "tfds"

  started = []  # processes to end if the test fails midway
  try:
    # 1. Train until a checkpoint is complete in the bucket, then SIGKILL (no chance to save).
    first_checkpoint = f"{BUCKET}/run/phase1/checkpoints/{CHECKPOINT_EVERY}/commit_success.txt"
    with open(tmp_path / "first_run.log", "w+") as log:
      proc = subprocess.Popen(
          train_cmd(tfds_dir), cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT
      )
      started.append(proc)
      deadline = time.monotonic() + 240
      while not fs.exists(first_checkpoint):  # one request per poll
        assert proc.poll() is None, f"train.py exited with {proc.returncode} before a checkpoint"
        assert time.monotonic() < deadline, "no checkpoint in the bucket after 240 s"
        time.sleep(0.1)
        fs.invalidate_cache()
      proc.send_signal(signal.SIGKILL)
      proc.wait()
      log.seek(0)
      first_log = log.read()
    saved = committed_steps(fs)[-1]
    assert saved < TOTAL_STEPS, f"the run ended before the kill:\n{first_log[-3000:]}"
    rows_before = metric_rows(fs)

    # 2. The same command resumes from the saved step and finishes the phase.
    resumed = subprocess.run(
        train_cmd(tfds_dir), cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    assert f"resuming {PHASE_DIR} at step {saved}" in resumed.stderr, resumed.stderr[-3000:]
    rows = metric_rows(fs)
    assert rows[: len(rows_before)] == rows_before  # the first run's rows are kept
    resumed_train_steps = [r["step"] for r in rows[len(rows_before) :] if "train/loss" in r]
    assert resumed_train_steps == list(range(saved + LOG_EVERY, TOTAL_STEPS + 1, LOG_EVERY))
    assert committed_steps(fs)[-1] == TOTAL_STEPS

    # 3. eval.py on the bucket, in the background while this process checks the rest (4, 5).
    eval_log = open(tmp_path / "eval.log", "w+")  # not a pipe: nobody reads it meanwhile
    evaluation = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "eval.py"),
            f"--workdir={RUN}",
            "--num_samples=4",
            "--iw_chunk=4",
            "--batch_size=16",
            "--mi_batch_size=16",
            "--progress=false",
        ],
        cwd=cwd,
        env=env,
        stdout=eval_log,
        stderr=subprocess.STDOUT,
    )
    started.append(evaluation)

    # 4. What the bucket holds.
    names = objects(fs)
    for name in (
        "phase1/config.json",
        "phase1/model.json",
        "phase1/metrics.jsonl",
        "phase1/tokenizer/tokenizer.json",
        "phase1/tokenizer/tokenizer_config.json",
        "tokenizer/spiece.model",
        f"phase1/best/{TOTAL_STEPS}/commit_success.txt",
        f"phase1/checkpoints/{TOTAL_STEPS}/params/manifest.ocdbt",
    ):
      assert name in names, (name, names)
    event_files = [n for n in names if n.startswith("phase1/tensorboard/events.out.tfevents.")]
    assert len(event_files) == 2, event_files  # one per process
    first, second = sorted(
        (event_scalars(fs.cat(f"{BUCKET}/run/{n}")) for n in event_files),
        key=lambda scalars: scalars["train/loss"][0],
    )
    assert first["train/loss"][0] == LOG_EVERY and "val/neg_elbo" not in first
    assert second["train/loss"] == resumed_train_steps
    assert second["val/neg_elbo"] == [TOTAL_STEPS]

    # 5. The notebook API loads the phase straight from the bucket, and gives the same numbers
    # as from a local copy of the same objects.
    from t5vae_jax import T5VAE

    vae = T5VAE.load(PHASE_DIR)
    assert vae.step == TOTAL_STEPS
    mu, logvar = vae.encode(["the cat sat on the mat ."])
    assert mu.shape == logvar.shape == (1, 4) and np.isfinite(mu).all()
    local = tmp_path / "copy"
    fs.get(f"{BUCKET}/run/phase1", str(local), recursive=True)
    local_mu, local_logvar = T5VAE.load(local).encode(["the cat sat on the mat ."])
    np.testing.assert_array_equal(mu, local_mu)
    np.testing.assert_array_equal(logvar, local_logvar)

    evaluation.wait(timeout=300)
    eval_log.seek(0)
    assert evaluation.returncode == 0, eval_log.read()[-5000:]
    eval_log.close()
    result = json.loads(fs.cat(f"{BUCKET}/run/phase1/eval.json"))
    assert result["step"] == TOTAL_STEPS and result["num_examples"] == 32
    assert np.isfinite(result["ppl"]) and result["ppl"] > 1
    # Nothing went to a local directory named like the bucket path.
    assert list(cwd.iterdir()) == []
    assert not (ROOT / "gs:").exists() and not pathlib.Path("gs:").exists()
    assert not pathlib.Path("/" + BUCKET).exists()
    # Nothing there: errors that name the gs:// path (not gcsfs's URL-encoded object name).
    from t5vae_jax import tokenizer as tokenizer_lib

    with pytest.raises(FileNotFoundError, match=f"'{RUN}/phase2/tokenizer': no such directory"):
      tokenizer_lib.load_tokenizer(f"{RUN}/phase2/tokenizer")
    with pytest.raises(FileNotFoundError, match=f"{RUN}/phase2/model.json is missing"):
      T5VAE.load(f"{RUN}/phase2")
  finally:
    for proc in started:
      if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_a_save_cut_short_in_a_bucket_is_skipped_and_removed(gcs):
  """A step directory without commit_success.txt (a kill during a save to Cloud Storage) does not
  restore: resume falls back to the previous step and removes the unfinished one (a bucket has
  no folders to move it into)."""
  import jax
  import jax.numpy as jnp
  from etils import epath

  from t5vae_jax import checkpoint as ckpt_lib

  phase_dir = f"gs://{BUCKET}/cut/phase1"
  tree = {"w": jnp.full((2, 3), 1.0)}
  ckpts = ckpt_lib.PhaseCheckpoints(phase_dir)
  ckpts.save(1, tree, tree, {"step": 1})
  ckpts.wait()
  ckpts.close()
  # The next run's checkpoints, opened before step 2 appears: orbax's own clean-up when a
  # manager opens a directory (which may remove an unfinished step itself) has run, so what
  # follows is the fall-back's doing.
  ckpts = ckpt_lib.PhaseCheckpoints(phase_dir)
  # Step 2 as a kill leaves it: every object of a save but the last, commit_success.txt.
  fs = gcs[1]
  fs.copy(
      f"{BUCKET}/cut/phase1/checkpoints/1", f"{BUCKET}/cut/phase1/checkpoints/2", recursive=True
  )
  fs.rm(f"{BUCKET}/cut/phase1/checkpoints/2/commit_success.txt")
  fresh_file_systems()  # as a new process would list the bucket
  warnings = []
  abstract = ckpt_lib.abstract_tree(tree)
  step, params, _, meta = ckpts.restore_newest(abstract, abstract, warn=warnings.append)
  ckpts.close()
  assert step == 1 and meta["step"] == 1
  assert float(jax.device_get(params["w"]).sum()) == 6.0
  assert len(warnings) == 1 and "step 2" in warnings[0]
  assert not (epath.Path(phase_dir) / "checkpoints" / "2").exists()
