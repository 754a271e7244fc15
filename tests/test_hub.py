"""Hub ids: pretrained.resolve() against a hub stand-in on 127.0.0.1 (tests/hub_stand_in.py)
serving each public T5 family's real file list, and the one local-vs-hub rule (hub.is_hub_id)
that config validation, runtime.check_hub and the loaders share.

The downloads run in a subprocess (one online, one offline on the same cache): huggingface_hub
reads HF_ENDPOINT and HF_HUB_OFFLINE when it is imported, and this process is offline (conftest).
Weights are the tiny replicas of tests/_replicas.py; the files that must never be fetched are
placeholders, so fetching one shows in the request log.
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import time
from typing import NamedTuple, Optional

import pytest

from t5vae_jax import runtime
from t5vae_jax import config_validation as cv
from t5vae_jax import hub

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
import _replicas  # noqa: E402
from hub_stand_in import HubStandIn, Repo  # noqa: E402

NEVER_FETCHED = {
    "tf_model.h5",
    "rust_model.ot",
    "pytorch_model.bin",
    "flax_model.msgpack",
    "pytorch_model.bin.index.json",
    "pytorch_model-00001-of-00002.bin",
    "pytorch_model-00002-of-00002.bin",
    "README.md",
    ".gitattributes",
}
T5_SMALL_ONNX = [
    "onnx/encoder_model.onnx",
    "onnx/decoder_model.onnx",
    "onnx/decoder_with_past_model.onnx",
    "onnx/decoder_model_merged.onnx",
]
GENERATION_CONFIG = {
    "_from_model_config": True,
    "decoder_start_token_id": 0,
    "eos_token_id": 1,
    "pad_token_id": 0,
    "transformers_version": "4.27.0.dev0",
}
TOKENIZER_TEXT = [
    "the quick brown fox jumps over the lazy dog .",
    "pack my box with five dozen liquor jugs !",
    "a cat sat on the mat .",
]
BIN_SHARDS = ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
BIN_INDEX = {
    "metadata": {"total_size": 0},
    "weight_map": {"shared.weight": BIN_SHARDS[0], "lm_head.weight": BIN_SHARDS[1]},
}
TOKENIZER_CONFIG = {
    "additional_special_tokens": [f"<extra_id_{i}>" for i in range(3)],
    "eos_token": "</s>",
    "extra_ids": 3,
    "model_max_length": 512,
    "name_or_path": "google/t5-v1_1-small",
    "pad_token": "<pad>",
    "sp_model_kwargs": {},
    "tokenizer_class": "T5Tokenizer",
    "unk_token": "<unk>",
}
SPECIAL_TOKENS = {
    "eos_token": "</s>",
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "additional_special_tokens": [f"<extra_id_{i}>" for i in range(3)],
}


def placeholder(name: str) -> bytes:
  return f"placeholder for {name}: a file resolve() must not fetch\n".encode()


def with_files(directory: pathlib.Path, files: dict) -> dict[str, bytes]:
  """The repo's files: what a replica writer put in ``directory``, plus ``files`` (bytes, a
  dict for JSON, or None for a placeholder)."""
  out = Repo.from_dir(directory).files
  for name, content in files.items():
    out[name] = (
        placeholder(name)
        if content is None
        else json.dumps(content, indent=2).encode()
        if isinstance(content, dict)
        else content
    )
  out.setdefault(".gitattributes", b"*.bin filter=lfs diff=lfs merge=lfs -text\n")
  out.setdefault("README.md", b"---\nlanguage: en\nlicense: apache-2.0\n---\n")
  return out


def side_files(spiece_model: bytes, *names) -> dict:
  """generation_config.json and tokenizer files as google/t5-v1_1-small's: spiece.model (a real
  tiny one), tokenizer_config.json, special_tokens_map.json; tokenizer.json a placeholder (a
  real one takes seconds to convert; the tokenizer is loaded from the t5-v1_1 repo, which has
  none)."""
  known = {
      "special_tokens_map.json": SPECIAL_TOKENS,
      "generation_config.json": GENERATION_CONFIG,
      "tokenizer_config.json": TOKENIZER_CONFIG,
      "spiece.model": spiece_model,
      "tokenizer.json": placeholder("tokenizer.json"),
  }
  return {name: known[name] for name in names}


@pytest.fixture(scope="module")
def spiece_model() -> bytes:
  """A 32-piece SentencePiece model with T5's special ids (<pad> 0, </s> 1, <unk> 2)."""
  import io
  import sentencepiece as spm

  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(TOKENIZER_TEXT * 10),
      model_writer=model,
      model_type="unigram",
      vocab_size=32,
      pad_id=0,
      pad_piece="<pad>",
      eos_id=1,
      eos_piece="</s>",
      unk_id=2,
      unk_piece="<unk>",
      bos_id=-1,
      minloglevel=2,
  )
  return model.getvalue()


class Family(NamedTuple):
  repo: Repo
  reference: Optional[tuple[str, str]]  # (replica family, dtype): what load_t5 must give back
  fetched: set[str]  # what resolve() must download, and nothing else


@pytest.fixture(scope="module")
def families(tmp_path_factory, spiece_model) -> dict[str, Family]:
  root = tmp_path_factory.mktemp("hub_families")
  out = {}
  # t5-small (2020; now google-t5/t5-small, the old id redirects): six copies of the weights.
  src = _replicas.t5_2020(root / "t5-small", weights=("safetensors",))
  out["google-t5/t5-small"] = Family(
      Repo(
          with_files(
              src,
              {
                  "pytorch_model.bin": None,
                  "tf_model.h5": None,
                  "flax_model.msgpack": None,
                  "rust_model.ot": None,
                  **{name: None for name in T5_SMALL_ONNX},
                  **side_files(
                      spiece_model, "spiece.model", "tokenizer.json", "generation_config.json"
                  ),
              },
          )
      ),
      ("t5_2020", "float32"),
      {
          "config.json",
          "generation_config.json",
          "spiece.model",
          "tokenizer.json",
          "model.safetensors",
      },
  )
  # google/t5-v1_1-small: pytorch_model.bin, flax_model.msgpack, tf_model.h5; no safetensors.
  src = _replicas.t5_v1_1(root / "t5-v1_1-small", files=("msgpack",))  # + tf_model.h5
  out["google/t5-v1_1-small"] = Family(
      Repo(
          with_files(
              src,
              {
                  "pytorch_model.bin": None,
                  **side_files(
                      spiece_model,
                      "spiece.model",
                      "special_tokens_map.json",
                      "tokenizer_config.json",
                  ),
              },
          )
      ),
      ("t5_v1_1", "float32"),
      {
          "config.json",
          "spiece.model",
          "special_tokens_map.json",
          "tokenizer_config.json",
          "flax_model.msgpack",
      },
  )
  # google/flan-t5-xl-like: bfloat16 safetensors shards + index, and PyTorch shards + index.
  src = _replicas.flan_t5(root / "flan-t5-xl", dtype="bfloat16", shards=2)
  shards = sorted(p.name for p in src.glob("model-*.safetensors"))
  assert shards == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
  out["google/flan-t5-xl"] = Family(
      Repo(
          with_files(
              src,
              {
                  "pytorch_model.bin.index.json": BIN_INDEX,
                  **{name: None for name in BIN_SHARDS},
                  "tf_model.h5": None,
                  **side_files(
                      spiece_model,
                      "spiece.model",
                      "tokenizer.json",
                      "tokenizer_config.json",
                      "special_tokens_map.json",
                      "generation_config.json",
                  ),
              },
          )
      ),
      ("flan_t5", "bfloat16"),
      {
          "config.json",
          "generation_config.json",
          "spiece.model",
          "tokenizer.json",
          "tokenizer_config.json",
          "special_tokens_map.json",
          "model.safetensors.index.json",
          *shards,
      },
  )
  # PyTorch only (tests/fixtures' torch.save zip; resolve only), and PyTorch shards only.
  fixture = ROOT / "tests" / "fixtures" / "t5_v1_0"
  out["org/t5-bin-only"] = Family(
      Repo(
          {
              "config.json": (fixture / "config.json").read_bytes(),
              "pytorch_model.bin": (fixture / "pytorch_model.bin").read_bytes(),
              "tf_model.h5": placeholder("tf_model.h5"),
          }
      ),
      None,
      {"config.json", "pytorch_model.bin"},
  )
  out["org/t5-bin-sharded"] = Family(
      Repo(
          {
              "config.json": json.dumps(_replicas.config_v1_1()).encode(),
              "pytorch_model.bin.index.json": json.dumps(BIN_INDEX).encode(),
              **{name: f"{name}: not read".encode() for name in BIN_SHARDS},
              "rust_model.ot": placeholder("rust_model.ot"),
          }
      ),
      None,
      {"config.json", "pytorch_model.bin.index.json", *BIN_SHARDS},
  )
  return out


# [num_decoder_layers, feed_forward_proj, tie_word_embeddings] each family's config.json gives.
REPLICA_CONFIGS = {
    "t5_2020": [_replicas.SHAPE["num_layers"], "relu", True],
    "t5_v1_1": [_replicas.DECODER_LAYERS_V1_1, "gated-gelu", False],
    "flan_t5": [_replicas.DECODER_LAYERS_V1_1, "gated-gelu", False],
}

ERROR_REPOS = {
    "org/private-t5": Repo({"config.json": b"{}", "model.safetensors": b"x"}, private=True),
    "org/gated-t5": Repo({"config.json": b"{}", "model.safetensors": b"x"}, gated=True),
    "org/tf-only-t5": Repo(
        {
            "config.json": b"{}",
            "tf_model.h5": placeholder("tf_model.h5"),
            "rust_model.ot": placeholder("rust_model.ot"),
            "README.md": b"#",
        }
    ),
}

CLIENT = r"""
import json, os, sys, time
import numpy as np
from t5vae_jax import pretrained
from t5vae_jax import t5 as t5_lib
import _replicas
results = []
for job in json.loads(sys.argv[1]):
  if job.get("offline"):  # from here on as with HF_HUB_OFFLINE=1 (what runtime.check_hub sets)
    import huggingface_hub.constants
    os.environ["HF_HUB_OFFLINE"] = "1"
    huggingface_hub.constants.HF_HUB_OFFLINE = True
  os.environ.pop("HF_TOKEN", None)
  os.environ.update({"HF_TOKEN": job["token"]} if job.get("token") else {})
  start, wall, out = time.perf_counter(), time.time(), {}
  try:
    directory = pretrained.resolve(job["name"])
    out.update(dir=str(directory), files=sorted(os.listdir(directory)))
    if job.get("reference"):  # load_t5 of the hub id gives the replica's weights
      config, params = pretrained.load_t5(job["name"])
      family, dtype = job["reference"]
      want = _replicas.reference_state(family, dtype=dtype)
      got = t5_lib.hf_state_dict_from_params(params)
      out["weights_checked"] = sum(np.array_equal(got[k], want[k]) for k in got)
      out["weights_loaded"] = len(got)
      out["config"] = [config.num_decoder_layers, config.feed_forward_proj,
                       config.tie_word_embeddings]
    if job.get("text"):  # transformers' tokenizer from the downloaded files
      out["token_ids"] = pretrained.load_tokenizer(job["name"])(job["text"])["input_ids"]
  except Exception as e:
    out.update(error=str(e), type=type(e).__name__)
  out.update(seconds=time.perf_counter() - start, start=wall)
  results.append(out)
print("RESULTS " + json.dumps(results))
"""


def run_client(jobs, endpoint, hf_home, **env):
  """pretrained.resolve() (and load_t5 where a job names a replica) in a fresh process."""
  clean = {
      k: v
      for k, v in os.environ.items()
      if k not in ("HF_HUB_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT")
  }
  clean.update(
      PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
      HF_ENDPOINT=endpoint,
      HF_HOME=str(hf_home),
      HF_HUB_DISABLE_PROGRESS_BARS="1",
      T5VAE_HUB_TIMEOUT="1",
      **env,
  )
  result = subprocess.run(
      [sys.executable, "-c", CLIENT, json.dumps(jobs)],
      cwd=ROOT,
      env=clean,
      capture_output=True,
      text=True,
      timeout=120,
  )
  lines = [line for line in result.stdout.splitlines() if line.startswith("RESULTS ")]
  assert result.returncode == 0 and lines, result.stderr[-3000:]
  return json.loads(lines[-1][len("RESULTS ") :])


@pytest.fixture(scope="module")
def hub_runs(families, tmp_path_factory):
  """(stand-in, {name: result} online, the same offline afterwards on the same cache, the
  requests made offline). One process for both: each start imports JAX (seconds on 2 cores)."""
  hf_home = tmp_path_factory.mktemp("hf_home")
  repos = {name: family.repo for name, family in families.items()}
  with HubStandIn(
      {**repos, **ERROR_REPOS}, renamed={"t5-small": "google-t5/t5-small"}, hang=("org/hangs",)
  ) as stand_in:
    name_of = {"google-t5/t5-small": "t5-small"}
    jobs = [
        dict(name=name_of.get(name, name), reference=family.reference)
        for name, family in families.items()
    ]
    jobs[1]["text"] = TOKENIZER_TEXT[0]  # google/t5-v1_1-small
    jobs += [dict(name=name) for name in ERROR_REPOS]
    jobs += [
        dict(name="org/no-such-t5"),
        dict(name="org/no-such-t5-with-token", token="hf_x"),
        dict(name="org/hangs"),
    ]
    offline_jobs = [
        dict(name="t5-small", offline=True),
        dict(name="google/t5-v1_1-small"),
        dict(name="google/flan-t5-xl"),
        dict(name="org/no-such-t5"),
    ]
    results = run_client(jobs + offline_jobs, stand_in.endpoint, hf_home)
    online = {job["name"]: result for job, result in zip(jobs, results)}
    offline = {job["name"]: result for job, result in zip(offline_jobs, results[len(jobs) :])}
    requests_offline = [r for r in stand_in.requests if r["time"] >= offline["t5-small"]["start"]]
    yield stand_in, online, offline, requests_offline


@pytest.mark.parametrize(
    "repo",
    [
        "google-t5/t5-small",
        "google/t5-v1_1-small",
        "google/flan-t5-xl",
        "org/t5-bin-only",
        "org/t5-bin-sharded",
    ],
)
def test_each_family_fetches_config_tokenizer_and_one_weight_format(hub_runs, families, repo):
  stand_in, online, _, _ = hub_runs
  reference, expected = families[repo].reference, families[repo].fetched
  result = online["t5-small" if repo == "google-t5/t5-small" else repo]
  assert "error" not in result, result
  assert stand_in.requested(repo) == expected  # asked for exactly these, and nothing else
  assert not stand_in.requested(repo) & (NEVER_FETCHED - expected)
  assert set(result["files"]) == expected  # the snapshot folder in the HF cache
  assert "/hub/models--" in result["dir"] and "/snapshots/" in result["dir"]
  if reference is not None:  # load_t5 of the hub id: the replica's weights and config
    assert result["weights_checked"] == result["weights_loaded"] > 20, result
    assert result["config"] == REPLICA_CONFIGS[reference[0]]


def test_the_tokenizer_loads_from_the_downloaded_files(hub_runs, spiece_model):
  """google/t5-v1_1-small has spiece.model, tokenizer_config.json, special_tokens_map.json:
  transformers' T5 tokenizer from them encodes as SentencePiece itself does, plus </s>."""
  import sentencepiece as spm

  _, online, _, _ = hub_runs
  want = spm.SentencePieceProcessor(model_proto=spiece_model).encode(TOKENIZER_TEXT[0]) + [1]
  result = online["google/t5-v1_1-small"]
  assert result.get("token_ids") == want and len(want) > 5, result


def test_a_second_load_comes_from_the_cache_offline(hub_runs):
  _, online, offline, requests_offline = hub_runs
  assert requests_offline == []
  for name in ("t5-small", "google/t5-v1_1-small", "google/flan-t5-xl"):
    assert offline[name].get("dir") == online[name]["dir"], offline[name]
  error = offline["org/no-such-t5"]
  assert error["type"] == "CheckpointError"
  assert error["error"].startswith(
      "org/no-such-t5: not a local directory, and the hub is not "
      "asked (HF_HUB_OFFLINE=1); it is not in the Hugging Face cache"
  )


@pytest.mark.parametrize(
    "name, says",
    [
        (
            "org/private-t5",
            "has no model org/private-t5 that this machine may read (HTTP 401 "
            "RepoNotFound: a missing repo, or a private one without a token",
        ),
        ("org/no-such-t5", "(HTTP 401 RepoNotFound"),
        ("org/no-such-t5-with-token", "(HTTP 404 RepoNotFound"),
        ("org/gated-t5", "the hub repo is gated (HTTP 401 GatedRepo): accept its terms on "),
        (
            "org/tf-only-t5",
            "the hub repo holds none of the weight files this loader reads (model."
            "safetensors, model.safetensors.index.json, flax_model.msgpack, "
            "pytorch_model.bin, pytorch_model.bin.index.json); it holds "
            "README.md, config.json, rust_model.ot, tf_model.h5",
        ),
        ("org/hangs", "the hub (http://127.0.0.1:"),
    ],
)
def test_hub_failures_are_one_line_naming_the_repo(hub_runs, name, says):
  stand_in, online, _, _ = hub_runs
  result = online[name]
  assert result.get("type") == "CheckpointError", result
  assert result["error"].startswith(f"{name}: ") and "\n" not in result["error"]
  assert says in result["error"], result["error"]
  if name == "org/tf-only-t5":
    assert stand_in.requested(name) == set()  # the file list said it all
  if name == "org/hangs":
    assert "did not answer within 1 s (T5VAE_HUB_TIMEOUT)" in result["error"]
    assert result["seconds"] < 5


def test_a_hub_that_never_answers_is_bypassed_by_check_hub(monkeypatch, tmp_path):
  """runtime.check_hub asks once with a timeout, then puts huggingface_hub offline: resolve() ends
  at once with one line instead of waiting for the hub."""
  from t5vae_jax import pretrained

  monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # restored after the test: check_hub sets it to 1
  monkeypatch.setattr(hub, "offline_reason", None)  # and this
  with HubStandIn(silent=True) as stand_in:
    monkeypatch.setenv("HF_ENDPOINT", stand_in.endpoint)
    start = time.perf_counter()
    assert runtime.check_hub(["~/t5-small", "./ckpt", "gs://bucket/t5"], timeout_s=0.5)
    assert stand_in.requests == []  # no hub id: the hub is not asked
    assert not runtime.check_hub(["org/never-downloaded-t5"], timeout_s=0.5)
    assert len(stand_in.requests) == 1 and os.environ["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(pretrained.CheckpointError) as error:
      pretrained.resolve("org/never-downloaded-t5")
    assert str(error.value).startswith(
        f"org/never-downloaded-t5: not a local directory, and the hub ({stand_in.endpoint}) did "
        "not answer within 0.5 s (T5VAE_HUB_TIMEOUT); it is not in the Hugging Face cache ("
    )
    assert str(error.value).endswith(
        "pass a local checkpoint directory (config.json, weights, tokenizer files)"
    )
    assert time.perf_counter() - start < 3


# ----------------------------------------------------------------------------- the rule
@pytest.mark.parametrize(
    "name, is_hub",
    [
        ("t5-small", True),
        ("google/t5-v1_1-small", True),
        ("google/flan-t5-xl", True),
        ("org/name.v2_x", True),
        ("~/ckpt/t5-small", False),
        ("~/t5-small", False),
        ("~", False),
        ("gs://bucket/t5-small", False),
        ("s3://b/t5", False),
        ("file:///tmp/t5", False),
        ("/abs/t5-small", False),
        ("./t5-small", False),
        ("../t5-small", False),
        (".", False),
        ("runs/ptb/phase1", False),
        ("org/name/", False),
        ("t5 small", False),
        ("org--x", False),
        ("org/x.git", False),
        ("-t5", False),
        ("", False),
        ("t" * 97, False),
    ],
)
def test_is_hub_id(name, is_hub):
  assert hub.is_hub_id(name) is is_hub


def test_an_existing_local_directory_is_local_even_when_it_looks_like_a_hub_id(
    tmp_path, monkeypatch
):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "google" / "t5-v1_1-small").mkdir(parents=True)
  (tmp_path / "t5-small").mkdir()
  assert not hub.is_hub_id("google/t5-v1_1-small") and not hub.is_hub_id("t5-small")
  assert hub.is_hub_id("google/t5-v1_1-base")


def test_the_call_sites_agree(tmp_path, monkeypatch):
  """config validation, runtime.check_hub, pretrained.resolve and tokenizer.load_tokenizer
  (config.data.tokenizer) read a name the same way."""
  from configs import default
  from t5vae_jax import pretrained
  from t5vae_jax import tokenizer as tokenizer_lib

  monkeypatch.setenv("HOME", str(tmp_path))
  monkeypatch.setenv("HF_HUB_OFFLINE", "0")
  (tmp_path / "ckpt").mkdir()
  config = default.get_config()
  with HubStandIn(silent=True) as stand_in:
    monkeypatch.setenv("HF_ENDPOINT", stand_in.endpoint)
    for name in ("~/missing/t5-small", "~/t5-small", "./missing", "runs/a/b"):
      with config.unlocked():
        config.model.pretrained = name
      errors = cv.collect_errors(config, 1)
      assert any(
          e.startswith(
              f"config.model.pretrained={name!r}: no such checkpoint directory "
              f"({os.path.abspath(hub.local_path(name))})"
          )
          for e in errors
      ), errors
      assert runtime.check_hub([name], timeout_s=0.5)  # not a hub id: the hub is not asked
      with pytest.raises(
          pretrained.CheckpointError,
          match=f"^{re.escape(name)}: no such checkpoint directory "
          rf"\({re.escape(os.path.abspath(hub.local_path(name)))}\)$",
      ):
        pretrained.resolve(name)
      with pytest.raises(
          FileNotFoundError,
          match="^Could not load a tokenizer from "
          f"{re.escape(repr(hub.local_path(name)))}: no such directory$",
      ):
        tokenizer_lib.load_tokenizer(name)
    assert stand_in.requests == []
  assert pretrained.resolve("~/ckpt") == pretrained.epath.Path(tmp_path / "ckpt")
  with config.unlocked():
    config.model.pretrained = "~/ckpt"
  assert not [e for e in cv.collect_errors(config, 1) if "model.pretrained" in e]
  with config.unlocked():
    config.model.pretrained = "google/t5-v1_1-small"  # a hub id: left to the loader
  assert not [e for e in cv.collect_errors(config, 1) if "model.pretrained" in e]
