"""T5VAE.save_pretrained / push_to_hub / load of a saved directory or hub repo (export.py), on
the shared tiny demo checkpoint (tests/_demo_checkpoint.py).

One child process (a fresh interpreter, HF_HOME empty) loads a copy of the saved directory that
has nothing beside it, with an audit hook recording any file of the training run it opens;
then pushes it to the hub stand-in on 127.0.0.1 (tests/hub_stand_in.py: create_repo,
validate-yaml, preupload, the git-lfs batch API, the CDN's PUT, verify, commit, all real HTTP)
and loads it back by repo id. Its outputs are compared with the phase directory's here.
Hugging Face's PyTorch T5 is the independent check of the tensor names: its encoder on the
saved file gives our hidden states, and its decoder, given the saved memory projection as its
cross-attention cache, decodes our greedy reconstructions.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from _demo_checkpoint import ROOT, demo_workdir, training_texts
from hub_stand_in import HubStandIn
from t5vae_jax import api
from t5vae_jax import evaluation
from t5vae_jax import export
from t5vae_jax import latent
from t5vae_jax import pretrained
from t5vae_jax import t5 as t5_lib

REPO = "someone/t5vae-demo"
TOKEN = "hf_stand_in_write_token"  # hub_stand_in.DEFAULT_TOKENS: user "someone"
SAVED_FILES = {
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "README.md",
}


@pytest.fixture(scope="module")
def phase_dir(tmp_path_factory):
  """A copy of the demo's phase2 (so the eval.json written here is seen by no other test)."""
  source = demo_workdir(tmp_path_factory) / "phase2"
  target = tmp_path_factory.mktemp("export_run") / "demo" / "phase2"
  shutil.copytree(source, target)
  return target


@pytest.fixture(scope="module")
def eval_result(phase_dir):
  """An eval.json as evaluate_phase writes it, for the latest step (800)."""
  result = {
      "run": "demo/phase2",
      "phase_dir": str(phase_dir),
      "checkpoint": "latest",
      "step": 800,
      "split": "test",
      "data": "synthetic",
      "num_truncated": 0,
      "ppl": 2.61,
      "kl": 7.48,
      "neg_elbo": 9.9,
      "mi": 3.88,
      "au": 16,
      "rec": 2.42,
      "mi_batch": 4.19,
      "ppl_elbo": 2.75,
      "num_samples": 10,
      "ppl_word": 2.2,
  }
  result["row"] = evaluation.markdown_row("demo/phase2@800", result)
  (phase_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
  return result


@pytest.fixture(scope="module")
def vae(phase_dir):
  return api.T5VAE.load(phase_dir)


@pytest.fixture(scope="module")
def texts(phase_dir):
  return [r["text"] for r in training_texts(phase_dir.parent)[:12]] + ["ünïcode wörds ."]


@pytest.fixture(scope="module")
def reference(vae, texts):
  mu, logvar = vae.encode(texts)
  return {"mu": mu, "logvar": logvar, "reconstruct": vae.reconstruct(texts)}


@pytest.fixture(scope="module")
def saved(vae, eval_result, tmp_path_factory):
  return pathlib.Path(vae.save_pretrained(tmp_path_factory.mktemp("saved") / "t5vae-demo"))


CHILD = r"""
import json, os, sys
job = json.loads(sys.argv[1])
opened = []
def audit(event, args):
  if event in ("open", "os.listdir", "os.scandir") and args and isinstance(args[0], str):
    if any(os.path.abspath(args[0]).startswith(root) for root in job["forbidden"]):
      opened.append(args[0])
sys.addaudithook(audit)
from t5vae_jax import api, latent
from t5vae_jax.pretrained import CheckpointError
def outputs(vae):
  mu, logvar = vae.encode(job["texts"])
  return {"mu": mu.tolist(), "logvar": logvar.tolist(), "reconstruct": vae.reconstruct(job["texts"]),
          "step": vae.step}
def push_error(vae, repo, **kwargs):
  try:
    vae.push_to_hub(repo, **kwargs)
  except CheckpointError as e:
    return str(e)
out = {}
vae = api.T5VAE.load(job["alone"])
out["dir"] = outputs(vae)
out["opened"] = list(opened)
token = os.environ.pop("HF_TOKEN")
out["no_token"] = push_error(vae, job["repo"])
out["bad_token"] = push_error(vae, job["repo"], token="hf_not_a_token")
os.environ["HF_TOKEN"] = token
out["other_namespace"] = push_error(vae, "someone-else/t5vae-demo")
out["commit_url"] = str(vae.push_to_hub(job["repo"]))
out["hub"] = outputs(api.T5VAE.load(job["repo"]))
latent.main(["reconstruct", "--phase_dir", job["repo"], "--output", job["cli_output"]]
            + [arg for text in job["texts"] for arg in ("--text", text)])
print("RESULTS " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def child(saved, phase_dir, texts, tmp_path_factory):
  """(results, stand-in) of CHILD: load the directory alone, push, load by repo id."""
  alone = tmp_path_factory.mktemp("alone") / "model"
  shutil.copytree(saved, alone)
  workdir = tmp_path_factory.mktemp("child_cwd")
  with HubStandIn() as stand_in:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HF_HUB_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT")
    }
    env.update(
        PYTHONPATH=str(ROOT),
        HF_ENDPOINT=stand_in.endpoint,
        HF_TOKEN=TOKEN,
        HF_HOME=str(tmp_path_factory.mktemp("hf_home")),
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        T5VAE_HUB_TIMEOUT="5",
        # The stand-in speaks the git-lfs upload protocol, which huggingface_hub uses
        # without hf_xet; hf_xet's own (Xet CAS) protocol is not stood in for.
        HF_HUB_DISABLE_XET="1",
    )
    training = api.load_config(phase_dir)  # and the data it names (the demo's tfds_dir)
    forbidden = [
        str(phase_dir.parent),
        str(demo_workdir(tmp_path_factory)),
        str(saved),
        os.path.abspath(training.data.tfds_dir),
    ]
    job = {
        "alone": str(alone),
        "texts": texts,
        "repo": REPO,
        "cli_output": str(workdir / "cli.txt"),
        "forbidden": forbidden,
    }
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(job)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    results = json.loads(lines[-1][len("RESULTS ") :])
    results["cli"] = (workdir / "cli.txt").read_text(encoding="utf-8").splitlines()
    yield results, stand_in


def _same_outputs(got, reference):
  np.testing.assert_allclose(got["mu"], reference["mu"], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(got["logvar"], reference["logvar"], rtol=1e-6, atol=1e-6)
  assert got["reconstruct"] == reference["reconstruct"]


def test_saved_directory(saved, vae, phase_dir, eval_result):
  import yaml

  assert {p.name for p in saved.iterdir()} == SAVED_FILES
  config = json.loads((saved / "config.json").read_text())
  section = config.pop("t5vae")
  assert t5_lib.T5Config.from_hf_dict(config) == vae.model.config  # demo: dropout 0 as well
  assert config["architectures"] == ["T5ForConditionalGeneration"]
  assert section["vae"] == {
      "latent_dim": 16,
      "pooling": "max",
      "pool_layers": "last",
      "pool_padding": False,
      "pool_dropout": False,
      "latent_injection": "cross_attention",
  }
  assert (section["dtype"], section["max_len"], section["bucket_lengths"], section["step"]) == (
      "auto",
      16,
      [16],
      800,
  )
  assert section["eval"] == eval_result
  assert section["training_config"] == json.loads((phase_dir / "config.json").read_text())
  # Weights: Hugging Face's names for the T5 part (no tied copies, no head: tied), float32.
  state = pretrained.read_safetensors(saved / "model.safetensors")
  t5_part = {k: v for k, v in vae.params.items() if k not in export.VAE_KEYS}
  want = t5_lib.hf_state_dict_from_params(t5_part)
  assert set(state) == set(want) | set(export.VAE_KEYS.values())
  assert "lm_head.weight" not in state and "encoder.embed_tokens.weight" not in state
  for key, value in want.items():
    np.testing.assert_array_equal(state[key], value, err_msg=key)
  np.testing.assert_array_equal(
      state["t5vae.memory_proj.weight"], np.asarray(vae.params["memory_proj"]["kernel"]).T
  )
  assert state["t5vae.mu.weight"].shape == (16, 64)
  header = json.loads(
      (saved / "model.safetensors").read_bytes()[8:][
          : int.from_bytes((saved / "model.safetensors").read_bytes()[:8], "little")
      ]
  )
  assert header["__metadata__"] == {"format": "pt"}
  assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"F32"}
  # The model card: hub metadata, the eval row with its header, the training config.
  card = (saved / "README.md").read_text(encoding="utf-8")
  assert card.startswith("---\n")
  metadata = yaml.safe_load(card.split("---\n")[1])
  assert metadata["library_name"] == "t5vae-jax" and "t5vae-jax" in metadata["tags"]
  assert metadata["datasets"] == ["synthetic"] and "base_model" not in metadata
  assert f"{evaluation.markdown_header()}\n{eval_result['row']}\n" in card
  training_json = card.split("```json\n")[1].split("\n```")[0]
  assert json.loads(training_json) == section["training_config"]


def test_eval_json_of_another_step_is_left_out(vae, eval_result, tmp_path):
  at_600 = api.T5VAE.load(vae.path, step=600)
  saved = at_600.save_pretrained(tmp_path / "at600")
  assert json.loads((saved / "config.json").read_text())["t5vae"]["step"] == 600
  assert json.loads((saved / "config.json").read_text())["t5vae"]["eval"] is None
  assert eval_result["row"] not in (saved / "README.md").read_text()


def test_a_fresh_process_loads_the_directory_alone(child, reference):
  results, _ = child
  assert results["opened"] == []  # nothing of the training run, nor the original directory
  assert results["dir"]["step"] == 800
  _same_outputs(results["dir"], reference)


def test_push_to_hub_then_load_by_repo_id(child, saved, reference):
  results, stand_in = child
  _same_outputs(results["hub"], reference)
  assert results["cli"] == reference["reconstruct"]  # python -m t5vae_jax.latent on a repo id
  # What reached the hub: the saved directory byte for byte (pushed from the reloaded copy, so
  # a load -> save loses nothing), plus the repo's first .gitattributes.
  repo = stand_in.repos[REPO]
  assert set(repo.files) == SAVED_FILES | {".gitattributes"}
  for name in SAVED_FILES:
    assert repo.files[name] == (saved / name).read_bytes(), name
  assert [c["repo"] for c in stand_in.commits] == [REPO]
  assert results["commit_url"] == f"{stand_in.endpoint}/{REPO}/commit/{repo.sha}"
  calls = [(r["server"], r["method"], r["path"].split("?")[0]) for r in stand_in.requests]
  weights_sha256 = __import__("hashlib").sha256(repo.files["model.safetensors"]).hexdigest()
  for call in [
      ("_HubHandler", "POST", "/api/repos/create"),
      ("_HubHandler", "POST", "/api/validate-yaml"),
      ("_HubHandler", "POST", f"/api/models/{REPO}/preupload/main"),
      ("_HubHandler", "POST", f"/{REPO}.git/info/lfs/objects/batch"),
      ("_CdnHandler", "PUT", f"/lfs-upload/{weights_sha256}"),
      ("_HubHandler", "POST", f"/{REPO}.git/info/lfs/objects/verify"),
      ("_HubHandler", "POST", f"/api/models/{REPO}/commit/main"),
  ]:
    assert call in calls, call
  assert "README.md" not in stand_in.requested(REPO)  # the load fetches what it reads only


def test_hub_refusals_are_one_line(child):
  results, _ = child
  for key, says in (
      ("no_token", "HTTP 401"),
      ("bad_token", "HTTP 401"),
      ("other_namespace", "HTTP 403"),
  ):
    message = results[key]
    assert message and "\n" not in message, (key, message)
    repo = "someone-else/t5vae-demo" if key == "other_namespace" else REPO
    assert message.startswith(f"{repo}: the hub (http://127.0.0.1:") and says in message, message
    assert "hf auth login" in message


def _hf_greedy(model, memory, max_len, eos_id):
  """Greedy decoding with Hugging Face's T5 decoder, the latent's memory (B, layers, heads,
  1, d_kv) as every layer's cross-attention key and value (a filled cross-attention cache;
  the encoder states it would project are a dummy that is never read)."""
  import torch
  from transformers.cache_utils import DynamicCache, EncoderDecoderCache

  batch, config = memory.shape[0], model.config
  tokens = torch.full((batch, 1), config.decoder_start_token_id, dtype=torch.long)
  for _ in range(max_len):
    cross = DynamicCache(config=config)
    cache = EncoderDecoderCache(DynamicCache(config=config), cross)
    for layer in range(config.num_decoder_layers):
      cross.update(memory[:, layer], memory[:, layer], layer)
      cache.is_updated[layer] = True
    out = model.decoder(
        input_ids=tokens,
        encoder_hidden_states=torch.zeros(batch, 1, config.d_model),
        encoder_attention_mask=torch.ones(batch, 1),
        cache=cache,
        use_cache=True,
    ).last_hidden_state
    logits = model.lm_head(out[:, -1] * config.d_model**-0.5)  # tied head
    tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
    if (tokens == eos_id).any(dim=1).all():
      break
  rows = []
  for row in tokens[:, 1:].tolist():
    rows.append(row[: row.index(eos_id)] if eos_id in row else row)
  return rows


def test_hugging_face_pytorch_reads_the_weights(saved, vae, texts):
  """transformers' T5EncoderModel on the saved file gives our encoder's hidden states; max
  pooling them and the saved t5vae.mu / t5vae.logvar give our posterior; its
  T5ForConditionalGeneration lacks exactly the cross-attention k/v the latent replaces, and its
  decoder, fed the saved t5vae.memory_proj of mu, decodes our greedy reconstructions."""
  import jax
  import torch
  import transformers
  from t5vae_jax import model as model_lib

  token_ids = vae.tokenize(texts)
  length = max(len(t) for t in token_ids)
  ids = np.zeros((len(token_ids), length), np.int64)
  mask = np.zeros_like(ids)
  for i, row in enumerate(token_ids):
    ids[i, : len(row)], mask[i, : len(row)] = row, 1
  encode = jax.jit(
      lambda params, ids, mask: vae.model.apply(  # eager: seconds of small ops
          {"params": params}, ids, mask, method=model_lib.T5VAEModel.encode
      )
  )
  ours = np.asarray(encode(vae.params, ids, mask))
  encoder = transformers.T5EncoderModel.from_pretrained(str(saved)).eval()
  with torch.no_grad():
    theirs = encoder(
        input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)
    ).last_hidden_state.numpy()
  real = mask.astype(bool)
  np.testing.assert_allclose(theirs[real], ours[real], rtol=1e-4, atol=1e-5)
  state = pretrained.read_safetensors(saved / "model.safetensors")
  pooled = np.where(real[..., None], theirs.astype(np.float64), -np.inf).max(axis=1)
  mu, logvar = vae.encode(texts)
  np.testing.assert_allclose(pooled @ state["t5vae.mu.weight"].T, mu, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(pooled @ state["t5vae.logvar.weight"].T, logvar, rtol=1e-4, atol=1e-5)

  full, info = transformers.T5ForConditionalGeneration.from_pretrained(
      str(saved), output_loading_info=True
  )
  layers = vae.model.config.num_decoder_layers
  assert sorted(info["missing_keys"]) == sorted(
      f"decoder.block.{i}.layer.1.EncDecAttention.{kv}.weight" for i in range(layers) for kv in "kv"
  )
  assert sorted(info["unexpected_keys"]) == sorted(export.VAE_KEYS.values())
  assert not info["mismatched_keys"]
  cfg = vae.model.config
  memory = (mu.astype(np.float64) @ state["t5vae.memory_proj.weight"].T).reshape(
      len(texts), layers, cfg.num_heads, 1, cfg.d_kv
  )
  with torch.no_grad():
    decoded = _hf_greedy(
        full.eval(), torch.tensor(memory, dtype=torch.float32), vae.max_len, cfg.eos_token_id
    )
  assert decoded == vae.decode_ids(mu)
  assert [
      vae.tokenizer.decode(row, skip_special_tokens=True).strip() for row in decoded
  ] == vae.reconstruct(texts)


def test_latent_cli_reads_a_saved_directory(saved, reference, texts, capsys):
  capsys.readouterr()
  latent.main(
      ["reconstruct", "--phase_dir", str(saved)]
      + [arg for text in texts for arg in ("--text", text)]
  )
  assert capsys.readouterr().out.splitlines() == reference["reconstruct"]
  with pytest.raises(SystemExit) as exit_info:
    latent.main(["sample", "--phase_dir", str(saved), "--checkpoint", "best"])
  err = capsys.readouterr().err.strip().splitlines()
  assert exit_info.value.code == 2 and len(err) == 1, err
  assert err[0] == (
      f"error: {saved}: a saved T5-VAE holds one checkpoint (step 800); which= "
      "and step= choose among a phase directory's checkpoints"
  )


def _edited_copy(saved, tmp_path, edit_state=None, edit_config=None):
  from safetensors.numpy import save_file

  copy = tmp_path / "edited"
  shutil.copytree(saved, copy)
  if edit_state is not None:
    state = pretrained.read_safetensors(copy / "model.safetensors")
    edit_state(state)
    save_file(state, str(copy / "model.safetensors"), metadata={"format": "pt"})
  if edit_config is not None:
    config = json.loads((copy / "config.json").read_text())
    edit_config(config)
    (copy / "config.json").write_text(json.dumps(config))
  return copy


@pytest.mark.parametrize(
    "edit_state, edit_config, says",
    [
        (
            lambda s: s.pop("t5vae.mu.weight"),
            None,
            "model.safetensors: no tensor t5vae.mu.weight (the VAE's mu projection)",
        ),
        (
            lambda s: s.pop("encoder.block.1.layer.0.SelfAttention.q.weight"),
            None,
            (
                "model.safetensors: no tensor encoder.block.1.layer.0.SelfAttention.q.weight, which "
                "config.json's model needs"
            ),
        ),
        (
            lambda s: s.update({"t5vae.memory_proj.weight": np.zeros((128, 8), np.float32)}),
            None,
            (
                "model.safetensors: tensor t5vae.memory_proj.weight has shape [128, 8], config.json "
                "implies [128, 16]"
            ),
        ),
        (
            lambda s: s.update({"encoder.extra.weight": np.zeros(3, np.float32)}),
            None,
            "model.safetensors: unexpected tensor encoder.extra.weight",
        ),
        (
            None,
            lambda c: c.pop("t5vae"),
            (
                'config.json: no "t5vae" section: not a saved T5-VAE (nor a phase directory: no '
                "model.json)"
            ),
        ),
        (
            None,
            lambda c: c["t5vae"]["vae"].update(pooling="median"),
            (
                "config.json: bad model settings (ValueError: model.pooling='median' is not one of "
                "('max', 'mean'))"
            ),
        ),
    ],
)
def test_damaged_saved_directories_are_one_line_errors(
    saved, tmp_path, edit_state, edit_config, says
):
  copy = _edited_copy(saved, tmp_path, edit_state, edit_config)
  with pytest.raises(pretrained.CheckpointError) as error:
    api.T5VAE.load(copy)
  assert str(error.value) == f"{copy}/{says}"


def test_missing_weights_file(saved, tmp_path):
  copy = _edited_copy(saved, tmp_path)
  (copy / "model.safetensors").unlink()
  with pytest.raises(pretrained.CheckpointError, match=r"model.safetensors: missing \(a saved "):
    api.T5VAE.load(copy)


def test_an_untied_gated_self_prefix_vae_round_trips(vae, fixtures_dir, tmp_path):
  """The other layout: T5 v1.1's fixture (gated-gelu, untied head, a pretrained T5's
  cross-attention weights, unused by a VAE) under a mean-pooled self_prefix VAE, built here
  (no training; the demo's tokenizer rides along). Saved with lm_head.weight; loaded back it
  has every weight unchanged; transformers finds no T5 weight missing."""
  import jax
  import transformers
  from t5vae_jax import model as model_lib

  config, t5_params = pretrained.load_t5(str(fixtures_dir / "t5_v1_1"))
  model = model_lib.T5VAEModel(
      config, vae=model_lib.VAEConfig(latent_dim=6, pooling="mean", latent_injection="self_prefix")
  )
  rng = np.random.default_rng(1)  # the VAE's own weights, drawn here (an init costs 12 s)
  memory = config.num_decoder_layers * config.num_heads * config.d_kv
  params = {
      **t5_params,
      **{
          name: {"kernel": rng.normal(0, 0.3, shape).astype(np.float32)}
          for name, shape in (
              ("mu", (config.d_model, 6)),
              ("logvar", (config.d_model, 6)),
              ("memory_proj", (6, memory)),
          )
      },
  }
  original = api.T5VAE(model, params, vae.tokenizer, max_len=8, bucket_lengths=(8,), step=5)
  saved = original.save_pretrained(tmp_path / "v1_1")
  loaded = api.T5VAE.load(saved)
  assert loaded.model == model and (loaded.max_len, loaded.bucket_lengths) == (8, (8,))
  state = pretrained.read_safetensors(saved / "model.safetensors")
  np.testing.assert_array_equal(
      state["lm_head.weight"], np.asarray(t5_params["lm_head"]["kernel"]).T
  )
  assert "decoder.block.2.layer.1.EncDecAttention.k.weight" in state
  got = {
      tuple(k.key for k in path): np.asarray(leaf)
      for path, leaf in jax.tree_util.tree_flatten_with_path(loaded.params)[0]
  }
  want = {
      tuple(k.key for k in path): np.asarray(leaf)
      for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
  }
  assert got.keys() == want.keys()  # every weight, the unused cross-attention ones included
  for key, value in want.items():
    np.testing.assert_array_equal(got[key], value, err_msg=str(key))
  _, info = transformers.T5ForConditionalGeneration.from_pretrained(
      str(saved), output_loading_info=True
  )
  assert not info["missing_keys"] and not info["mismatched_keys"]
  assert sorted(info["unexpected_keys"]) == sorted(export.VAE_KEYS.values())
