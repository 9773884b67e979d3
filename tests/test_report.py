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
  assert {k: cell[k] for k in ("exact_match", "f1", "sub_em", "n")} == {
      "exact_match": 0.75, "f1": 0.75, "sub_em": 0.75, "n": 4}
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
  assert "| atommem | - | 200 | 1 | 0.500 |" in paths["summary"].read_text()
  for k in ("scores_png", "ops_png"):
    assert paths[k].read_bytes()[:4] == b"\x89PNG"
  scalars = _read_scalars(paths["tensorboard"])
  assert scalars["atommem/all/exact_match"] == [(50, 0.75), (200, 0.5)]
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
