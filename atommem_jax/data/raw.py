"""Readers for the raw multi-hop QA files, normalised into one `QARecord` type.

Formats (the datasets' originals; a JSON list or JSON Lines, detected from the content):
* HotpotQA distractor: `_id`, `question`, `answer`, `context` [[title, [sentences]]],
  `supporting_facts` [[title, sent_id]].
* 2WikiMultihopQA: the same shape plus `evidences`. Some redistributed copies drop `context`
  from a few rows; `missing_context="skip"` skips those rows (counted), the default raises.
* MuSiQue: `id`, `question`, `answer`, `answer_aliases`, `paragraphs`
  [{`title`, `paragraph_text`, `is_supporting`}].
* A paragraph corpus (`[{title, text}]`, e.g. HippoRAG's 2Wiki corpus) as extra distractors.

A paragraph's text is `"".join(sentences)` (as MemAgent/RULER render HotpotQA). Every error
names the file, the record and the field.

`find_dev_file` locates a dataset's dev file in a data directory: the official file name
first, then the small local samples of `../shared/data` (whose numbers are not comparable
with published ones; `is_official_dev_file` tells them apart).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
from typing import Any, Iterator, Literal, Sequence

PathLike = str | os.PathLike
MissingContext = Literal["error", "skip"]


@dataclasses.dataclass(frozen=True)
class Paragraph:
  title: str
  text: str

  def render(self) -> str:
    """The corpus string of MemAgent's protocol: `"{title}\\n{text}"`."""
    return f"{self.title}\n{self.text}"


@dataclasses.dataclass(frozen=True)
class QARecord:
  """One question with its own paragraphs; `answers[0]` is the canonical answer."""

  id: str
  question: str
  answers: tuple[str, ...]
  paragraphs: tuple[Paragraph, ...]
  supporting: tuple[int, ...]  # indices into `paragraphs`
  # The labelled supporting sentences, in label order: (paragraph index, sentence as in the
  # file). HotpotQA / 2Wiki `supporting_facts`; empty where a format has none (MuSiQue).
  supporting_sentences: tuple[tuple[int, str], ...] = ()
  # MuSiQue `question_decomposition`: (supporting paragraph index, sub-answer) per
  # sub-question, in order (the last sub-answer is the answer); empty elsewhere.
  decomposition: tuple[tuple[int, str], ...] = ()

  def __post_init__(self):
    if not self.answers:
      raise ValueError(f"QARecord {self.id!r}: no answers")
    for i in (*self.supporting, *(i for i, _ in self.supporting_sentences),
              *(i for i, _ in self.decomposition)):
      if not 0 <= i < len(self.paragraphs):
        raise ValueError(f"QARecord {self.id!r}: supporting index {i} out of range "
                         f"[0, {len(self.paragraphs)})")


class RawDataError(ValueError):
  """A raw file is missing or malformed; the message names the file and field."""


def load_json_records(path: PathLike) -> list[Any]:
  """A JSON list, or JSON Lines (one object per line)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise RawDataError(f"{path}: raw data file not found")
  with open(path, encoding="utf-8") as f:
    text = f.read()
  stripped = text.lstrip()
  if stripped.startswith("["):
    try:
      data = json.loads(text)
    except json.JSONDecodeError as e:
      raise RawDataError(f"{path}: invalid JSON ({e})") from None
    return data
  records = []
  for lineno, line in enumerate(text.splitlines(), start=1):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError as e:
      raise RawDataError(f"{path}: line {lineno}: invalid JSON ({e})") from None
  if not records:
    raise RawDataError(f"{path}: no records")
  return records


def _field(path: str, idx: int, rec: Any, name: str, kind: type | tuple[type, ...]) -> Any:
  if not isinstance(rec, dict):
    raise RawDataError(f"{path}: record {idx}: expected an object, got {type(rec).__name__}")
  if name not in rec:
    raise RawDataError(f"{path}: record {idx} ({rec.get('_id', rec.get('id', '?'))}): "
                       f"missing field {name!r}")
  value = rec[name]
  if not isinstance(value, kind):
    raise RawDataError(f"{path}: record {idx}: field {name!r} has type {type(value).__name__}")
  return value


def _hotpot_like(path: str, records: Sequence[Any], missing_context: MissingContext
                 ) -> Iterator[QARecord]:
  skipped = bad_sent_ids = 0
  for idx, rec in enumerate(records):
    if isinstance(rec, dict) and "context" not in rec and missing_context == "skip":
      skipped += 1
      continue
    rid = str(_field(path, idx, rec, "_id", (str, int)))
    question = _field(path, idx, rec, "question", str)
    answer = _field(path, idx, rec, "answer", str)
    context = _field(path, idx, rec, "context", list)
    sfs = _field(path, idx, rec, "supporting_facts", list)
    paragraphs = []
    for j, item in enumerate(context):
      if (not isinstance(item, (list, tuple)) or len(item) != 2 or not isinstance(item[0], str)
          or not isinstance(item[1], list) or not all(isinstance(s, str) for s in item[1])):
        raise RawDataError(f"{path}: record {idx} ({rid}): field 'context'[{j}] is not "
                           "[title, [sentences]]")
      paragraphs.append(Paragraph(item[0], "".join(item[1])))
    titles = []
    for j, sf in enumerate(sfs):
      if (not isinstance(sf, (list, tuple)) or len(sf) != 2 or not isinstance(sf[0], str)
          or isinstance(sf[1], bool) or not isinstance(sf[1], int) or sf[1] < 0):
        raise RawDataError(f"{path}: record {idx} ({rid}): field 'supporting_facts'[{j}] is "
                           "not [title, sent_id] with a non-negative integer sent_id")
      if sf[0] not in titles:
        titles.append(sf[0])
    by_title = {p.title: i for i, p in reversed(list(enumerate(paragraphs)))}
    supporting = []
    for t in titles:
      if t not in by_title:
        raise RawDataError(f"{path}: record {idx} ({rid}): field 'supporting_facts' names "
                           f"title {t!r} absent from 'context'")
      supporting.append(by_title[t])
    sentences = []  # a sent_id past its paragraph's end (a known HotpotQA label slip) is counted
    for title, sent_id in sfs:
      para_sents = context[by_title[title]][1]
      if sent_id < len(para_sents):
        sentences.append((by_title[title], para_sents[sent_id]))
      else:
        bad_sent_ids += 1
    yield QARecord(rid, question, (answer,), tuple(paragraphs), tuple(sorted(supporting)),
                   supporting_sentences=tuple(sentences))
  if bad_sent_ids:
    logging.warning("%s: %d supporting_facts name a sentence id past their paragraph's end; "
                    "those sentences are left out of supporting_sentences", path, bad_sent_ids)
  if skipped:
    logging.warning("%s: skipped %d of %d records without 'context' (missing_context='skip')",
                    path, skipped, len(records))


def read_hotpotqa(path: PathLike) -> list[QARecord]:
  """HotpotQA distractor-format file (JSON list or JSONL)."""
  path = os.fspath(path)
  return list(_hotpot_like(path, _as_list(path, load_json_records(path)), "error"))


def read_2wiki(path: PathLike, missing_context: MissingContext = "error") -> list[QARecord]:
  """2WikiMultihopQA file (HotpotQA shape + `evidences`, which the long-context task ignores)."""
  if missing_context not in ("error", "skip"):
    raise ValueError(f"missing_context must be 'error' or 'skip', got {missing_context!r}")
  path = os.fspath(path)
  return list(_hotpot_like(path, _as_list(path, load_json_records(path)), missing_context))


def read_musique(path: PathLike) -> list[QARecord]:
  """MuSiQue file (JSONL or JSON list); answers = [answer] + answer_aliases."""
  path = os.fspath(path)
  out = []
  for idx, rec in enumerate(_as_list(path, load_json_records(path))):
    rid = str(_field(path, idx, rec, "id", (str, int)))
    question = _field(path, idx, rec, "question", str)
    answer = _field(path, idx, rec, "answer", str)
    aliases = rec.get("answer_aliases", []) if isinstance(rec, dict) else []
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
      raise RawDataError(f"{path}: record {idx} ({rid}): field 'answer_aliases' is not a list "
                         "of strings")
    paras = _field(path, idx, rec, "paragraphs", list)
    paragraphs, supporting = [], []
    for j, p in enumerate(paras):
      for name, kind in (("title", str), ("paragraph_text", str)):
        if not isinstance(p, dict) or not isinstance(p.get(name), kind):
          raise RawDataError(f"{path}: record {idx} ({rid}): field 'paragraphs'[{j}].{name} "
                             "missing or not a string")
      paragraphs.append(Paragraph(p["title"], p["paragraph_text"]))
      if not isinstance(p.get("is_supporting", False), bool):
        raise RawDataError(f"{path}: record {idx} ({rid}): field 'paragraphs'[{j}].is_supporting "
                           "is not a boolean")
      if p.get("is_supporting", False):
        supporting.append(j)
    answers = tuple(dict.fromkeys([answer] + aliases))
    decomposition = _musique_decomposition(path, idx, rid, rec, paras)
    out.append(QARecord(rid, question, answers, tuple(paragraphs), tuple(supporting),
                        decomposition=decomposition))
  return out


def _musique_decomposition(path: str, idx: int, rid: str, rec: dict, paras: list
                           ) -> tuple[tuple[int, str], ...]:
  """(paragraph index, sub-answer) per sub-question of `question_decomposition` (optional
  field). `paragraph_support_idx` names a paragraph's `idx` (its position where `idx` is
  absent); a sub-question without one (unanswerable MuSiQue) is left out."""
  steps = rec.get("question_decomposition", [])
  if not isinstance(steps, list):
    raise RawDataError(f"{path}: record {idx} ({rid}): field 'question_decomposition' is not a "
                       "list")
  position = {p.get("idx", j): j for j, p in enumerate(paras)}
  out = []
  for j, st in enumerate(steps):
    support = st.get("paragraph_support_idx") if isinstance(st, dict) else None
    if not isinstance(st, dict) or not isinstance(st.get("answer"), str) or not (
        support is None or (isinstance(support, int) and not isinstance(support, bool))):
      raise RawDataError(f"{path}: record {idx} ({rid}): field 'question_decomposition'[{j}] is "
                         "not {answer: str, paragraph_support_idx: int or null}")
    if support is None:
      continue
    if support not in position:
      raise RawDataError(f"{path}: record {idx} ({rid}): field 'question_decomposition'[{j}]."
                         f"paragraph_support_idx={support} names no paragraph")
    out.append((position[support], st["answer"]))
  return tuple(out)


def read_corpus(path: PathLike) -> list[Paragraph]:
  """A paragraph corpus: JSON list of {title, text}."""
  path = os.fspath(path)
  out = []
  for idx, rec in enumerate(_as_list(path, load_json_records(path))):
    title = _field(path, idx, rec, "title", str)
    text = _field(path, idx, rec, "text", str)
    out.append(Paragraph(title, text))
  return out


def _as_list(path: str, data: Any) -> list[Any]:
  if not isinstance(data, list):
    raise RawDataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
  return data


# Dev files per dataset inside a data directory: the official file name first, then the
# local sample of ../shared/data (see its README.md).
DEV_FILES: dict[str, tuple[str, ...]] = {
    "hotpotqa": ("hotpot_dev_distractor_v1.json", "hotpotqa/hotpot.json"),
    "2wiki": ("dev.json", "2wikimultihopqa/wikihop.json"),
    "musique": ("musique_ans_v1.0_dev.jsonl", "musique/musique.json"),
}


def find_dev_file(dataset: str, data_dir: PathLike) -> pathlib.Path:
  """The first of `DEV_FILES[dataset]` present in `data_dir` (FileNotFoundError naming all)."""
  if dataset not in DEV_FILES:
    raise ValueError(f"dataset must be one of {sorted(DEV_FILES)}, got {dataset!r}")
  data_dir = pathlib.Path(data_dir)
  for name in DEV_FILES[dataset]:
    if (data_dir / name).is_file():
      return data_dir / name
  raise FileNotFoundError(f"no {dataset} dev file in {data_dir}; looked for {DEV_FILES[dataset]}")


def is_official_dev_file(dataset: str, path: PathLike) -> bool:
  """Whether `path` carries the dataset's official dev file name (not a local sample)."""
  return pathlib.Path(path).name == DEV_FILES[dataset][0]


# Train files per dataset inside a data directory: the official file name first, then the
# local sample of ../shared/data. Training reads only these, never a DEV_FILES entry.
TRAIN_FILES: dict[str, tuple[str, ...]] = {
    "hotpotqa": ("hotpot_train_v1.1.json", "hotpotqa/hotpotqa_train.json"),
    "2wiki": ("train.json", "2wikimultihopqa/wikihop_train_preprocess.json"),
    "musique": ("musique_ans_v1.0_train.jsonl", "musique/musique_train.json"),
}


def find_train_file(dataset: str, data_dir: PathLike) -> pathlib.Path:
  """The first of `TRAIN_FILES[dataset]` present in `data_dir` (FileNotFoundError naming all)."""
  if dataset not in TRAIN_FILES:
    raise ValueError(f"dataset must be one of {sorted(TRAIN_FILES)}, got {dataset!r}")
  data_dir = pathlib.Path(data_dir)
  for name in TRAIN_FILES[dataset]:
    if (data_dir / name).is_file():
      return data_dir / name
  raise FileNotFoundError(f"no {dataset} train file in {data_dir}; looked for "
                          f"{TRAIN_FILES[dataset]}")


def is_dev_file(path: PathLike) -> bool:
  """Whether `path` ends like one of the known dev files (official or local sample)."""
  parts = pathlib.PurePath(path).parts
  return any(parts[-len(pathlib.PurePath(n).parts):] == pathlib.PurePath(n).parts
             for names in DEV_FILES.values() for n in names)


READERS = {"hotpotqa": read_hotpotqa, "2wiki": read_2wiki, "musique": read_musique}


def read_records(dataset: str, path: PathLike, **kwargs) -> list[QARecord]:
  """Dispatches on the dataset name ("hotpotqa", "2wiki", "musique")."""
  if dataset not in READERS:
    raise ValueError(f"dataset must be one of {sorted(READERS)}, got {dataset!r}")
  return READERS[dataset](path, **kwargs)
