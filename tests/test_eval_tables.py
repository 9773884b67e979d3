"""One table from several evaluation runs (atommem_jax/eval/tables.py)."""
from __future__ import annotations

import json
import os

import pytest

from atommem_jax.eval import report, tables
from tests.test_report import _t

PROV = {"dev_file": "/d/hotpot.json", "official_dev_file": False, "records": 200,
        "questions_used": 2, "distractor_corpus": 1971, "comparable_with_published": False,
        "note": "a local sample"}


def _write(out, results, name="results.json"):
  out.mkdir(parents=True, exist_ok=True)
  (out / name).write_text(json.dumps(results))
  return out


def test_rows_of_every_run_side_by_side_with_labels(tmp_path, capsys):
  base = report.aggregate({"atommem": {("hotpotqa", "50"): [_t(0.0), _t(0.0)]},
                           "full_context": {("hotpotqa", "50"): [_t(1.0), _t(0.0)]}},
                          {"hotpotqa": PROV})
  base["full_context"].update(model_calls=2, truncated_prompts=2, longest_prompt_tokens=7680)
  trained = report.aggregate({"atommem": {("hotpotqa", "200"): [_t(1.0)]}},
                             {"hotpotqa": dict(PROV, questions_used=1)})
  a = _write(tmp_path / "base", base)
  b = _write(tmp_path / "trained", trained, "results.partial.json")
  empty = tmp_path / "later"
  empty.mkdir()
  assert tables.main([f"{a}=prompted", f"{b}=SFT", f"{empty}=later", "--partial"]) == 0
  text = capsys.readouterr().out
  rows = [l for l in text.splitlines() if l.startswith(("| atommem", "| full_context"))]
  assert len(rows) == 3
  assert rows[0].startswith("| atommem [prompted] | hotpotqa | 50 | 2 | 0.000 |")
  assert rows[1].startswith("| full_context [prompted] | hotpotqa | 50 | 2 | 0.500 |")
  assert rows[2].startswith("| atommem [SFT, partial] | hotpotqa | 200 | 1 | 1.000 |")
  assert "- later: no completed cell yet" in text
  assert "full_context [prompted]: 2 of 2 prompts" in text and "**(cut)**" in text
  # Two provenances of one dataset (2 and 1 questions used): each listed with its runs.
  assert "2 questions used" in text and "(runs: prompted)" in text
  assert "1 questions used" in text and "(runs: SFT)" in text


def test_unfinished_or_stale_runs_are_errors_unless_partial(tmp_path, capsys):
  res = report.aggregate({"rag": {"50": [_t(1.0)]}})
  a = _write(tmp_path / "a", res, "results.partial.json")
  assert tables.main([str(a)]) == 2
  assert "no results.json" in capsys.readouterr().err
  assert tables.main([str(tmp_path / "missing")]) == 2
  # A rerun with more questions under way: its partial file is newer than results.json.
  b = _write(tmp_path / "b", res)
  _write(b, report.aggregate({"rag": {"50": [_t(0.0), _t(0.0)]}}), "results.partial.json")
  old = (b / "results.json").stat().st_mtime - 10
  os.utime(b / "results.json", (old, old))
  assert tables.main([str(b)]) == 2
  assert "newer than results.json" in capsys.readouterr().err
  assert tables.load_run(b, partial=True)[1] is False
  assert tables.load_run(b, partial=True)[0]["rag"]["n"] == 2
  with pytest.raises(ValueError, match="label the runs apart"):
    tables.merge([("x", res, True), ("x", res, True)])
  assert tables.parse_run(f"{b}") == (str(b), "b")
  assert tables.parse_run(f"{b}=L") == (str(b), "L")
