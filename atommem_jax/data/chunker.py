"""Split a document into chunks of at most N tokens, on paragraph then sentence boundaries.

Units, coarsest first: paragraphs (separated by blank lines; a `Document i:` header and the
title line have no blank line before the text, so they stay with their paragraph), then
sentences, then words, then characters (only for a single unbreakable run longer than a chunk).
Separators stay attached to the unit they follow, so the units concatenate back to the
document exactly.

Each chunk = an optional overlap (the tail of the previous chunk, at most `overlap` tokens,
AtomMem uses 100) + its core; the cores partition the document, so
`"".join(c.core for c in chunks) == document`. Every chunk's full text is at most `max_tokens`
tokens (core budget = max_tokens - overlap), checked with the real tokenizer, since BPE counts
of concatenated pieces can differ from the sum of the pieces' counts.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Sequence

from atommem_jax.data import tokens as tok_lib

_PARA_RE = re.compile(r".*?(?:\n[ \t]*\n\s*|\Z)", re.DOTALL)
_SENT_RE = re.compile(r".*?(?:[.!?][\"')\]]*\s+|\n+|\Z)", re.DOTALL)
_WORD_RE = re.compile(r"\S*\s*|\s+")


@dataclasses.dataclass(frozen=True)
class Chunk:
  """`text == document[start:end]`; the part before `core_start` repeats the previous chunk."""

  text: str
  start: int
  core_start: int
  end: int
  num_tokens: int

  @property
  def core(self) -> str:
    return self.text[self.core_start - self.start:]

  @property
  def overlap_text(self) -> str:
    return self.text[:self.core_start - self.start]


def _split(text: str, pattern: re.Pattern) -> list[str]:
  return [m.group(0) for m in pattern.finditer(text) if m.group(0)]


class _Counter:
  def __init__(self, tokenizer: tok_lib.TokenizerLike):
    self.tokenizer = tokenizer

  def __call__(self, text: str) -> int:
    return tok_lib.count(self.tokenizer, text) if text else 0


def _longest_prefix(text: str, budget: int, count: _Counter) -> int:
  """Largest char length L with count(text[:L]) <= budget (>= 1), preferring a word boundary."""
  lo, hi = 0, len(text)
  while lo < hi:  # binary search: counts are monotone in the prefix length for real tokenizers
    mid = (lo + hi + 1) // 2
    if count(text[:mid]) <= budget:
      lo = mid
    else:
      hi = mid - 1
  if lo == 0:
    raise ValueError(f"chunker: a single character {text[:1]!r} needs more than {budget} tokens")
  if lo < len(text):
    ws = max(text.rfind(" ", 0, lo), text.rfind("\n", 0, lo))
    if ws > 0 and count(text[:ws + 1]) <= budget:  # re-check: BPE counts are not monotone
      return ws + 1
  return lo


def _units(text: str, budget: int, count: _Counter, level: int = 0) -> list[tuple[str, int]]:
  """(unit, token count) pieces of `text`, each <= budget tokens, concatenating to `text`."""
  n = count(text)
  if n <= budget:
    return [(text, n)]
  patterns = (_PARA_RE, _SENT_RE, _WORD_RE)
  if level < len(patterns):
    parts = _split(text, patterns[level])
    if len(parts) > 1:
      return [u for p in parts for u in _units(p, budget, count, level + 1)]
    return _units(text, budget, count, level + 1)
  out = []
  while text:  # one unbreakable run: cut by characters
    cut = _longest_prefix(text, budget, count)
    out.append((text[:cut], count(text[:cut])))
    text = text[cut:]
  return out


def chunk_document(document: str, tokenizer: tok_lib.TokenizerLike, max_tokens: int,
                   overlap: int = 0) -> list[Chunk]:
  """Chunks of `document`, each at most `max_tokens` tokens including the overlap.

  Raises:
    ValueError: max_tokens / overlap out of range (the core budget max_tokens - overlap must
      be at least 1).
  """
  if not isinstance(document, str):
    raise ValueError(f"chunk_document: document must be a str, got {type(document).__name__}")
  if max_tokens <= 0:
    raise ValueError(f"chunk_document: max_tokens must be positive, got {max_tokens}")
  if overlap < 0 or overlap >= max_tokens:
    raise ValueError(f"chunk_document: overlap must be in [0, max_tokens), got {overlap} "
                     f"(max_tokens={max_tokens})")
  if not document:
    return []
  count = _Counter(tokenizer)
  budget = max_tokens - overlap
  units = _units(document, budget, count)

  cores: list[tuple[int, int]] = []  # (start, end) char spans partitioning the document
  pos, i = 0, 0
  while i < len(units):
    start, est, j = pos, 0, i
    while j < len(units) and (j == i or est + units[j][1] <= budget):
      est += units[j][1]
      j += 1
    end = start + sum(len(u) for u, _ in units[i:j])
    while j - i > 1 and count(document[start:end]) > budget:  # merges made it longer: back off
      j -= 1
      end -= len(units[j][0])
    if count(document[start:end]) > budget:  # one unit whose count grew in context
      cut = _longest_prefix(document[start:end], budget, count)
      end = start + cut
      units[i] = (units[i][0][cut:], count(units[i][0][cut:]))
      j = i
    cores.append((start, end))
    pos, i = end, j

  chunks = []
  prev_start = 0
  for start, end in cores:
    ov_start = start
    if overlap and start > 0:
      ov_start = start - _longest_suffix(document[prev_start:start], overlap, count)
      while ov_start < start and (count(document[ov_start:end]) > max_tokens
                                  or count(document[ov_start:start]) > overlap):
        ov_start += 1  # shrink the overlap until it and the whole chunk fit
    text = document[ov_start:end]
    chunks.append(Chunk(text, ov_start, start, end, count(text)))
    prev_start = start
  return chunks


def _longest_suffix(text: str, budget: int, count: _Counter) -> int:
  """Largest char length L with count(text[-L:]) <= budget (0 if none), starting at a word."""
  lo, hi = 0, len(text)
  while lo < hi:
    mid = (lo + hi + 1) // 2
    if count(text[len(text) - mid:]) <= budget:
      lo = mid
    else:
      hi = mid - 1
  if 0 < lo < len(text):
    start = len(text) - lo
    m = re.search(r"\s", text[start:])
    # Begin after the first whitespace (whole words) if that still fits: BPE counts are not
    # monotone in the suffix length ("the " can take more tokens than " the ").
    if m and m.end() < lo and count(text[start + m.end():]) <= budget:
      return lo - m.end()
  if lo and count(text[len(text) - lo:]) > budget:
    return 0
  return lo


def chunk_texts(document: str, tokenizer: tok_lib.TokenizerLike, max_tokens: int,
                overlap: int = 0) -> list[str]:
  """Just the chunk strings (what the environment shows the agent)."""
  return [c.text for c in chunk_document(document, tokenizer, max_tokens, overlap)]


def reassemble(chunks: Sequence[Chunk]) -> str:
  """The document back from its chunks (drops each overlap)."""
  return "".join(c.core for c in chunks)
