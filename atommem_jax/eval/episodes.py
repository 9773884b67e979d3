"""Episodes for evaluation: real long-context QA (MemAgent protocol) or synthetic CRUD tasks.

Real data: the dev records of HotpotQA / 2WikiMultihopQA / MuSiQue in `data.data_dir`
(official formats; `../shared/data` by default), turned into documents of `num_docs`
Wikipedia paragraphs by `atommem_jax.data.longctx` exactly as MemAgent's RULER-HotpotQA
builder does, so numbers compare with published ones *when the dev file is the official
one*: the distractors are drawn from every paragraph of the file, so a small local sample
gives a much smaller distractor corpus (`provenance` reports it). The first `max_examples`
questions of the split are used, in file order. The episodes come from the one real-data
builder, `atommem_jax.agent.episodes`, which training uses on the train files.
"""
from __future__ import annotations

import pathlib

import ml_collections

from atommem_jax.agent import episodes as agent_episodes
from atommem_jax.agent.environment import Episode
from atommem_jax.data import raw
from atommem_jax.eval import config as cfg_lib

# The full official dev files, as far as this project has measured them: records in the
# file and distinct paragraphs the long-context builder draws distractors from
# (atommem_jax/data/longctx.py; ../shared/data/hotpotqa/SOURCES.md).
OFFICIAL_DEV = {"hotpotqa": {"records": 7405, "distractor_corpus": 66_635}}


def _records(dataset: str, path: str):
  return agent_episodes.read_records(dataset, path)


def _questions_used(num_records: int, max_examples: int) -> int:
  return num_records if max_examples <= 0 else min(max_examples, num_records)


def real_episodes(dataset: str, data_dir: pathlib.Path, num_docs: int, max_examples: int,
                  multi_question: bool = False, seed: int = 42) -> list[Episode]:
  return agent_episodes.episodes_from_file(dataset, raw.find_dev_file(dataset, data_dir), num_docs,
                                           max_examples=max_examples,
                                           multi_question=multi_question, seed=seed)


def provenance(c: ml_collections.ConfigDict, dataset: str) -> dict:
  """Where a dataset's episodes come from, for the reports: the dev file, its number of
  records, the questions used, the size of the distractor corpus, and whether the numbers
  compare with published ones (only on the full official dev file)."""
  if dataset == "synthetic":
    return {"source": "synthetic", "comparable_with_published": False,
            "note": "synthetic CRUD tasks generated from data.synthetic_* (no dev file)"}
  from atommem_jax.data import longctx

  path = raw.find_dev_file(dataset, cfg_lib.data_dir(c))
  records = _records(dataset, str(path))
  corpus = len(longctx.build_corpus(records))
  official = raw.is_official_dev_file(dataset, path)
  known = OFFICIAL_DEV.get(dataset, {})
  measured = {"records": len(records), "distractor_corpus": corpus}
  full = official and all(measured[k] == v for k, v in known.items())
  out = {"dev_file": str(path), "official_dev_file": official, "records": len(records),
         "questions_used": _questions_used(len(records), c.max_examples),
         "distractor_corpus": corpus, "comparable_with_published": full}
  if not full:
    ref = (f"{known['distractor_corpus']:,} in the official dev file" if known
           else "the official dev file's corpus")
    what = ("the official file name, but not the full official file" if official
            else "a local sample, not the official dev file")
    out["note"] = (f"{what}: distractors come from {corpus:,} paragraphs (vs {ref}), so "
                   "these numbers are not comparable with published ones")
  return out


def load(c: ml_collections.ConfigDict, length: int, tokenizer=None, dataset: str | None = None
         ) -> list[Episode]:
  """Episodes of one context length for `dataset` (default: the first configured one)."""
  dataset = dataset or cfg_lib.datasets(c)[0]
  if dataset == "synthetic":
    from atommem_jax.agent import oracle

    return oracle.synthetic_episodes(c, num_chunks=length)
  return real_episodes(dataset, cfg_lib.data_dir(c), length, c.max_examples,
                       c.data.multi_question, seed=42 + c.seed)
