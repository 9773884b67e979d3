"""Memory benchmark: ScannStore vs exact brute force, and the vmapped device MemoryState.

One command, one run:
  python benchmarks/memory.py                       # sizes 1e3, 1e4, 1e5, 1e6 (~1.5 GB/1e6 rows x3)
  python benchmarks/memory.py --sizes 1000,10000    # quicker

Data: `--clusters` random unit centres in R^dim; every vector (entries and queries alike) is
normalise(centre + noise), noise ~ N(0, noise^2 / dim) per coordinate, so a point's cosine
to its centre is about 1/sqrt(1 + noise^2) (0.78 at the default 0.8). Neighbours therefore
cluster (as real sentence embeddings do) and recall@10 is meaningful; queries come from the
same process with fresh noise.

Per size it prints: exact brute-force latency (numpy, score desc, ties by id) for a batch of
queries; ScannStore latency for the same batch (exact below its ANN threshold, ScaNN
tree + AH + exact reordering above) and recall@10 against the exact top-10; the build
(bulk load + index); and the median cost of one create / update / delete including syncing
the index to the new version. Then ops/s of `jax.jit(jax.vmap(apply))` at batch 64 against
a per-state loop of `jax.jit(apply)` over the same ops, measured in the same run.
Every comparison is symmetric: both sides get one untimed warm-up call on the same input,
then `--repeats` timed runs, and the median is reported (the mode column says which path,
exact or ScaNN, served the store's reads, from the store's own counter).
Targets (DESIGN / issue 3): at 1e6, recall@10 >= 0.95 and >= 10x faster than exact.
"""
from __future__ import annotations

import argparse
import functools
import gc
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from atommem_jax.memory import state as S  # noqa: E402
from atommem_jax.memory.scann_store import AnnConfig, ScannStore, top_k_by_score_then_id  # noqa: E402


def clustered(n: int, dim: int, centres: np.ndarray, noise: float, rng: np.random.Generator,
              chunk: int = 100_000) -> np.ndarray:
  """normalise(centre + noise) unit vectors [n, dim], generated in chunks (bounded memory)."""
  out = np.empty((n, dim), np.float32)
  for a in range(0, n, chunk):
    b = min(n, a + chunk)
    x = centres[rng.integers(0, len(centres), b - a)]
    x += rng.standard_normal((b - a, dim), dtype=np.float32) * (noise / np.sqrt(dim))
    out[a:b] = x / np.linalg.norm(x, axis=1, keepdims=True)
  return out


def exact_topk(x: np.ndarray, q: np.ndarray, k: int, chunk: int = 64) -> np.ndarray:
  """Exact top-k ids (score desc, ties by id) with numpy, queries in chunks: [Q, k]."""
  ids = np.arange(len(x))
  out = np.empty((len(q), k), np.int64)
  for a in range(0, len(q), chunk):
    scores = q[a:a + chunk] @ x.T  # [chunk, n]
    out[a:a + chunk] = top_k_by_score_then_id(np.broadcast_to(ids, scores.shape), scores, k)[0]
  return out


def timed(fn, repeats: int):
  """(median seconds over `repeats` calls, the last result); the caller warms up first."""
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1, got {repeats}")
  times, result = [], None
  for _ in range(repeats):
    t0 = time.perf_counter()
    result = fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times)), result


def bench_store(n: int, args, centres: np.ndarray, rng: np.random.Generator) -> dict:
  x = clustered(n, args.dim, centres, args.noise, rng)
  q = clustered(args.queries, args.dim, centres, args.noise, rng)
  exact_topk(x, q[:64], args.k)  # warm-up, as the store gets below
  t_exact, want = timed(lambda: exact_topk(x, q, args.k), args.repeats)
  ann = AnnConfig(ann_threshold=args.ann_threshold, leaves_to_search_frac=args.probe,
                  reorder=args.reorder)
  t0 = time.perf_counter()
  store, _ = ScannStore(args.dim, ann=ann).create_many([""] * n, x)
  store.sync()
  t_build = time.perf_counter() - t0
  del x
  gc.collect()
  store.search(q[:64], args.k)  # warm-up
  served = store.reads_served
  t_store, (got, _) = timed(lambda: store.search(q, args.k), args.repeats)
  served = {p: c - served[p] for p, c in store.reads_served.items()}
  path = "ann" if served["ann"] else "exact"
  if served != {"exact": 0, "ann": 0, path: args.repeats * len(q)}:
    raise RuntimeError(f"n={n}: the timed reads went through both paths: {served}")
  mode = {"ann": "scann", "exact": "exact"}[path]
  recall = float(np.mean([len(set(g) & set(w)) / args.k for g, w in zip(got, want)]))
  # Single writes, each followed by an index sync (what the next read would pay). Median
  # per op: the mean over a few ops would be dominated by one amortised buffer growth.
  ops = args.write_ops
  new = clustered(ops, args.dim, centres, args.noise, rng)
  s, created, t_create, t_update, t_delete = store, [], [], [], []
  for v in new:
    t0 = time.perf_counter()
    s, i = s.create("", v)
    s.sync()
    t_create.append(time.perf_counter() - t0)
    created.append(i)
  for i, v in zip(created, new[::-1]):
    t0 = time.perf_counter()
    s = s.update(i, "", v).sync()
    t_update.append(time.perf_counter() - t0)
  for i in created:
    t0 = time.perf_counter()
    s = s.delete(i).sync()
    t_delete.append(time.perf_counter() - t0)
  t_create, t_update, t_delete = (float(np.median(t)) for t in (t_create, t_update, t_delete))
  return dict(n=n, mode=mode, exact_ms=1e3 * t_exact,
              store_ms=1e3 * t_store, speedup=t_exact / t_store, recall=recall,
              build_s=t_build, create_us=1e6 * t_create, update_us=1e6 * t_update,
              delete_us=1e6 * t_delete)


def bench_device(args, capacity: int) -> dict:
  cfg = S.MemoryConfig(capacity=capacity, dim=args.dim, top_k=6)
  b, m, steps = 64, 8, args.device_steps
  rng = np.random.default_rng(1)

  def ops_batch(batch):
    kinds = rng.choice([S.CREATE, S.CREATE, S.READ, S.UPDATE, S.DELETE, S.SCRATCHPAD],
                       size=(batch, m)).astype(np.int32)
    emb = rng.standard_normal((batch, m, args.dim), dtype=np.float32)
    return S.OpBatch(kind=kinds, index=rng.integers(1, 7, (batch, m)).astype(np.int32),
                     text=rng.integers(0, 1000, (batch, m)).astype(np.int32),
                     embedding=emb, dropped=np.zeros((batch,), np.int32))

  batches = [jax.device_put(ops_batch(b)) for _ in range(steps)]
  # Donating the state lets XLA update [B, C, D] embeddings in place; without it every
  # call writes a fresh copy of the whole batch (100 MB at the defaults).
  vapply = jax.jit(jax.vmap(functools.partial(S.apply, config=cfg)), donate_argnums=0)
  jax.block_until_ready(vapply(S.init_batch(cfg, b), batches[0]))

  def run_vmapped():
    s = jax.block_until_ready(S.init_batch(cfg, b))
    t0 = time.perf_counter()
    for ops in batches:
      s, status = vapply(s, ops)
    jax.block_until_ready(status)
    return time.perf_counter() - t0

  single = jax.jit(functools.partial(S.apply, config=cfg), donate_argnums=0)
  # The same ops, row by row: both sides apply every op of every step.
  per = [[jax.tree.map(lambda x, r=r: x[r], ops) for r in range(b)] for ops in batches]
  jax.block_until_ready(single(S.init_state(cfg), per[0][0]))

  def run_loop():
    ss = [S.init_state(cfg) for _ in range(b)]
    jax.block_until_ready(ss)
    t0 = time.perf_counter()
    for step in per:
      for r in range(b):
        ss[r], status = single(ss[r], step[r])
    jax.block_until_ready(ss)
    return time.perf_counter() - t0

  t_v = float(np.median([run_vmapped() for _ in range(args.repeats)]))
  t_l = float(np.median([run_loop() for _ in range(args.repeats)]))
  vm_ops = b * m * steps / t_v
  loop_ops = b * m * steps / t_l
  return dict(vmapped_ops_s=vm_ops, loop_ops_s=loop_ops, ratio=vm_ops / loop_ops,
              step_ms=1e3 * t_v / steps)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--sizes", default="1000,10000,100000,1000000",
                 help="comma-separated store sizes (e.g. 1e3,1e4)")
  p.add_argument("--dim", type=int, default=384)
  p.add_argument("--queries", type=int, default=1000, help="queries per read batch")
  p.add_argument("--k", type=int, default=10)
  p.add_argument("--clusters", type=int, default=1000)
  p.add_argument("--noise", type=float, default=0.8)
  p.add_argument("--ann-threshold", type=int, default=20_000)
  p.add_argument("--probe", type=float, default=0.03, help="fraction of tree leaves searched")
  p.add_argument("--reorder", type=int, default=200)
  p.add_argument("--write-ops", type=int, default=100)
  p.add_argument("--capacity", default="64,256,1024", help="device MemoryState capacities")
  p.add_argument("--device-steps", type=int, default=20)
  p.add_argument("--repeats", type=int, default=3,
                 help="timed runs per side of every comparison (median reported)")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  sizes = [int(float(s)) for s in args.sizes.split(",") if s]
  rng = np.random.default_rng(args.seed)
  centres = rng.standard_normal((args.clusters, args.dim), dtype=np.float32)
  centres /= np.linalg.norm(centres, axis=1, keepdims=True)
  print(f"# dim={args.dim} queries/batch={args.queries} k={args.k} clusters={args.clusters} "
        f"noise={args.noise} ann_threshold={args.ann_threshold} probe={args.probe} "
        f"reorder={args.reorder} repeats={args.repeats} (median) cpus={os.cpu_count()} "
        f"jax={jax.__version__} load={os.getloadavg()[0]:.1f}")
  head = (f"{'entries':>9} {'mode':>6} {'exact ms':>9} {'store ms':>9} {'speedup':>8} "
          f"{'recall@k':>8} {'build s':>8} {'create us':>10} {'update us':>10} {'delete us':>10}")
  print(head)
  print(f"{'':>9} {'':>6} {'(batch)':>9} {'(batch)':>9} {'':>8} {'':>8} {'':>8} {'(p50/op)':>10} "
        f"{'(p50/op)':>10} {'(p50/op)':>10}")
  for n in sizes:
    r = bench_store(n, args, centres, rng)
    print(f"{r['n']:>9} {r['mode']:>6} {r['exact_ms']:>9.1f} {r['store_ms']:>9.1f} "
          f"{r['speedup']:>7.1f}x {r['recall']:>8.4f} {r['build_s']:>8.2f} {r['create_us']:>10.0f} "
          f"{r['update_us']:>10.0f} {r['delete_us']:>10.0f}", flush=True)
    gc.collect()
  print(f"\ndevice MemoryState apply, batch 64, 8 ops/step, D={args.dim}, state donated "
        f"(backend: {jax.default_backend()}):")
  for capacity in [int(c) for c in args.capacity.split(",")]:
    d = bench_device(args, capacity)
    print(f"  C={capacity:>5}: {d['vmapped_ops_s']:>10,.0f} ops/s jit(vmap(apply)) vs "
          f"{d['loop_ops_s']:>10,.0f} ops/s per-state jit loop = {d['ratio']:.1f}x; "
          f"{d['step_ms']:.2f} ms per batched step", flush=True)


if __name__ == "__main__":
  main()
