"""A privileged scripted MemAgent-style teacher for real multi-hop QA: SFT data for `memagent`.

The counterpart of `agent/teacher.py` (which plays AtomMem) for the overwrite-only memory of
the `memagent` method: one scratchpad, rewritten whole at every reading turn, no long-term
store, answered from the scratchpad alone. Both trained memories then learn from teachers
that know the same labels (each question's supporting sentences from the episode meta via
`episodes.labels_of`, and the labelled answer `golds[q][0]`), so comparing them after the
same training budget is fair. Like the AtomMem teacher it never reads `episode.document` or
`episode.sections`: it finds a labelled sentence only in the section the observation shows,
and every fact it writes is text shown in a section, prefixed with the paragraph's title.

How it plays (`RolloutEngine` runs it like any policy, `advance_rule="every_step"`):
  * reading: every turn is exactly `<update_memory>...</update_memory>` (what the memagent
    step prompt asks for), the whole new scratchpad, one line per kept piece:
      - "Title: sentence" per supporting sentence shown (in the order first noted);
      - a sentence cut by the section's end: the shown part (>= `min_fragment_chars`) is
        noted; on the next section it is completed (from the whole sentence where the
        overlap shows it, else from the noted part and the rest shown at the section's start,
        which may overlap it);
        a cut whose first part was too short to note gets its rest noted alone;
      - before a question's first fact, up to `candidates` shown non-supporting paragraphs
        whose title + first sentence share `lead_overlap` content words with the question
        ("Title: first sentence", a lead), dropped once the question has a fact;
      - "Still need: <supporting titles not noted yet>." once a question has a fact (labels,
        as in the AtomMem teacher's scratchpad);
      - with nothing to keep, `empty_text` (an empty tag would be a parse error).
  * answering: `<final_answer>\\boxed{golds[q][0]}</final_answer>` (the answer prompt's form;
    `environment.answer_of` reads the tag's boxed content).

The budget rule: the scratchpad never exceeds `max_chars` characters (the config's
`max_memory_chars`). The environment does not enforce it on the memagent scratchpad (only
the parser's 4,096-character tag limit applies), so the teacher does, as the lines are
assembled: first the leads are dropped (newest first), then the "Still need" lines, then
whole facts, oldest first, so the most recent facts are kept; a lone fact still too long is
cut at a word boundary to fit (a prefix of shown text). A dropped fact is forgotten (a
MemAgent keeps nothing outside its scratchpad) and never noted again.

State: per (episode, sample) the teacher keeps what its scratchpad holds (derived only from
shown text), reset when a rollout starts afresh, and checks it against the scratchpad the
observation shows. Its scores use labels: an upper bound.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from atommem_jax import protocol
from atommem_jax.agent import environment as env_lib
from atommem_jax.agent.episodes import labels_of
from atommem_jax.agent.rollout import Action, Observation
# The shared helpers of the AtomMem teacher (`_words`: content words, for leads; the
# per-rollout state kept by `rollout_state` / `end_rollout`).
from atommem_jax.agent.teacher import (Fact, _words, end_rollout, entry, facts_of,
                                       rollout_state, shown_paragraphs, shown_prefix,
                                       shown_suffix)

NAME = "memagent_teacher"
STILL_NEED = "Still need:"


@dataclasses.dataclass(frozen=True)
class MemAgentTeacherConfig:
  max_chars: int = 1000  # scratchpad budget (the config's max_memory_chars)
  candidates: int = 1  # leads noted per question before its first fact
  lead_overlap: int = 2  # content words a lead's title + first sentence share with the question
  min_fragment_chars: int = 20  # shortest part of a cut sentence worth noting
  still_need: bool = True  # note the supporting titles a question still lacks, if it fits
  empty_text: str = "Nothing relevant found yet."

  def __post_init__(self):
    if not 1 <= self.max_chars <= protocol.DEFAULT_MAX_CHARS:
      raise ValueError(f"MemAgentTeacherConfig.max_chars must be in [1, "
                       f"{protocol.DEFAULT_MAX_CHARS}] (the parser's tag limit), got "
                       f"{self.max_chars}")
    if self.candidates < 0 or self.min_fragment_chars < 1:
      raise ValueError("MemAgentTeacherConfig: candidates must be >= 0 and "
                       f"min_fragment_chars >= 1, got {self.candidates}, "
                       f"{self.min_fragment_chars}")
    text = self.empty_text.strip()
    if not text or len(text) > self.max_chars or protocol.parse(self.empty_text).ops:
      raise ValueError("MemAgentTeacherConfig.empty_text must be non-blank text without "
                       f"protocol tags within max_chars, got {self.empty_text!r}")


@dataclasses.dataclass
class _Note:
  """One supporting sentence as the scratchpad holds it."""

  title: str
  shown: str  # the shown text kept (whole sentence, cut part, or rest)
  prefix: str | None = None  # the raw shown prefix of a sentence cut at a section's end
  whole: bool = False  # nothing left to complete (whole, the rest alone, or cut to budget)

  @property
  def line(self) -> str:
    return entry(self.title, self.shown)


@dataclasses.dataclass
class _Pad:
  """What the teacher's scratchpad holds in one rollout."""

  notes: dict[tuple[str, str], _Note] = dataclasses.field(default_factory=dict)  # by label
  questions: dict[tuple[str, str], set[int]] = dataclasses.field(
      default_factory=dict)  # label -> the questions it supports (held or dropped)
  dropped: set[tuple[str, str]] = dataclasses.field(default_factory=set)  # over budget
  leads: dict[str, int] = dataclasses.field(default_factory=dict)  # lead line -> question
  leads_noted: dict[int, int] = dataclasses.field(default_factory=dict)  # question -> count
  text: str = ""  # the scratchpad last written


def _cut(line: str, limit: int, keep: int) -> str | None:
  """`line`'s longest prefix ending at a word boundary within `limit` characters, if it
  keeps more than `keep` characters (the title); else None."""
  if len(line) <= limit:
    return line
  head = line[:limit + 1]
  head = head[:head.rfind(" ")].rstrip() if " " in head else ""
  return head if len(head) > keep else None


class MemAgentTeacher:
  """The privileged scripted MemAgent-style teacher (module docstring); a `rollout.Policy`."""

  advance_rule = "every_step"

  def __init__(self, config: MemAgentTeacherConfig = MemAgentTeacherConfig(),
               name: str = NAME):
    self.config = config
    self.name = name
    self._pads: dict[tuple[str, int], _Pad] = {}

  def act(self, observations: Sequence[Observation], params=None) -> list[Action]:
    return [Action(text=self._act(o), scripted=True) for o in observations]

  def _act(self, o: Observation) -> str:
    pad = rollout_state(self._pads, o, _Pad)
    if pad.text != (o.scratchpad or ""):  # the environment must hold what we wrote
      raise ValueError(f"{self.name}: episode {o.episode.episode_id!r} sample {o.sample} shows "
                       f"a scratchpad the teacher did not write ({(o.scratchpad or '')[:80]!r})")
    if o.phase == env_lib.READING:
      pad.text = self._read(o, facts_of(o.episode), pad)
      return protocol.render([protocol.Op(protocol.SCRATCHPAD, pad.text)])
    if o.question_index == len(o.episode.questions) - 1:
      end_rollout(self._pads, o)
    return protocol.render(answer=o.episode.golds[o.question_index][0])

  # -- reading ---------------------------------------------------------------------------
  def _note(self, section: str, f: Fact, pad: _Pad) -> None:
    """Notes (or completes) supporting sentence `f` from what `section` shows of it."""
    label = (f.title, f.text)
    note = pad.notes.get(label)
    if label in pad.dropped or (note is not None and note.whole):
      return
    n = self.config.min_fragment_chars
    if f.text in section:
      pad.notes[label] = _Note(f.title, f.text.strip(), whole=True)
    elif note is not None and note.prefix is not None and (
        rest := shown_suffix(section, f.text, 1)) is not None and len(note.prefix) + len(
            rest) >= len(f.text):  # the part noted and the rest shown now cover it (overlap)
      pad.notes[label] = _Note(f.title, f.text.strip(), whole=True)
    elif (pre := shown_prefix(section, f.text, n)) is not None:
      if note is None or len(pre) > len(note.prefix or ""):
        pad.notes[label] = _Note(f.title, pre.strip(), prefix=pre)
    elif note is None and (rest := shown_suffix(section, f.text, n)) is not None:
      pad.notes[label] = _Note(f.title, rest.strip(), whole=True)

  def _read(self, o: Observation, facts: list[list[Fact]], pad: _Pad) -> str:
    cfg = self.config
    section = o.chunk
    shown = [f for fs in facts for f in fs]
    shown.sort(key=lambda f: (section.find(f.text) if f.text in section else len(section)))
    for f in shown:
      self._note(section, f, pad)
    for f in shown:  # a sentence may support several questions
      if (f.title, f.text) in pad.notes:
        pad.questions.setdefault((f.title, f.text), set()).add(f.question)
    has_fact = {q for qs in pad.questions.values() for q in qs}
    for line, q in list(pad.leads.items()):  # the labels show a lead to be a distractor
      if q in has_fact:
        del pad.leads[line]
    supporting = {f.title for fs in facts for f in fs}
    for q, question in enumerate(o.episode.questions):
      if q in has_fact or pad.leads_noted.get(q, 0) >= cfg.candidates:
        continue
      for title, first in shown_paragraphs(section):
        lead = entry(title, first)
        if (title not in supporting and lead not in pad.leads
            and len(_words(lead) & _words(question)) >= cfg.lead_overlap):
          pad.leads[lead] = q
          pad.leads_noted[q] = pad.leads_noted.get(q, 0) + 1
          break
    return self._compose(o, pad)

  def _still_need(self, o: Observation, pad: _Pad) -> list[str]:
    """Per question with a fact noted: the supporting titles not noted yet (a fact dropped
    over budget counts as noted: the sentence has gone by, the teacher looks for it no
    more)."""
    if not self.config.still_need:
      return []
    lines = []
    for q, lab in enumerate(labels_of(o.episode)):
      noted = {label[0] for label, qs in pad.questions.items() if q in qs}
      missing = [t for t in lab["titles"] if t not in noted]
      if noted and missing:
        head = STILL_NEED if len(o.episode.questions) == 1 else f"Q{q + 1} still need:"
        lines.append(f"{head} {'; '.join(missing)}.")
    return lines

  def _drop(self, pad: _Pad, label: tuple[str, str]) -> None:
    del pad.notes[label]
    pad.dropped.add(label)

  def _compose(self, o: Observation, pad: _Pad) -> str:
    """The new scratchpad within the budget (the rule of the module docstring)."""
    limit = self.config.max_chars
    need = self._still_need(o, pad)

    def text() -> str:
      return "\n".join([n.line for n in pad.notes.values()] + list(pad.leads) + need)

    while len(text()) > limit and pad.leads:
      del pad.leads[list(pad.leads)[-1]]
    while len(text()) > limit and need:
      need.pop()
    while len(text()) > limit and len(pad.notes) > 1:
      self._drop(pad, next(iter(pad.notes)))  # the oldest fact
    if len(text()) > limit:  # one fact, too long alone: its prefix that fits
      label, note = next(iter(pad.notes.items()))
      cut = _cut(note.line, limit, len(note.title) + 2)
      if cut is None:
        self._drop(pad, label)
      else:
        pad.notes[label] = _Note(note.title, cut[len(note.title) + 2:], whole=True)
    return text().strip() or self.config.empty_text.strip()


def make_memagent_teacher(max_chars: int | None = None,
                          config: MemAgentTeacherConfig = MemAgentTeacherConfig()
                          ) -> MemAgentTeacher:
  """The teacher; `max_chars` (pass the config's max_memory_chars) overrides the budget."""
  if max_chars is not None:
    config = dataclasses.replace(config, max_chars=max_chars)
  return MemAgentTeacher(config)
