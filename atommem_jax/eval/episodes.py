"""Episodes for evaluation: real long-context QA (MemAgent protocol) or synthetic CRUD tasks.

Real data: the dev records of HotpotQA / 2WikiMultihopQA / MuSiQue in `data.data_dir`
(official formats; `../shared/data` by default), turned into documents of `num_docs`
Wikipedia paragraphs by `atommem_jax.data.longctx` exactly as MemAgent's RULER-HotpotQA
builder does (so numbers compare with published ones). The first `max_examples` questions
of the split are used, in file order.
"""
from __future__ import annotations

import functools
import pathlib

import ml_collections

from atommem_jax.agent.environment import Episode
from atommem_jax.eval import config as cfg_lib

# Dev files per dataset inside data_dir: the official names first, then the local samples.
DEV_FILES = {
    "hotpotqa": ("hotpot_dev_distractor_v1.json", "hotpotqa/hotpot.json"),
    "2wiki": ("dev.json", "2wikimultihopqa/wikihop.json"),
    "musique": ("musique_ans_v1.0_dev.jsonl", "musique/musique.json"),
}


def dev_file(dataset: str, data_dir: pathlib.Path) -> pathlib.Path:
  for name in DEV_FILES[dataset]:
    if (data_dir / name).is_file():
      return data_dir / name
  raise FileNotFoundError(f"no {dataset} dev file in {data_dir}; looked for {DEV_FILES[dataset]}")


@functools.lru_cache(maxsize=8)
def _records(dataset: str, path: str):
  from atommem_jax.data import raw

  kwargs = {"missing_context": "skip"} if dataset == "2wiki" else {}
  return raw.read_records(dataset, path, **kwargs)


def real_episodes(dataset: str, data_dir: pathlib.Path, num_docs: int, max_examples: int,
                  multi_question: bool = False, seed: int = 42) -> list[Episode]:
  from atommem_jax.data import longctx

  path = dev_file(dataset, data_dir)
  records = _records(dataset, str(path))
  n = len(records) if max_examples <= 0 else min(max_examples, len(records))
  cfg = longctx.LongDocConfig(num_docs=num_docs, seed=seed,
                              mode="multi" if multi_question else "single")
  out = []
  for ex in longctx.build_examples(records, cfg, subset=list(range(n))):
    out.append(Episode(episode_id=f"{dataset}-{ex.id}-{num_docs}", questions=tuple(ex.questions),
                       golds=tuple(tuple(a) for a in ex.answers), document=ex.context,
                       meta={"dataset": dataset, "num_docs": ex.num_docs,
                             "gold_positions": [list(p) for p in ex.gold_positions]}))
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
