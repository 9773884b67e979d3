"""Training metrics on disk: metrics.jsonl (one record per optimizer step), TensorBoard
event files and PNG plots of the training dynamics (side effects only; nothing here
computes a metric).

On resume the records after the restored step are dropped before appending, so a killed
run's metrics.jsonl ends up as if it had never been killed.
"""
from __future__ import annotations

import json
import math
import pathlib
from typing import Any, Iterable, Mapping

OPS = ("create", "read", "update", "delete")


def _clean(value: Any) -> Any:
  if hasattr(value, "item"):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


class MetricsWriter:
  """Appends per-step records to `<dir>/metrics.jsonl` and scalars to `<dir>/tb/`."""

  def __init__(self, directory: str | pathlib.Path, start_step: int):
    self.dir = pathlib.Path(directory)
    self.dir.mkdir(parents=True, exist_ok=True)
    self.path = self.dir / "metrics.jsonl"
    kept = [r for r in read_metrics(self.path) if r["step"] <= start_step]
    with self.path.open("w", encoding="utf-8") as f:  # rewrite: drop steps after the restore
      for r in kept:
        f.write(json.dumps(r) + "\n")
    from tensorboardX import SummaryWriter

    self.tb = SummaryWriter(str(self.dir / "tb"))

  def write(self, record: Mapping[str, Any]) -> None:
    record = {k: _clean(v) for k, v in record.items()}
    with self.path.open("a", encoding="utf-8") as f:
      f.write(json.dumps(record) + "\n")
    step = int(record["step"])
    for k, v in record.items():
      if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
        self.tb.add_scalar(k, v, step)

  def close(self) -> None:
    self.tb.flush()
    self.tb.close()


def read_metrics(path: str | pathlib.Path) -> list[dict[str, Any]]:
  """metrics.jsonl records; a torn last line (a kill mid-write) is dropped."""
  path = pathlib.Path(path)
  if not path.exists():
    return []
  lines = path.read_text(encoding="utf-8").split("\n")
  out = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      out.append(json.loads(line))
    except json.JSONDecodeError:
      if i == len(lines) - 1:  # no trailing newline: the write a kill interrupted
        break
      raise ValueError(f"{path}:{i + 1}: not a JSON record") from None
  return out


def plot_training(records: Iterable[Mapping[str, Any]], out_dir: str | pathlib.Path) -> list[pathlib.Path]:
  """training.png (loss; GRPO: reward and answer accuracy) and, for GRPO, ops.png: the
  frequency of each CRUD op per model turn over training (the paper's Figure: Read falls,
  Create/Update/Delete rise)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  records = list(records)
  out_dir = pathlib.Path(out_dir)
  paths = []
  if not records:
    return paths
  steps = [r["step"] for r in records]
  grpo = any("reward" in r for r in records)
  # GRPO's rollout statistics (reward, accuracy, op frequencies) belong to an iteration's
  # rollout batch, repeated on each of its optimizer steps: plot one marked point per
  # iteration, so a short run shows its few batches instead of flat lines over steps.
  per_iter = _per_iteration(records) if grpo else []
  panels = [("loss", "loss")] + ([("reward", "reward (mean over rollouts)"),
                                  ("accuracy", "answer accuracy")] if grpo else [])
  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
  for ax, (key, title) in zip(axes[0], panels):
    if key == "loss":
      # With loss.prompt_weight the loss counts prompt tokens too; response_nll is the
      # responses' own cross-entropy, the quantity a responses-only run's loss measures.
      for k, label in (("loss", "loss"), ("response_nll", "response NLL")):
        pts = [(s, r[k]) for s, r in zip(steps, records) if r.get(k) is not None]
        if pts:
          ax.plot(*zip(*pts), lw=1.0 if k == "loss" else 1.5, label=label)
      if pts:  # response_nll drawn: two lines to tell apart
        ax.legend()
      ax.set_xlabel("optimizer step")
    else:
      _plot_per_iteration(ax, per_iter, key)
    ax.set_title(title)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  paths.append(out_dir / "training.png")
  fig.savefig(paths[-1], dpi=110)
  plt.close(fig)
  if grpo:
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for op in OPS:
      _plot_per_iteration(ax, per_iter, f"ops_per_turn/{op}", label=op)
    ax.set_title("memory operations per model turn (rollouts)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(out_dir / "ops.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
  return paths


def _plot_per_iteration(ax, per_iter: list[tuple[int, Mapping[str, Any]]], key: str,
                        label: str | None = None) -> None:
  """One marked point per iteration for `key` (where logged) on an iteration axis with
  whole-number ticks (a single iteration gets a readable range)."""
  from matplotlib.ticker import MaxNLocator

  pts = [(i, r[key]) for i, r in per_iter if r.get(key) is not None]
  if pts:
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label, lw=1.5)
  ax.set_xlabel("GRPO iteration (rollout batch)")
  iterations = [i for i, _ in per_iter]
  if iterations:
    ax.set_xlim(min(iterations) - 0.5, max(iterations) + 0.5)
  if len(iterations) <= 12:
    ax.set_xticks(iterations)
  else:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _per_iteration(records: list[Mapping[str, Any]]) -> list[tuple[int, Mapping[str, Any]]]:
  """(iteration, its first record), in order. Records without an iteration (runs logged
  before it was recorded) count one each, by position, when no record has one; when some do,
  those without are left out rather than mixed into the iteration numbering."""
  if not any(r.get("iteration") is not None for r in records):
    return list(enumerate(records))
  out: dict[int, Mapping[str, Any]] = {}
  for r in records:
    if r.get("iteration") is not None:
      out.setdefault(int(r["iteration"]), r)
  return sorted(out.items())
