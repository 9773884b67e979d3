"""Episode rewards for GRPO: answer score minus configurable format and op-cost terms.

The answer term is the mean over the context's questions of an answer metric (exact match by
default, as the AtomMem paper trains; token F1 or strict containment by config), so a
multi-question context is rewarded with the fraction answered correctly. Bidirectional sub-EM
is refused: it also matches when the *prediction* is a substring of the gold, so a policy learns
to answer "s" for "Rush" or "no" for "Norway".
"""
from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Callable, Mapping

from atommem_jax.data import metrics as metrics_lib

if TYPE_CHECKING:
  from atommem_jax.agent.trajectory import Trajectory

# metric name -> function name in `atommem_jax.data.metrics`, resolved at call time
ANSWER_METRICS = {"exact_match": "exact_match", "f1": "f1_score", "contains": "contains_match"}
# op kind -> counter name in `Trajectory.op_counts` (`atommem_jax.memory.state.COUNTER_NAMES`)
OP_COUNTERS = {"create": "creates", "read": "reads", "update": "updates", "delete": "deletes"}


def _finite_nonneg(name: str, value: float) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
      or value < 0:
    raise ValueError(f"RewardConfig.{name} must be a finite number >= 0, got {value!r}")
  return float(value)


@dataclasses.dataclass(frozen=True)
class RewardConfig:
  """How an episode is scored. All penalty weights default to 0 (the paper's pure answer reward).

  parse_error_penalty: times the fraction of steps with at least one parse error.
  missing_answer_penalty: times the fraction of questions left unanswered (answer None).
  untagged_answer_penalty: times the fraction of questions answered without <final_answer>.
  op_costs: (op kind, cost per op) pairs or a mapping over create/read/update/delete; each op
    of that kind the episode applied costs that much (stored as a sorted tuple, hashable).
  """

  answer_metric: str = "exact_match"
  parse_error_penalty: float = 0.0
  missing_answer_penalty: float = 0.0
  untagged_answer_penalty: float = 0.0
  op_costs: tuple[tuple[str, float], ...] | Mapping[str, float] = ()

  def __post_init__(self):
    if self.answer_metric == "sub_em":
      raise ValueError(
          "RewardConfig.answer_metric='sub_em' is refused: bidirectional sub-EM also matches "
          "when the prediction is a substring of the gold, so degenerate answers such as 's' for "
          "'Rush' or 'no' for 'Norway' earn full reward; use 'exact_match', 'f1' or 'contains'")
    if self.answer_metric not in ANSWER_METRICS:
      raise ValueError(f"RewardConfig.answer_metric={self.answer_metric!r}; known: "
                       f"{sorted(ANSWER_METRICS)}")
    for name in ("parse_error_penalty", "missing_answer_penalty", "untagged_answer_penalty"):
      object.__setattr__(self, name, _finite_nonneg(name, getattr(self, name)))
    items = self.op_costs.items() if hasattr(self.op_costs, "items") else self.op_costs
    costs: dict[str, float] = {}
    for item in items:
      if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise ValueError(f"RewardConfig.op_costs: expected (op kind, cost) pairs, got {item!r}")
      kind, cost = item
      if kind not in OP_COUNTERS:
        raise ValueError(f"RewardConfig.op_costs: unknown op kind {kind!r}; known: "
                         f"{sorted(OP_COUNTERS)}")
      if kind in costs:
        raise ValueError(f"RewardConfig.op_costs: op kind {kind!r} given twice")
      costs[kind] = _finite_nonneg(f"op_costs[{kind!r}]", cost)
    object.__setattr__(self, "op_costs", tuple(sorted(costs.items())))


def answer_metric_fn(name: str) -> Callable[[str, list[str]], float]:
  """The scoring function for `name`, looked up in `atommem_jax.data.metrics` when called."""
  if name not in ANSWER_METRICS:
    raise ValueError(f"unknown answer metric {name!r}; known: {sorted(ANSWER_METRICS)}")
  fn = getattr(metrics_lib, ANSWER_METRICS[name], None)
  if fn is None:
    raise ValueError(f"answer metric {name!r}: atommem_jax.data.metrics has no "
                     f"{ANSWER_METRICS[name]}()")
  return fn


def episode_reward(trajectory: Trajectory, cfg: RewardConfig) -> tuple[float, dict[str, float]]:
  """(reward, components) of one episode.

  reward = answer - parse_error_penalty * parse_error_frac
                  - missing_answer_penalty * missing_answer_frac
                  - untagged_answer_penalty * untagged_answer_frac - op_cost.
  Components hold each term: answer (mean metric over questions; an unanswered question scores
  the metric of ""), the three fractions, op_cost (sum of cost * count), penalty (all that was
  subtracted) and reward. A trajectory with no steps has a parse-error fraction of 0.
  Trajectories written before `untagged_answers` was counted read as 0 untagged answers.
  """
  answers, golds = list(trajectory.answers), list(trajectory.golds)
  if not golds:
    raise ValueError(f"episode_reward: episode {trajectory.episode_id!r} has no questions")
  if len(answers) != len(golds):
    raise ValueError(f"episode_reward: episode {trajectory.episode_id!r} has {len(answers)} "
                     f"answers for {len(golds)} questions")
  metric = answer_metric_fn(cfg.answer_metric)
  n_q = len(golds)
  answer = sum(metric(a or "", g) for a, g in zip(answers, golds)) / n_q
  steps = trajectory.steps
  parse_frac = sum(bool(s.parse_errors) for s in steps) / len(steps) if steps else 0.0
  missing_frac = sum(a is None for a in answers) / n_q
  untagged = trajectory.op_counts.get("untagged_answers", 0)
  if not isinstance(untagged, int) or not 0 <= untagged <= n_q:
    raise ValueError(f"episode_reward: episode {trajectory.episode_id!r} has "
                     f"untagged_answers={untagged!r} for {n_q} questions")
  untagged_frac = untagged / n_q
  op_cost = 0.0
  for kind, cost in cfg.op_costs:
    counter = OP_COUNTERS[kind]
    if counter not in trajectory.op_counts:
      raise ValueError(f"episode_reward: op_costs charges {kind!r} but episode "
                       f"{trajectory.episode_id!r} has no {counter!r} in op_counts "
                       f"({sorted(trajectory.op_counts)})")
    op_cost += cost * trajectory.op_counts[counter]
  penalty = (cfg.parse_error_penalty * parse_frac + cfg.missing_answer_penalty * missing_frac
             + cfg.untagged_answer_penalty * untagged_frac + op_cost)
  reward = answer - penalty
  return reward, {"answer": float(answer), "parse_error_frac": float(parse_frac),
                  "missing_answer_frac": float(missing_frac),
                  "untagged_answer_frac": float(untagged_frac), "op_cost": float(op_cost),
                  "penalty": float(penalty), "reward": float(reward)}
