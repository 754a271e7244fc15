"""Peak memory and time of the whole-set mutual information at evaluation scale.

An N x N matrix of float32 at N = 100k is 40 GB; the blockwise estimator should
stay near the baseline RSS of a process that has imported JAX.

  python bench/mi_memory.py --n 100000 --latent-dim 32 --block-size 1024
"""

import argparse
import math
import resource
import time

import jax
import jax.numpy as jnp

from t5vae_jax import metrics


def peak_rss_mib():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB.


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=100_000)
  parser.add_argument("--latent-dim", type=int, default=32)
  parser.add_argument("--block-size", type=int, default=1024)
  parser.add_argument(
      "--batch-size", type=int, default=None, help="also time the per-batch estimate at this size"
  )
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  jnp.zeros(()).block_until_ready()  # Backend initialised.
  baseline = peak_rss_mib()

  # Partly overlapping posteriors, MI of a few nats as in trained text VAEs
  # (the cost does not depend on the values).
  mu_key, logvar_key, z_key = jax.random.split(jax.random.PRNGKey(args.seed), 3)
  shape = (args.n, args.latent_dim)
  mu = 0.5 * jax.random.normal(mu_key, shape)
  logvar = jax.random.uniform(logvar_key, shape, minval=-1.0, maxval=0.5)
  jax.block_until_ready((mu, logvar))

  def timed(batch_size):
    mi_fn = jax.jit(
        lambda mu, logvar, rng: metrics.mutual_information(
            mu, logvar, rng, batch_size=batch_size, block_size=args.block_size
        )
    )
    start = time.perf_counter()
    compiled = mi_fn.lower(mu, logvar, z_key).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    mi = float(compiled(mu, logvar, z_key))
    return mi, compile_s, time.perf_counter() - start, compiled

  mi, compile_s, run_s, compiled = timed(None)
  peak = peak_rss_mib()
  temp_mib = compiled.memory_analysis().temp_size_in_bytes / 2**20
  pairs = float(args.n) ** 2
  print(f"devices: {jax.devices()}")
  print(f"N={args.n} L={args.latent_dim} block_size={args.block_size}")
  print(f"whole-set MI = {mi:.4f} nats (log N = {math.log(args.n):.4f})")
  print(f"compile {compile_s:.2f} s, run {run_s:.2f} s " f"({pairs / run_s / 1e9:.2f} G pairs/s)")
  print(
      f"XLA temp buffers: {temp_mib:.1f} MiB "
      f"(an N x N float32 matrix would be {pairs * 4 / 2**20:.0f} MiB)"
  )
  print(
      f"RSS baseline after imports: {baseline:.0f} MiB, peak: {peak:.0f} MiB, "
      f"ratio {peak / baseline:.2f}, increase {peak - baseline:.0f} MiB"
  )
  if args.batch_size:
    mi, compile_s, run_s, _ = timed(args.batch_size)
    print(
        f"per-batch MI (b={args.batch_size}) = {mi:.4f} nats "
        f"(cap log b = {math.log(args.batch_size):.4f}); compile {compile_s:.2f} s, "
        f"run {run_s:.2f} s; peak RSS {peak_rss_mib():.0f} MiB"
    )


if __name__ == "__main__":
  main()
