"""Real multi-hop QA episodes from any official-format file, for evaluation and training alike.

One builder for every split: the records of a HotpotQA / 2WikiMultihopQA / MuSiQue file
(`data.raw`), turned into MemAgent-style documents of `num_docs` Wikipedia paragraphs by
`data.longctx` (its own paragraphs plus distractors drawn from the same file's paragraphs),
or, with `num_docs=0`, into a document of the question's own 10-20 paragraphs only (short
training contexts). Evaluation reads dev files through it (`eval/episodes.py`); training
reads the train files (`train_episodes`, which refuses a dev file).

Each episode's meta keeps exactly what the privileged teacher (`agent/teacher.py`) may use,
and nothing else from the record: per question the record id, the supporting paragraphs'
titles, their supporting sentences (`facts`: [title, sentence]) and, for MuSiQue, the
decomposition's hops ([title, sub-answer]); plus dataset, num_docs and the 1-based
document positions of the supporting paragraphs. The answers are the episode's `golds`.
The facts are the finest label a format has: HotpotQA / 2Wiki `supporting_facts`
sentences; for MuSiQue (paragraph labels only) the sentence of each supporting paragraph
that holds its sub-question's answer; a supporting paragraph with neither contributes its
whole text.
"""
from __future__ import annotations

import functools
import os
import re
from typing import Sequence

from atommem_jax.agent.environment import Episode
from atommem_jax.data import longctx, raw

PathLike = str | os.PathLike
# A sentence ends at . ! or ? (optionally closed by a quote or bracket) before whitespace and
# an upper-case letter or an opening quote / bracket: "Dec. 10, 1817" stays one sentence.
_SENTENCE_END = re.compile(r"[.!?][\"')\]\u201d]?\s+(?=[A-Z\"'(\[\u201c])")


@functools.lru_cache(maxsize=16)
def read_records(dataset: str, path: str) -> tuple[raw.QARecord, ...]:
  """The records of one file (cached; 2Wiki rows without `context` are skipped, counted)."""
  kwargs = {"missing_context": "skip"} if dataset == "2wiki" else {}
  return tuple(raw.read_records(dataset, path, **kwargs))


def sentence_around(text: str, start: int, end: int) -> str:
  """The sentence(s) of `text` covering the span [start, end), stripped."""
  if not 0 <= start <= end <= len(text):
    raise ValueError(f"sentence_around: span [{start}, {end}) outside a text of {len(text)} chars")
  lo, hi = 0, len(text)
  for m in _SENTENCE_END.finditer(text):
    if m.end() <= start:
      lo = m.end()
    elif m.start() >= end:
      hi = m.start() + 1
      break
  return text[lo:hi].strip()


def _musique_fact(text: str, sub_answer: str) -> str:
  """The sentence of a MuSiQue paragraph holding its sub-answer (else the whole paragraph)."""
  at = text.lower().find(sub_answer.lower().strip()) if sub_answer.strip() else -1
  if at < 0:
    return text.strip()
  return sentence_around(text, at, at + len(sub_answer.strip()))


def teacher_labels(record: raw.QARecord) -> dict:
  """What the teacher may read of one record: {id, titles, facts, hops} (JSON-ready).

  titles: the supporting paragraphs' titles (hop order for MuSiQue, else label order);
  facts: [title, sentence] per supporting sentence; hops: [title, sub-answer] per
  MuSiQue sub-question ([] elsewhere)."""
  paras = record.paragraphs
  order = list(dict.fromkeys([*(i for i, _ in record.decomposition),
                              *(i for i, _ in record.supporting_sentences), *record.supporting]))
  facts: list[list[str]] = []
  for i in order:
    if record.decomposition:
      texts = [_musique_fact(paras[i].text, a) for j, a in record.decomposition if j == i]
    else:
      texts = [s.strip() for j, s in record.supporting_sentences if j == i]
    texts = [t for t in dict.fromkeys(texts) if t] or [paras[i].text.strip()]
    facts += [[paras[i].title, t] for t in texts if t]
  titles = list(dict.fromkeys(paras[i].title for i in order))
  hops = [[paras[i].title, a] for i, a in record.decomposition]
  return {"id": record.id, "titles": titles, "facts": facts, "hops": hops}


def episodes_from_records(records: Sequence[raw.QARecord], dataset: str, num_docs: int, *,
                          max_examples: int = 0, multi_question: bool = False, seed: int = 42
                          ) -> list[Episode]:
  """Episodes of the first `max_examples` questions (0 = all) of a split, in file order.

  num_docs > 0: MemAgent-style documents of `num_docs` paragraphs (distractors from every
  paragraph of `records`); 0: each question's own paragraphs only (the builder always keeps
  a question's own paragraphs, so it is asked for a single document), in the same fixed-slot
  shuffled order.
  """
  if num_docs < 0:
    raise ValueError(f"num_docs must be >= 0 (0 = own paragraphs only), got {num_docs}")
  if max_examples < 0:
    raise ValueError(f"max_examples must be >= 0 (0 = all), got {max_examples}")
  n = len(records) if max_examples == 0 else min(max_examples, len(records))
  cfg = longctx.LongDocConfig(num_docs=num_docs or 1, seed=seed,
                              mode="multi" if multi_question else "single")
  by_id = {r.id: r for r in records}
  out = []
  for ex in longctx.build_examples(records, cfg, subset=list(range(n))):
    out.append(Episode(
        episode_id=f"{dataset}-{ex.id}-{num_docs}", questions=tuple(ex.questions),
        golds=tuple(tuple(a) for a in ex.answers), document=ex.context,
        meta={"dataset": dataset, "num_docs": ex.num_docs,
              "gold_positions": [list(p) for p in ex.gold_positions],
              "supporting": [teacher_labels(by_id[q]) for q in ex.question_ids]}))
  return out


def episodes_from_file(dataset: str, path: PathLike, num_docs: int, *, max_examples: int = 0,
                       multi_question: bool = False, seed: int = 42) -> list[Episode]:
  """`episodes_from_records` over the records of one official-format file."""
  return episodes_from_records(read_records(dataset, os.fspath(path)), dataset, num_docs,
                               max_examples=max_examples, multi_question=multi_question,
                               seed=seed)


def train_episodes(dataset: str, data_dir: PathLike, num_docs: int, *, max_examples: int = 0,
                   multi_question: bool = False, seed: int = 42) -> list[Episode]:
  """Episodes of a dataset's train file in `data_dir` (`raw.TRAIN_FILES`); never a dev file."""
  path = raw.find_train_file(dataset, data_dir)
  if raw.is_dev_file(path):
    raise ValueError(f"train_episodes: {path} is a dev file (used for evaluation)")
  return episodes_from_file(dataset, path, num_docs, max_examples=max_examples,
                            multi_question=multi_question, seed=seed)


def labels_of(episode: Episode) -> list[dict]:
  """The per-question teacher labels of an episode built here (ValueError if it has none)."""
  labels = episode.meta.get("supporting")
  if not isinstance(labels, list) or len(labels) != len(episode.questions):
    raise ValueError(f"episode {episode.episode_id!r} has no per-question 'supporting' labels in "
                     "its meta (build real-data episodes with atommem_jax.agent.episodes)")
  return labels

