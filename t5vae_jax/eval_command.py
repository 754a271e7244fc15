"""The evaluation command: ``python eval.py`` in a checkout, ``t5vae-eval`` when installed.

Evaluates trained phases: PPL (importance-weighted), KL, -ELBO, MI, AU, batched and jitted.

  t5vae-eval --workdir runs/ptb                       # each phase present, test split
  t5vae-eval --workdir runs/ptb --phase 2 --checkpoint best --split validation
  t5vae-eval --workdir runs/ptb --num_samples 100 --batch_size 32 --config.data.max_len=64
  t5vae-eval --workdir runs/demo --probe_labels auto  # + linear probes of the labels on mu

Each phase directory carries its config, model description and tokenizer, so no config file
is needed. Writes ``<workdir>/phase<N>/eval.json`` and prints one Markdown row per phase in the
paper's column order (| run | PPL | KL | -ELBO | MI | AU |, then rec, per-batch MI, PPL from
the ELBO, K and the per-word PPL of the baselines' tables). ``--config.x=y`` overrides a
value of the saved config (e.g. the data paths).
"""

import functools
import sys

from absl import app
from absl import flags

from t5vae_jax import cli
from t5vae_jax import runtime

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The training workdir (holds phase1/, phase2/).")
flags.DEFINE_integer("phase", None, "1 or 2; default: every phase present.")
flags.DEFINE_string("checkpoint", "latest", "latest | best | <step>.")
flags.DEFINE_enum("split", "test", ["validation", "test"], "Which split to evaluate.")
flags.DEFINE_integer("num_samples", 500, "K, importance samples per sentence (0: no IW-NLL).")
flags.DEFINE_integer(
    "iw_chunk",
    50,
    "Most importance samples per decoder pass (lowered to "
    "fit --max_logits_mib and --max_rows; the numbers do not depend on it).",
)
flags.DEFINE_integer("max_logits_mib", 1024, "Most MiB of logits in one decoder pass.")
flags.DEFINE_integer(
    "max_rows",
    0,
    "Most rows (batch x samples) in one decoder pass; "
    "0: by backend (512 on CPU, 65536 on accelerators). Speed only.",
)
flags.DEFINE_integer("batch_size", 64, "Global batch (a multiple of the number of devices).")
flags.DEFINE_integer(
    "mi_batch_size",
    256,
    "Batch size of the per-batch MI (He et al.'s "
    "calc_mi: analytic entropy, consecutive lines of the split).",
)
flags.DEFINE_integer("max_examples", 0, "Evaluate only the first N examples (0: all).")
flags.DEFINE_integer("seed", 0, "Seed of the latent draws.")
flags.DEFINE_string("data_dir", None, "Overrides config.data.dir (the raw dataset files).")
flags.DEFINE_string("tfds_dir", None, "Overrides config.data.tfds_dir.")
flags.DEFINE_string("output", "eval.json", "File name written in each phase directory.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.DEFINE_string(
    "probe_labels",
    "",
    "Linear probes on mu (t5vae_jax.probe): 'auto' (every "
    "label the data has), 'label' (Yelp's label column) or synthetic "
    "attributes, e.g. 'tense,number'. Held-out accuracy and majority baseline "
    "go to eval.json and a last column of the row. Default: none.",
)
flags.mark_flags_as_required(["workdir"])

_CONFIG_PREFIX = "--config."


def split_config_overrides(argv):
  """Pulls ``--config.key=value`` out of argv (absl does not know them): (argv, overrides)."""
  rest, overrides = [], []
  args = iter(argv)
  for arg in args:
    if arg.startswith(_CONFIG_PREFIX):
      item = arg[len(_CONFIG_PREFIX) :]
      if "=" not in item:  # --config.key value
        item = f"{item}={next(args, '')}"
      overrides.append(item)
    else:
      rest.append(arg)
  return rest, overrides


def _saved_dtype(phase_dir, config_overrides) -> str:
  """The phase's model.dtype as evaluate_phase will build it (saved config, then overrides)."""
  from t5vae_jax import api
  from t5vae_jax import checkpoint
  from t5vae_jax import config_validation

  config = api.load_config(phase_dir)
  if config is None:
    return "auto"  # evaluate_phase names the missing config.json
  config_validation.apply_overrides(config, config_overrides)
  return config.model.get("dtype") or checkpoint.read_model_spec(phase_dir)[2]


def main(argv, config_overrides=()):
  """eval.py's body; ``config_overrides``: the ``key=value`` of each ``--config.key=value``."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  runtime.setup_runtime()
  import jax
  from t5vae_jax import accelerator
  from t5vae_jax import evaluation

  phases = None if FLAGS.phase is None else [FLAGS.phase]
  pdirs = evaluation.phase_dirs(FLAGS.workdir, phases)
  dtypes = sorted(
      {
          accelerator.compute_dtype(_saved_dtype(pdir, config_overrides), jax.devices())
          for pdir in pdirs
      }
  )
  accelerator.announce(jax.devices(), "/".join(dtypes))
  rows = []
  for pdir in pdirs:
    if jax.process_index() == 0:
      print(
          f"evaluating {pdir} ({FLAGS.checkpoint}, {FLAGS.split}, K={FLAGS.num_samples}) "
          f"on {jax.device_count()} device(s)",
          file=sys.stderr,
          flush=True,
      )
    result = evaluation.evaluate_phase(
        pdir,
        checkpoint=FLAGS.checkpoint,
        split=FLAGS.split,
        num_samples=FLAGS.num_samples,
        iw_chunk=FLAGS.iw_chunk,
        batch_size=FLAGS.batch_size,
        mi_batch_size=FLAGS.mi_batch_size,
        seed=FLAGS.seed,
        max_examples=FLAGS.max_examples,
        data_dir=FLAGS.data_dir,
        tfds_dir=FLAGS.tfds_dir,
        config_overrides=config_overrides,
        max_logits_bytes=FLAGS.max_logits_mib << 20,
        max_rows=FLAGS.max_rows or None,
        output=FLAGS.output,
        progress=FLAGS.progress,
        probe_labels=FLAGS.probe_labels,
    )
    rows.append(result["row"])
    if jax.process_index() == 0:
      print(f"wrote {pdir / FLAGS.output} ({result['seconds']:.1f} s)", file=sys.stderr, flush=True)
  if jax.process_index() == 0:
    print(evaluation.markdown_header(probes=bool(FLAGS.probe_labels)))
    print("\n".join(rows), flush=True)


def run() -> None:
  """The command line: ``--config.key=value`` overrides, then absl's flags."""
  argv, config_overrides = split_config_overrides(sys.argv)
  cli.show_in_help([f.name for f in FLAGS.get_flags_for_module(__name__)], __doc__)
  cli.run_main(functools.partial(main, config_overrides=config_overrides), argv=argv)
