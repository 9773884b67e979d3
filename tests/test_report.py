"""Report aggregation: scores per method and length, op statistics, files written."""
from __future__ import annotations

import json

from atommem_jax.agent.trajectory import StepRecord, Trajectory
from atommem_jax.eval import report


def _t(em, n_q=1, ops=(("create",), ("read",)), errors=False):
  steps = [StepRecord(index=i, phase="reading", chunk=i, question=0, prompt_text="", response_text="",
                      ops=[{"kind": k, "text": "x", "id": None} for k in step_ops],
                      parse_errors=["bad"] if errors and i == 0 else [])
           for i, step_ops in enumerate(ops)]
  return Trajectory(episode_id="e", method="m", questions=["q"] * n_q, golds=[["a"]] * n_q,
                    answers=["a"] * n_q, steps=steps,
                    scores={"exact_match": em, "f1": em, "sub_em": em})


def test_aggregate_weights_by_questions_and_splits_lengths(tmp_path):
  runs = {"atommem": {"50": [_t(1.0, n_q=3), _t(0.0)], "200": [_t(0.5, errors=True)]},
          "rag": {"50": [_t(0.0, ops=(("create", "create"),))]}}
  res = report.aggregate(runs)
  assert res["atommem"]["by_length"]["50"] == {"exact_match": 0.75, "f1": 0.75, "sub_em": 0.75, "n": 4}
  assert res["atommem"]["n"] == 5
  assert abs(res["atommem"]["exact_match"] - (3 + 0 + 0.5) / 5) < 1e-9
  ops = res["atommem"]["ops"]
  assert ops["steps"] == 6 and ops["totals"]["create"] == 3
  assert ops["by_position"]["create"] == [1.0, 0.0] and ops["by_position"]["read"] == [0.0, 1.0]
  assert abs(ops["parse_error_rate"] - 1 / 6) < 1e-9
  assert res["rag"]["ops"]["per_step"]["create"] == 2.0
  paths = report.write_reports(res, tmp_path)
  assert json.loads(paths["results"].read_text()) == res
  assert "| atommem | 200 | 1 | 0.500 |" in paths["summary"].read_text()
  for k in ("scores_png", "ops_png"):
    assert paths[k].read_bytes()[:4] == b"\x89PNG"
