"""Batched, jitted evaluation metrics against a straightforward per-batch loop of the same formulas.

  python bench/eval_metrics.py                      # N = 10k, L = 32, K = 100 for IW-NLL
  python bench/eval_metrics.py --iw-k 500 --iw-n 1000
  python bench/eval_metrics.py --only mi --mi-case peaked   # logvar -20, repeated rows

Three metrics, each timed in a fresh child process (so that its peak RSS is its own):
  * MI over the whole set (N x N aggregate posterior): ours = metrics.mutual_information
    (blockwise, jitted); loop = numpy, a Python loop over query batches of 128, each a
    (128, N, L) array of the direct formula, at the same draws z (so both give the same
    number, also for --mi-case peaked, posteriors as narrow as phase 1 makes them).
  * AU: ours = metrics.active_units (jitted); loop = numpy per batch (running sums).
  * IW-NLL with K samples on a demo-shaped T5-VAE (configs/demo.py: d_model 64, 2+2 layers,
    vocab 128, L 16; random weights, the cost does not depend on them) over random
    sentences of 6-16 tokens: ours = evaluation.batch_statistics (encoder once per batch, the
    K samples decoded k at a time as one (B*k)-row batch inside a jitted loop; k as eval.py
    picks it: at most 50, and at most 512 rows per pass on CPU; token packing on, as in
    eval.py, unless --pack-tokens off);
    loop = per batch, the encoder once, then a Python loop over the K samples, each a jitted
    decoder call on the batch and numpy log weights, logsumexp at the end. Different draws
    (ours are per example, the loop's numpy), so the mean NLLs agree up to Monte Carlo noise.

Times exclude compilation (a warm-up call per compiled program first; printed as compile_s);
MI and AU, which take under a second, print the median of 5 calls (the MI loop: 1 call).
`ratio` = loop time / our time. Peak memory is the child's peak RSS above its RSS after
imports and data. The default K for IW-NLL is 100 at N = 10k (1M decoder rows of 16 tokens
each way): K = 500 at 10k sentences would take about 4 minutes for ours and 8 for the loop on
2 CPU cores, over the 10-minute budget of this command.
"""

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

import numpy as np

LOG_2PI = math.log(2 * math.pi)


def peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def median_time(fn, repeats):
  """(median seconds over ``repeats`` calls, last value): short timings on a shared VM vary by
  2x from call to call."""
  times, value = [], None
  for _ in range(repeats):
    t = time.perf_counter()
    value = fn()
    times.append(time.perf_counter() - t)
  return sorted(times)[len(times) // 2], value


# ------------------------------------------------------------------------------------ data
def posteriors(n, latent_dim, seed, case="typical"):
  """typical: overlapping posteriors. peaked: phase 1 with beta = 0 (logvar -20, means off
  centre by 3, the last tenth of the rows repeating earlier ones, as a test split's repeated
  lines), where the matmul expansion of the distance cancels and the exact pass works."""
  rng = np.random.default_rng(seed)
  if case == "peaked":
    mu = (3.0 + rng.standard_normal((n, latent_dim))).astype(np.float32)
    repeats = n // 10
    mu[n - repeats :] = mu[rng.choice(n - repeats, repeats)]
    logvar = np.full((n, latent_dim), -20.0, np.float32)
    z = (mu + np.exp(0.5 * logvar) * rng.standard_normal((n, latent_dim))).astype(np.float32)
    return mu, logvar, z
  mu = (0.8 * rng.standard_normal((n, latent_dim))).astype(np.float32)
  logvar = rng.uniform(-2.0, 0.0, (n, latent_dim)).astype(np.float32)
  z = (mu + np.exp(0.5 * logvar) * rng.standard_normal((n, latent_dim))).astype(np.float32)
  return mu, logvar, z


def sentences(n, seed, vocab=128, max_len=16):
  rng = np.random.default_rng(seed + 1)
  lengths = rng.integers(6, max_len + 1, n)
  ids = rng.integers(3, vocab, (n, max_len)).astype(np.int32)
  mask = (np.arange(max_len)[None] < lengths[:, None]).astype(np.int32)
  ids[np.arange(n), lengths - 1] = 1  # EOS
  return np.where(mask > 0, ids, 0).astype(np.int32), mask


def demo_model():
  import jax
  from t5vae_jax import model as model_lib
  from t5vae_jax import t5 as t5_lib

  config = t5_lib.T5Config(
      vocab_size=128,
      d_model=64,
      d_kv=16,
      d_ff=128,
      num_layers=2,
      num_decoder_layers=2,
      num_heads=4,
      relative_attention_num_buckets=16,
      relative_attention_max_distance=32,
      dropout_rate=0.0,
  )
  model = model_lib.T5VAEModel(config, vae=model_lib.VAEConfig(latent_dim=16))
  params = jax.jit(model_lib.init_params, static_argnums=0)(model, jax.random.key(0))
  return model, params


# ------------------------------------------------------------------------------- methods
def np_log_gauss(z, mu, logvar):
  return -0.5 * np.sum((z - mu) ** 2 * np.exp(-logvar) + logvar + LOG_2PI, -1)


def np_logsumexp(x, axis):
  m = np.max(x, axis=axis, keepdims=True)
  return np.squeeze(m, axis) + np.log(np.sum(np.exp(x - m), axis=axis))


def mi_ours(args):
  from t5vae_jax import metrics

  mu, logvar, z = posteriors(args.n, args.latent_dim, args.seed, args.mi_case)
  base = current_rss_mib()
  fn = lambda: float(metrics.mutual_information_from_samples(mu, logvar, z))
  t = time.perf_counter()
  fn()
  compile_s = time.perf_counter() - t
  seconds, value = median_time(fn, 5)
  return dict(value=value, seconds=seconds, compile_s=compile_s, base=base)


def mi_loop(args):
  mu, logvar, z = posteriors(args.n, args.latent_dim, args.seed, args.mi_case)
  base = current_rss_mib()

  def fn():
    total = 0.0
    for start in range(0, args.n, 128):  # query batches
      zb = z[start : start + 128]
      log_q = np_log_gauss(zb[:, None, :], mu[None], logvar[None])  # (b, N)
      log_agg = np_logsumexp(log_q, 1) - math.log(args.n)
      total += float(
          np.sum(np_log_gauss(zb, mu[start : start + 128], logvar[start : start + 128]) - log_agg)
      )
    return total / args.n

  seconds, value = median_time(fn, 1)  # one call takes seconds
  return dict(value=value, seconds=seconds, compile_s=0.0, base=base)


def au_ours(args):
  from t5vae_jax import metrics

  mu, _, _ = posteriors(args.n, args.latent_dim, args.seed)
  base = current_rss_mib()
  fn = lambda: int(metrics.active_units(mu))
  t = time.perf_counter()
  fn()
  compile_s = time.perf_counter() - t
  seconds, value = median_time(fn, 5)
  return dict(value=value, seconds=seconds, compile_s=compile_s, base=base)


def au_loop(args):
  mu, _, _ = posteriors(args.n, args.latent_dim, args.seed)
  base = current_rss_mib()

  def fn():
    count, total, total_sq = 0, np.zeros(args.latent_dim), np.zeros(args.latent_dim)
    for start in range(0, args.n, args.batch_size):
      b = mu[start : start + args.batch_size].astype(np.float64)
      count += len(b)
      total += b.sum(0)
      total_sq += (b**2).sum(0)
    var = (total_sq - total**2 / count) / (count - 1)
    return int(np.sum(var > 0.01))

  seconds, value = median_time(fn, 5)
  return dict(value=value, seconds=seconds, compile_s=0.0, base=base)


def iw_ours(args):
  import jax
  import jax.numpy as jnp
  from t5vae_jax import evaluation
  from t5vae_jax import packing as packing_lib

  model, params = demo_model()
  ids, mask = sentences(args.iw_n, args.seed)
  base = current_rss_mib()
  chunk = evaluation.chunk_size_for(args.iw_k, args.iw_chunk, args.batch_size, ids.shape[1], 128)
  rng = jax.random.key(args.seed)
  num_chunks = jnp.int32(args.iw_k // chunk)
  starts = range(0, args.iw_n, args.batch_size)
  # As eval.py: one compiled program per packed capacity (None: no packing).
  capacities = [
      packing_lib.capacity(mask[s : s + args.batch_size]) if args.pack_tokens == "on" else None
      for s in starts
  ]

  def batch_at(start):
    return {
        "input_ids": ids[start : start + args.batch_size],
        "attention_mask": mask[start : start + args.batch_size],
        "example_ids": np.arange(start, start + args.batch_size, dtype=np.int32),
    }

  def run(indices):
    out = [
        evaluation.compiled_batch_statistics(model, chunk, capacities[i])(
            params, batch_at(starts[i]), rng, num_chunks
        )["nll"]
        for i in indices
    ]
    return np.concatenate(jax.device_get(out))

  first = {}
  for i, c in enumerate(capacities):
    first.setdefault(c, i)
  t = time.perf_counter()
  run(list(first.values()))
  compile_s = time.perf_counter() - t
  t = time.perf_counter()
  nll = run(range(len(starts)))
  seconds = time.perf_counter() - t
  return dict(
      value=float(nll.mean()),
      seconds=seconds,
      compile_s=compile_s,
      base=base,
      chunk=chunk,
      capacities=sorted(first, key=lambda c: c or 0),
  )


def iw_loop(args):
  import jax
  from t5vae_jax import model as model_lib
  from t5vae_jax import t5 as t5_lib

  model, params = demo_model()
  ids, mask = sentences(args.iw_n, args.seed)
  base = current_rss_mib()
  encode = jax.jit(
      lambda p, i, m: model.apply({"params": p}, i, m, method=model_lib.T5VAEModel.posterior)
  )
  decode = jax.jit(
      lambda p, z, d: model.apply({"params": p}, z, d, method=model_lib.T5VAEModel.decode_latent)
  )
  rng = np.random.default_rng(args.seed)

  def run(stop):
    nlls = []
    for start in range(0, stop, args.batch_size):
      b_ids, b_mask = ids[start : start + args.batch_size], mask[start : start + args.batch_size]
      dec = np.asarray(t5_lib.shift_right(b_ids, 0))
      mu, logvar = (np.asarray(a, np.float64) for a in encode(params, b_ids, b_mask))
      log_w = []
      for _ in range(args.iw_k):
        z = mu + np.exp(0.5 * logvar) * rng.standard_normal(mu.shape)
        logits = np.asarray(decode(params, z.astype(np.float32), dec), np.float64)
        log_p = logits - np_logsumexp(logits, -1)[..., None]
        rec = -np.sum(np.take_along_axis(log_p, b_ids[..., None], -1)[..., 0] * b_mask, -1)
        log_w.append(-rec + np_log_gauss(z, 0.0, 0.0) - np_log_gauss(z, mu, logvar))
      nlls.append(-(np_logsumexp(np.stack(log_w, 1), 1) - math.log(args.iw_k)))
    return np.concatenate(nlls)

  t = time.perf_counter()
  run(args.batch_size)
  compile_s = time.perf_counter() - t
  t = time.perf_counter()
  nll = run(args.iw_n)
  seconds = time.perf_counter() - t
  return dict(value=float(nll.mean()), seconds=seconds, compile_s=compile_s, base=base)


METHODS = {
    "mi_ours": mi_ours,
    "mi_loop": mi_loop,
    "au_ours": au_ours,
    "au_loop": au_loop,
    "iw_ours": iw_ours,
    "iw_loop": iw_loop,
}


def child(args):
  result = METHODS[args.child](args)
  result["peak_mib"] = peak_rss_mib() - result.pop("base")
  print("RESULT " + json.dumps(result), flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=10_000, help="examples for MI and AU")
  parser.add_argument("--latent-dim", type=int, default=32)
  parser.add_argument(
      "--mi-case",
      choices=("typical", "peaked"),
      default="typical",
      help="MI posteriors: overlapping, or peaked with repeated rows",
  )
  parser.add_argument("--iw-n", type=int, default=None, help="sentences for IW-NLL (default n)")
  parser.add_argument("--iw-k", type=int, default=100, help="K importance samples")
  parser.add_argument(
      "--iw-chunk",
      type=int,
      default=50,
      help="most samples per decoder pass (eval.py's --iw_chunk; lowered to "
      "512 rows per pass on CPU as eval.py does)",
  )
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument(
      "--pack-tokens",
      choices=("on", "off"),
      default="on",
      help="IW-NLL: ours on the real tokens only (eval.py's default) or padded",
  )
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--only", default="mi,au,iw", help="comma-separated subset")
  parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  args.iw_n = args.iw_n or args.n
  args.iw_n -= args.iw_n % args.batch_size  # whole batches: one compiled shape
  if args.child:
    return child(args)

  import jax  # noqa: F401  (only to print the backend)

  print(
      f"JAX {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPU cores; "
      f"N={args.n}, L={args.latent_dim}; IW-NLL: {args.iw_n} sentences, K={args.iw_k}, "
      f"batch {args.batch_size}"
  )
  rows = []
  for metric in args.only.split(","):
    results = {}
    for kind in ("ours", "loop"):
      cmd = [sys.executable, __file__, f"--child={metric}_{kind}"] + [
          a for a in sys.argv[1:] if not a.startswith("--child")
      ]
      proc = subprocess.run(cmd, capture_output=True, text=True)
      line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
      if proc.returncode or not line:
        raise RuntimeError(f"{metric}_{kind} failed:\n{proc.stderr[-3000:]}")
      results[kind] = json.loads(line[0][len("RESULT ") :])
    ours, loop = results["ours"], results["loop"]
    rows.append((metric, ours, loop))
    extra = (
        f" (k={ours['chunk']} per decoder pass, packed capacities " f"{ours['capacities']})"
        if "chunk" in ours
        else ""
    )
    print(
        f"{metric:3s} ours {ours['seconds']:9.3f} s (compile {ours['compile_s']:.1f} s, "
        f"peak +{ours['peak_mib']:.0f} MiB) value {ours['value']:.5g}{extra}"
    )
    print(
        f"{'':3s} loop {loop['seconds']:9.3f} s (compile {loop['compile_s']:.1f} s, "
        f"peak +{loop['peak_mib']:.0f} MiB) value {loop['value']:.5g}"
    )
    print(f"{'':3s} ratio {loop['seconds'] / max(ours['seconds'], 1e-9):.2f}", flush=True)


if __name__ == "__main__":
  main()
