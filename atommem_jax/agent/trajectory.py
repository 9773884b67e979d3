"""Trajectory records: what one episode did, step by step, as re-readable JSONL.

A trajectory is the unit both training (SFT targets, GRPO log-probs and loss masks) and
debugging (the HTML viewer) consume, so it keeps tokens and text side by side.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Iterable, Iterator


@dataclasses.dataclass
class StepRecord:
  """One model call. Loss mask: 0 on prompt (environment) tokens, 1 on response tokens."""

  index: int
  phase: str  # "reading" | "answering"
  chunk: int  # section shown (reading) or number of sections (answering)
  question: int  # question being answered in the answering phase
  prompt_text: str
  response_text: str  # what the policy wrote (== decoded response_ids when ids are kept)
  applied_text: str = ""  # protocol text applied instead (static workflows), "" = response_text
  section: str = ""  # the document section shown (reading phase)
  prompt_ids: list[int] = dataclasses.field(default_factory=list)
  response_ids: list[int] = dataclasses.field(default_factory=list)
  response_logprobs: list[float] = dataclasses.field(default_factory=list)
  ops: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # parsed ops, in order
  op_errors: list[str] = dataclasses.field(default_factory=list)  # memory-apply errors
  parse_errors: list[str] = dataclasses.field(default_factory=list)
  answer: str | None = None
  shown_memories: list[str] = dataclasses.field(default_factory=list)  # Memory 1..k in prompt
  memory_after: list[str] = dataclasses.field(default_factory=list)  # live entries after ops
  scratchpad_after: str = ""
  events: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def loss_mask(self) -> list[int]:
    return [0] * len(self.prompt_ids) + [1] * len(self.response_ids)


@dataclasses.dataclass
class Trajectory:
  episode_id: str
  method: str
  questions: list[str]
  golds: list[list[str]]
  answers: list[str | None]
  steps: list[StepRecord]
  scores: dict[str, float] = dataclasses.field(default_factory=dict)  # mean over questions
  op_counts: dict[str, int] = dataclasses.field(default_factory=dict)
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)
  sample: int = 0  # index within the rollout group (G)
  # The episode's MemoryState at the end, in host form: {"entries": [{"id", "text"}] (live,
  # by stable id), "scratchpad", "query", "next_id", "counters"}; {} for memory-less methods.
  final_memory: dict[str, Any] = dataclasses.field(default_factory=dict)

  def to_json(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    for rec, s in zip(d["steps"], self.steps):
      rec["loss_mask"] = s.loss_mask  # written for trainers that read JSONL directly
    return d

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> "Trajectory":
    d = dict(d)
    d["steps"] = [StepRecord(**{k: v for k, v in s.items() if k != "loss_mask"})
                  for s in d["steps"]]
    return cls(**d)


def write_jsonl(path: str | pathlib.Path, trajectories: Iterable[Trajectory], *,
                append: bool = False) -> pathlib.Path:
  """One JSON record per line. append: add to the file and make the write durable (flush +
  fsync) before returning, for stores that must survive a kill right after."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open("a" if append else "w", encoding="utf-8") as f:
    for t in trajectories:
      f.write(json.dumps(t.to_json(), ensure_ascii=False) + "\n")
    if append:
      f.flush()
      os.fsync(f.fileno())
  return path


def read_jsonl(path: str | pathlib.Path) -> Iterator[Trajectory]:
  path = pathlib.Path(path)
  with path.open(encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        yield Trajectory.from_json(json.loads(line))
      except (json.JSONDecodeError, TypeError, KeyError) as e:
        raise ValueError(f"{path}:{lineno}: not a trajectory record ({e})") from None
