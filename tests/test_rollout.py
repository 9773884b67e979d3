"""The rollout engine: scripted policies through the real memory state and environment."""
from __future__ import annotations

import numpy as np
import pytest

from atommem_jax.agent import environment as env_lib
from atommem_jax import protocol
from atommem_jax.agent.rollout import Action, RolloutConfig, RolloutEngine
from atommem_jax.memory import state as mem_lib


class WordTokenizer:
  """Whitespace 'tokenizer' (one id per word) so section boundaries are easy to reason about."""

  def __init__(self):
    self.vocab: dict[str, int] = {}
    self.inv: list[str] = []

  def __call__(self, text, add_special_tokens=False):
    ids = []
    for w in text.split(" "):
      if w not in self.vocab:
        self.vocab[w] = len(self.inv)
        self.inv.append(w)
      ids.append(self.vocab[w])
    return {"input_ids": ids}

  def decode(self, ids, skip_special_tokens=True):
    return " ".join(self.inv[i] for i in ids)


def bag_of_words(texts):
  """Deterministic unit vectors: hashed bag of lower-cased words, dim 64."""
  out = np.zeros((len(texts), 64), np.float32)
  for r, t in enumerate(texts):
    for w in t.lower().replace(".", " ").replace("?", " ").split():
      out[r, sum(map(ord, w)) % 64] += 1.0
  n = np.linalg.norm(out, axis=1, keepdims=True)
  return out / np.maximum(n, 1e-9)


class ScriptedPolicy:
  """Reading: stores each section, fixes a retracted fact; answering: queries, then answers."""

  name = "scripted"
  advance_rule = "atommem"

  def __init__(self):
    self.seen: list = []

  def act(self, observations, params=None):
    self.seen.append(observations)
    out = []
    for o in observations:
      if o.phase == env_lib.READING:
        ops = [protocol.Op("scratchpad", f"read {o.chunk_index + 1} of {o.num_chunks}")]
        if "wrong" in o.chunk and o.query is None:
          ops.append(protocol.Op("read", "capital"))  # look before fixing: same section again
        elif "wrong" in o.chunk:
          idx = next(i for i, m in enumerate(o.memories, 1) if "capital" in m)
          ops.append(protocol.Op("update", "The capital is Paris.", idx))
        else:
          ops.append(protocol.Op("create", o.chunk.strip()))
        out.append(Action(protocol.render(ops, max_chars=None), scripted=True))
      elif o.query != o.episode.questions[o.question_index]:
        out.append(Action(protocol.render([protocol.Op("read", o.episode.questions[o.question_index])]),
                          scripted=True))
      else:
        best = o.memories[0] if o.memories else ""
        out.append(Action(protocol.render(answer=best.split()[-1].rstrip(".")), scripted=True))
    return out


def _engine(**kw):
  cfg = RolloutConfig(env=env_lib.EnvConfig(chunk_size=6, overlap=0, max_calls=0),
                      memory=mem_lib.MemoryConfig(capacity=8, dim=64, top_k=3), **kw)
  score = lambda a, golds: {"exact_match": float(a in golds)}
  return RolloutEngine(cfg, WordTokenizer(), bag_of_words, score)


DOC = "The capital of France is Rome. That was wrong, fix the capital. Bananas are a yellow fruit today."
EP = env_lib.Episode("e1", ("What is the capital?",), (("Paris",),), DOC)


def test_scripted_episode_threads_memory_through_steps():
  eng = _engine()
  policy = ScriptedPolicy()
  [t] = eng.run([EP], policy).trajectories
  phases = [s.phase for s in t.steps]
  assert phases.count("reading") == 4  # 3 sections + one re-presentation after the query
  assert t.answers == ["Paris"] and t.scores["exact_match"] == 1.0
  kinds = [[op["kind"] for op in s.ops] for s in t.steps]
  assert kinds[1] == ["scratchpad", "read"] and kinds[2] == ["scratchpad", "update"]
  assert t.steps[2].events["advanced"] and not t.steps[1].events["advanced"]
  assert "The capital is Paris." in t.steps[2].memory_after
  assert all("Rome" not in m for m in t.steps[-1].memory_after)
  assert t.op_counts["updates"] == 1 and t.op_counts["creates"] == 2
  assert t.steps[0].scratchpad_after == "read 1 of 3"
  fm = t.final_memory  # the final MemoryState, per episode
  assert [e["text"] for e in fm["entries"]] == t.steps[-1].memory_after
  assert fm["query"] == "What is the capital?" and fm["next_id"] == 2
  assert fm["scratchpad"] == t.steps[-1].scratchpad_after and fm["counters"]["updates"] == 1
  assert t.op_counts["unread_sections"] == 0


def test_trajectory_jsonl_round_trip_keeps_loss_mask_and_final_memory(tmp_path):
  import json

  from atommem_jax.agent.trajectory import read_jsonl, write_jsonl

  [t] = _engine().run([EP], ScriptedPolicy()).trajectories
  t.steps[0].prompt_ids, t.steps[0].response_ids = [1, 2, 3], [4, 5]
  path = write_jsonl(tmp_path / "t.jsonl", [t])
  raw = json.loads(path.read_text().splitlines()[0])
  assert raw["steps"][0]["loss_mask"] == [0, 0, 0, 1, 1]
  [back] = read_jsonl(path)
  assert back == t and back.final_memory == t.final_memory


def test_batched_group_equals_single_and_finished_rows_stay_idle():
  eng = _engine()
  ep2 = env_lib.Episode("e2", ("What is the capital?",), (("Paris",),), "The capital is Paris.")
  batched = eng.run([EP, ep2], ScriptedPolicy(), group_size=2).trajectories
  assert [(t.episode_id, t.sample) for t in batched] == [("e1", 0), ("e1", 1), ("e2", 0), ("e2", 1)]
  single = [eng.run([e], ScriptedPolicy()).trajectories[0] for e in (EP, ep2)]
  for b, s in zip(batched[::2], single):
    assert b.answers == s.answers and b.op_counts == s.op_counts
    assert [x.response_text for x in b.steps] == [x.response_text for x in s.steps]
  assert len(batched[2].steps) < len(batched[0].steps)  # the short episode ended first


def test_disallowed_ops_are_dropped_and_reported():
  eng = _engine(allowed_ops=("scratchpad",))
  [t] = eng.run([EP], ScriptedPolicy()).trajectories
  assert t.op_counts["creates"] == 0
  assert any("op_not_allowed <add_memory>" in e for e in t.steps[0].parse_errors)


def test_policy_returning_wrong_number_of_actions_is_an_error():
  class Bad:
    name, advance_rule = "bad", "atommem"

    def act(self, obs, params=None):
      return []

  with pytest.raises(ValueError, match="returned 0 actions for 1"):
    _engine().run([EP], Bad())
