"""User mistakes end train.py with one `error: ...` line on stderr, exit status 2, no traceback:
flags and config values, paths, a missing phase 1, a checkpoint of another model, bad data and
an unreachable hub. Most cases run in this process; a few run train.py for real."""

import contextlib
import dataclasses
import io
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import parse_training_flags
from t5vae_jax import errors
from t5vae_jax import train_command
from t5vae_jax import config_validation as cv

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from configs import default  # noqa: E402


def exit_of(fn, *args):
  """(exit status, stderr) of fn(*args), which must exit."""
  err = io.StringIO()
  with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as info:
    fn(*args)
  return info.value.code, err.getvalue()


def assert_one_error_line(stderr, *fragments, alone=True):
  """stderr holds one `error: ` line with the fragments, and no traceback; with `alone`,
  nothing else (later failures may follow progress output of the run)."""
  lines = stderr.splitlines()
  found = [line for line in lines if line.startswith("error: ")]
  assert len(found) == 1, stderr
  assert not alone or lines == found, stderr
  assert "Traceback" not in stderr
  for fragment in fragments:
    assert fragment in found[0], (fragment, found[0])
  return found[0]


# ----------------------------------------------------------------------------- the wrapper


def user_error_cases():
  from t5vae_jax import checkpoint, datasets, pretrained, train_lib

  return [
      cv.ConfigError(
          ["config.model.pooling='avg' is not allowed", "config.batch_size=0 is not allowed"]
      ),
      train_lib.TrainingError("phase 2 starts from phase 1's params, but ...\nsecond line"),
      pretrained.CheckpointError("t5-small: not a local directory"),
      datasets.DataError("/data/train.txt:7: the line is not valid UTF-8"),
      FileNotFoundError("no phase [2] in runs/x"),
      checkpoint.CheckpointNotFoundError("no checkpoint in runs/x/phase1/checkpoints"),
  ]


def test_our_errors_become_one_line_and_exit_2():
  for error in user_error_cases():

    def main():
      raise error

    code, stderr = exit_of(errors.user_errors(main))
    assert code == 2
    expected = error.errors if isinstance(error, cv.ConfigError) else [" ".join(str(error).split())]
    assert stderr.splitlines() == [f"error: {line}" for line in expected]


def test_other_exceptions_keep_their_traceback():
  def buggy(argv):
    raise KeyError("a bug")

  with pytest.raises(KeyError):
    errors.user_errors(buggy)([])

  def interrupted():
    raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    errors.user_errors(interrupted)()
  assert errors.user_errors(lambda x: x + 1)(1) == 2


# ----------------------------------------------------------------------------- flags


parse = parse_training_flags


DEMO = f"--config={ROOT / 'configs/demo.py'}"
REQUIRED = ("--phase=1", "--workdir=/tmp/unused")


@pytest.mark.parametrize(
    "args,fragments",
    [
        (
            ("--config.batch_sise=8",),
            [
                "--config.batch_sise=8: the config has no key 'batch_sise' (did you mean 'batch_size'?)"
            ],
        ),
        (
            ("--config.modle.pooling=mean",),
            ["no key 'modle.pooling' (did you mean 'model.pooling'?)"],
        ),
        (
            ("--config.batch_size=abc",),
            ["--config.batch_size=abc", "config.batch_size must be an integer >= 1"],
        ),
        (
            ("--config.model.latent_dim=1.5",),
            ["--config.model.latent_dim=1.5", "config.model.latent_dim must be an integer >= 1"],
        ),
        (("--config.progress_bar=maybe",), ["--config.progress_bar", "True or False"]),
        (("--phse=2",), ["Unknown command line flag 'phse' (did you mean 'phase'?)"]),
        (("--phase=two",), ["--phase=two"]),
    ],
)
def test_flag_mistakes(args, fragments):
  code, stderr = parse(DEMO, *REQUIRED, *args)
  assert code == 2
  assert_one_error_line(stderr, *fragments)


def test_missing_flag_and_config_file_mistakes(tmp_path):
  code, stderr = parse(DEMO, "--phase=1")
  assert code == 2 and assert_one_error_line(stderr, "--workdir")
  missing = tmp_path / "nope.py"
  for extra in ((), ("--config.batch_size=8",)):
    code, stderr = parse(f"--config={missing}", *REQUIRED, *extra)
    assert code == 2 and assert_one_error_line(stderr, f"--config={missing}: no such config file")
  broken = tmp_path / "broken.py"
  broken.write_text("def get_config():\n  x = {}\n  return x['model']\n")
  code, stderr = parse(f"--config={broken}", *REQUIRED)
  assert code == 2
  assert_one_error_line(stderr, f"--config={broken}: the config file failed ({broken}:3): KeyError")
  (tmp_path / "syntax.py").write_text("def get_config(:\n")
  code, stderr = parse(f"--config={tmp_path / 'syntax.py'}", *REQUIRED)
  assert code == 2 and assert_one_error_line(stderr, "syntax.py:1): SyntaxError")


def test_good_flags_parse():
  flag_values = parse(DEMO, *REQUIRED, "--config.batch_size=16", "--config.data.bucket_lengths=()")
  assert flag_values.config.batch_size == 16 and flag_values.config.data.bucket_lengths == ()
  cv.validate(flag_values.config, flag_values.phase)


# ----------------------------------------------------------------------------- run_training


def run(config, workdir, phase):
  return exit_of(errors.user_errors(train_command.run_training), config, str(workdir), phase)


def test_bad_config_values_stop_run_training_before_jax(tmp_path):
  config = default.get_config()
  config.model.pooling = "avg"
  code, stderr = run(config, tmp_path, 1)
  assert code == 2
  assert_one_error_line(stderr, "config.model.pooling='avg'", "'max', 'mean'")
  code, stderr = run(default.get_config(), tmp_path, 3)
  assert code == 2 and assert_one_error_line(stderr, "--phase=3", "1 (encoder warm-up) or 2")
  config = default.get_config()
  config.data.dir = str(tmp_path / "ptb_files")
  code, stderr = run(config, tmp_path, 1)
  assert code == 2 and assert_one_error_line(
      stderr, str(tmp_path / "ptb_files"), "no such directory"
  )
  assert not (tmp_path / "phase1").exists()


def test_phase2_without_phase1(tmp_path):
  code, stderr = run(default.get_config(), tmp_path, 2)
  assert code == 2
  assert_one_error_line(
      stderr,
      f"no phase 1 checkpoint in {tmp_path / 'phase1' / 'checkpoints'}",
      "run --phase 1 with the same --workdir first",
  )


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds_cli")


def fake_phase_dir(pdir, config, **vae_changes):
  """A phase directory as train.py leaves it, but of a model with `vae_changes`."""
  import numpy as np
  from t5vae_jax import checkpoint as ckpt_lib
  from t5vae_jax import t5 as t5_lib
  from t5vae_jax import train_lib

  t5 = t5_lib.T5Config(**config.model.t5.to_dict(), scale_decoder_outputs=True)
  vae = dataclasses.replace(train_lib.vae_config_from(config), **vae_changes)
  ckpt_lib.write_model_spec(pdir, t5, vae, "float32")
  ckpts = ckpt_lib.PhaseCheckpoints(pdir, keep=1, asynchronous=False)
  ckpts.save(3, {"w": np.zeros(2, np.float32)}, {"m": np.zeros(2, np.float32)}, {"step": 3})
  ckpts.close()


def test_phase2_from_a_phase1_of_another_shape(tmp_path, tfds_dir):
  from test_train import tiny_config

  config = tiny_config(tfds_dir)
  fake_phase_dir(tmp_path / "phase1", config, latent_dim=8)
  code, stderr = run(config, tmp_path, 2)
  assert code == 2
  assert_one_error_line(
      stderr,
      f"the checkpoint in {tmp_path / 'phase1'} is of another model",
      "config.model.latent_dim=4 but 8 there",
      alone=False,
  )


def test_resuming_with_another_model(tmp_path, tfds_dir):
  from test_train import tiny_config

  config = tiny_config(tfds_dir)
  fake_phase_dir(tmp_path / "phase1", config, latent_injection="self_prefix")
  code, stderr = run(config, tmp_path, 1)
  assert code == 2
  assert_one_error_line(
      stderr,
      f"the checkpoint in {tmp_path / 'phase1'} is of another model",
      "config.model.latent_injection='cross_attention' but 'self_prefix' there",
      "or use a new --workdir",
      alone=False,
  )


# ----------------------------------------------------------------------------- train.py itself


def train_py(*args, env=None, timeout=120):
  cmd = [sys.executable, str(ROOT / "train.py"), *args]
  env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_train_py_unknown_key_and_bad_value(tmp_path):
  for override, fragments in [
      ("--config.batch_sise=8", ["no key 'batch_sise'", "did you mean 'batch_size'"]),
      (
          "--config.model.pooling=avg",
          ["config.model.pooling='avg' is not allowed", "'max', 'mean'"],
      ),
  ]:
    result = train_py(DEMO, "--phase=1", f"--workdir={tmp_path}", override)
    assert result.returncode == 2 and result.stdout == ""
    assert_one_error_line(result.stderr, *fragments)
  result = train_py(DEMO, "--phase=2", f"--workdir={tmp_path}")
  assert result.returncode == 2
  assert_one_error_line(result.stderr, f"no phase 1 checkpoint in {tmp_path}/phase1/checkpoints")


def test_train_py_bad_data_line_under_fail(tmp_path):
  raw = tmp_path / "raw"
  raw.mkdir()
  (raw / "train.txt").write_bytes(b"one two .\nthree\tfour .\nfive six .\n")
  (raw / "valid.txt").write_bytes(b"one six .\n")
  (raw / "test.txt").write_bytes(b"two five .\n")
  result = train_py(
      f"--config={ROOT / 'configs/ptb.py'}",
      "--phase=1",
      f"--workdir={tmp_path / 'w'}",
      "--config.model.pretrained=",
      f"--config.data.dir={raw}",
      f"--config.data.tfds_dir={tmp_path / 'tfds'}",
      "--config.data.on_bad_line=fail",
  )
  assert result.returncode == 2
  assert_one_error_line(
      result.stderr,
      f"error: {raw / 'train.txt'}:2: the line has a TAB",
      "data.on_bad_line=fail",
      alone=False,
  )


@contextlib.contextmanager
def silent_server():
  """An endpoint that accepts connections and never answers (a firewall that drops replies)."""
  server = socket.socket()
  server.bind(("127.0.0.1", 0))
  server.listen(16)
  held, stop = [], threading.Event()

  def accept():
    server.settimeout(0.2)
    while not stop.is_set():
      try:
        held.append(server.accept()[0])
      except OSError:
        pass

  thread = threading.Thread(target=accept, daemon=True)
  thread.start()
  try:
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
  finally:
    stop.set()
    thread.join()
    for conn in held:
      conn.close()
    server.close()


def test_train_py_hub_id_that_does_not_answer_fails_fast(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
  with silent_server() as endpoint:
    start = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            f"--config={ROOT / 'configs/ptb.py'}",
            "--phase=1",
            f"--workdir={tmp_path}",
            "--config.model.pretrained=google/t5-not-cached",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(
            env,
            PYTHONPATH=str(ROOT),
            HF_ENDPOINT=endpoint,
            T5VAE_HUB_TIMEOUT="3",
            HF_HOME=str(tmp_path / "hf_home"),
        ),
    )
    seconds = time.perf_counter() - start
  assert result.returncode == 2, result.stderr[-2000:]
  assert_one_error_line(
      result.stderr,
      "google/t5-not-cached: not a local directory",
      "pass a local checkpoint directory",
      alone=False,
  )  # after the start-up line (t5vae_jax/accelerator.py)
  assert seconds < 60  # without the check, huggingface_hub waits for ever


def test_a_missing_split_file_is_named(tmp_path):
  import ml_collections
  from t5vae_jax import data

  raw = tmp_path / "raw"
  raw.mkdir()
  (raw / "valid.txt").write_text("a b .\n")
  (raw / "test.txt").write_text("c d .\n")
  config = ml_collections.ConfigDict(
      {
          "name": "ptb",
          "dir": str(raw),
          "tfds_dir": str(tmp_path / "tfds"),
          "max_len": 8,
          "on_bad_line": "skip",
      }
  )
  code, stderr = exit_of(errors.user_errors(data.read_split), config, "train")
  assert code == 2
  assert_one_error_line(
      stderr, f"split 'train' was not built because {raw / 'train.txt'} does not exist", alone=False
  )  # after TFDS's progress bars


PROGRAM = """
import sys
from absl import flags
from t5vae_jax import cli, config_validation
flags.DEFINE_integer("k", 1, "")
def main(argv):
  if flags.FLAGS.k == 2:
    raise config_validation.ConfigError(["config.a=1 is not allowed", "config.b=2 is not allowed"])
  if flags.FLAGS.k == 3:
    raise RuntimeError("a bug")
  print("ok")
cli.run_main(main)
"""


@pytest.mark.parametrize(
    "flag,code,stderr",
    [
        ("--k=1", 0, ""),
        ("--k=2", 2, "error: config.a=1 is not allowed\nerror: config.b=2 is not allowed\n"),
        ("--k=x", 2, "error: flag --k=x: invalid literal for int() with base 10: 'x'\n"),
        ("--kk=1", 2, "error: Unknown command line flag 'kk' (did you mean 'k'?)\n"),
        ("--k=3", 1, "Traceback"),
    ],
)
def test_run_main_for_other_programs(flag, code, stderr):
  """What eval.py gets from cli.run_main(main): one line per user error, tracebacks for bugs."""
  result = subprocess.run(
      [sys.executable, "-c", PROGRAM, flag],
      capture_output=True,
      text=True,
      cwd=ROOT,
      env=dict(os.environ, PYTHONPATH=str(ROOT)),
      timeout=60,
  )
  assert result.returncode == code
  if code == 1:
    assert "Traceback" in result.stderr and "RuntimeError: a bug" in result.stderr
  else:
    assert result.stderr == stderr


def test_ptb_study_script_rejects_an_unknown_row():
  proc = subprocess.run(
      ["bash", str(ROOT / "scripts" / "ptb_study.sh"), "zz"], capture_output=True, text=True
  )
  assert proc.returncode == 2
  assert "unknown row 'zz'" in proc.stderr
  assert not (ROOT / "runs" / "ptb-study" / "zz").exists()
