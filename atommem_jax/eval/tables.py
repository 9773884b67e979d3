"""One table from several evaluation runs.

  python -m atommem_jax.eval.tables outputs/eval_real/base_hotpotqa_50=prompted \
      outputs/eval_real/trained_hotpotqa_50=trained [--partial]

A long evaluation is split into runs (output dirs): the prompted baselines do not change
when the trained policy does, and a run's episode store refuses a different config, so the
baselines, each trained policy, each dataset and each length live in their own directory.
This prints their rows side by side (method, run label, dataset, length, n, EM / F1 /
contains / sub-EM, untagged answers, ops and parse errors per step), then each run's prompt
cuts (a cut full_context row did not see the whole document) and where each dataset's
questions came from, per run when runs differ. A run reads its `results.json`; a run that
has not finished (no results.json, or a results.partial.json newer than it: a rerun with
more questions is under way) is an error naming the directory, or with `--partial` shows
its completed cells, marked so (a run with none yet is listed as such). Nothing is silently
left out.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Sequence

from atommem_jax.eval import report


class NoCellsYet(Exception):
  """An unfinished run without a completed cell (its first cell is still running)."""


def load_run(path: str | pathlib.Path, partial: bool = False) -> tuple[dict, bool]:
  """(results, finished) of one output dir: a finished run's results.json, else (partial)
  its completed cells."""
  out = pathlib.Path(path)
  final, cells = out / "results.json", out / "results.partial.json"
  if not out.is_dir():
    raise FileNotFoundError(f"{out}: not a directory")
  stale = final.exists() and cells.exists() and cells.stat().st_mtime > final.stat().st_mtime
  if final.exists() and not stale:
    return report.load_results(final), True
  if partial:
    if cells.exists():
      return report.load_results(cells), False
    raise NoCellsYet(f"{out}: no completed cell yet")
  why = ("results.partial.json is newer than results.json (a rerun is under way)" if stale
         else "no results.json")
  raise FileNotFoundError(f"{out}: {why}; the evaluation has not finished there (its "
                          "completed cells: --partial)")


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


def provenance_by_dataset(runs: Sequence[tuple[str, dict, bool]]
                          ) -> dict[str, list[tuple[list[str], dict]]]:
  """dataset -> [(run labels, provenance)], one entry per distinct provenance (runs of one
  dev file with different numbers of questions differ in `questions_used`)."""
  out: dict[str, list[tuple[list[str], dict]]] = {}
  for label, results, _ in runs:
    for ds, p in report.provenance_of(results).items():
      for labels, known in out.setdefault(ds, []):
        if known == p:
          labels.append(label)
          break
      else:
        out[ds].append(([label], p))
  return out


def markdown(runs: Sequence[tuple[str, dict, bool]], empty: Sequence[str] = ()) -> str:
  """The merged table, prompt cuts, data provenance; `empty`: labels of unfinished runs
  without a completed cell."""
  merged = merge(runs)
  lines = [report.summary_table(merged)]
  lines += [f"- {label}: no completed cell yet" for label in empty]
  cuts = report.prompt_cut_lines(merged)
  if cuts:
    lines += ["", "Prompts:", *cuts]
  prov = provenance_by_dataset(runs)
  if prov:
    lines += ["", "Data:"]
    for ds, entries in prov.items():
      for labels, p in entries:
        first, *rest = report.provenance_lines({ds: p})
        if len(entries) > 1:
          first += f" (runs: {', '.join(labels)})"
        lines += [first, *rest]
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
  runs, empty = [], []
  for arg in a.runs:
    path, label = parse_run(arg)
    try:
      results, finished = load_run(path, a.partial)
    except NoCellsYet:
      empty.append(label)
      continue
    except FileNotFoundError as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
    runs.append((label, results, finished))
  sys.stdout.write(markdown(runs, empty))
  return 0


if __name__ == "__main__":
  sys.exit(main())
