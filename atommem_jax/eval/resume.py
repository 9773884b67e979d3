"""Finished episodes on disk, per evaluation cell, so a killed evaluation continues.

A CPU evaluation of five methods on 50 questions runs for hours; without this, a crash
or a kill near the end loses every finished episode. The runner appends each batch's
trajectories to `<output_dir>/episodes/<method>@<dataset>@<length>.jsonl` as soon as the
batch ends (flushed and fsynced), and on start reuses the episodes already there instead
of running them again.

Reuse is only sound for the same experiment, so the directory also holds a fingerprint of
everything that can change a finished episode, and a run whose fingerprint differs stops
with an error naming the keys that differ (`--config.resume=False` discards the episodes):
* every config key except those that cannot change an episode (`_NOT_RESULT_KEYS`);
* the *contents* of every prompt template the config names (`prompts.<key>.sha256`), so an
  edited template file under an unchanged name is caught;
* the code version: `code.package_version` (importlib.metadata) and `code.git_revision`
  (`git rev-parse HEAD` of the checkout the package runs from; "unknown" when it does not
  run from a git checkout, e.g. a wheel install, or git is missing). Uncommitted changes are
  recorded (`code.git_dirty`, shown in fingerprint.json) but not compared: during
  development the tree is nearly always dirty, and a hash of the diff would refuse every
  rerun after any edit, docs included; the edits most likely to change an answer between
  two runs, the prompt templates, are compared by content above.

Only a torn last line -- no trailing newline and invalid JSON, the write a kill
interrupted -- is cut (its batch reruns); any other unreadable record is an error naming
the file and line, so a damaged store is never silently shortened.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import pathlib
import subprocess
from collections.abc import Iterable

import ml_collections

from atommem_jax.agent.prompts import resolve_template
from atommem_jax.agent.trajectory import Trajectory, write_jsonl
from atommem_jax.agent.build import PROMPT_TEMPLATES, ConfigError
from atommem_jax.eval.config import model_labels

# Keys that never change a finished episode: where results go, which cells run, how
# many questions, and how much is printed.
_NOT_RESULT_KEYS = ("output_dir", "methods", "max_examples", "resume", "verbose",
                    "viewer_episodes")
# Recorded in fingerprint.json for the reader, never compared (see the module docstring).
_NOTE_KEYS = ("code.git_dirty",)
_PACKAGE = "atommem-jax"
_PACKAGE_DIR = pathlib.Path(__file__).resolve().parents[1]  # .../atommem_jax


class ResumeMismatch(ConfigError):
  """The output directory holds episodes of a different config, prompt or code version."""


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
  out: dict[str, object] = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v
  return out


def _git(*args: str) -> str | None:
  try:
    out = subprocess.run(["git", "-C", str(_PACKAGE_DIR), *args], capture_output=True,
                         text=True, timeout=10, check=True)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip()


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, object]:
  """Package version and git revision of the running code ("unknown" where unavailable).

  The revision is the git tree hash of the package directory (`HEAD:atommem_jax`), not
  the commit: committing results or docs between the sessions of a long evaluation must not
  refuse its stored episodes, while any committed change to the code does."""
  try:
    version = importlib.metadata.version(_PACKAGE)
  except importlib.metadata.PackageNotFoundError:
    version = "unknown"
  revision, dirty = "unknown", None
  top = _git("rev-parse", "--show-toplevel")
  # Only the checkout the package lives in: a wheel installed in a venv inside some other
  # repository must not report that repository's revision.
  if top and pathlib.Path(top).resolve() == _PACKAGE_DIR.parent:
    revision = _git("rev-parse", f"HEAD:{_PACKAGE_DIR.name}") or "unknown"
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".")  # cwd: the package
    dirty = None if status is None else bool(status)
  return {"code.package_version": version, "code.git_revision": revision,
          "code.git_dirty": dirty}


def template_hashes(c: ml_collections.ConfigDict) -> dict[str, str]:
  """sha256 of each prompt template file the config names (`prompts.<key>.sha256`)."""
  out = {}
  for key in PROMPT_TEMPLATES:
    path = resolve_template(c.prompts[key])
    try:
      out[f"prompts.{key}.sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as e:
      raise ConfigError(f"prompts.{key}: cannot read {path} ({e})") from None
  return out


def weights_hash(c: ml_collections.ConfigDict) -> dict[str, str]:
  """sha256 of each LoRA adapter file (`model.source` or a `method_models` source of the form
  `lora:<file>`): retraining into the same
  path changes the policy without changing the config. (Other sources name their weights
  by path or by a run directory whose latest step the reader can see in the episodes.)"""
  sources = {"model": str(c.model.source)}
  sources.update({f"method_models.{label}": src for label, src in model_labels(c).items()})
  out = {}
  for key, src in sources.items():
    if src.startswith("lora:"):
      try:
        out[f"{key}.weights.sha256"] = hashlib.sha256(pathlib.Path(src[5:]).read_bytes()).hexdigest()
      except OSError as e:
        raise ConfigError(f"{key}: cannot read {src[5:]} ({e})") from None
  return out


def fingerprint(c: ml_collections.ConfigDict) -> dict[str, object]:
  """What can change a finished episode, flattened (`a.b` -> value): the config keys, the
  prompt templates' contents, a LoRA adapter's contents and the code version."""
  flat = _flatten(json.loads(c.to_json_best_effort()))
  fp = {k: v for k, v in flat.items() if k.split(".")[0] not in _NOT_RESULT_KEYS}
  fp.update(template_hashes(c))
  fp.update(weights_hash(c))
  fp.update(code_version())
  return dict(sorted(fp.items()))


def _shown(v: object) -> str:
  r = repr(v)
  return r if len(r) <= 24 else r[:13] + "...'"


def fingerprint_diff(old: dict[str, object], new: dict[str, object]) -> list[str]:
  """Keys whose values differ (notes excluded), sorted."""
  return sorted(k for k in set(old) | set(new)
                if k not in _NOTE_KEYS and old.get(k) != new.get(k))


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
    elif any(self.root.glob("*.jsonl")):
      if not fp_path.exists():
        raise ResumeMismatch(f"{self.root} holds episodes but no fingerprint.json, so nothing "
                             "says which config made them; use another output_dir or "
                             "--config.resume=False to discard them")
      old = json.loads(fp_path.read_text())
      diff = fingerprint_diff(old, fp)
      if diff:
        shown = ", ".join(f"{k}: {_shown(old.get(k))} -> {_shown(fp.get(k))}" for k in diff[:6])
        raise ResumeMismatch(
            f"{self.root} holds episodes of a different config ({shown}"
            f"{', ...' if len(diff) > 6 else ''}); use another output_dir or "
            "--config.resume=False to discard them")
    fp_path.write_text(json.dumps(fp, indent=1))

  def _path(self, method: str, dataset: str, length: str) -> pathlib.Path:
    return self.root / f"{method}@{dataset}@{length}.jsonl"

  def load(self, method: str, dataset: str, length: str) -> list[Trajectory]:
    """Finished trajectories of a cell.

    A torn last line (no trailing newline and invalid JSON: the write a kill interrupted)
    is cut from the file, so the next append starts on a clean line; that batch reruns. A
    whole last record whose newline was cut gets its newline back. Any other unreadable
    line is a ValueError naming the file and line: the store is damaged, not torn.
    """
    path = self._path(method, dataset, length)
    if not path.exists():
      return []
    out = []
    # Records end at "\n" only: str.splitlines would also split inside a record's text at
    # U+2028, U+0085, ... (json.dumps(ensure_ascii=False) leaves those unescaped).
    parts = path.read_text(encoding="utf-8").split("\n")
    lines = [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
    for lineno, line in enumerate(lines, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        if lineno == len(lines) and not line.endswith("\n"):
          path.write_text("".join(lines[:-1]), encoding="utf-8")
          return out
        raise ValueError(f"{path}:{lineno}: invalid JSON in a finished record ({e}); only a "
                         "torn last line (no newline) is cut, so this store is damaged: "
                         "repair or remove the file") from None
      try:
        out.append(Trajectory.from_json(record))
      except (TypeError, KeyError, AttributeError) as e:
        raise ValueError(f"{path}:{lineno}: not a trajectory record ({e})") from None
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
