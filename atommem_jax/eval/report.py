"""Evaluation reports: aggregate trajectories into scores, op statistics, tables and plots.

`results.json` layout (read by scripts; stable):
  {"<method>": {"exact_match": float, "f1": float, "sub_em": float, "n": int,
                "ops": {"per_step": {op: mean count per model call}, "totals": {...},
                        "parse_error_rate": float, "by_position": {op: [mean at step t]}},
                "by_length": {"<length>": {"exact_match": ..., "f1": ..., "sub_em": ..., "n": ...}}},
   ...}
"""
from __future__ import annotations

import collections
import json
import pathlib
from typing import Iterable, Sequence

import numpy as np

from atommem_jax.agent.trajectory import Trajectory

METRICS = ("exact_match", "f1", "sub_em")
OP_KINDS = ("create", "read", "update", "delete", "scratchpad")


def _score_block(trajs: Sequence[Trajectory]) -> dict:
  """Question-weighted mean scores (a context with 3 questions counts 3 times)."""
  out = {}
  n = sum(len(t.questions) for t in trajs)
  for m in METRICS:
    vals = [t.scores[m] * len(t.questions) for t in trajs if m in t.scores]
    out[m] = float(sum(vals) / n) if vals and n else 0.0
  out["n"] = int(n)
  return out


def op_statistics(trajs: Sequence[Trajectory], max_positions: int = 64) -> dict:
  """How often each op is emitted, overall and by step position; parse failures."""
  totals = collections.Counter()
  steps = 0
  errored = 0
  by_pos = {k: np.zeros(max_positions) for k in OP_KINDS}
  pos_n = np.zeros(max_positions)
  for t in trajs:
    for s in t.steps:
      steps += 1
      errored += bool(s.parse_errors)
      p = min(s.index, max_positions - 1)
      pos_n[p] += 1
      for op in s.ops:
        totals[op["kind"]] += 1
        by_pos[op["kind"]][p] += 1
      totals["answer"] += s.answer is not None
      totals["op_errors"] += len(s.op_errors)
  last = int(np.max(np.nonzero(pos_n)[0])) + 1 if pos_n.any() else 0
  denom = np.maximum(pos_n[:last], 1)
  return {
      "steps": steps,
      "totals": dict(totals),
      "per_step": {k: (totals[k] / steps if steps else 0.0) for k in OP_KINDS + ("answer",)},
      "parse_error_rate": errored / steps if steps else 0.0,
      "by_position": {k: (by_pos[k][:last] / denom).round(4).tolist() for k in OP_KINDS},
  }


def aggregate(runs: dict[str, dict[str, list[Trajectory]]]) -> dict:
  """runs[method][length] -> trajectories  =>  the results.json dict."""
  results = {}
  for method, by_len in runs.items():
    all_t = [t for ts in by_len.values() for t in ts]
    block = _score_block(all_t)
    block["ops"] = op_statistics(all_t)
    block["by_length"] = {str(k): _score_block(v) for k, v in by_len.items()}
    results[method] = block
  return results


def summary_table(results: dict) -> str:
  """A markdown table: method x length, EM / F1 / sub-EM side by side."""
  lines = ["| method | length | n | EM | F1 | sub-EM | ops/step (C R U D S) | parse err |",
           "|---|---|---|---|---|---|---|---|"]
  for method, r in results.items():
    ops = r["ops"]["per_step"]
    opstr = " ".join(f"{ops[k]:.2f}" for k in OP_KINDS)
    for length, b in r["by_length"].items():
      lines.append(f"| {method} | {length} | {b['n']} | {b['exact_match']:.3f} | {b['f1']:.3f} | "
                   f"{b['sub_em']:.3f} | {opstr} | {r['ops']['parse_error_rate']:.2f} |")
  return "\n".join(lines)


def plot_scores(results: dict, path: pathlib.Path, x_label: str = "context length (documents)"):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.4), squeeze=False)
  for ax, m in zip(axes[0], METRICS):
    for method, r in results.items():
      xs = sorted(r["by_length"], key=lambda s: float(s) if s.replace(".", "").isdigit() else s)
      ax.plot(xs, [r["by_length"][x][m] for x in xs], marker="o", label=method)
    ax.set_title(m)
    ax.set_xlabel(x_label)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("score")
  axes[0][-1].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_ops(results: dict, path: pathlib.Path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  methods = list(results)
  fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.4), squeeze=False,
                           sharey=True)
  for ax, method in zip(axes[0], methods):
    for k, ys in results[method]["ops"]["by_position"].items():
      if any(ys):
        ax.plot(range(1, len(ys) + 1), ys, marker=".", label=k)
    ax.set_title(f"{method}: ops per call")
    ax.set_xlabel("model call (step position)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  axes[0][0].set_ylabel("mean ops of each kind")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_reports(results: dict, out_dir: pathlib.Path, x_label: str = "context length (documents)"
                  ) -> dict[str, pathlib.Path]:
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = {"results": out_dir / "results.json", "summary": out_dir / "summary.md",
           "scores_png": out_dir / "scores.png", "ops_png": out_dir / "ops.png"}
  paths["results"].write_text(json.dumps(results, indent=2))
  paths["summary"].write_text(summary_table(results) + "\n")
  plot_scores(results, paths["scores_png"], x_label)
  plot_ops(results, paths["ops_png"])
  return paths


def load_results(path: str | pathlib.Path) -> dict:
  return json.loads(pathlib.Path(path).read_text())


def flatten(trajs_by_method: dict[str, dict[str, list[Trajectory]]]) -> Iterable[Trajectory]:
  for by_len in trajs_by_method.values():
    for ts in by_len.values():
      yield from ts
