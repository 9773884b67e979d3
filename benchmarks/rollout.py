"""Rollout engine benchmark: flat per-section cost in document length; batched vs serial.

  python benchmarks/rollout.py            # full run (a few minutes on 2 CPU cores)
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
Compile time is excluded from both parts by a warm-up run and reported separately.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from atommem_jax.agent import environment as env_lib  # noqa: E402
from atommem_jax.agent import policies as pol  # noqa: E402
from atommem_jax.agent.rollout import RolloutConfig, RolloutEngine  # noqa: E402
from atommem_jax.memory import state as mem_lib  # noqa: E402
from atommem_jax.memory.embedder import HashingEmbedder  # noqa: E402
from atommem_jax.models import config as model_config  # noqa: E402
from atommem_jax.models import tokenizer as tok_lib  # noqa: E402
from atommem_jax.models.transformer import init_params  # noqa: E402

WORDS = ("the river city museum painter born founded married director album station war king "
         "island bridge novel company film team river capital mountain school church").split()


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
    return pol.AtomMemPolicy(pol.LMClient(mc, params, tok, sampling), max_memory_chars=300)

  # Part 1: per-section wall time vs document length.
  print(f"Part 1: per-section time, tiny model, chunk {a.chunk_size} tokens, "
        f"first {sections} sections, {a.new_tokens} new tokens per call")
  eng = make_engine(tok, emb, a.chunk_size, max_calls=sections)
  warm = env_lib.Episode("warm", ("Who founded the museum?",), (("x",),),
                         filler_document(tok, 4 * a.chunk_size, 99))
  t0 = time.perf_counter()
  eng.run([warm], policy())
  print(f"  warm-up (compile) {time.perf_counter() - t0:.1f}s")
  rows = []
  for n in sizes:
    t0 = time.perf_counter()
    doc = filler_document(tok, n, seed=n)
    ep = env_lib.Episode(f"doc{n}", ("Who founded the museum?",), (("x",),), doc)
    # Tokenising + splitting the document is a one-off O(document) cost, timed apart; the
    # episode then carries its sections so the timed run measures the steps alone.
    secs = tuple(eng.sections(ep))
    n_sections = len(secs)
    ep = dataclasses.replace(ep, sections=secs)
    prep = time.perf_counter() - t0
    t0 = time.perf_counter()
    [traj] = eng.run([ep], policy())
    dt = time.perf_counter() - t0
    per = dt / len(traj.steps)
    plen = max(len(s.prompt_ids) for s in traj.steps)
    rows.append((n, n_sections, len(traj.steps), per, plen, prep))
  base = min(r[3] for r in rows)
  print(f"  {'doc tokens':>10} {'sections':>8} {'calls':>5} {'s/section':>9} {'ratio':>6} "
        f"{'max prompt':>10} {'tokenise+split s':>16}")
  for n, ns, calls, per, plen, prep in rows:
    print(f"  {n:>10,} {ns:>8} {calls:>5} {per:>9.3f} {per / base:>6.2f} {plen:>10} {prep:>16.1f}")
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
    t0 = time.perf_counter()
    eng2.run(eps[:2], policy())  # warm-up: compiles batch buckets 1 and 2
    eng2.run(eps, policy())  # compiles the bucket of 32
    print(f"  warm-up (compile) {time.perf_counter() - t0:.1f}s")
    t0 = time.perf_counter()
    batched = eng2.run(eps, policy())
    tb = time.perf_counter() - t0
    t0 = time.perf_counter()
    serial = [eng2.run([e], policy())[0] for e in eps]
    ts = time.perf_counter() - t0
    same = all([s.response_text for s in x.steps] == [s.response_text for s in y.steps]
               for x, y in zip(batched, serial))
    print(f"  batched:   {n_eps / tb:7.2f} episodes/s ({tb:.1f}s)")
    print(f"  one-by-one:{n_eps / ts:7.2f} episodes/s ({ts:.1f}s)")
    print(f"  ratio batched/serial: {ts / tb:.2f}x (target >= 5x); identical greedy "
          f"trajectories: {same}")


if __name__ == "__main__":
  main()
