"""Synthetic tasks: determinism, oracle replay through parse + MemoryState + stream, baselines."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from atommem_jax import protocol
from atommem_jax.agent import environment as env_lib
from atommem_jax.agent import oracle
from atommem_jax.agent.rollout import RolloutConfig, RolloutEngine
from atommem_jax.data import synthetic as syn
from atommem_jax.data.metrics import score_all
from atommem_jax.memory import state as mem_lib


def embed(texts):
  """A deterministic hashed bag-of-words embedder (unit norm), local to this test."""
  import zlib
  out = np.zeros((len(texts), 64), np.float32)
  for r, t in enumerate(texts):
    for w in t.lower().replace(".", " ").replace("?", " ").split():
      h = zlib.crc32(w.encode())
      out[r, h % 64] += 1.0 if h & 1 << 31 else -1.0
  return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def test_deterministic_and_seeded():
  cfg = syn.SyntheticConfig()
  assert syn.generate(cfg, 3, 5) == syn.generate(cfg, 3, 5)
  assert syn.generate(cfg, 3, 5) != syn.generate(cfg, 3, 6)
  assert syn.generate(cfg, 3, 5) != syn.generate(cfg, 4, 5)


@pytest.mark.parametrize("cfg", [
    syn.SyntheticConfig(task="chain", hops=1, corrections=0, num_chunks=3),
    syn.SyntheticConfig(task="chain", hops=5, corrections=2, num_chunks=9),
    syn.SyntheticConfig(task="count", members=6, retractions=3, num_chunks=10),
    syn.SyntheticConfig(task="mixed", distractors_per_chunk=10),
])
def test_structure(cfg):
  for ex in syn.generate_many(cfg, 0, 5):
    assert len(ex.chunks) == cfg.num_chunks
    assert len(set(ex.key_chunks)) == len(ex.key_chunks)  # one key event per chunk
    for c, kind, text in ex.events:
      assert kind in ("create", "update", "delete")
      if kind == "create":
        assert text in ex.chunks[c]
    for step in ex.oracle:  # every oracle response parses cleanly
      assert protocol.parse(step.response).ok
    assert ex.oracle[-1].response == protocol.render_response(answer=ex.answer)
    if ex.kind == "chain" and cfg.corrections:
      assert "update" in ex.uses
    if ex.kind == "count" and cfg.retractions:
      assert "delete" in ex.uses


def _run(cfg, seed, n, method):
  """Scripted `method` on n tasks through the one rollout engine (uncapped call budget)."""
  return _run_episodes(oracle.episodes_of(cfg, seed, n), method)


def _run_episodes(eps, method):
  allowed = ("scratchpad",) if method == "scratchpad_only" else protocol.OP_KINDS
  engine = RolloutEngine(RolloutConfig(env=env_lib.EnvConfig(max_calls=0),
                                       memory=mem_lib.MemoryConfig(capacity=32, dim=64, top_k=6),
                                       allowed_ops=allowed), None, embed, score_all)
  return engine.run(eps, oracle.make_scripted_policy(method)).trajectories


def _accuracy(cfg, seed, n, method):
  trajs = _run(cfg, seed, n, method)
  return sum(t.scores["exact_match"] for t in trajs) / len(trajs)


@pytest.mark.parametrize("cfg", [
    syn.SyntheticConfig(task="chain", hops=2, corrections=1, num_chunks=6),
    syn.SyntheticConfig(task="chain", hops=3, corrections=3, num_chunks=10),
    syn.SyntheticConfig(task="count", members=5, retractions=2, num_chunks=9),
])
def test_oracle_notes_use_only_words_the_student_was_shown(cfg):
  """A student imitates the notes, so they may hold nothing it cannot see: every word of a
  scratchpad note is in the question or a section shown so far (no count of key facts)."""
  words = lambda t: set(w.lower().strip(".,:;?") for w in t.split()) - {""}
  for ex in syn.generate_many(cfg, 0, 10):
    for step in ex.oracle:
      for op in protocol.parse(step.response).ops:
        if op.kind == protocol.SCRATCHPAD:
          shown = words(ex.question).union(*(words(c) for c in ex.chunks[:step.chunk + 1]))
          extra = words(op.text) - shown - {"stored", "updated", "deleted"}
          assert not extra, (ex.id, step.chunk, op.text, extra)


@pytest.mark.parametrize("cfg", [
    syn.SyntheticConfig(task="chain", hops=4, corrections=2, num_chunks=8),
    syn.SyntheticConfig(task="count", members=5, retractions=2, num_chunks=8),
    syn.SyntheticConfig(task="mixed", distractors_per_chunk=6),
])
def test_oracle_replay_answers_everything(cfg):
  """Oracle turns through parse -> encode_ops -> MemoryState.apply, in step with the stream."""
  for t in _run(cfg, 1, 6, "oracle"):
    assert t.scores["exact_match"] == 1.0
    assert t.op_counts["parse_errors"] == 0
    assert not any(s.op_errors for s in t.steps)
    assert t.steps[-1].shown_memories  # the answer came from displayed entries
    uses = t.meta["uses"]
    if "update" in uses:
      assert t.op_counts["updates"] >= 1
    if "delete" in uses:
      assert t.op_counts["deletes"] >= 1


def test_baselines_lower_with_corrections_and_retractions():
  for cfg in (syn.SyntheticConfig(task="chain", corrections=2),
              syn.SyntheticConfig(task="count", retractions=2)):
    assert _accuracy(cfg, 2, 12, "oracle") == 1.0
    assert _accuracy(cfg, 2, 12, "create_all_read_once") <= 0.5
    assert _accuracy(cfg, 2, 12, "scratchpad_only") <= 0.5
  # Without corrections/retractions, create-everything is as good as the oracle.
  assert _accuracy(syn.SyntheticConfig(task="chain", corrections=0), 2, 6,
                   "create_all_read_once") == 1.0


def test_varied_stream_stays_at_or_below_the_knobs_and_regenerates():
  """`vary` draws each task's difficulty at or below the config's knobs (training data stays
  below a held-out evaluation's), spreads the counts, and the metadata regenerates the task."""
  cfg = syn.SyntheticConfig(num_chunks=7, hops=3, corrections=1, members=4, retractions=1)
  drawn = [syn.varied_config(cfg, 5, i) for i in range(64)]
  assert drawn == [syn.varied_config(cfg, 5, i) for i in range(64)]  # a pure function
  for d in drawn:
    assert 4 <= d.num_chunks <= 7 and 1 <= d.hops <= 3 and d.corrections <= 1
    assert d.retractions <= 1 and d.retractions <= d.members <= 4
  for knob in ("num_chunks", "hops", "corrections", "members", "retractions"):
    assert len({getattr(d, knob) for d in drawn}) > 1, knob  # no constant count to memorise
  eps = oracle.episodes_of(cfg, 5, 8, vary=True)
  for i, e in enumerate(eps):
    ex = oracle.example_of(e)
    assert ex == syn.generate(drawn[i], 5, i) and e.sections == ex.chunks
  assert oracle.episodes_of(cfg, 5, 8)[0].meta["config"] == dataclasses.asdict(cfg)
  for t in _run_episodes(eps, "oracle"):  # every drawn task is solvable by the oracle
    assert t.scores["exact_match"] == 1.0


@pytest.mark.parametrize("cfg", [
    syn.SyntheticConfig(task="chain", hops=1, corrections=0, num_chunks=1),
    syn.SyntheticConfig(task="chain", hops=5, corrections=3, num_chunks=8),
    syn.SyntheticConfig(task="count", members=1, retractions=1, num_chunks=2),
    syn.SyntheticConfig(task="count", members=6, retractions=6, num_chunks=12),
    syn.SyntheticConfig(task="mixed", hops=5, corrections=2, members=6, retractions=4,
                        num_chunks=10),
])
def test_varied_configs_are_valid_and_never_exceed_a_knob(cfg):
  """Edge knobs (one member retracted, the fewest sections the events allow): every drawn
  config is a valid SyntheticConfig (its __post_init__ ran) at or below each knob, and its
  task generates."""
  for i in range(40):
    d = syn.varied_config(cfg, 3, i)
    for knob in ("num_chunks", "hops", "corrections", "members", "retractions"):
      assert getattr(d, knob) <= getattr(cfg, knob), (knob, d)
    assert d.task == cfg.task and d.distractors_per_chunk == cfg.distractors_per_chunk
    assert len(syn.generate(d, 3, i).chunks) == d.num_chunks


def test_answer_from_memory():
  spec = ("Ann", "mentor", "home city")
  texts = ["The home city of Bob is Oslo.", "The mentor of Ann is Bob.", "noise"]
  assert syn.answer_from_memory("chain", spec, texts) == "Oslo"
  assert syn.answer_from_memory("chain", spec, texts[:1]) is None
  joins = ["Ann joined the Chess club.", "Bob joined the Chess club.", "Cy joined the Poetry club."]
  assert syn.answer_from_memory("count", ("Chess",), joins) == "2"
  with pytest.raises(ValueError, match="unknown task kind"):
    syn.answer_from_memory("sum", (), [])


def test_to_dict_and_episode():
  ex = syn.generate(syn.SyntheticConfig(), 0, 0)
  d = ex.to_dict()
  assert d["oracle_responses"] == [s.response for s in ex.oracle]
  assert len(d["event_kinds"]) == len(ex.events)
  ep = oracle.to_episode(ex)
  assert ep.sections == ex.chunks and ep.golds == ((ex.answer,),)


@pytest.mark.parametrize("kw,match", [
    (dict(hops=6), "hops"), (dict(task="sum"), "task"), (dict(members=7), "members"),
    (dict(task="count", members=2, retractions=3), "retractions"),
    (dict(task="chain", hops=5, corrections=3, num_chunks=7), "num_chunks"),
    (dict(count_share=1.5), "count_share"), (dict(count_share=-0.1), "count_share"),
])
def test_config_errors(kw, match):
  with pytest.raises(ValueError, match=match):
    syn.SyntheticConfig(**kw)


def test_tokenizer_corpus_is_the_streams_text():
  cfg = syn.SyntheticConfig()
  lines = syn.corpus(cfg, 1000, 3)
  for i in range(3):
    ex = syn.generate(cfg, 1000, i)
    assert ex.question in lines and all(c in lines for c in ex.chunks)
    assert all(s.response in lines for s in ex.oracle)
  held_out = syn.generate(cfg, 0, 0)  # another seed's tasks are not in it
  assert held_out.question not in lines
  varied = syn.corpus(cfg, 1000, 3, vary=True)
  assert syn.generate(syn.varied_config(cfg, 1000, 2), 1000, 2).question in varied


def test_count_share_draws_the_kind_and_its_default_keeps_the_held_out_stream():
  """count_share weights the mixed stream; its default (0.5) must leave every stream made
  before the knob unchanged: the held-out tasks of docs/results.md (seed 0, 8 sections,
  2 corrections, 4 members, 2 retractions) keep these count tasks."""
  held_out = syn.SyntheticConfig(num_chunks=8, hops=2, corrections=2, members=4, retractions=2)
  counts = [i for i in range(32) if syn.generate(held_out, 0, i).kind == "count"]
  assert counts == [6, 7, 11, 13, 15, 16, 17, 22, 23, 25, 26, 27, 28, 30]
  kinds = lambda share: [syn.generate(dataclasses.replace(held_out, count_share=share), 0,
                                      i).kind for i in range(200)]
  assert set(kinds(0.0)) == {"chain"} and set(kinds(1.0)) == {"count"}
  assert 130 <= kinds(0.75).count("count") <= 170  # 150 expected
