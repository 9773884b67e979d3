"""One table from several evaluation runs.

  python -m atommem_jax.eval.tables outputs/eval_real/base_hotpotqa_50=prompted \
      outputs/eval_real/trained_hotpotqa_50=trained [--partial]

A long evaluation is split into runs (output dirs): the prompted baselines do not change
when the trained policy does, and a run's episode store refuses a different config, so the
baselines, each trained policy, each dataset and each length live in their own directory.
This prints their rows side by side (method, run label, dataset, length, n, EM / F1 /
contains / sub-EM, untagged answers, ops and parse errors per step), then where each
dataset's questions came from. A run reads its `results.json`; with `--partial`, a run that
has not finished reads `results.partial.json` (its completed cells) and is marked so.
Missing files are an error naming the directory: nothing is silently left out.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Sequence

from atommem_jax.eval import report


def load_run(path: str | pathlib.Path, partial: bool = False) -> tuple[dict, bool]:
  """(results, finished) of one output dir; a finished run's results.json, else (partial)
  its completed cells."""
  out = pathlib.Path(path)
  if (out / "results.json").exists():
    return report.load_results(out / "results.json"), True
  if partial and (out / "results.partial.json").exists():
    return report.load_results(out / "results.partial.json"), False
  what = "results.json or results.partial.json" if partial else "results.json"
  hint = "" if partial else " (its completed cells: --partial)"
  raise FileNotFoundError(f"{out}: no {what}; the evaluation has not finished there{hint}")


def merge(runs: Sequence[tuple[str, dict, bool]]) -> dict:
  """[(label, results, finished)] -> one results dict keyed "method [label]" (an unfinished
  run's label gets ", partial")."""
  merged: dict = {}
  for label, results, finished in runs:
    tag = label if finished else f"{label}, partial"
    for method, r in results.items():
      key = f"{method} [{tag}]"
      if key in merged:
        raise ValueError(f"two runs give row {key!r}: label the runs apart (DIR=LABEL)")
      merged[key] = r
  return merged


def markdown(runs: Sequence[tuple[str, dict, bool]]) -> str:
  merged = merge(runs)
  prov: dict[str, dict] = {}
  for _, results, _ in runs:
    for ds, p in report.provenance_of(results).items():
      prov.setdefault(ds, p)
  lines = [report.summary_table(merged)]
  if prov:
    lines += ["", *report.provenance_lines(prov)]
  return "\n".join(lines) + "\n"


def parse_run(arg: str) -> tuple[str, str]:
  """"DIR=LABEL" or "DIR" (labelled by the directory's name)."""
  path, _, label = arg.partition("=")
  return path, label or pathlib.Path(path).name


def main(argv: Sequence[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("runs", nargs="+", help="evaluation output dirs, DIR or DIR=LABEL")
  ap.add_argument("--partial", action="store_true",
                  help="read an unfinished run's completed cells (results.partial.json)")
  a = ap.parse_args(argv)
  runs = []
  for arg in a.runs:
    path, label = parse_run(arg)
    try:
      results, finished = load_run(path, a.partial)
    except FileNotFoundError as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
    runs.append((label, results, finished))
  sys.stdout.write(markdown(runs))
  return 0


if __name__ == "__main__":
  sys.exit(main())
