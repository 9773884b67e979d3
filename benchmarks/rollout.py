"""Rollout engine benchmark: flat per-section cost in document length; batched vs serial.

  python benchmarks/rollout.py            # full run (about 3 minutes on 2 idle CPU cores)
  python benchmarks/rollout.py --quick    # smaller sizes, for a smoke check

Part 1 reads the first sections of documents of 8K, 32K, 128K and 1M tokens with a tiny
random policy and reports the wall time per section: the prompt is rebuilt from the memory
state, so the cost per section must not grow with the document (target: max/min <= 1.2).
Part 2 runs B*G = 32 short episodes through the batched engine and through a loop of
one-episode-at-a-time runs, and reports episodes/s of both and their ratio (target >= 5x),
twice: as one GRPO group (B = 1, G = 32: one question, so the rows share the system
prompt and the question, different documents so the trajectories differ) and as 32
distinct questions (B = 32, G = 1: the rows share only the system prompt). The batched
engine prefills the head common to a batch once (`generate(share_prefix=True)`).

Compilation is excluded from every timing, on both sides: a warm-up run with the same inputs
(greedy decoding, so the same shapes) precedes `--repeats` timed runs (median reported),
XLA compiles are counted through `jax.monitoring`, the compile time of each warm-up is
reported apart, and a timed run that compiled anything is an error. Before a ratio is
printed, the batched and serial trajectories are asserted identical (prompt ids, response
ids and answers of every step), as are the timed runs with their warm-up.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import pathlib
import sys
import tempfile
import time
from typing import Callable, Iterator, Sequence

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from atommem_jax.agent import environment as env_lib  # noqa: E402
from atommem_jax.agent import policies as pol  # noqa: E402
from atommem_jax.agent.rollout import RolloutConfig, RolloutEngine  # noqa: E402
from atommem_jax.agent.trajectory import Trajectory  # noqa: E402
from atommem_jax.memory import state as mem_lib  # noqa: E402
from atommem_jax.memory.embedder import HashingEmbedder  # noqa: E402
from atommem_jax.models import config as model_config  # noqa: E402
from atommem_jax.models import tokenizer as tok_lib  # noqa: E402
from atommem_jax.models.transformer import init_params  # noqa: E402
from compile_clock import CLOCK  # noqa: E402  (beside this script)

WORDS = ("the river city museum painter born founded married director album station war king "
         "island bridge novel company film team river capital mountain school church").split()

CLOCK.install()  # XLA compiles and their seconds (benchmarks/compile_clock.py)


@dataclasses.dataclass
class Timing:
  wall: float = 0.0  # seconds
  compiles: int = 0  # XLA programs compiled inside
  compile_s: float = 0.0  # tracing + lowering + XLA compile seconds inside


@contextlib.contextmanager
def timed() -> Iterator[Timing]:
  """Wall time and the compiles that happened inside the block."""
  t = Timing()
  count, secs = CLOCK.count, CLOCK.seconds
  t0 = time.perf_counter()
  yield t
  t.wall = time.perf_counter() - t0
  t.compiles, t.compile_s = CLOCK.count - count, CLOCK.seconds - secs


def warm_then_time(run: Callable[[], list[Trajectory]], what: str, repeats: int
                   ) -> tuple[list[Trajectory], Timing, float]:
  """A warm-up run that compiles every shape the run uses, then `repeats` timed runs,
  none of which may compile anything (else its time would include compilation) or
  produce other trajectories. Returns (trajectories, warm-up timing, median seconds)."""
  with timed() as warm:
    first = run()
  walls = []
  for _ in range(repeats):
    with timed() as t:
      out = run()
    if t.compiles:
      raise RuntimeError(f"{what}: a timed run compiled {t.compiles} programs "
                         f"({t.compile_s:.1f}s) after its warm-up; its time is not steady state")
    assert_same(out, first)
    walls.append(t.wall)
  return first, warm, float(np.median(walls))


def assert_same(batched: Sequence[Trajectory], serial: Sequence[Trajectory]) -> None:
  """Batched and one-at-a-time runs must produce the same trajectories, step by step."""
  if len(batched) != len(serial):
    raise AssertionError(f"{len(batched)} batched vs {len(serial)} serial trajectories")
  for x, y in zip(batched, serial):
    if x.answers != y.answers:
      raise AssertionError(f"episode {x.episode_id}: answers {x.answers} (batched) != "
                           f"{y.answers} (serial)")
    if len(x.steps) != len(y.steps):
      raise AssertionError(f"episode {x.episode_id}: {len(x.steps)} batched steps vs "
                           f"{len(y.steps)} serial")
    for s, t in zip(x.steps, y.steps):
      for field in ("prompt_ids", "response_ids"):
        if getattr(s, field) != getattr(t, field):
          raise AssertionError(f"episode {x.episode_id} step {s.index}: {field} differ "
                               f"(batched {getattr(s, field)[:16]}..., serial "
                               f"{getattr(t, field)[:16]}...)")


# ---------------------------------------------------------------------------- the workload


def filler_document(tok, n_tokens: int, seed: int) -> str:
  """Random sentences until the document has about n_tokens tokens."""
  rng = np.random.default_rng(seed)
  sents = [" ".join(rng.choice(WORDS, 12)).capitalize() + "." for _ in range(400)]
  per = len(tok(" ".join(sents), add_special_tokens=False)["input_ids"]) / len(sents)
  reps = int(np.ceil(n_tokens / per))
  doc = " ".join(sents[i % len(sents)] for i in range(reps))
  ids = tok(doc, add_special_tokens=False)["input_ids"][:n_tokens]
  return tok.decode(ids, skip_special_tokens=True)


def make_engine(tok, embedder, chunk_size: int, max_calls: int) -> RolloutEngine:
  cfg = RolloutConfig(env=env_lib.EnvConfig(chunk_size=chunk_size, overlap=16, max_calls=max_calls),
                      memory=mem_lib.MemoryConfig(capacity=64, dim=embedder.dim, top_k=6))
  return RolloutEngine(cfg, tok, embedder.embed)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--chunk_size", type=int, default=512)
  ap.add_argument("--new_tokens", type=int, default=32)
  ap.add_argument("--repeats", type=int, default=3,
                  help="timed runs per measurement, on both sides (median reported)")
  a = ap.parse_args(argv)
  sizes = [8_000, 32_000, 128_000, 1_000_000] if not a.quick else [8_000, 32_000]
  sections = 6 if not a.quick else 3
  work = pathlib.Path(tempfile.mkdtemp(prefix="atommem_bench_"))
  tok = tok_lib.load_tokenizer(tok_lib.build_test_tokenizer(work / "tok"))
  mc = model_config.tiny("qwen3", vocab_size=max(512, len(tok)), eos_token_id=tok.eos_token_id,
                         max_position_embeddings=8192)
  params = init_params(mc, seed=0)
  emb = HashingEmbedder()
  sampling = pol.SamplingConfig(max_new_tokens=a.new_tokens, max_answer_tokens=8,
                                max_prompt_tokens=2048)

  def policy():
    return pol.AtomMemPolicy(pol.LMClient(mc, tok, sampling), max_memory_chars=300)

  def run(engine: RolloutEngine, episodes: list[env_lib.Episode]) -> list[Trajectory]:
    return engine.run(episodes, policy(), params=params).trajectories

  print(f"# {os.cpu_count()} CPUs, jax {jax.__version__}, backend {jax.default_backend()}, "
        f"load average {os.getloadavg()[0]:.1f}")

  # Part 1: per-section wall time vs document length.
  print(f"Part 1: per-section time, tiny model, chunk {a.chunk_size} tokens, "
        f"first {sections} sections, {a.new_tokens} new tokens per call")
  eng = make_engine(tok, emb, a.chunk_size, max_calls=sections)
  rows = []
  for n in sizes:
    t0 = time.perf_counter()
    doc = filler_document(tok, n, seed=n)
    ep = env_lib.Episode(f"doc{n}", ("Who founded the museum?",), (("x",),), doc)
    # Tokenising + splitting the document is a one-off O(document) cost, timed apart; the
    # episode then carries its sections so the timed run measures the steps alone.
    secs = tuple(eng.sections(ep))
    ep = dataclasses.replace(ep, sections=secs)
    prep = time.perf_counter() - t0
    [traj], warm, wall = warm_then_time(lambda: run(eng, [ep]), f"part 1, {n} tokens",
                                        a.repeats)
    plen = max(len(s.prompt_ids) for s in traj.steps)
    rows.append((n, len(secs), len(traj.steps), wall / len(traj.steps), plen, prep, warm))
  base = min(r[3] for r in rows)
  print(f"  {'doc tokens':>10} {'sections':>8} {'calls':>5} {'s/section':>9} {'ratio':>6} "
        f"{'max prompt':>10} {'tokenise+split s':>16} {'warm-up compiles':>16}")
  for n, ns, calls, per, plen, prep, warm in rows:
    print(f"  {n:>10,} {ns:>8} {calls:>5} {per:>9.3f} {per / base:>6.2f} {plen:>10} "
          f"{prep:>16.1f} {warm.compiles:>5} ({warm.compile_s:.1f}s)")
  flat = max(r[3] for r in rows) / base
  print(f"  max/min per-section time: {flat:.2f}x (target <= 1.2x)")

  # Part 2: batched engine vs one episode at a time, B*G = 32.
  n_eps = 32 if not a.quick else 8
  eng2 = make_engine(tok, emb, a.chunk_size, max_calls=0)
  for label, question in (("one question (B=1, G=32)", lambda i: "Who founded the museum?"),
                          ("distinct questions (B=32, G=1)",
                           lambda i: f"Who founded the museum in the {WORDS[i % len(WORDS)]} "
                                     f"district, case {i}?")):
    print(f"\nPart 2, {label}: {n_eps} episodes (4 sections each), batched engine vs one "
          "at a time")
    eps = [env_lib.Episode(f"e{i}", (question(i),), (("x",),),
                           filler_document(tok, 4 * a.chunk_size - 64, seed=i))
           for i in range(n_eps)]
    batched, bw, tb = warm_then_time(lambda: run(eng2, eps), "batched", a.repeats)
    serial, sw, ts = warm_then_time(lambda: [t for e in eps for t in run(eng2, [e])], "serial",
                                    a.repeats)
    assert_same(batched, serial)
    calls = sum(len(t.steps) for t in batched)
    reading = sum(s.phase == env_lib.READING for t in batched for s in t.steps)
    print(f"  warm-up (excluded): batched {bw.wall:.1f}s, {bw.compiles} compiles "
          f"({bw.compile_s:.1f}s); one-by-one {sw.wall:.1f}s, {sw.compiles} compiles "
          f"({sw.compile_s:.1f}s)")
    print(f"  batched:   {n_eps / tb:7.2f} episodes/s ({tb:.2f}s, median of {a.repeats}, "
          "0 compiles)")
    print(f"  one-by-one:{n_eps / ts:7.2f} episodes/s ({ts:.2f}s, median of {a.repeats}, "
          "0 compiles)")
    print(f"  trajectories identical (prompt ids, response ids, answers): {calls} model calls, "
          f"{reading} reading, {calls - reading} answering")
    print(f"  ratio batched/serial: {ts / tb:.2f}x (target >= 5x)")


if __name__ == "__main__":
  main()
