"""Evaluates trained phases: PPL (importance-weighted), KL, -ELBO, MI, AU, batched and jitted.

  python eval.py --workdir runs/ptb                       # each phase present, test split
  python eval.py --workdir runs/ptb --phase 2 --checkpoint best --split validation
  python eval.py --workdir runs/ptb --num_samples 100 --batch_size 32 --config.data.max_len=64

Each phase directory carries its config, model description and tokenizer, so no config file
is needed. Writes ``<workdir>/phase<N>/eval.json`` and prints one Markdown row per phase in the
paper's column order (| run | PPL | KL | -ELBO | MI | AU |, then rec, per-batch MI, PPL from
the ELBO and K). ``--config.x=y`` overrides a value of the saved config (e.g. the data paths).
"""

from t5vae_jax import eval_command

main = eval_command.main  # the command lives in the library (the t5vae-eval entry point)

if __name__ == "__main__":
  eval_command.run()
