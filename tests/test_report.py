"""Report aggregation: scores per method and length, op statistics, files written."""
from __future__ import annotations

import json

import pytest

from atommem_jax.agent.trajectory import StepRecord, Trajectory
from atommem_jax.eval import report


def _t(em, n_q=1, ops=(("create",), ("read",)), errors=False, contains=None, untagged=None,
       answered=None):
  steps = [StepRecord(index=i, phase="reading", chunk=i, question=0, prompt_text="", response_text="",
                      ops=[{"kind": k, "text": "x", "id": None} for k in step_ops],
                      parse_errors=["bad"] if errors and i == 0 else [])
           for i, step_ops in enumerate(ops)]
  answered = n_q if answered is None else answered
  op_counts = {} if untagged is None else {"untagged_answers": untagged}  # old records lack it
  return Trajectory(episode_id="e", method="m", questions=["q"] * n_q, golds=[["a"]] * n_q,
                    answers=["a"] * answered + [None] * (n_q - answered), steps=steps,
                    scores={"exact_match": em, "f1": em, "sub_em": em,
                            "contains": em if contains is None else contains},
                    op_counts=op_counts)


def _read_scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
  """TensorBoard event files read without TensorFlow: TFRecord framing + Event protos."""
  import struct

  from tensorboardX.proto import event_pb2

  out: dict[str, list[tuple[int, float]]] = {}
  for f in sorted(log_dir.glob("events.out.tfevents.*")):
    data, pos = f.read_bytes(), 0
    while pos < len(data):
      (n,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
      pos += 12 + n + 4
      for v in event.summary.value:
        out.setdefault(v.tag, []).append((event.step, round(v.simple_value, 4)))
  return out


def test_aggregate_weights_by_questions_and_splits_lengths(tmp_path):
  runs = {"atommem": {"50": [_t(1.0, n_q=3), _t(0.0)], "200": [_t(0.5, errors=True)]},
          "rag": {"50": [_t(0.0, ops=(("create", "create"),))]}}
  res = report.aggregate(runs)
  cell = res["atommem"]["by_length"]["50"]
  assert {k: cell[k] for k in ("exact_match", "f1", "contains", "sub_em", "n")} == {
      "exact_match": 0.75, "f1": 0.75, "contains": 0.75, "sub_em": 0.75, "n": 4}
  assert cell["ops_per_step"]["create"] == 0.5 and cell["parse_error_rate"] == 0.0
  assert res["atommem"]["by_length"]["200"]["parse_error_rate"] == 0.5
  assert res["atommem"]["n"] == 5
  assert abs(res["atommem"]["exact_match"] - (3 + 0 + 0.5) / 5) < 1e-9
  ops = res["atommem"]["ops"]
  assert ops["steps"] == 6 and ops["totals"]["create"] == 3
  assert ops["by_position"]["create"] == [1.0, 0.0] and ops["by_position"]["read"] == [0.0, 1.0]
  assert abs(ops["parse_error_rate"] - 1 / 6) < 1e-9
  assert ops["errors_by_position"] == [round(1 / 3, 4), 0.0]
  assert "by_dataset" not in res["atommem"]
  assert res["rag"]["ops"]["per_step"]["create"] == 2.0
  paths = report.write_reports(res, tmp_path)
  assert json.loads(paths["results"].read_text()) == res
  summary = paths["summary"].read_text()
  assert "| method | dataset | length | n | EM | F1 | contains | sub-EM | untagged |" in summary
  assert "| atommem | - | 200 | 1 | 0.500 | 0.500 | 0.500 | 0.500 | 0.00 |" in summary
  for k in ("scores_png", "ops_png"):
    assert paths[k].read_bytes()[:4] == b"\x89PNG"
  scalars = _read_scalars(paths["tensorboard"])
  assert scalars["atommem/all/exact_match"] == [(50, 0.75), (200, 0.5)]
  assert scalars["atommem/all/contains"] == [(50, 0.75), (200, 0.5)]
  assert scalars["atommem/all/untagged_answer_rate"] == [(50, 0.0), (200, 0.0)]
  assert scalars["rag/ops_per_step/create"] == [(0, 2.0)]


def test_aggregate_by_dataset_and_length(tmp_path):
  runs = {"atommem": {("hotpotqa", "50"): [_t(1.0)], ("musique", "50"): [_t(0.0), _t(0.0)],
                      ("hotpotqa", "200"): [_t(0.5)]}}
  res = report.aggregate(runs)["atommem"]
  assert res["n"] == 4
  assert res["by_length"]["50"]["n"] == 3 and abs(res["by_length"]["50"]["exact_match"] - 1 / 3) < 1e-9
  assert res["by_dataset"]["hotpotqa"]["exact_match"] == 0.75
  assert res["by_dataset"]["hotpotqa"]["by_length"]["200"]["exact_match"] == 0.5
  assert res["by_dataset"]["musique"]["by_length"] == {"50": res["by_dataset"]["musique"]["by_length"]["50"]}
  table = report.summary_table({"atommem": res})
  assert "| atommem | hotpotqa | 50 | 1 | 1.000 |" in table
  assert "| atommem | musique | 50 | 2 | 0.000 |" in table
  paths = report.write_reports({"atommem": res}, tmp_path)
  assert paths["scores_png"].read_bytes()[:4] == b"\x89PNG"


def test_ops_panel_says_when_a_method_emitted_no_operation(tmp_path):
  res = report.aggregate({"silent": {"50": [_t(0.0, ops=((), ()))]},
                          "busy": {"50": [_t(1.0)]}})
  assert report.ops_panel_note(res["silent"]["ops"]) == "no memory operations\nin 2 model calls"
  assert report.ops_panel_note(res["busy"]["ops"]) is None
  report.plot_ops(res, tmp_path / "ops.png")
  assert (tmp_path / "ops.png").read_bytes()[:4] == b"\x89PNG"


def test_contains_is_reported_apart_from_sub_em(tmp_path):
  res = report.aggregate({"m": {"50": [_t(0.0, contains=1.0), _t(0.0, contains=0.0)]}})["m"]
  assert res["contains"] == 0.5 and res["sub_em"] == 0.0
  assert res["by_length"]["50"]["contains"] == 0.5
  assert "| m | - | 50 | 2 | 0.000 | 0.000 | 0.500 | 0.000 |" in report.summary_table({"m": res})


def test_a_metric_no_trajectory_carries_is_null_and_a_partial_one_an_error(tmp_path):
  old = _t(1.0)
  del old.scores["contains"]  # written before the metric existed
  res = report.aggregate({"m": {"50": [old]}})
  assert res["m"]["contains"] is None and res["m"]["exact_match"] == 1.0
  assert "| 1.000 | 1.000 | - | 1.000 |" in report.summary_table(res)
  paths = report.write_reports(res, tmp_path)  # plots and scalars skip the missing metric
  assert "m/all/contains" not in _read_scalars(paths["tensorboard"])
  with pytest.raises(ValueError, match="metric 'contains': 1 of 2 trajectories lack it"):
    report.aggregate({"m": {"50": [old, _t(1.0)]}})


def test_untagged_answer_rate_over_answered_questions():
  # 3 + 2 answered questions (one of the second context's 3 went unanswered), 2 untagged;
  # the old record without the counter counts as 0 untagged.
  runs = {"m": {("hotpotqa", "50"): [_t(1.0, n_q=3, untagged=1), _t(1.0, n_q=3, answered=2,
                                                                  untagged=1)],
                ("hotpotqa", "200"): [_t(1.0)]}}
  res = report.aggregate(runs)["m"]
  assert res["untagged_answer_rate"] == round(2 / 6, 4)
  assert res["by_length"]["50"]["untagged_answer_rate"] == round(2 / 5, 4)
  assert res["by_dataset"]["hotpotqa"]["untagged_answer_rate"] == round(2 / 6, 4)
  assert "| 0.40 |" in report.summary_table({"m": res})


_LOCAL = {"dev_file": "/data/hotpotqa/hotpot.json", "official_dev_file": False, "records": 200,
          "questions_used": 3, "distractor_corpus": 1996, "comparable_with_published": False,
          "note": "a local sample, not the official dev file: distractors come from 1,996 "
                  "paragraphs (vs 66,635 in the official dev file), so these numbers are not "
                  "comparable with published ones"}
_OFFICIAL = {"dev_file": "/d/musique_ans_v1.0_dev.jsonl", "official_dev_file": True,
             "records": 2417, "questions_used": 50, "distractor_corpus": 21100,
             "comparable_with_published": True}


def test_provenance_goes_into_results_and_summary(tmp_path):
  runs = {"atommem": {("hotpotqa", "50"): [_t(1.0)], ("musique", "50"): [_t(0.0)]},
          "rag": {("hotpotqa", "50"): [_t(0.0)], ("musique", "50"): [_t(0.0)]}}
  prov = {"hotpotqa": _LOCAL, "musique": _OFFICIAL}
  res = report.aggregate(runs, prov)
  for method in res:
    assert res[method]["by_dataset"]["hotpotqa"]["provenance"] == _LOCAL
    assert res[method]["by_dataset"]["musique"]["provenance"] == _OFFICIAL
  assert report.provenance_of(res) == prov
  res["atommem"].update(truncated_prompts=2, model_calls=9, longest_prompt_tokens=4096)
  paths = report.write_reports(res, tmp_path)
  assert json.loads(paths["results"].read_text()) == res
  summary = paths["summary"].read_text()
  assert ("- hotpotqa: `/data/hotpotqa/hotpot.json` (local sample, 200 records), 3 questions "
          "used, distractors drawn from 1,996 distinct paragraphs.") in summary
  assert "**Not comparable with published numbers**: a local sample" in summary
  assert "66,635" in summary
  assert ("- musique: `/d/musique_ans_v1.0_dev.jsonl` (official dev file, 2,417 records), 50 "
          "questions used, distractors drawn from 21,100 distinct paragraphs.") in summary
  assert summary.count("Not comparable") == 1
  assert ("- atommem: 2 of 9 prompts were longer than sampling.max_prompt_tokens and lost their "
          "middle") in summary
  with pytest.raises(ValueError, match="no entry for dataset 'musique'"):
    report.aggregate(runs, {"hotpotqa": _LOCAL})
  with pytest.raises(ValueError, match="keyed by length alone"):
    report.aggregate({"m": {"50": [_t(1.0)]}}, prov)
