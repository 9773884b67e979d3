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
    for key in ("exact_match", "f1", "contains", "sub_em", "n", "ops"):
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


def _traj(ep: str, sample: int = 0, answer: str = "a"):
  from atommem_jax.agent.trajectory import Trajectory

  return Trajectory(episode_id=ep, method="oracle", questions=["q"], golds=[["a"]],
                    answers=[answer], steps=[], sample=sample)


def _store_with(tmp_path, n: int = 3):
  """A store holding `n` records in the oracle@synthetic@8 cell, and that file's path."""
  c = _oracle(tmp_path)
  store = resume_lib.EpisodeStore(tmp_path / "out", c)
  store.append("oracle", "synthetic", "8", [_traj(f"e{i}") for i in range(n)])
  [path] = store.root.glob("oracle@*.jsonl")
  return store, path


def test_store_mends_a_record_whose_newline_was_cut(tmp_path):
  store, p = _store_with(tmp_path)
  p.write_text(p.read_text().rstrip("\n"))
  done = store.load("oracle", "synthetic", "8")
  assert [t.episode_id for t in done] == ["e0", "e1", "e2"]
  store.append("oracle", "synthetic", "8", [_traj("e3")])
  assert len(store.load("oracle", "synthetic", "8")) == 4


def test_records_with_unicode_line_separators_load(tmp_path):
  """json.dumps(ensure_ascii=False) leaves U+2028 and U+0085 unescaped: not record ends."""
  store, p = _store_with(tmp_path, n=1)
  store.append("oracle", "synthetic", "8", [_traj("e1", answer="a\u2028b\x85c")])
  done = store.load("oracle", "synthetic", "8")
  assert [t.answers[0] for t in done] == ["a", "a\u2028b\x85c"]


def test_only_a_torn_last_line_is_cut(tmp_path):
  """No trailing newline and invalid JSON: the write a kill interrupted; its batch reruns."""
  store, p = _store_with(tmp_path)
  whole = p.read_text()
  p.write_text(whole + whole.splitlines()[0][:40])
  assert [t.episode_id for t in store.load("oracle", "synthetic", "8")] == ["e0", "e1", "e2"]
  assert p.read_text() == whole  # cut, so the next append starts on a clean line


@pytest.mark.parametrize("damage,line", [
    (lambda lines: lines[:1] + ["{not json\n"] + lines[1:], 2),  # invalid, in the middle
    (lambda lines: lines + ["{not json\n"], 4),  # invalid last line that ends with a newline
    (lambda lines: lines + ['{"episode_id": "e9"}'], 4),  # valid JSON, not a trajectory
    (lambda lines: lines[:1] + ["[1, 2]\n"] + lines[1:], 2),
])
def test_any_other_unreadable_record_is_an_error_naming_file_and_line(tmp_path, damage, line):
  store, p = _store_with(tmp_path)
  damaged = "".join(damage(p.read_text().splitlines(keepends=True)))
  p.write_text(damaged)
  with pytest.raises(ValueError, match=rf"{p.name}:{line}: "):
    store.load("oracle", "synthetic", "8")
  assert p.read_text() == damaged  # a damaged store is never shortened


def test_editing_a_prompt_template_refuses_the_stored_episodes(tmp_path):
  """Same file name, new contents: the episodes were made with other prompts."""
  from atommem_jax.agent.prompts import PROMPTS_DIR

  template = tmp_path / "my_step.txt"
  template.write_text((PROMPTS_DIR / "step.txt").read_text())
  c = _oracle(tmp_path, **{"prompts.step": str(template)})
  store = resume_lib.EpisodeStore(tmp_path / "out", c)
  store.append("oracle", "synthetic", "8", [_traj("e0")])
  resume_lib.EpisodeStore(tmp_path / "out", c)  # unchanged: reused
  template.write_text(template.read_text() + "\nThink step by step.\n")
  with pytest.raises(resume_lib.ResumeMismatch, match=r"prompts\.step\.sha256: '"):
    resume_lib.EpisodeStore(tmp_path / "out", c)
  fresh = resume_lib.EpisodeStore(tmp_path / "out", _oracle(
      tmp_path, resume=False, **{"prompts.step": str(template)}))
  assert fresh.load("oracle", "synthetic", "8") == []  # resume=False discards them


def test_fingerprint_names_every_template_by_content(tmp_path):
  from atommem_jax.agent.build import PROMPT_TEMPLATES

  fp = resume_lib.fingerprint(_oracle(tmp_path))
  for key in PROMPT_TEMPLATES:
    assert len(fp[f"prompts.{key}.sha256"]) == 64
  assert fp["prompts.step.sha256"] != fp["prompts.final.sha256"]


def test_a_new_code_version_refuses_but_a_dirty_tree_does_not(tmp_path, monkeypatch):
  store, _ = _store_with(tmp_path)
  c = _oracle(tmp_path)
  real = resume_lib.code_version()
  assert set(real) == {"code.package_version", "code.git_revision", "code.git_dirty"}
  assert real["code.package_version"] != "unknown"  # the project is installed (editable)
  flipped = dict(real, **{"code.git_dirty": not real["code.git_dirty"]})
  monkeypatch.setattr(resume_lib, "code_version", lambda: flipped)
  resume_lib.EpisodeStore(tmp_path / "out", c)  # recorded, not compared
  moved = dict(real, **{"code.git_revision": "0" * 40})
  monkeypatch.setattr(resume_lib, "code_version", lambda: moved)
  with pytest.raises(resume_lib.ResumeMismatch, match=r"code\.git_revision"):
    resume_lib.EpisodeStore(tmp_path / "out", c)


def test_code_version_outside_a_git_checkout_is_unknown(tmp_path, monkeypatch):
  """A wheel installed somewhere (here: a directory in no git checkout) has no revision."""
  pkg = tmp_path / "site-packages" / "atommem_jax"
  pkg.mkdir(parents=True)
  monkeypatch.setattr(resume_lib, "_PACKAGE_DIR", pkg)
  resume_lib.code_version.cache_clear()
  try:
    v = resume_lib.code_version()
  finally:
    resume_lib.code_version.cache_clear()
  assert v["code.git_revision"] == "unknown" and v["code.git_dirty"] is None


def test_episodes_without_a_fingerprint_are_refused(tmp_path):
  store, _ = _store_with(tmp_path)
  (store.root / "fingerprint.json").unlink()
  with pytest.raises(resume_lib.ResumeMismatch, match="no fingerprint.json"):
    resume_lib.EpisodeStore(tmp_path / "out", _oracle(tmp_path))


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
