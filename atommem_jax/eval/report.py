"""Evaluation reports: aggregate trajectories into scores, op statistics, tables and plots.

`results.json` layout (read by scripts; stable; top-level keys are the methods):
  {"<method>": {"exact_match": float, "f1": float, "contains": float, "sub_em": float,
                "n": int, "untagged_answer_rate": float,
                "ops": {"per_step": {op: mean count per model call}, "totals": {...},
                        "parse_error_rate": float, "by_position": {op: [mean at step t]},
                        "errors_by_position": [share of calls with a parse error at step t],
                        "unread_sections": mean sections left unread per episode},
                "by_length": {"<length>": {"exact_match", "f1", "contains", "sub_em", "n",
                                           "untagged_answer_rate", "ops_per_step": {...},
                                           "parse_error_rate"}},
                "by_dataset": {"<dataset>": {"exact_match", "f1", "contains", "sub_em", "n",
                                             "untagged_answer_rate", "by_length": {...},
                                             "provenance": {...}}},
                # added by the runner for LLM methods (prompt statistics):
                "truncated_prompts": int, "model_calls": int, "longest_prompt_tokens": int, ...},
   ...}
`by_length` pools datasets; `by_dataset` is present when runs are keyed by (dataset, length).
Metrics (atommem_jax/data/metrics.py): `contains` is strict containment on token boundaries;
`sub_em` is MemAgent's bidirectional substring match, kept for comparison with published
tables but lenient ("no" vs "Norway" counts). A metric no trajectory carries is null.
`untagged_answer_rate` = questions answered by a reply without a `<final_answer>` tag (its
free text taken as the answer) / questions answered.
`provenance` (per dataset, gathered by the runner): `dev_file`, `official_dev_file`,
`records`, `questions_used`, `distractor_corpus` (distinct paragraphs the distractors are
drawn from), `comparable_with_published`, and a `note` when not comparable.

This module is pure apart from the file writers at the end: it never reads data or config.
"""
from __future__ import annotations

import collections
import json
import pathlib
from typing import Iterable, Sequence

import numpy as np

from atommem_jax.agent.trajectory import Trajectory
from atommem_jax.protocol import OP_KINDS

METRICS = ("exact_match", "f1", "contains", "sub_em")
_LABELS = {"exact_match": "EM", "f1": "F1", "contains": "contains", "sub_em": "sub-EM"}


def _untagged_rate(trajs: Sequence[Trajectory]) -> float:
  """Questions answered by an untagged reply / questions answered (0 when none answered)."""
  answered = sum(a is not None for t in trajs for a in t.answers)
  untagged = sum(t.op_counts.get("untagged_answers", 0) for t in trajs)
  return untagged / answered if answered else 0.0


def _score_block(trajs: Sequence[Trajectory]) -> dict:
  """Question-weighted mean scores (a context with 3 questions counts 3 times).

  A metric that no trajectory carries (records written before it existed) is None; one that
  only some carry is an error, since its mean would silently cover part of the questions.
  """
  out: dict = {}
  n = sum(len(t.questions) for t in trajs)
  for m in METRICS:
    have = [t for t in trajs if m in t.scores]
    if have and len(have) < len(trajs):
      missing = next(t.episode_id for t in trajs if m not in t.scores)
      raise ValueError(f"metric {m!r}: {len(trajs) - len(have)} of {len(trajs)} trajectories "
                       f"lack it (e.g. {missing!r}); rescore them or rerun without resume")
    if trajs and not have:
      out[m] = None
    else:
      out[m] = float(sum(t.scores[m] * len(t.questions) for t in have) / n) if n else 0.0
  out["n"] = int(n)
  out["untagged_answer_rate"] = round(_untagged_rate(trajs), 4)
  return out


def op_statistics(trajs: Sequence[Trajectory], max_positions: int = 64) -> dict:
  """How often each op is emitted, overall and by step position; parse failures."""
  totals = collections.Counter()
  steps = 0
  errored = 0
  by_pos = {k: np.zeros(max_positions) for k in OP_KINDS}
  err_pos = np.zeros(max_positions)
  pos_n = np.zeros(max_positions)
  for t in trajs:
    for s in t.steps:
      steps += 1
      errored += bool(s.parse_errors)
      p = min(s.index, max_positions - 1)
      pos_n[p] += 1
      err_pos[p] += bool(s.parse_errors)
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
      "errors_by_position": (err_pos[:last] / denom).round(4).tolist(),
      "unread_sections": (float(np.mean([t.op_counts.get("unread_sections", 0) for t in trajs]))
                          if trajs else 0.0),
  }


def _cell(trajs: Sequence[Trajectory]) -> dict:
  """Scores of one (dataset, length) cell plus its own op rates."""
  block = _score_block(trajs)
  ops = op_statistics(trajs)
  block["ops_per_step"] = {k: round(ops["per_step"][k], 4) for k in OP_KINDS}
  block["parse_error_rate"] = round(ops["parse_error_rate"], 4)
  return block


def _group(by_key: dict, index: int) -> dict[str, list[Trajectory]]:
  out: dict[str, list[Trajectory]] = {}
  for k, ts in by_key.items():
    out.setdefault(str(k[index]), []).extend(ts)
  return out


def aggregate(runs: dict[str, dict], provenance: dict[str, dict] | None = None) -> dict:
  """runs[method][length] or runs[method][(dataset, length)] -> trajectories => results.json.

  provenance: per dataset, where its episodes came from (see the module docstring); copied
  into each method's `by_dataset[<dataset>]["provenance"]`.
  """
  results = {}
  for method, cells in runs.items():
    keyed = {(k if isinstance(k, tuple) else (None, k)): ts for k, ts in cells.items()}
    all_t = [t for ts in keyed.values() for t in ts]
    block = _score_block(all_t)
    block["ops"] = op_statistics(all_t)
    block["by_length"] = {k: _cell(v) for k, v in _group(keyed, 1).items()}
    datasets = sorted({d for d, _ in keyed if d is not None})
    if provenance is not None and not datasets:
      raise ValueError("provenance is per dataset, but the runs are keyed by length alone")
    if datasets:
      block["by_dataset"] = {}
      for d in datasets:
        mine = {k: v for k, v in keyed.items() if k[0] == d}
        sub = _score_block([t for ts in mine.values() for t in ts])
        sub["by_length"] = {k: _cell(v) for k, v in _group(mine, 1).items()}
        if provenance is not None:
          if d not in provenance:
            raise ValueError(f"provenance: no entry for dataset {d!r} (has {sorted(provenance)})")
          sub["provenance"] = provenance[d]
        block["by_dataset"][d] = sub
    results[method] = block
  return results


def _per_dataset(r: dict, unnamed: str) -> dict:
  """A method's `by_dataset` block, or its pooled `by_length` under `unnamed` when runs were
  keyed by length alone."""
  return r.get("by_dataset") or {unnamed: {"by_length": r["by_length"]}}


def _fmt(v: float | None) -> str:
  return "-" if v is None else f"{v:.3f}"


def summary_table(results: dict) -> str:
  """A markdown table: method x dataset x length, EM / F1 / contains / sub-EM side by side."""
  head = " | ".join(_LABELS[m] for m in METRICS)
  lines = [f"| method | dataset | length | n | {head} | untagged | ops/step (C R U D S) "
           "| parse err |",
           "|---|---|---|---|" + "---|" * len(METRICS) + "---|---|---|"]
  for method, r in results.items():
    for ds, d in _per_dataset(r, "-").items():
      for length, b in d["by_length"].items():
        opstr = " ".join(f"{b['ops_per_step'][k]:.2f}" for k in OP_KINDS)
        scores = " | ".join(_fmt(b[m]) for m in METRICS)
        lines.append(f"| {method} | {ds} | {length} | {b['n']} | {scores} | "
                     f"{b['untagged_answer_rate']:.2f} | {opstr} | {b['parse_error_rate']:.2f} |")
  return "\n".join(lines)


def provenance_of(results: dict) -> dict[str, dict]:
  """The per-dataset provenance recorded in results (the same under every method)."""
  out: dict[str, dict] = {}
  for r in results.values():
    for ds, d in r.get("by_dataset", {}).items():
      if "provenance" in d:
        out.setdefault(ds, d["provenance"])
  return out


def provenance_lines(provenance: dict[str, dict]) -> list[str]:
  """Markdown bullets: where each dataset's questions and distractors came from."""
  lines = []
  for ds, p in provenance.items():
    if "dev_file" not in p:
      lines.append(f"- {ds}: {p.get('note', p.get('source', '?'))}")
      continue
    kind = "official dev file" if p["official_dev_file"] else "local sample"
    lines.append(f"- {ds}: `{p['dev_file']}` ({kind}, {p['records']:,} records), "
                 f"{p['questions_used']:,} questions used, distractors drawn from "
                 f"{p['distractor_corpus']:,} distinct paragraphs.")
    if not p["comparable_with_published"]:
      lines.append(f"  **Not comparable with published numbers**: {p['note']}.")
  return lines


def prompt_cut_lines(results: dict) -> list[str]:
  """Markdown bullets: per method, how many prompts lost their middle to the prompt cap (a
  cut full_context or rag row is not the whole document's answer)."""
  lines = []
  for method, r in results.items():
    if "model_calls" not in r:
      continue
    cut = r.get("truncated_prompts", 0)
    line = (f"- {method}: {cut} of {r['model_calls']} prompts were longer than "
            f"sampling.max_prompt_tokens and lost their middle; longest prompt "
            f"{r.get('longest_prompt_tokens', 0)} tokens")
    lines.append(line + (" **(cut)**" if cut else ""))
  return lines


def summary_markdown(results: dict) -> str:
  """summary.md: the score table, the metrics' meaning, prompt cuts and data provenance."""
  parts = [summary_table(results), "",
           "Metrics: EM and F1 (official HotpotQA normalisation); contains = the normalised "
           "gold occurs in the normalised answer as whole tokens; sub-EM = MemAgent's "
           "bidirectional substring match (lenient: \"no\" vs \"Norway\" counts; for "
           "comparison with published tables only). untagged = share of answered questions "
           "whose reply had no <final_answer> tag (its free text was taken as the answer)."]
  prompt_lines = prompt_cut_lines(results)
  if prompt_lines:
    parts += ["", "## Prompts", *prompt_lines]
  prov = provenance_of(results)
  if prov:
    parts += ["", "## Data", *provenance_lines(prov)]
  return "\n".join(parts) + "\n"


def plot_scores(results: dict, path: pathlib.Path, x_label: str = "context length (documents)"):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.4), squeeze=False)
  def order(s: str):
    return (0, float(s), "") if s.replace(".", "").isdigit() else (1, 0.0, s)

  for ax, m in zip(axes[0], METRICS):
    for method, r in results.items():
      series = ({f"{method} ({d})": v["by_length"] for d, v in r["by_dataset"].items()}
                if len(r.get("by_dataset", {})) > 1 else {method: r["by_length"]})
      for label, by_len in series.items():
        xs = sorted(by_len, key=order)
        numeric = all(order(x)[0] == 0 for x in xs)  # lengths: a log-spaced numeric axis
        if any(by_len[x][m] is None for x in xs):
          continue  # a metric these trajectories do not carry
        ax.plot([float(x) for x in xs] if numeric else xs, [by_len[x][m] for x in xs],
                marker="o", label=label)
        if numeric and len(xs) > 1:
          ax.set_xscale("log")
          ax.set_xticks([float(x) for x in xs], xs)  # label the measured lengths themselves
          ax.minorticks_off()
    ax.set_title(_LABELS[m])
    ax.set_xlabel(x_label)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("score")
  if axes[0][-1].get_legend_handles_labels()[0]:
    axes[0][-1].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def ops_panel_note(ops: dict) -> str | None:
  """The text an ops panel shows in place of curves when the method emitted no memory
  operation at all (a prompted model that never writes a tag), else None: an empty panel
  reads as a plotting bug."""
  if any(any(ys) for ys in ops["by_position"].values()):
    return None
  return f"no memory operations\nin {ops['steps']} model calls"


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
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=7)
    note = ops_panel_note(results[method]["ops"])
    if note:
      ax.text(0.5, 0.5, note, transform=ax.transAxes, ha="center", va="center", color="0.4")
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
  paths["summary"].write_text(summary_markdown(results))
  plot_scores(results, paths["scores_png"], x_label)
  plot_ops(results, paths["ops_png"])
  paths["tensorboard"] = write_tensorboard(results, out_dir / "tb")
  return paths


def write_tensorboard(results: dict, log_dir: pathlib.Path) -> pathlib.Path:
  """Scores as TensorBoard scalars: tag `<method>/<dataset>/<metric>`, step = context length.

  TensorBoard then draws score-vs-length curves per method next to training runs' metrics.
  """
  from tensorboardX import SummaryWriter

  log_dir.mkdir(parents=True, exist_ok=True)
  with SummaryWriter(str(log_dir)) as w:
    for method, r in results.items():
      for ds, d in _per_dataset(r, "all").items():
        for length, b in d["by_length"].items():
          if not length.isdigit():
            continue
          for m in METRICS:
            if b[m] is not None:
              w.add_scalar(f"{method}/{ds}/{m}", b[m], int(length))
          w.add_scalar(f"{method}/{ds}/untagged_answer_rate", b["untagged_answer_rate"],
                       int(length))
      for k, v in r["ops"]["per_step"].items():
        w.add_scalar(f"{method}/ops_per_step/{k}", v, 0)
  return log_dir


def load_results(path: str | pathlib.Path) -> dict:
  return json.loads(pathlib.Path(path).read_text())


def flatten(trajs_by_method: dict[str, dict[str, list[Trajectory]]]) -> Iterable[Trajectory]:
  for by_len in trajs_by_method.values():
    for ts in by_len.values():
      yield from ts
