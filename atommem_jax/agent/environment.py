"""The chunk-stream environment: which section the agent sees, and when an episode ends.

Follows the official AtomMem step semantics (RUCBM/AtomMem,
`recurrent/impls/memory_long_short_multiquery.py`):
  * the document is tokenised once and shown in windows of `chunk_size` tokens, widened by
    `overlap` tokens on both sides;
  * the stream advances after a response that adds or modifies an entry, or that has no
    tags at all; any other response (a query change, a scratchpad-only turn) re-presents the
    same section with fresh search results;
  * once the document is exhausted the questions are answered one at a time; per question
    the query may change at most `max_query_times` times, a further change skips it;
  * an episode is capped at `max_calls` model calls, so it always ends.
Deliberate fixes (documented in docs/design_notes.md): the query limit applies per
question in the answering phase only (officially it also counts during reading, where it
can skip questions), and an answer written while still reading is a counted error rather
than consuming the next question; when the call budget runs out while still reading, the
agent stops reading and still answers with up to `max_query_times + 1` further calls per
question (`answer_after_budget`, default on; officially the episode ends unanswered, which
scores long documents as zero whatever the memory holds). Those extra calls exist only when
reading was cut short: an episode that read every section answers within `call_budget`.
One answer extraction for every method: in the answering phase a reply without any
protocol tag answers the question with its free text (the `\\boxed{}` content if any, as
MemAgent scores free-form replies), flagged `untagged_answer` so it is counted and can be
penalised; without this, a method whose model forgets the tag could never answer.

Everything here is a pure function of an immutable `Cursor` and a parsed step, so it is
trivially testable and replayable.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

READING, ANSWERING, DONE = "reading", "answering", "done"


@dataclasses.dataclass(frozen=True)
class EnvConfig:
  chunk_size: int = 4000  # tokens per section (paper: 4,000)
  overlap: int = 100  # tokens shown again on each side of a section
  max_calls: int = 41  # model calls per episode (paper: 41); 0 = automatic
  max_query_times: int = 3  # query changes per question in the answering phase
  # "atommem": official rule (advance on create/update or a tagless turn); "every_step":
  # every reading turn advances (static workflows, MemAgent-style overwrite memory).
  advance: str = "atommem"
  # When `max_calls` is spent while still reading: True = stop reading and answer (each
  # question gets up to max_query_times + 1 further calls); False = end unanswered (official).
  answer_after_budget: bool = True

  def __post_init__(self):
    if self.chunk_size <= 0:
      raise ValueError(f"EnvConfig.chunk_size must be positive, got {self.chunk_size}")
    if not 0 <= self.overlap < self.chunk_size:
      raise ValueError(f"EnvConfig.overlap must be in [0, chunk_size), got {self.overlap}")
    if self.max_calls < 0 or self.max_query_times < 0:
      raise ValueError("EnvConfig.max_calls and max_query_times must be >= 0, got "
                       f"{self.max_calls}, {self.max_query_times}")
    if self.advance not in ("atommem", "every_step"):
      raise ValueError(f"EnvConfig.advance must be 'atommem' or 'every_step', got {self.advance!r}")

  def call_budget(self, num_chunks: int, num_questions: int) -> int:
    """The model-call cap; automatic = every section twice + every allowed query + answers."""
    if self.max_calls:
      return self.max_calls
    return 2 * num_chunks + (self.max_query_times + 1) * num_questions

  def answer_budget(self, num_questions: int) -> int:
    """Calls granted beyond `call_budget` for answering, used only when reading was cut short."""
    return (self.max_query_times + 1) * num_questions if self.answer_after_budget else 0


@dataclasses.dataclass(frozen=True)
class Episode:
  """One context and its questions (several questions may share a context)."""

  episode_id: str
  questions: tuple[str, ...]
  golds: tuple[tuple[str, ...], ...]  # accepted answers (aliases) per question
  document: str
  meta: dict = dataclasses.field(default_factory=dict, compare=False)
  # Pre-cut sections (synthetic tasks are designed section by section); empty = cut the
  # document into token windows of EnvConfig.chunk_size.
  sections: tuple[str, ...] = ()

  def __post_init__(self):
    if not self.questions:
      raise ValueError(f"episode {self.episode_id!r} has no questions")
    # A question is one line of text and doubles as a retrieval query, which the protocol
    # stores stripped: normalise whitespace here (real HotpotQA has questions with a
    # leading space) so that "query == question" comparisons and rendered reads agree.
    questions = tuple(" ".join(str(q).split()) for q in self.questions)
    for i, q in enumerate(questions):
      if not q:
        raise ValueError(f"episode {self.episode_id!r}: question {i} is blank")
    object.__setattr__(self, "questions", questions)
    if len(self.golds) != len(self.questions):
      raise ValueError(f"episode {self.episode_id!r}: {len(self.questions)} questions but "
                       f"{len(self.golds)} gold answer lists")


def chunk_windows(num_tokens: int, chunk_size: int, overlap: int) -> list[tuple[int, int]]:
  """Token [start, end) windows of each section: [s*cs - ov, (s+1)*cs + ov) clipped."""
  n = max(1, -(-num_tokens // chunk_size))
  return [(max(0, s * chunk_size - overlap), min(num_tokens, (s + 1) * chunk_size + overlap))
          for s in range(n)]


def split_document(token_ids: Sequence[int], tokenizer, cfg: EnvConfig) -> list[str]:
  """Decodes the official overlapping token windows of a tokenised document into texts."""
  ids = np.asarray(token_ids)
  return [tokenizer.decode(ids[a:b].tolist(), skip_special_tokens=True)
          for a, b in chunk_windows(len(ids), cfg.chunk_size, cfg.overlap)]


@dataclasses.dataclass(frozen=True)
class Cursor:
  """Where one episode stands. Immutable; `step` returns a new one."""

  num_chunks: int
  num_questions: int
  call_budget: int
  answer_budget: int = 0  # extra answering calls when call_budget cut reading short
  chunk: int = 0  # index of the section shown next
  question: int = 0  # question being answered (answering phase)
  query_times: int = 0  # query changes on this section / for this question
  calls: int = 0
  reading_calls: int = 0  # calls spent in the reading phase
  answers: tuple[str | None, ...] = ()  # per question; None = skipped / unanswered

  @property
  def phase(self) -> str:
    if self.question >= self.num_questions:
      return DONE
    if self.chunk < self.num_chunks and self.calls < self.call_budget:
      return READING
    extra = self.answer_budget if self.reading_cut else 0
    if self.calls >= self.call_budget + extra:
      return DONE
    return ANSWERING

  @property
  def unread_sections(self) -> int:
    """Sections not (yet) read; after the episode, those the call budget cut off."""
    return self.num_chunks - self.chunk

  @property
  def reading_cut(self) -> bool:
    """True when reading spent the whole call budget (sections may remain unread): only
    then are the `answer_budget` extra calls granted."""
    return self.reading_calls >= self.call_budget

  @property
  def done(self) -> bool:
    return self.phase == DONE

  def final_answers(self) -> tuple[str | None, ...]:
    return tuple(self.answers) + (None,) * (self.num_questions - len(self.answers))


def new_cursor(num_chunks: int, num_questions: int, cfg: EnvConfig) -> Cursor:
  return Cursor(num_chunks=num_chunks, num_questions=num_questions,
                call_budget=cfg.call_budget(num_chunks, num_questions),
                answer_budget=cfg.answer_budget(num_questions))


@dataclasses.dataclass(frozen=True)
class StepEvents:
  """What the environment did with one response (for metrics and trajectories)."""

  phase: str  # phase the response was written in
  advanced: bool = False  # moved to the next section
  answered: int | None = None  # question index answered by this response
  skipped: int | None = None  # question index skipped (query limit exceeded)
  premature_answer: bool = False  # <final_answer> while still reading (ignored)
  untagged_answer: bool = False  # answered by a reply without any protocol tag


def answer_of(parsed) -> tuple[str | None, bool]:
  """(answer, untagged) of an answering-phase reply: the `<final_answer>` content; else,
  for a reply with no protocol tag at all, its free text (boxed content if any); else None."""
  if parsed.answer is not None:
    return parsed.answer, False
  if parsed.ops or not parsed.free_text.strip():
    return None, False
  from atommem_jax.data.metrics import extract_answer

  return extract_answer(parsed.free_text) or None, True


def step(cursor: Cursor, parsed, max_query_times: int = 3, advance_rule: str = "atommem"
         ) -> tuple[Cursor, StepEvents]:
  """Advances the episode after one parsed response (`agent.protocol.ParsedStep`)."""
  phase = cursor.phase
  if phase == DONE:
    raise ValueError("step() called on a finished episode")
  c = dataclasses.replace(cursor, calls=cursor.calls + 1)
  kinds = [op.kind for op in parsed.ops]
  has_answer = parsed.answer is not None
  if phase == READING:
    c = dataclasses.replace(c, reading_calls=c.reading_calls + 1)
    tagless = not kinds and not has_answer
    advance = (advance_rule == "every_step" or tagless
               or any(k in ("create", "update") for k in kinds))
    n_queries = kinds.count("read")
    if advance:
      c = dataclasses.replace(c, chunk=c.chunk + 1, query_times=0)
    else:
      c = dataclasses.replace(c, query_times=c.query_times + n_queries)
    return c, StepEvents(phase, advanced=advance, premature_answer=has_answer)
  # Answering: query changes first (ops run in order), then the answer, if any.
  answers = list(c.final_answers()[:c.question])
  for k in kinds:
    if k != "read":
      continue
    if c.query_times >= max_query_times:  # one change too many: the question is skipped
      answers.append(None)
      c = dataclasses.replace(c, question=c.question + 1, query_times=0,
                              answers=tuple(answers))
      return c, StepEvents(phase, skipped=c.question - 1)
    c = dataclasses.replace(c, query_times=c.query_times + 1)
  answer, untagged = answer_of(parsed)
  if answer is not None:
    answers.append(answer)
    q = c.question
    c = dataclasses.replace(c, question=q + 1, query_times=0, answers=tuple(answers))
    return c, StepEvents(phase, answered=q, untagged_answer=untagged)
  return c, StepEvents(phase)
