"""Scripted synthetic policies through the real rollout engine."""
from __future__ import annotations

import dataclasses

import ml_collections
import pytest

from atommem_jax.agent import oracle
from atommem_jax.agent.rollout import RolloutConfig, RolloutEngine
from atommem_jax.agent import environment as env_lib
from atommem_jax.data.metrics import score_all
from atommem_jax.memory import state as mem_lib
from atommem_jax.memory.embedder import HashingEmbedder


def _cfg(n=8):
  c = ml_collections.ConfigDict()
  c.seed = 3
  c.max_examples = n
  c.data = ml_collections.ConfigDict(dict(synthetic_hops=2, synthetic_corrections=1,
                                          synthetic_retractions=1))
  return c


def _run(method, eps, allowed=None):
  emb = HashingEmbedder(dim=128)
  kw = {"allowed_ops": allowed} if allowed else {}
  cfg = RolloutConfig(env=env_lib.EnvConfig(max_calls=0),
                      memory=mem_lib.MemoryConfig(capacity=32, dim=128, top_k=6), **kw)
  return RolloutEngine(cfg, None, emb.embed, score_all).run(eps, oracle.make_scripted_policy(method)).trajectories


def test_oracle_answers_everything_from_memory_and_baselines_do_worse():
  eps = oracle.synthetic_episodes(_cfg(12), num_chunks=8)
  assert {e.meta["kind"] for e in eps} == {"chain", "count"}
  res = {m: _run(m, eps, ("scratchpad",) if m == "scratchpad_only" else None) for m in oracle.POLICIES}
  em = {m: sum(t.scores["exact_match"] for t in ts) / len(ts) for m, ts in res.items()}
  assert em["oracle"] == 1.0
  assert em["scratchpad_only"] < 1.0 and em["create_all_read_once"] < 1.0
  uses = {k for t in res["oracle"] for k in ("creates", "updates", "deletes") if t.op_counts[k]}
  assert uses == {"creates", "updates", "deletes"}  # the tasks need every CRUD op
  assert all(t.op_counts["err_bad_index"] == 0 and t.op_counts["parse_errors"] == 0
             for t in res["oracle"])


def test_members_knob_sets_the_count_tasks_people():
  """data.synthetic_members: how many join in count tasks, so a held-out count is not
  always 1 when retractions grow (4 members, 3 retractions)."""
  c = _cfg(8)
  c.data.synthetic_retractions, c.data.synthetic_members = 3, 5
  eps = oracle.synthetic_episodes(c, num_chunks=8)
  counts = [oracle.example_of(e) for e in eps if e.meta["kind"] == "count"]
  assert counts and all(ex.answer == "2" for ex in counts)
  assert all(sum(k == "create" for _, k, _ in ex.events) == 5 for ex in counts)
  c.data.synthetic_members = 2
  with pytest.raises(ValueError, match="retractions"):
    oracle.synthetic_episodes(c, num_chunks=8)


def test_oracle_does_not_read_the_gold():
  [ep] = oracle.synthetic_episodes(_cfg(1), num_chunks=8)
  wrong = dataclasses.replace(ep, golds=(("not the answer",),))
  [t] = _run("oracle", [wrong])
  assert t.scores["exact_match"] == 0.0 and t.answers == [oracle.example_of(ep).answer]


def _run_policy(policy, eps):
  emb = HashingEmbedder(dim=128)
  cfg = RolloutConfig(env=env_lib.EnvConfig(max_calls=0),
                      memory=mem_lib.MemoryConfig(capacity=32, dim=128, top_k=6))
  return RolloutEngine(cfg, None, emb.embed, score_all).run(eps, policy).trajectories


def test_misaligned_stream_is_an_error():
  eps = oracle.synthetic_episodes(_cfg(4), num_chunks=8)
  policy = oracle.make_scripted_policy("oracle")
  policy.advance_rule = "every_step"  # a query turn now moves on: the script falls out of step
  with pytest.raises(ValueError, match="turn written for section"):
    _run_policy(policy, eps)
  longer = dataclasses.replace(eps[0], sections=eps[0].sections + ("one more section",))
  with pytest.raises(ValueError, match="no scripted turn left"):
    _run_policy(oracle.make_scripted_policy("oracle"), [longer])


def test_unknown_policy_and_non_synthetic_episode():
  with pytest.raises(ValueError, match="unknown scripted policy"):
    oracle.make_scripted_policy("genius")
  with pytest.raises(ValueError, match="not a synthetic task"):
    oracle.example_of(env_lib.Episode("x", ("q",), (("a",),), "doc"))
