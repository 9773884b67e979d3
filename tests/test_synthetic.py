"""Synthetic tasks: determinism, oracle replay through parse + MemoryState + stream, baselines."""
from __future__ import annotations


import numpy as np
import pytest

from atommem_jax import protocol
from atommem_jax.data import synthetic as syn
from atommem_jax.data import synthetic_replay as rep


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


@pytest.mark.parametrize("cfg", [
    syn.SyntheticConfig(task="chain", hops=4, corrections=2, num_chunks=8),
    syn.SyntheticConfig(task="count", members=5, retractions=2, num_chunks=8),
    syn.SyntheticConfig(task="mixed", distractors_per_chunk=6),
])
def test_oracle_replay_answers_everything(cfg):
  """Oracle turns through parse -> encode_ops -> MemoryState.apply, checked against the stream."""
  for ex in syn.generate_many(cfg, 1, 6):
    res = rep.replay(ex, rep.oracle_turns(ex), embed, check_stream=True)
    assert res.derived_answer == ex.answer == res.written_answer
    assert res.op_errors == 0 and res.parse_errors == 0
    assert len(res.displayed) >= 1
    if "update" in ex.uses:
      assert res.counters["updates"] >= 1
    if "delete" in ex.uses:
      assert res.counters["deletes"] >= 1


def test_baselines_lower_with_corrections_and_retractions():
  chain = list(syn.generate_many(syn.SyntheticConfig(task="chain", corrections=2), 2, 12))
  count = list(syn.generate_many(syn.SyntheticConfig(task="count", retractions=2), 2, 12))
  for exs in (chain, count):
    oracle = rep.accuracy(exs, "oracle", embed)
    assert oracle == 1.0
    assert rep.accuracy(exs, "create_all_read_once", embed) <= oracle - 0.5
    assert rep.accuracy(exs, "scratchpad_only", embed) <= oracle - 0.5
  # Without corrections/retractions, create-everything is as good as the oracle.
  plain = list(syn.generate_many(syn.SyntheticConfig(task="chain", corrections=0), 2, 6))
  assert rep.accuracy(plain, "create_all_read_once", embed) == 1.0


def test_stream_check_catches_misaligned_turns():
  ex = syn.generate(syn.SyntheticConfig(task="count", retractions=1), 0, 0)
  turns = rep.oracle_turns(ex)
  bad = [t for t in turns if t[1] != syn.DELETED_MOVE_ON]  # the delete no longer moves on
  with pytest.raises(ValueError, match="was written for chunk"):
    rep.replay(ex, bad, embed, check_stream=True)


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
  ep = rep.to_episode(ex)
  assert ep.sections == ex.chunks and ep.golds == ((ex.answer,),)


@pytest.mark.parametrize("kw,match", [
    (dict(hops=6), "hops"), (dict(task="sum"), "task"), (dict(members=7), "members"),
    (dict(task="count", members=2, retractions=3), "retractions"),
    (dict(task="chain", hops=5, corrections=3, num_chunks=7), "num_chunks"),
])
def test_config_errors(kw, match):
  with pytest.raises(ValueError, match=match):
    syn.SyntheticConfig(**kw)
