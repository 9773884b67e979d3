"""The AtomMem memory-operation protocol: the tags the policy writes, parsed and rendered.

Tags follow the official AtomMem code (RUCBM/AtomMem): paired XML-style tags, several per
response, applied in order (DESIGN.md section 2). This module is the ONE place they are
spelled. `parse` turns raw model output into a `ParsedStep` and never raises: anything it
cannot use becomes a typed `ParseError` value carrying position and context, so a rollout
counts and penalises malformed output instead of crashing. `render` writes the canonical
syntax (oracle / SFT responses); `parse(render(ops, answer))` gives back exactly those ops.

Tolerated LLM habits: prose around tags, whitespace / newlines inside tags, tag case
(`<Add_Memory>`), `Memory 3:` / `Memory 3 :` / `memory 3 -` / `Memory #3`, `<think>` blocks
(Qwen3; skipped), an answer without `\\boxed{}`, nested braces inside `\\boxed{}`.
"""
from __future__ import annotations

import dataclasses
import enum
import re
from typing import Iterable, Sequence

# --- The protocol, defined once. ---------------------------------------------------------
CREATE, READ, UPDATE, DELETE, SCRATCHPAD = "create", "read", "update", "delete", "scratchpad"
OP_KINDS: tuple[str, ...] = (CREATE, READ, UPDATE, DELETE, SCRATCHPAD)
TAG_OF_KIND: dict[str, str] = {
    SCRATCHPAD: "update_memory",
    READ: "update_query",
    CREATE: "add_memory",
    UPDATE: "modify_memory",
    DELETE: "delete_memory",
}
KIND_OF_TAG: dict[str, str] = {tag: kind for kind, tag in TAG_OF_KIND.items()}
ANSWER_TAG = "final_answer"
THINK_TAG = "think"
KNOWN_TAGS: frozenset[str] = frozenset(KIND_OF_TAG) | {ANSWER_TAG}
MEMORY_LABEL = "Memory"  # entries are shown and addressed as "Memory i" (1-based)
DEFAULT_MAX_CHARS = 4096  # longest accepted tag content; longer is an OVER_LENGTH error


class ErrorKind(str, enum.Enum):
  """Typed parse errors (str-valued so they serialise and count by name)."""

  UNKNOWN_TAG = "unknown_tag"  # <foo> / </foo> that is not a protocol tag
  UNCLOSED_TAG = "unclosed_tag"  # <add_memory> with no </add_memory> before the next tag
  UNMATCHED_CLOSE = "unmatched_close"  # </add_memory> with no opening tag
  MISSING_INDEX = "missing_index"  # modify/delete without a "Memory i" prefix
  MALFORMED_INDEX = "malformed_index"  # "Memory x" / "Memory 0" / "Memory -1"
  EMPTY_CONTENT = "empty_content"  # a tag (or the text after "Memory i:") is blank
  OVER_LENGTH = "over_length"  # content longer than max_chars
  MALFORMED_ANSWER = "malformed_answer"  # \boxed{ with unbalanced braces
  EXTRA_ANSWER = "extra_answer"  # a second <final_answer> (the first one counts)


ERROR_KINDS: tuple[ErrorKind, ...] = tuple(ErrorKind)


@dataclasses.dataclass(frozen=True)
class ParseError:
  """One problem in a response: what, which tag, where (char offset) and a snippet."""

  kind: ErrorKind
  tag: str | None
  position: int
  context: str

  def __str__(self) -> str:
    return f"{self.kind.value} <{self.tag}> at {self.position}: {self.context!r}"


@dataclasses.dataclass(frozen=True)
class Op:
  """One memory operation. `id` is the written `Memory i` index (update/delete), else None."""

  kind: str
  text: str = ""
  id: int | None = None

  def __post_init__(self):
    if self.kind not in OP_KINDS:
      raise ValueError(f"Op.kind must be one of {OP_KINDS}, got {self.kind!r}")
    if (self.kind in (UPDATE, DELETE)) != (self.id is not None):
      raise ValueError(f"Op.id must be set exactly for update/delete ops, got kind={self.kind!r} "
                       f"id={self.id!r}")


@dataclasses.dataclass(frozen=True)
class ParsedStep:
  """A parsed response: valid ops in order, the answer (or None), leftover prose, errors."""

  ops: tuple[Op, ...] = ()
  answer: str | None = None
  free_text: str = ""
  errors: tuple[ParseError, ...] = ()

  @property
  def ok(self) -> bool:
    return not self.errors

  def error_counts(self) -> dict[str, int]:
    counts = {k.value: 0 for k in ErrorKind}
    for e in self.errors:
      counts[e.kind.value] += 1
    return counts


# --- Parsing. -----------------------------------------------------------------------------
_TAG_RE = re.compile(r"<\s*(/?)\s*([A-Za-z_][A-Za-z0-9_\-]*)\s*>")
# "Memory 3:", "Memory 3 :", "memory 3 -", "Memory #3", "[Memory 3]"; group 1 = the index token.
_INDEX_RE = re.compile(
    r"^\[?\s*memory\s*#?\s*([+\-]?\w*)\s*\]?\s*(?:[:\-\u2013\u2014.,)]\s*)?", re.IGNORECASE)
# A delete that lists more entries and nothing else ("Memory 2, Memory 5 and Memory 7")
# deletes them all; any other text after the first "Memory i" is commentary.
# (Unambiguous pieces: no two quantifiers can share the same characters, so no backtracking blow-up.)
_INDEX_LIST_RE = re.compile(r"(?:(?:[\s,;&]|\band\b)*memory\s*(?:#\s*)?\d{1,9}\b)+[\s,;&.]*",
                            re.IGNORECASE)
_MORE_INDEX_RE = re.compile(r"memory\s*(?:#\s*)?(\d{1,9})", re.IGNORECASE)
MAX_INDEX_DIGITS = 9
_BOX_RE = re.compile(r"\\boxed\s*\{")  # no quantifier on "\\": stays linear on "\\\\\\..."
_CONTEXT = 40


def _snippet(text: str, pos: int) -> str:
  return text[max(0, pos - _CONTEXT // 2): pos + _CONTEXT]


def _strip_think(text: str, errors: list[ParseError]) -> list[tuple[int, str]]:
  """Splits off `<think>...</think>` blocks; returns (offset, segment) pieces to parse."""
  pieces, pos = [], 0
  think_open = re.compile(r"<\s*think\s*>", re.IGNORECASE)
  think_close = re.compile(r"<\s*/\s*think\s*>", re.IGNORECASE)
  while True:
    m = think_open.search(text, pos)
    c = think_close.search(text, pos)
    if c is not None and (m is None or c.start() < m.start()):
      # A lone </think>: Qwen3 chat templates may put <think> in the prompt, so the text
      # before it is reasoning. Drop it silently (no error: this is normal Qwen3 output).
      if pos == 0:
        pos = c.end()
        continue
      pieces.append((pos, text[pos:c.start()]))
      pos = c.end()
      continue
    if m is None:
      pieces.append((pos, text[pos:]))
      return pieces
    pieces.append((pos, text[pos:m.start()]))
    end = think_close.search(text, m.end())
    if end is None:  # truncated reasoning: everything after <think> is thought
      errors.append(ParseError(ErrorKind.UNCLOSED_TAG, THINK_TAG, m.start(), _snippet(text, m.start())))
      return pieces
    pos = end.end()


def _parse_index(content: str) -> tuple[int | None, str, ErrorKind | None]:
  """Splits "Memory i: text" into (i, text, error)."""
  m = _INDEX_RE.match(content.lstrip())
  if m is None:
    return None, content.strip(), ErrorKind.MISSING_INDEX
  token = m.group(1)
  # More than MAX_INDEX_DIGITS digits is never a displayed index (and int() of a
  # 5,000-digit string raises in Python >= 3.11).
  if (not token.isdigit() or not token.isascii() or len(token) > MAX_INDEX_DIGITS
      or int(token) < 1):
    return None, content.strip(), ErrorKind.MALFORMED_INDEX
  return int(token), content.lstrip()[m.end():].strip(), None


def _boxes(text: str) -> list[tuple[str, bool]]:
  """Every `\\boxed{...}` in text, in order: (content, balanced). Nested braces are kept;
  an unbalanced box runs to the end of the text (balanced=False)."""
  out = []
  for m in _BOX_RE.finditer(text):
    depth, start = 1, m.end()
    for i in range(start, len(text)):
      ch = text[i]
      if ch == "{":
        depth += 1
      elif ch == "}":
        depth -= 1
        if depth == 0:
          out.append((text[start:i].strip(), True))
          break
    else:
      out.append((text[start:].strip(), False))
  return out


def extract_boxed(text: str, which: str = "last") -> str | None:
  """Content of the first or last complete `\\boxed{...}` (balanced braces), else None.

  The one boxed-answer extractor: the parser takes the first box of a `<final_answer>`,
  the metrics the last box of free-form output (models restate, the last one is final).
  """
  if not isinstance(text, str):
    raise ValueError(f"extract_boxed: text must be a str, got {type(text).__name__}")
  if which not in ("first", "last"):
    raise ValueError(f"extract_boxed: which must be 'first' or 'last', got {which!r}")
  done = [c for c, ok in _boxes(text) if ok]
  if not done:
    return None
  return done[0] if which == "first" else done[-1]


def _parse_answer(content: str) -> tuple[str, ErrorKind | None]:
  """The content of the first `\\boxed{...}` (nested braces kept), else the stripped text."""
  boxes = _boxes(content)
  if not boxes:
    return content.strip(), None
  text, balanced = boxes[0]
  return text, None if balanced else ErrorKind.MALFORMED_ANSWER


def _parse_segment(text: str, offset: int, full: str, max_chars: int | None, ops: list[Op],
                   answers: list[str], free: list[str], errors: list[ParseError]) -> None:
  def err(kind: ErrorKind, tag: str | None, pos: int) -> None:
    errors.append(ParseError(kind, tag, offset + pos, _snippet(full, offset + pos)))

  tags = list(_TAG_RE.finditer(text))
  i, pos = 0, 0
  while i < len(tags):
    m = tags[i]
    closing, name = m.group(1) == "/", m.group(2).lower()
    if name not in KNOWN_TAGS:
      err(ErrorKind.UNKNOWN_TAG, name, m.start())
      i += 1
      continue
    if closing:
      err(ErrorKind.UNMATCHED_CLOSE, name, m.start())
      free.append(text[pos:m.start()])
      pos = m.end()
      i += 1
      continue
    # An opening protocol tag: its content runs to the first closing tag of the same name,
    # provided no other protocol tag starts in between (else the tag is unclosed).
    j = i + 1
    while j < len(tags):
      t_close, t_name = tags[j].group(1) == "/", tags[j].group(2).lower()
      if t_name in KNOWN_TAGS and (not t_close or t_name == name):
        break
      j += 1
    if j == len(tags) or tags[j].group(1) != "/" or tags[j].group(2).lower() != name:
      err(ErrorKind.UNCLOSED_TAG, name, m.start())
      i += 1
      continue
    free.append(text[pos:m.start()])
    content = text[m.end():tags[j].start()]
    pos, i = tags[j].end(), j + 1
    if max_chars is not None and len(content.strip()) > max_chars:
      err(ErrorKind.OVER_LENGTH, name, m.start())
      continue
    if name == ANSWER_TAG:
      answer, problem = _parse_answer(content)
      if problem is not None:
        err(problem, name, m.start())
      if not answer:
        err(ErrorKind.EMPTY_CONTENT, name, m.start())
      if answers:
        err(ErrorKind.EXTRA_ANSWER, name, m.start())
      answers.append(answer)
      continue
    kind = KIND_OF_TAG[name]
    index = None
    if kind in (UPDATE, DELETE):
      index, body, problem = _parse_index(content)
      if problem is not None:
        err(problem, name, m.start())
        continue
      if kind == DELETE:
        ops.append(Op(kind, "", index))
        # Several entries named in one tag are several deletes (never silently dropped);
        # other text after "Memory i" is commentary.
        if body and _INDEX_LIST_RE.fullmatch(body):
          for j in _MORE_INDEX_RE.findall(body):
            if int(j) >= 1:
              ops.append(Op(kind, "", int(j)))
            else:
              err(ErrorKind.MALFORMED_INDEX, name, m.start())
        continue
      elif not body:
        err(ErrorKind.EMPTY_CONTENT, name, m.start())
        continue
    else:
      body = content.strip()
      if not body:
        err(ErrorKind.EMPTY_CONTENT, name, m.start())
        continue
    ops.append(Op(kind, body, index))
  free.append(text[pos:])


def parse(text: str, max_chars: int | None = DEFAULT_MAX_CHARS) -> ParsedStep:
  """Parses one model response. Never raises; problems are returned in `.errors`.

  Args:
    text: the raw response (any string; bytes are decoded as UTF-8 with replacement,
      anything else is parsed as its `str()`).
    max_chars: longest accepted tag content (None = unlimited); longer content is dropped
      with an OVER_LENGTH error rather than truncated.
  """
  if isinstance(text, (bytes, bytearray)):
    text = bytes(text).decode("utf-8", errors="replace")
  elif not isinstance(text, str):
    text = str(text)
  errors: list[ParseError] = []
  ops: list[Op] = []
  answers: list[str] = []
  free: list[str] = []
  for offset, segment in _strip_think(text, errors):
    _parse_segment(segment, offset, text, max_chars, ops, answers, free, errors)
  free_text = "\n".join(s.strip() for s in free if s.strip())
  errors.sort(key=lambda e: e.position)
  return ParsedStep(tuple(ops), answers[0] if answers else None, free_text, tuple(errors))


# --- Rendering. ---------------------------------------------------------------------------
def strip_tags(text: str) -> str:
  """`text` without any tag markup (`<x>`, `</x>`), whitespace collapsed at the seams: the
  free text of a malformed reply (e.g. an unclosed `<update_memory>`) made safe to keep as
  plain text, e.g. as a scratchpad that must render back through `parse`."""
  return re.sub(r"[ \t]{2,}", " ", _TAG_RE.sub(" ", text)).strip()


def render_op(op: Op) -> str:
  """One op in canonical syntax."""
  tag = TAG_OF_KIND[op.kind]
  if op.kind == UPDATE:
    body = f"{MEMORY_LABEL} {op.id}: {op.text}"
  elif op.kind == DELETE:
    body = f"{MEMORY_LABEL} {op.id}"
  else:
    body = op.text
  return f"<{tag}>{body}</{tag}>"


def render_answer(answer: str) -> str:
  return f"<{ANSWER_TAG}>\\boxed{{{answer}}}</{ANSWER_TAG}>"


def render(ops: Iterable[Op] = (), answer: str | None = None, *, separator: str = "\n",
           max_chars: int | None = DEFAULT_MAX_CHARS) -> str:
  """Writes a response in canonical syntax (oracle / SFT targets); the answer goes last.

  Raises:
    ValueError: naming the offending op if the result would not parse back to exactly
      `ops` and `answer` (blank or unstripped text, text containing a protocol tag,
      unbalanced braces in the answer, over-length content, a non-positive index).
  """
  ops = tuple(ops)
  parts = [render_op(op) for op in ops]
  if answer is not None:
    parts.append(render_answer(answer))
  out = separator.join(parts)
  back = parse(out, max_chars=max_chars)
  if back.ops != ops or back.answer != answer or back.errors:
    for op in ops:  # find the first op that does not survive on its own
      single = parse(render_op(op), max_chars=max_chars)
      if single.ops != (op,) or single.errors:
        raise ValueError(f"render: op {op!r} does not round-trip through parse "
                         f"(errors: {[str(e) for e in single.errors]})")
    raise ValueError(f"render: answer {answer!r} / ops do not round-trip through parse "
                     f"(errors: {[str(e) for e in back.errors]})")
  return out


render_response = render  # the name used by the oracle / SFT code


def format_memories(texts: Sequence[str], empty: str = "No memory entries.") -> str:
  """`Memory 1: ...\\nMemory 2: ...` for the prompt (1-based, in display order)."""
  if not texts:
    return empty
  return "\n".join(f"{MEMORY_LABEL} {i}: {t}" for i, t in enumerate(texts, start=1))
