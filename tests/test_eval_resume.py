"""A killed evaluation continues: finished episodes are reused, torn writes rerun, and a
different config in the same output directory is refused."""
from __future__ import annotations

import json

import pytest

from atommem_jax.agent.rollout import RolloutEngine
from atommem_jax.eval import resume as resume_lib
from atommem_jax.eval import runner

from test_eval_pipeline import _config

QUIET = dict(echo=lambda s: None)


def _oracle(tmp_path, **kw):
  return _config("eval_oracle_synthetic", tmp_path,
                 **{"max_examples": 4, "data.num_docs": "8", "sampling.batch_size": 2, **kw})


def _count_runs(monkeypatch) -> list[str]:
  ran: list[str] = []
  real = RolloutEngine.run

  def run(self, episodes, policy, **kw):
    ran.extend(e.episode_id for e in episodes)
    return real(self, episodes, policy, **kw)
  monkeypatch.setattr(RolloutEngine, "run", run)
  return ran


def test_killed_run_resumes_from_finished_episodes(tmp_path, monkeypatch):
  c = _oracle(tmp_path)
  first = runner.evaluate(c, **QUIET)
  cells = sorted((tmp_path / "eval_oracle_synthetic" / "episodes").glob("*.jsonl"))
  assert len(cells) == 3  # one per method
  # Simulate a kill during the second batch: one finished batch (2 episodes) per cell,
  # then half a record.
  for p in cells:
    lines = p.read_text().splitlines()
    assert len(lines) == 4
    p.write_text("\n".join(lines[:2]) + "\n" + lines[2][:50])
  ran = _count_runs(monkeypatch)
  messages: list[str] = []
  second = runner.evaluate(c, echo=messages.append)
  assert len(ran) == 3 * 2  # only the unfinished episodes ran again, per method
  assert any(m.startswith("[resume]") and "2 of 4" in m for m in messages)
  for method in first:
    for key in ("exact_match", "f1", "sub_em", "n", "ops"):
      assert second[method][key] == first[method][key], (method, key)
  for p in cells:  # the torn line was cut and the rerun batch appended on a clean line
    recs = [json.loads(line) for line in p.read_text().splitlines()]
    assert len(recs) == 4 and len({r["episode_id"] for r in recs}) == 4


def test_more_examples_reuse_the_finished_ones(tmp_path, monkeypatch):
  runner.evaluate(_oracle(tmp_path, max_examples=2), **QUIET)
  ran = _count_runs(monkeypatch)
  res = runner.evaluate(_oracle(tmp_path, max_examples=4), **QUIET)
  assert len(ran) == 3 * 2 and all(m["n"] == 4 for m in res.values())


def test_a_different_config_is_refused_unless_resume_is_off(tmp_path, monkeypatch):
  runner.evaluate(_oracle(tmp_path), **QUIET)
  with pytest.raises(resume_lib.ResumeMismatch, match=r"memory\.top_k: 6 -> 3"):
    runner.evaluate(_oracle(tmp_path, **{"memory.top_k": 3}), **QUIET)
  ran = _count_runs(monkeypatch)
  runner.evaluate(_oracle(tmp_path, resume=False, **{"memory.top_k": 3}), **QUIET)
  assert len(ran) == 3 * 4  # everything ran again


def test_fingerprint_ignores_keys_that_cannot_change_an_episode(tmp_path):
  a = _oracle(tmp_path)
  b = _oracle(tmp_path, max_examples=50, verbose=True, viewer_episodes=1, methods="oracle")
  b.output_dir = str(tmp_path / "elsewhere")
  assert resume_lib.fingerprint(a) == resume_lib.fingerprint(b)
  assert "env.chunk_size" in resume_lib.fingerprint(a)


def test_store_mends_a_record_whose_newline_was_cut(tmp_path):
  c = _oracle(tmp_path)
  runner.evaluate(c, **QUIET)
  store = resume_lib.EpisodeStore(tmp_path / "eval_oracle_synthetic", c)
  [p] = store.root.glob("oracle@*.jsonl")
  p.write_text(p.read_text().rstrip("\n"))
  done = store.load("oracle", "synthetic", "8")
  store.append("oracle", "synthetic", "8", done[:1])
  assert len(store.load("oracle", "synthetic", "8")) == len(done) + 1


def test_a_group_cut_short_is_rerun_whole_and_superseded():
  """G samples per episode: a kill after some samples of a group leaves it unfinished; the
  rerun appends the whole group again, and only the latest record per sample counts."""
  from atommem_jax.agent.trajectory import Trajectory

  def traj(ep, sample, answer):
    return Trajectory(episode_id=ep, method="m", questions=["q"], golds=[["a"]],
                      answers=[answer], steps=[], sample=sample)

  old = [traj("e1", 0, "x"), traj("e1", 1, "x"), traj("e2", 0, "x")]  # e2 lost sample 1
  assert resume_lib.finished_episodes(old, group_size=2) == {"e1"}
  rerun = old + [traj("e2", 0, "y"), traj("e2", 1, "y")]
  kept = resume_lib.latest(rerun)
  assert len(kept) == 4 and resume_lib.finished_episodes(kept, 2) == {"e1", "e2"}
  assert {t.answers[0] for t in kept if t.episode_id == "e2"} == {"y"}
