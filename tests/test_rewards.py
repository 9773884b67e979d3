"""Episode rewards: answer metrics that cannot be gamed, multi-question fractions, penalties."""
from __future__ import annotations

import pytest

from atommem_jax.agent.trajectory import StepRecord, Trajectory
from atommem_jax.training.rewards import RewardConfig, episode_reward

METRICS = ("exact_match", "f1", "contains")


def _traj(answers, golds, *, parse_errors=(), op_counts=None, n_steps=None):
  n_steps = n_steps if n_steps is not None else max(len(parse_errors), 1)
  steps = [StepRecord(index=i, phase="reading", chunk=i, question=0, prompt_text="p",
                      response_text="r",
                      parse_errors=list(parse_errors[i]) if i < len(parse_errors) else [])
           for i in range(n_steps)]
  return Trajectory(episode_id="ep0", method="atommem", questions=["q"] * len(golds),
                    golds=[list(g) for g in golds], answers=list(answers), steps=steps,
                    op_counts=dict(op_counts or {}))


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("answer,gold", [("s", "Rush"), ("no", "Norway"), ("Nor", "Norway")])
def test_degenerate_substring_answers_score_zero(metric, answer, gold):
  reward, parts = episode_reward(_traj([answer], [[gold]]), RewardConfig(answer_metric=metric))
  assert reward == 0.0 and parts["answer"] == 0.0


@pytest.mark.parametrize("metric", METRICS)
def test_correct_answer_scores_one(metric):
  reward, _ = episode_reward(_traj(["the Rush"], [["Rush", "Rush band"]]),
                             RewardConfig(answer_metric=metric))
  assert reward == 1.0


def test_metric_specific_scores():
  t = _traj(["Rush band from Canada"], [["Rush band"]])
  assert episode_reward(t, RewardConfig())[0] == 0.0  # exact match
  assert episode_reward(t, RewardConfig(answer_metric="contains"))[0] == 1.0
  # F1: 2 common tokens; precision 2/4, recall 2/2 -> 2/3
  assert episode_reward(t, RewardConfig(answer_metric="f1"))[0] == pytest.approx(2 / 3)


def test_multi_question_fraction_answered_correctly():
  t = _traj(["Paris", "wrong", None, "1999"], [["Paris"], ["Lyon"], ["Nice"], ["1999"]])
  reward, parts = episode_reward(t, RewardConfig())
  assert reward == pytest.approx(0.5) and parts["answer"] == pytest.approx(0.5)
  assert parts["missing_answer_frac"] == pytest.approx(0.25)


def test_parse_error_penalty_uses_fraction_of_steps_with_errors():
  t = _traj(["Paris"], [["Paris"]], parse_errors=[["unclosed tag"], [], ["a", "b"], []])
  reward, parts = episode_reward(t, RewardConfig(parse_error_penalty=0.4))
  assert parts["parse_error_frac"] == pytest.approx(0.5)  # 2 of 4 steps, however many errors
  assert reward == pytest.approx(1.0 - 0.4 * 0.5)
  assert episode_reward(t, RewardConfig())[0] == 1.0  # default weight 0


def test_missing_answer_penalty():
  t = _traj([None, "Lyon"], [["Paris"], ["Lyon"]])
  reward, parts = episode_reward(t, RewardConfig(missing_answer_penalty=0.3))
  assert parts["answer"] == pytest.approx(0.5)
  assert reward == pytest.approx(0.5 - 0.3 * 0.5)
  assert parts["penalty"] == pytest.approx(0.15)


def test_untagged_answer_penalty_and_old_trajectories():
  t = _traj(["Paris", "Lyon"], [["Paris"], ["Lyon"]], op_counts={"untagged_answers": 1})
  reward, parts = episode_reward(t, RewardConfig(untagged_answer_penalty=0.2))
  assert parts["untagged_answer_frac"] == pytest.approx(0.5)
  assert reward == pytest.approx(1.0 - 0.1)
  old = _traj(["Paris"], [["Paris"]], op_counts={"creates": 2})  # no untagged_answers counter
  assert episode_reward(old, RewardConfig(untagged_answer_penalty=0.2))[0] == 1.0
  bad = _traj(["Paris"], [["Paris"]], op_counts={"untagged_answers": 3})
  with pytest.raises(ValueError, match="untagged_answers=3 for 1 questions"):
    episode_reward(bad, RewardConfig())


def test_op_costs_per_op():
  counts = {"creates": 3, "reads": 5, "updates": 1, "deletes": 2}
  t = _traj(["Paris"], [["Paris"]], op_counts=counts)
  cfg = RewardConfig(op_costs={"read": 0.01, "create": 0.02})
  assert cfg.op_costs == (("create", 0.02), ("read", 0.01))  # normalised, hashable
  hash(cfg)
  reward, parts = episode_reward(t, cfg)
  assert parts["op_cost"] == pytest.approx(3 * 0.02 + 5 * 0.01)
  assert reward == pytest.approx(1.0 - 0.11)
  assert RewardConfig(op_costs=(("delete", 0.5),)) == RewardConfig(op_costs={"delete": 0.5})
  with pytest.raises(ValueError, match="has no 'updates' in op_counts"):
    episode_reward(_traj(["Paris"], [["Paris"]], op_counts={"steps": 1}),
                   RewardConfig(op_costs={"update": 0.1}))


def test_sub_em_refused_with_reason():
  with pytest.raises(ValueError, match=r"sub_em.*refused.*'s' for 'Rush'"):
    RewardConfig(answer_metric="sub_em")


@pytest.mark.parametrize("kwargs,match", [
    ({"answer_metric": "bleu"}, r"answer_metric='bleu'; known: \['contains', 'exact_match'"),
    ({"parse_error_penalty": -0.1}, "parse_error_penalty must be a finite number >= 0, got -0.1"),
    ({"missing_answer_penalty": float("nan")}, "missing_answer_penalty must be a finite"),
    ({"op_costs": {"insert": 0.1}}, "unknown op kind 'insert'"),
    ({"op_costs": (("read", 0.1), ("read", 0.2))}, "'read' given twice"),
    ({"op_costs": {"read": -1}}, r"op_costs\['read'\] must be a finite number >= 0"),
])
def test_config_validation(kwargs, match):
  with pytest.raises(ValueError, match=match):
    RewardConfig(**kwargs)


def test_episode_shape_errors():
  with pytest.raises(ValueError, match="1 answers for 2 questions"):
    episode_reward(_traj(["a"], [["a"], ["b"]]), RewardConfig())
  with pytest.raises(ValueError, match="has no questions"):
    episode_reward(_traj([], []), RewardConfig())
