"""Prompt templates for the memory agent, loaded from text files.

The shipped templates live in `atommem_jax/prompts/` (package data, so a non-editable
install finds them); a config names one by file name ("step.txt") or points at any other file
by path, so users can swap in other wording (e.g. a published prompt) without touching code.
They use `string.Template` placeholders (`${name}`) rather than `str.format`, so literal
braces such as `\\boxed{}` need no escaping. Every template is checked on load: an unknown or
missing placeholder is an error naming the file.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import string
from typing import Mapping

PROMPTS_DIR = pathlib.Path(__file__).resolve().parents[1] / "prompts"

# Placeholders each template kind may use; all of `required` must appear.
_SPEC: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "system": (frozenset(), frozenset()),
    "step": (frozenset({"questions", "scratchpad", "query", "memories", "chunk", "query_times"}),
             frozenset({"chunk"})),
    "final": (frozenset({"question", "scratchpad", "query", "memories", "query_times",
                         "max_query_times"}), frozenset({"question"})),
    "answer": (frozenset({"question", "context"}), frozenset({"question", "context"})),
    # static_summary's reading turn: notes on one section
    "summary": (frozenset({"questions", "chunk"}), frozenset({"chunk"})),
}


def _placeholders(template: string.Template) -> set[str]:
  names = set()
  for m in template.pattern.finditer(template.template):
    name = m.group("named") or m.group("braced")
    if name:
      names.add(name)
    elif m.group("invalid") is not None:
      raise ValueError(f"invalid '$' placeholder at offset {m.start()}")
  return names


def resolve_template(path: str | pathlib.Path) -> pathlib.Path:
  """The file a config's template name means: a bare file name that PROMPTS_DIR ships is the
  shipped template (a stray file of that name in the working directory never shadows it);
  anything else is a path, relative to the working directory. It may not exist: callers check."""
  raw = os.fspath(path)
  if "/" not in raw and os.sep not in raw and (PROMPTS_DIR / raw).is_file():
    return PROMPTS_DIR / raw
  return pathlib.Path(raw)


def load_template(path: str | pathlib.Path, kind: str) -> string.Template:
  """Reads and validates one template file of the given kind (see `_SPEC`)."""
  path = resolve_template(path)
  if not path.is_file():
    raise FileNotFoundError(f"prompt template {kind!r} not found: {path}")
  if kind not in _SPEC:
    raise ValueError(f"unknown template kind {kind!r}; expected one of {sorted(_SPEC)}")
  template = string.Template(path.read_text(encoding="utf-8"))
  allowed, required = _SPEC[kind]
  try:
    names = _placeholders(template)
  except ValueError as e:
    raise ValueError(f"prompt template {path}: {e}") from None
  if unknown := names - allowed:
    raise ValueError(f"prompt template {path} uses unknown placeholders {sorted(unknown)}; "
                     f"a {kind!r} template may use {sorted(allowed)}")
  if missing := required - names:
    raise ValueError(f"prompt template {path} lacks required placeholders {sorted(missing)}")
  return template


@dataclasses.dataclass(frozen=True)
class PromptSet:
  """The templates one method needs: a system message, a reading step, a final step."""

  system: string.Template
  step: string.Template
  final: string.Template

  @classmethod
  def load(cls, system: str = "system.txt", step: str = "step.txt",
           final: str = "final.txt") -> "PromptSet":
    return cls(load_template(system, "system"), load_template(step, "step"),
               load_template(final, "final"))

  def messages(self, kind: str, fields: Mapping[str, object]) -> list[dict[str, str]]:
    """Chat messages (system + user) for a reading ('step') or answering ('final') turn."""
    template = {"step": self.step, "final": self.final}[kind]
    user = template.substitute({k: str(v) for k, v in fields.items()})
    return [{"role": "system", "content": self.system.substitute({})},
            {"role": "user", "content": user}]
