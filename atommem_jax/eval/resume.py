"""Finished episodes on disk, per evaluation cell, so a killed evaluation continues.

A CPU evaluation of five methods on 50 questions runs for hours; without this, a crash
or a kill near the end loses every finished episode. The runner appends each batch's
trajectories to `<output_dir>/episodes/<method>@<dataset>@<length>.jsonl` as soon as the
batch ends (flushed and fsynced), and on start reuses the episodes already there instead
of running them again. Reuse is only sound for the same experiment, so the directory also
holds the config's fingerprint (every key that can change a result); a run with a
different config in the same output_dir stops with an error naming the keys that differ.
"""
from __future__ import annotations

import json
import pathlib
from collections.abc import Iterable

import ml_collections

from atommem_jax.agent.trajectory import Trajectory, write_jsonl
from atommem_jax.eval.config import ConfigError

# Keys that never change a finished episode: where results go, which cells run, how
# many questions, and how much is printed.
_NOT_RESULT_KEYS = ("output_dir", "methods", "max_examples", "resume", "verbose",
                    "viewer_episodes")


class ResumeMismatch(ConfigError):
  """The output directory holds episodes of a different config."""


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
  out: dict[str, object] = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v
  return out


def fingerprint(c: ml_collections.ConfigDict) -> dict[str, object]:
  """The config keys that can change a finished episode, flattened (`a.b` -> value)."""
  flat = _flatten(json.loads(c.to_json_best_effort()))
  return {k: v for k, v in sorted(flat.items()) if k.split(".")[0] not in _NOT_RESULT_KEYS}


class EpisodeStore:
  """Per-cell JSONL of finished trajectories under `<output_dir>/episodes`."""

  def __init__(self, output_dir: str | pathlib.Path, c: ml_collections.ConfigDict):
    self.root = pathlib.Path(output_dir) / "episodes"
    self.root.mkdir(parents=True, exist_ok=True)
    fp_path = self.root / "fingerprint.json"
    fp = fingerprint(c)
    if not c.get("resume", True):
      for p in self.root.glob("*.jsonl"):
        p.unlink()
    elif fp_path.exists() and any(self.root.glob("*.jsonl")):
      old = json.loads(fp_path.read_text())
      diff = sorted(k for k in set(old) | set(fp) if old.get(k) != fp.get(k))
      if diff:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {fp.get(k)!r}" for k in diff[:6])
        raise ResumeMismatch(
            f"{self.root} holds episodes of a different config ({shown}"
            f"{', ...' if len(diff) > 6 else ''}); use another output_dir or "
            "--config.resume=False to discard them")
    fp_path.write_text(json.dumps(fp, indent=1))

  def _path(self, method: str, dataset: str, length: str) -> pathlib.Path:
    return self.root / f"{method}@{dataset}@{length}.jsonl"

  def load(self, method: str, dataset: str, length: str) -> list[Trajectory]:
    """Finished trajectories of a cell. A torn last line (the write a kill interrupted) is
    cut from the file, so the next append starts on a clean line; that batch reruns."""
    path = self._path(method, dataset, length)
    if not path.exists():
      return []
    out = []
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    for lineno, line in enumerate(lines, 1):
      if not line.strip():
        continue
      try:
        out.append(Trajectory.from_json(json.loads(line)))
      except (json.JSONDecodeError, TypeError, KeyError) as e:
        if lineno < len(lines):
          raise ValueError(f"{path}:{lineno}: not a trajectory record ({e})") from None
        path.write_text("".join(lines[:-1]), encoding="utf-8")
        return out
    if lines and not lines[-1].endswith("\n"):  # a whole record whose newline was cut
      with path.open("a", encoding="utf-8") as f:
        f.write("\n")
    return out

  def append(self, method: str, dataset: str, length: str,
             trajectories: Iterable[Trajectory]) -> None:
    """Adds a finished batch, durably (flush + fsync) before the next batch starts."""
    write_jsonl(self._path(method, dataset, length), trajectories, append=True)


def finished_episodes(trajectories: Iterable[Trajectory], group_size: int) -> set[str]:
  """Episode ids with every sample 0..group_size-1 present."""
  samples: dict[str, set[int]] = {}
  for t in trajectories:
    samples.setdefault(t.episode_id, set()).add(t.sample)
  want = set(range(group_size))
  return {e for e, got in samples.items() if want <= got}


def latest(trajectories: Iterable[Trajectory]) -> list[Trajectory]:
  """One record per (episode, sample), the last written: a group cut short by a kill is
  rerun whole and appended again, so its earlier partial samples are superseded."""
  by_key = {(t.episode_id, t.sample): t for t in trajectories}
  return list(by_key.values())
