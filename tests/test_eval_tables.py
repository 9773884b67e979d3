"""One table from several evaluation runs (atommem_jax/eval/tables.py)."""
from __future__ import annotations

import json

import pytest

from atommem_jax.eval import report, tables
from tests.test_report import _t


def _write(out, results, name="results.json"):
  out.mkdir(parents=True, exist_ok=True)
  (out / name).write_text(json.dumps(results))
  return out


def test_rows_of_every_run_side_by_side_with_labels(tmp_path, capsys):
  prov = {"hotpotqa": {"dev_file": "/d/hotpot.json", "official_dev_file": False, "records": 200,
                       "questions_used": 2, "distractor_corpus": 1971,
                       "comparable_with_published": False, "note": "a local sample"}}
  base = report.aggregate({"atommem": {("hotpotqa", "50"): [_t(0.0), _t(0.0)]},
                           "rag": {("hotpotqa", "50"): [_t(1.0), _t(0.0)]}}, prov)
  trained = report.aggregate({"atommem": {("hotpotqa", "50"): [_t(1.0), _t(1.0)]}}, prov)
  a = _write(tmp_path / "base", base)
  b = _write(tmp_path / "trained", trained, "results.partial.json")
  assert tables.main([f"{a}=prompted", f"{b}=SFT", "--partial"]) == 0
  text = capsys.readouterr().out
  rows = [l for l in text.splitlines() if l.startswith("| atommem") or l.startswith("| rag")]
  assert len(rows) == 3
  assert rows[0].startswith("| atommem [prompted] | hotpotqa | 50 | 2 | 0.000 |")
  assert rows[1].startswith("| rag [prompted] | hotpotqa | 50 | 2 | 0.500 |")
  assert rows[2].startswith("| atommem [SFT, partial] | hotpotqa | 50 | 2 | 1.000 |")
  assert "local sample" in text and "1,971 distinct paragraphs" in text


def test_an_unfinished_run_is_an_error_unless_partial_and_labels_must_differ(tmp_path, capsys):
  res = report.aggregate({"rag": {"50": [_t(1.0)]}})
  a = _write(tmp_path / "a", res, "results.partial.json")
  assert tables.main([str(a)]) == 2
  assert "no results.json" in capsys.readouterr().err
  empty = tmp_path / "empty"
  empty.mkdir()
  assert tables.main([str(empty), "--partial"]) == 2
  b = _write(tmp_path / "b", res)
  with pytest.raises(ValueError, match="label the runs apart"):
    tables.merge([("x", res, True), ("x", res, True)])
  assert tables.parse_run(f"{b}") == (str(b), "b")
  assert tables.parse_run(f"{b}=L") == (str(b), "L")
