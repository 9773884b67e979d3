"""Long-document QA examples following the MemAgent RULER-HotpotQA protocol (pure, deterministic).

Protocol (RULER `qa.py` as used by MemAgent, mirrored so numbers are comparable):
* corpus = every unique paragraph of the split rendered `"{title}\\n{text}"`, deduplicated and
  sorted (66,635 for the full HotpotQA dev set);
* per question (in file order): its own paragraphs, plus `num_docs - len(own)` paragraphs drawn
  with `rng.sample(rest_of_corpus_in_corpus_order, k)` from ONE `random.Random(seed)` consumed
  across the examples (RULER seeds the global `random` once); if `num_docs >= len(corpus)` the
  context is the whole corpus;
* the fixed-slot shuffle `random.Random(4).shuffle(docs)` (a fresh Random(4) per example, so the
  permutation depends only on the number of documents);
* rendered as `"Document {i}:\\n{doc}"` (1-based) joined by blank lines.

Options beyond the protocol: `per_example_seed` (each example draws from Random(hash(seed, i)),
so any subset builds identically in any order/shard); `target_tokens` (fill to a token budget
with a tokenizer, whole documents only, within `tolerance`); the AtomMem multi-question mode
(1..10 questions share one context: P(1)=0.5 else uniform over 2..10, 200 documents); a published
subset of question indices (those exactly, in the given order).
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
from typing import Iterator, Literal, Sequence

from atommem_jax.data import tokens as tok_lib
from atommem_jax.data.raw import Paragraph, QARecord

DOCUMENT_PROMPT = "Document {i}:\n{document}"
DOC_SEPARATOR = "\n\n"
NUM_DOCS_SETTINGS = (50, 100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600)
SHUFFLE_SEED = 4  # RULER's fixed-slot shuffle
Mode = Literal["single", "multi"]


@dataclasses.dataclass(frozen=True)
class LongDocConfig:
  """How to build long documents.

  num_docs: documents per context (ignored when target_tokens is set).
  target_tokens: if set, fill each context to this many tokens (needs a tokenizer).
  tolerance: allowed relative deviation from target_tokens.
  seed: seed of the distractor sampler (RULER default 42).
  per_example_seed: one sampler per example (order-independent) instead of one shared stream.
  mode: "single" (one question per context) or "multi" (AtomMem: 1..max_questions share one).
  p_single, max_questions: the multi-question group-size distribution.
  """

  num_docs: int = 200
  target_tokens: int | None = None
  tolerance: float = 0.02
  seed: int = 42
  shuffle_seed: int = SHUFFLE_SEED
  per_example_seed: bool = False
  mode: Mode = "single"
  p_single: float = 0.5
  max_questions: int = 10

  def __post_init__(self):
    if self.num_docs <= 0:
      raise ValueError(f"LongDocConfig.num_docs must be positive, got {self.num_docs}")
    if self.target_tokens is not None and self.target_tokens <= 0:
      raise ValueError(f"LongDocConfig.target_tokens must be positive, got {self.target_tokens}")
    if not 0 < self.tolerance < 1:
      raise ValueError(f"LongDocConfig.tolerance must be in (0, 1), got {self.tolerance}")
    if self.mode not in ("single", "multi"):
      raise ValueError(f"LongDocConfig.mode must be 'single' or 'multi', got {self.mode!r}")
    if not 0 <= self.p_single <= 1:
      raise ValueError(f"LongDocConfig.p_single must be in [0, 1], got {self.p_single}")
    if self.max_questions < 2:
      raise ValueError(f"LongDocConfig.max_questions must be >= 2, got {self.max_questions}")


@dataclasses.dataclass(frozen=True)
class LongExample:
  """One long context with its question(s). Positions are 1-based `Document i` numbers."""

  id: str
  question_ids: tuple[str, ...]
  questions: tuple[str, ...]
  answers: tuple[tuple[str, ...], ...]  # per question: gold + aliases
  context: str
  num_docs: int
  gold_positions: tuple[tuple[int, ...], ...]  # per question: its supporting paragraphs
  num_tokens: int = -1  # exact token count when built with a tokenizer, else -1

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def build_corpus(records: Sequence[QARecord], extra: Sequence[Paragraph] = ()) -> list[str]:
  """Unique rendered paragraphs of the split (plus optional extra distractors), sorted."""
  docs = {p.render() for r in records for p in r.paragraphs}
  docs.update(p.render() for p in extra)
  return sorted(docs)


def render_context(docs: Sequence[str]) -> str:
  return DOC_SEPARATOR.join(DOCUMENT_PROMPT.format(i=i + 1, document=d) for i, d in enumerate(docs))


def load_subset_file(path: str | os.PathLike) -> list[int]:
  """Question indices of a published subset: a JSON list of ints, or one int per line."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ValueError(f"{path}: subset index file not found")
  with open(path, encoding="utf-8") as f:
    text = f.read()
  try:
    data = json.loads(text)
  except json.JSONDecodeError:
    data = [line.strip() for line in text.splitlines() if line.strip()]
  if not isinstance(data, list):
    raise ValueError(f"{path}: subset file must hold a list of question indices")
  out = []
  for j, v in enumerate(data):
    try:
      out.append(int(v))
    except (TypeError, ValueError):
      raise ValueError(f"{path}: entry {j} ({v!r}) is not an integer question index") from None
  return out


def _example_rng(config: LongDocConfig, index: int, shared: random.Random) -> random.Random:
  if config.per_example_seed:
    return random.Random(f"{config.seed}/{index}")  # str seeds hash deterministically (sha512)
  return shared


def _own_docs(records: Sequence[QARecord], corpus_index: dict[str, int]) -> list[int]:
  out: list[int] = []
  seen: set[int] = set()
  for r in records:
    for p in r.paragraphs:
      i = corpus_index[p.render()]
      if i not in seen:  # a paragraph shared by two grouped questions appears once
        seen.add(i)
        out.append(i)
  return out


def _gold_positions(records: Sequence[QARecord], corpus_index: dict[str, int],
                    order: Sequence[int]) -> tuple[tuple[int, ...], ...]:
  pos = {d: i + 1 for i, d in enumerate(order)}
  return tuple(tuple(sorted(pos[corpus_index[r.paragraphs[s].render()]] for s in r.supporting))
               for r in records)


def _sample_num_docs(own: list[int], n_corpus: int, num_docs: int, rng: random.Random
                     ) -> list[int]:
  if num_docs >= n_corpus:
    return list(range(n_corpus))
  own_set = set(own)
  rest = [i for i in range(n_corpus) if i not in own_set]
  return own + rng.sample(rest, max(0, num_docs - len(own)))


def _fill_tokens(own: list[int], corpus: Sequence[str], config: LongDocConfig, rng: random.Random,
                 tokenizer: tok_lib.TokenizerLike, doc_tokens: dict[int, int],
                 shuffle_seed: int) -> tuple[list[int], int]:
  """Own docs + sampled distractors whose rendered context is within tolerance of the target.

  Whole documents only, so the band (2 * tolerance * target tokens) should exceed a typical
  document (HotpotQA paragraphs: ~150 tokens; a 2% band is 320 tokens at 8K); a target too
  small for the band raises instead of returning a context outside it.
  """
  target = config.target_tokens
  lo, hi = target * (1 - config.tolerance), target * (1 + config.tolerance)

  def cost(i: int) -> int:
    if i not in doc_tokens:  # the document with a header and separator, as rendered
      doc_tokens[i] = tok_lib.count(tokenizer, f"Document 1:\n{corpus[i]}\n\n")
    return doc_tokens[i]

  own_set = set(own)
  rest = [i for i in range(len(corpus)) if i not in own_set]
  order = rng.sample(rest, min(len(rest), target // 8 + 64))
  own_total = sum(cost(i) for i in own)
  if own_total > hi:
    raise ValueError(f"target_tokens={target}: the question's own paragraphs alone take "
                     f"~{own_total} tokens")
  goal = (lo + hi) / 2
  n = -1
  for _ in range(8):  # per-document costs are estimates: correct the goal by the exact miss
    chosen, total = list(own), own_total
    g_lo, g_hi = goal - 0.4 * (hi - lo), goal + 0.4 * (hi - lo)
    for i in order:  # greedy fill into [g_lo, g_hi], skipping documents that overshoot it
      if total >= g_lo:
        break
      if total + cost(i) <= g_hi:
        chosen.append(i)
        total += cost(i)
    docs = list(chosen)
    random.Random(shuffle_seed).shuffle(docs)
    n = tok_lib.count(tokenizer, render_context([corpus[i] for i in docs]))
    if lo <= n <= hi:
      return docs, n
    goal -= n - (lo + hi) / 2
  raise ValueError(f"target_tokens={target}: could only reach {n} tokens within "
                   f"+-{config.tolerance:.0%} from a corpus of {len(corpus)} documents")


def _groups(n_records: int, config: LongDocConfig) -> Iterator[list[int]]:
  """Consecutive record groups: size 1 w.p. p_single, else uniform over 2..max_questions."""
  rng = random.Random(f"{config.seed}/groups")
  i = 0
  while i < n_records:
    size = 1 if rng.random() < config.p_single else rng.randint(2, config.max_questions)
    yield list(range(i, min(n_records, i + size)))
    i += size


def build_examples(records: Sequence[QARecord], config: LongDocConfig, *,
                   corpus: Sequence[str] | None = None,
                   subset: Sequence[int] | None = None,
                   tokenizer: tok_lib.TokenizerLike | None = None) -> Iterator[LongExample]:
  """Yields long-context examples for `records` (the whole split, in file order).

  Args:
    records: the split's questions; the corpus is built from all of them.
    config: see LongDocConfig.
    corpus: a prebuilt corpus (default `build_corpus(records)`); must contain every paragraph.
    subset: question indices to build (a published subset), in that order.
    tokenizer: needed for target_tokens; if given, `num_tokens` is filled in.
  """
  if not records:
    raise ValueError("build_examples: no records")
  if config.target_tokens is not None and tokenizer is None:
    raise ValueError("build_examples: target_tokens needs a tokenizer")
  corpus = list(corpus) if corpus is not None else build_corpus(records)
  corpus_index = {d: i for i, d in enumerate(corpus)}
  for r in records:
    for p in r.paragraphs:
      if p.render() not in corpus_index:
        raise ValueError(f"build_examples: record {r.id!r}: paragraph {p.title!r} is not in the "
                         "corpus")
  if subset is not None:
    for j in subset:
      if not 0 <= j < len(records):
        raise ValueError(f"build_examples: subset index {j} out of range [0, {len(records)})")
    indices = list(subset)
  else:
    indices = list(range(len(records)))
  if config.mode == "multi":
    groups = [[indices[k] for k in g] for g in _groups(len(indices), config)]
  else:
    groups = [[i] for i in indices]
  shared = random.Random(config.seed)
  doc_tokens: dict[int, int] = {}
  for gi, group in enumerate(groups):
    recs = [records[i] for i in group]
    rng = _example_rng(config, group[0], shared)
    own = _own_docs(recs, corpus_index)
    if config.target_tokens is not None:
      docs, n_tokens = _fill_tokens(own, corpus, config, rng, tokenizer, doc_tokens,
                                    config.shuffle_seed)
      context = render_context([corpus[i] for i in docs])
    else:
      docs = _sample_num_docs(own, len(corpus), config.num_docs, rng)
      random.Random(config.shuffle_seed).shuffle(docs)
      context = render_context([corpus[i] for i in docs])
      n_tokens = tok_lib.count(tokenizer, context) if tokenizer is not None else -1
    ex_id = recs[0].id if config.mode == "single" else f"group{gi}:" + "+".join(r.id for r in recs)
    yield LongExample(
        id=ex_id, question_ids=tuple(r.id for r in recs), questions=tuple(r.question for r in recs),
        answers=tuple(r.answers for r in recs), context=context, num_docs=len(docs),
        gold_positions=_gold_positions(recs, corpus_index, docs), num_tokens=n_tokens)


def document_at(context: str, position: int) -> str:
  """The text of `Document {position}` in a rendered context (inverse of render_context)."""
  header = f"Document {position}:\n"
  start = context.find(header)
  if start < 0 or (start > 0 and not context[:start].endswith(DOC_SEPARATOR)):
    # A header string could also occur inside a paragraph; search for the separated form.
    start = context.find(DOC_SEPARATOR + header)
    if start < 0:
      raise ValueError(f"document_at: no Document {position} in the context")
    start += len(DOC_SEPARATOR)
  start += len(header)
  nxt = context.find(f"{DOC_SEPARATOR}Document {position + 1}:\n", start)
  return context[start:] if nxt < 0 else context[start:nxt]
