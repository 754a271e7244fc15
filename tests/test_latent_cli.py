"""python -m t5vae_jax.latent: encode, reconstruct, sample, interpolate and transfer on the
shared tiny demo checkpoint (tests/_demo_checkpoint.py), called in-process through ``main``;
what each writes is checked against the T5VAE API, and user mistakes against the one-line
``error:`` contract (one subprocess test)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from _demo_checkpoint import ROOT, demo_workdir, training_texts
from t5vae_jax import api
from t5vae_jax import latent
from t5vae_jax import synthetic


@pytest.fixture(scope="module")
def phase_dir(tmp_path_factory):
  return str(demo_workdir(tmp_path_factory) / "phase2")


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  return training_texts(demo_workdir(tmp_path_factory))


@pytest.fixture(scope="module")
def loaded():
  """latent._load, each (phase_dir, checkpoint) restored once for the module."""
  cache = {}
  original = latent._load

  def load(args):
    key = (args.phase_dir, args.checkpoint)
    if key not in cache:
      cache[key] = original(args)
    return cache[key]

  latent._load = load
  yield cache
  latent._load = original


@pytest.fixture(scope="module")
def vae(phase_dir, loaded):
  latent.main(["sample", "--phase_dir", phase_dir, "--n", "1", "--output", "/dev/null"])
  return loaded[(phase_dir, "latest")]


def _run(capsys, *argv):
  capsys.readouterr()
  latent.main(list(argv))
  return capsys.readouterr().out.splitlines()


def _error(capsys, *argv):
  capsys.readouterr()
  with pytest.raises(SystemExit) as exit_info:
    latent.main(list(argv))
  err = capsys.readouterr().err.strip().splitlines()
  assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
  return err[0]


def test_encode(vae, phase_dir, records, tmp_path, capsys):
  texts = [r["text"] for r in records[:11]] + ["ünïcode wörds ."]
  (tmp_path / "in.txt").write_text("".join(t + "\n" for t in texts), encoding="utf-8")
  want_mu, want_logvar = vae.encode(texts)
  npz = tmp_path / "out" / "z.npz"
  latent.main(
      [
          "encode",
          "--phase_dir",
          phase_dir,
          "--input",
          str(tmp_path / "in.txt"),
          "--output",
          str(npz),
          "--batch_size",
          "5",
      ]
  )
  assert "encode" in capsys.readouterr().err  # the progress bar
  saved = np.load(npz)
  np.testing.assert_allclose(saved["mu"], want_mu, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(saved["logvar"], want_logvar, rtol=1e-5, atol=1e-6)
  assert saved["text"].tolist() == texts
  lines = _run(
      capsys,
      "encode",
      "--phase_dir",
      phase_dir,
      "--input",
      str(tmp_path / "in.txt"),
      "--noprogress",
      "--text",
      "the cat .",
  )
  rows = [json.loads(line) for line in lines]
  assert [r["text"] for r in rows] == texts + ["the cat ."]
  np.testing.assert_allclose([r["mu"] for r in rows[:-1]], want_mu, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      rows[-1]["logvar"], vae.encode("the cat .")[1][0], rtol=1e-5, atol=1e-6
  )


def test_reconstruct_and_sample(vae, phase_dir, records, tmp_path, capsys):
  texts = [r["text"] for r in records[:16]]
  (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
  got = _run(capsys, "reconstruct", "--phase_dir", phase_dir, "--input", str(tmp_path / "in.txt"))
  assert got == vae.reconstruct(texts)
  assert np.mean([a == b for a, b in zip(got, texts)]) > 0.5
  beam = _run(
      capsys,
      "reconstruct",
      "--phase_dir",
      phase_dir,
      "--input",
      str(tmp_path / "in.txt"),
      "--beam",
      "3",
      "--length_penalty",
      "0",
  )
  assert beam == vae.reconstruct(texts, beam=3, length_penalty=0.0)
  assert np.mean([a == b for a, b in zip(beam, texts)]) > 0.5
  out = tmp_path / "samples.txt"
  latent.main(
      [
          "sample",
          "--phase_dir",
          phase_dir,
          "--n",
          "6",
          "--seed",
          "3",
          "--top_k",
          "5",
          "--top_p",
          "0.9",
          "--output",
          str(out),
      ]
  )
  samples = out.read_text(encoding="utf-8").splitlines()
  assert samples == vae.sample(6, seed=3, top_k=5, top_p=0.9)
  assert len(set(samples)) > 1
  greedy = _run(capsys, "sample", "--phase_dir", phase_dir, "--n", "3", "--method", "greedy")
  assert greedy == vae.sample(3, method="greedy")
  assert _run(capsys, "sample", "--phase_dir", phase_dir, "--n", "3", "--beam", "2") == vae.sample(
      3, beam=2
  )
  at_400 = api.T5VAE.load(phase_dir, step=400)
  assert (
      _run(
          capsys,
          "sample",
          "--phase_dir",
          phase_dir,
          "--n",
          "8",
          "--method",
          "greedy",
          "--checkpoint",
          "400",
      )
      == at_400.sample(8, method="greedy")
      != vae.sample(8, method="greedy")
  )


def test_interpolate(vae, phase_dir, records, tmp_path, capsys):
  a, b = records[0]["text"], records[4]["text"]
  (tmp_path / "two.txt").write_text(f"zeroth line .\n{a}\n{b}\n")
  linear = _run(capsys, "interpolate", "--phase_dir", phase_dir, "--a", a, "--b", b)
  assert linear == vae.interpolate(a, b, steps=5)
  from_file = _run(
      capsys,
      "interpolate",
      "--phase_dir",
      phase_dir,
      "--input",
      str(tmp_path / "two.txt"),
      "--lines",
      "2,3",
  )
  assert from_file == linear
  spherical = _run(
      capsys,
      "interpolate",
      "--phase_dir",
      phase_dir,
      "--a",
      a,
      "--b",
      b,
      "--mode",
      "spherical",
      "--steps",
      "7",
  )
  mu, _ = vae.encode([a, b])
  assert len(spherical) == 7 and spherical == vae.decode(
      api.latent_path(mu[0], mu[1], 7, "spherical")
  )
  assert spherical[0] == linear[0] and spherical[-1] == linear[-1]


def test_latent_path():
  """Hand-derived: slerp of orthogonal (2, 0) and (0, 2) at t = 1/2 is (sqrt 2, sqrt 2) (norm
  2 kept), the line's midpoint (1, 1); parallel vectors fall back to the line."""
  a, b = np.asarray([2.0, 0.0]), np.asarray([0.0, 2.0])
  path = api.latent_path(a, b, 3, "spherical")
  np.testing.assert_allclose(path, [[2, 0], [2**0.5, 2**0.5], [0, 2]], atol=1e-6)
  np.testing.assert_allclose(api.latent_path(a, b, 3), [[2, 0], [1, 1], [0, 2]], atol=1e-7)
  # At 60 degrees, t = 1/3: the unit vector at 20 degrees.
  third = api.latent_path([1.0, 0.0], [0.5, 0.75**0.5], 4, "spherical")[1]
  np.testing.assert_allclose(third, [np.cos(np.pi / 9), np.sin(np.pi / 9)], atol=1e-6)
  np.testing.assert_allclose(
      api.latent_path([1.0, 1.0], [2.0, 2.0], 3, "spherical"),
      [[1, 1], [1.5, 1.5], [2, 2]],
      atol=1e-6,
  )
  with pytest.raises(ValueError, match="mode"):
    api.latent_path(a, b, 3, "cubic")


def _tense(sentence: str) -> str:
  """The synthetic grammar's tense of a decoded sentence."""
  words = sentence.split()
  if "will" in words:
    return "future"
  past = {past for _, _, past in synthetic._VERBS}
  return "past" if past & set(words) else "present"


def test_transfer_moves_the_tense(vae, phase_dir, records, tmp_path, capsys):
  """past -> future: the difference of the mean latents of future and past training sentences,
  added to past sentences, makes most of them future (measured on the tiny test checkpoint)."""
  tenses = synthetic.ATTRIBUTES["tense"]
  labelled = [(tenses[r["attributes"]["tense"]], r["text"]) for r in records[:600]]
  (tmp_path / "tense.tsv").write_text("".join(f"{l}\t{t}\n" for l, t in labelled))
  (tmp_path / "past.txt").write_text("".join(t + "\n" for l, t in labelled if l == "past"))
  (tmp_path / "future.txt").write_text("".join(t + "\n" for l, t in labelled if l == "future"))
  inputs = [r["text"] for r in records[600:] if tenses[r["attributes"]["tense"]] == "past"][:32]
  (tmp_path / "in.txt").write_text("".join(t + "\n" for t in inputs))
  common = ["transfer", "--phase_dir", phase_dir, "--input", str(tmp_path / "in.txt")]
  rates = {}
  for strength in ("0", "1", "2"):
    out = _run(
        capsys,
        *common,
        "--labelled",
        str(tmp_path / "tense.tsv"),
        "--from_label",
        "past",
        "--to_label",
        "future",
        "--strength",
        strength,
    )
    assert len(out) == len(inputs)
    rates[strength] = float(np.mean([_tense(s) == "future" for s in out]))
  with capsys.disabled():
    print(f"\npast -> future, share decoded in the future tense by strength: {rates}")
  assert rates["0"] < 0.2 and rates["1"] > 0.5 and rates["2"] >= rates["1"], rates
  by_file = _run(
      capsys,
      *common,
      "--from_file",
      str(tmp_path / "past.txt"),
      "--to_file",
      str(tmp_path / "future.txt"),
  )
  assert np.mean([_tense(s) == "future" for s in by_file]) == rates["1"]


def test_user_errors(phase_dir, tmp_path, capsys):
  pd = ["--phase_dir", phase_dir]
  assert "--n: must be a positive integer" in _error(capsys, "sample", *pd, "--n", "0")
  assert "--top_p: must be in (0, 1]" in _error(capsys, "sample", *pd, "--top_p", "1.5")
  assert "invalid choice: 'decode'" in _error(capsys, "decode", *pd)
  assert "--phase_dir" in _error(capsys, "sample")
  assert f"{tmp_path}/nope: no such directory" in _error(
      capsys, "sample", "--phase_dir", str(tmp_path / "nope")
  )
  assert "no sentences" in _error(capsys, "reconstruct", *pd)
  (tmp_path / "bad.txt").write_bytes(b"fine .\n\xff\xfe bad .\n")
  assert f"{tmp_path}/bad.txt:2 is not UTF-8" in _error(
      capsys, "encode", *pd, "--input", str(tmp_path / "bad.txt")
  )
  assert "name a .npz or .jsonl" in _error(
      capsys, "encode", *pd, "--text", "a .", "--output", str(tmp_path / "z.csv")
  )
  (tmp_path / "one.txt").write_text("only one line .\n")
  assert "has only 1 lines" in _error(
      capsys, "interpolate", *pd, "--input", str(tmp_path / "one.txt")
  )
  assert "--a TEXT --b TEXT" in _error(capsys, "interpolate", *pd, "--a", "x .")
  (tmp_path / "l.tsv").write_text("pos\tgood .\nno tab here\n")
  assert f"{tmp_path}/l.tsv:2 has no tab" in _error(
      capsys,
      "transfer",
      *pd,
      "--text",
      "x .",
      "--labelled",
      str(tmp_path / "l.tsv"),
      "--from_label",
      "neg",
      "--to_label",
      "pos",
  )
  (tmp_path / "l.tsv").write_text("pos\tgood .\n")
  assert "has no line labelled 'neg'" in _error(
      capsys,
      "transfer",
      *pd,
      "--text",
      "x .",
      "--labelled",
      str(tmp_path / "l.tsv"),
      "--from_label",
      "neg",
      "--to_label",
      "pos",
  )
  assert "name the two groups" in _error(capsys, "transfer", *pd, "--text", "x .")
  assert "--checkpoint=last" in _error(capsys, "sample", *pd, "--checkpoint", "last")


def test_one_line_error_in_a_subprocess(tmp_path):
  """As a program: a missing input file is one line on stderr, exit 2, before JAX loads."""
  proc = subprocess.run(
      [
          sys.executable,
          "-m",
          "t5vae_jax.latent",
          "reconstruct",
          "--phase_dir",
          str(tmp_path),
          "--input",
          str(tmp_path / "missing.txt"),
      ],
      cwd=str(ROOT),
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.strip().splitlines() == [
      f"error: --input={tmp_path}/missing.txt: no such file"
  ], proc.stderr
  assert proc.stdout == ""
