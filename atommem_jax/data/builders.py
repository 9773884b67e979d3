"""tfds builders: `hotpotqa_long`, `twowiki_long`, `musique_long` and `synthetic_memory`.

Written as `array_record` and read back with `builder.as_data_source(split)` (random access,
no TensorFlow: tfds 4.9.10 builds and reads array_record through its numpy/`array_record`
path, which these tests exercise without TensorFlow installed).

Raw files come from a local directory, never a download: `raw_dir=` or tfds' `manual_dir`
(`download_config=tfds.download.DownloadConfig(manual_dir=...)`). Default file names are the
official ones; `files={"validation": "hotpot.json"}` maps splits to other names. Splits whose
default file is absent are skipped; if none is found the error names the directory and the
expected files. A `{split}_subset.json` next to the raw files (JSON list of question indices,
e.g. MemAgent's published 128) restricts that split to exactly those questions.

    builder = HotpotqaLong(config="docs200", data_dir=..., raw_dir="/data/hotpotqa")
    builder.download_and_prepare(file_format="array_record")
    ds = builder.as_data_source("validation")   # ds[i] -> dict of numpy values / bytes
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

from atommem_jax.data import longctx, raw, synthetic

_CITATIONS = {
    "hotpotqa": "Yang et al., HotpotQA (EMNLP 2018), CC BY-SA 4.0.",
    "2wiki": "Ho et al., 2WikiMultihopQA (COLING 2020), Apache-2.0.",
    "musique": "Trivedi et al., MuSiQue (TACL 2022), CC BY 4.0.",
}


@dataclasses.dataclass(eq=False)
class LongQAConfig(tfds.core.BuilderConfig):
  """num_docs per context, single- or multi-question, sampler seed (see longctx.LongDocConfig)."""

  num_docs: int = 200
  mode: str = "single"
  seed: int = 42
  per_example_seed: bool = False
  target_tokens: int | None = None  # fill to a token budget (builder needs tokenizer=)


def _long_configs() -> list[LongQAConfig]:
  out = [LongQAConfig(name=f"docs{n}", description=f"{n} documents per question (MemAgent)",
                      num_docs=n) for n in longctx.NUM_DOCS_SETTINGS]
  out.append(LongQAConfig(name="multi200", num_docs=200, mode="multi",
                          description="AtomMem: 1-10 questions share a 200-document context"))
  out += [LongQAConfig(name=f"tokens{k}k", target_tokens=k * 1024,
                       description=f"filled to {k}K tokens (+-2%) of the given tokenizer")
          for k in (8, 32, 128)]
  return out


def _json_text(value: Any) -> str:
  return json.dumps(value, ensure_ascii=False)


class _LongQABuilder(tfds.core.GeneratorBasedBuilder):
  """Shared logic; subclasses set DATASET and DEFAULT_FILES."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = _long_configs()
  DEFAULT_BUILDER_CONFIG_NAME = "docs200"
  DATASET = ""
  DEFAULT_FILES: dict[str, str] = {}
  READER_KWARGS: dict[str, Any] = {}
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Place the official raw files in manual_dir (or pass raw_dir=)."

  def __init__(self, *, raw_dir: str | os.PathLike | None = None,
               files: dict[str, str] | None = None,
               extra_corpus: str | os.PathLike | None = None, tokenizer: Any = None, **kwargs):
    self._tokenizer = tokenizer  # anything with encode(); needed by target_tokens configs
    self._raw_dir = os.fspath(raw_dir) if raw_dir is not None else None
    self._files = dict(files) if files is not None else None
    self._extra_corpus = os.fspath(extra_corpus) if extra_corpus is not None else None
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=f"{self.DATASET} questions over long documents (MemAgent RULER protocol).",
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(),
            "question_ids": tfds.features.Sequence(tfds.features.Text()),
            "questions": tfds.features.Sequence(tfds.features.Text()),
            "answers_json": tfds.features.Text(),  # [[gold, alias, ...] per question]
            "gold_positions_json": tfds.features.Text(),  # [[Document i, ...] per question]
            "context": tfds.features.Text(),
            "num_docs": np.int32,
        }),
        citation=_CITATIONS.get(self.DATASET, ""),
        disable_shuffling=True)  # keep question order (published subsets, RULER's rng stream)

  def _raw_path(self, dl_manager) -> str:
    if self._raw_dir is not None:
      return self._raw_dir
    return os.fspath(dl_manager.manual_dir)

  def _split_generators(self, dl_manager):
    root = self._raw_path(dl_manager)
    explicit = self._files is not None
    files = self._files if explicit else self.DEFAULT_FILES
    splits = {}
    for split, name in files.items():
      path = os.path.join(root, name)
      if os.path.isfile(path):
        splits[split] = self._generate_examples(path, split, root)
      elif explicit:
        raise raw.RawDataError(f"{path}: raw data file for split {split!r} not found")
    if not splits:
      raise raw.RawDataError(f"{root}: none of the raw files {sorted(files.values())} found "
                             f"for {self.name}")
    return splits

  def _generate_examples(self, path: str, split: str, root: str
                         ) -> Iterator[tuple[str, dict[str, Any]]]:
    records = raw.read_records(self.DATASET, path, **self.READER_KWARGS)
    extra = raw.read_corpus(self._extra_corpus) if self._extra_corpus else ()
    subset_path = os.path.join(root, f"{split}_subset.json")
    subset = longctx.load_subset_file(subset_path) if os.path.isfile(subset_path) else None
    cfg = self.builder_config
    config = longctx.LongDocConfig(num_docs=cfg.num_docs, mode=cfg.mode, seed=cfg.seed,
                                   per_example_seed=cfg.per_example_seed,
                                   target_tokens=cfg.target_tokens)
    if cfg.target_tokens is not None and self._tokenizer is None:
      raise ValueError(f"{self.name}/{cfg.name}: target_tokens={cfg.target_tokens} needs the "
                       "builder's tokenizer= argument")
    corpus = longctx.build_corpus(records, extra)
    examples = longctx.build_examples(records, config, corpus=corpus, subset=subset,
                                      tokenizer=self._tokenizer if cfg.target_tokens else None)
    for i, ex in enumerate(examples):
      yield f"{i:07d}", {
          "id": ex.id, "question_ids": list(ex.question_ids), "questions": list(ex.questions),
          "answers_json": _json_text([list(a) for a in ex.answers]),
          "gold_positions_json": _json_text([list(p) for p in ex.gold_positions]),
          "context": ex.context, "num_docs": ex.num_docs}


class HotpotqaLong(_LongQABuilder):
  """HotpotQA distractor questions over long documents (RULER-HotpotQA as in MemAgent)."""

  DATASET = "hotpotqa"
  DEFAULT_FILES = {"validation": "hotpot_dev_distractor_v1.json", "train": "hotpot_train_v1.1.json"}


class TwowikiLong(_LongQABuilder):
  """2WikiMultihopQA questions over long documents (rows without `context` are skipped)."""

  DATASET = "2wiki"
  DEFAULT_FILES = {"validation": "dev.json", "train": "train.json"}
  READER_KWARGS = {"missing_context": "skip"}


class MusiqueLong(_LongQABuilder):
  """MuSiQue-Ans questions over long documents (answers include `answer_aliases`)."""

  DATASET = "musique"
  DEFAULT_FILES = {"validation": "musique_ans_v1.0_dev.jsonl",
                   "train": "musique_ans_v1.0_train.jsonl"}


@dataclasses.dataclass(eq=False)
class SyntheticBuilderConfig(tfds.core.BuilderConfig):
  task: str = "mixed"
  num_chunks: int = 8
  hops: int = 3
  distractors_per_chunk: int = 4
  corrections: int = 1
  members: int = 4
  retractions: int = 1
  train_size: int = 1000
  validation_size: int = 200
  seed: int = 0


class SyntheticMemory(tfds.core.GeneratorBasedBuilder):
  """Synthetic CRUD memory tasks with oracle trajectories (SFT data); see data/synthetic.py."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [
      SyntheticBuilderConfig(name="mixed", description="chains with corrections + counts with "
                             "retractions"),
      SyntheticBuilderConfig(name="chain", task="chain", corrections=0,
                             description="multi-hop chains only (Create + Read)"),
      SyntheticBuilderConfig(name="hard", num_chunks=16, hops=4, distractors_per_chunk=12,
                             corrections=2, members=5, retractions=2),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "mixed"

  def _info(self) -> tfds.core.DatasetInfo:
    text, seq = tfds.features.Text, tfds.features.Sequence
    return self.dataset_info_from_configs(
        description="Synthetic long-term memory tasks needing Create/Read/Update/Delete.",
        features=tfds.features.FeaturesDict({
            "id": text(), "kind": text(), "chunks": seq(text()), "question": text(),
            "answer": text(), "spec": seq(text()), "key_chunks": seq(np.int32),
            "uses": seq(text()), "oracle_chunks": seq(np.int32), "oracle_responses": seq(text()),
            "event_chunks": seq(np.int32), "event_kinds": seq(text()), "event_texts": seq(text()),
        }),
        disable_shuffling=True)

  def _synthetic_config(self) -> synthetic.SyntheticConfig:
    c = self.builder_config
    return synthetic.SyntheticConfig(
        task=c.task, num_chunks=c.num_chunks, hops=c.hops,
        distractors_per_chunk=c.distractors_per_chunk, corrections=c.corrections,
        members=c.members, retractions=c.retractions)

  def _split_generators(self, dl_manager):
    c = self.builder_config
    # Disjoint seeds per split: train and validation never share an example.
    return {"train": self._generate_examples(c.seed * 2, c.train_size),
            "validation": self._generate_examples(c.seed * 2 + 1, c.validation_size)}

  def _generate_examples(self, seed: int, n: int):
    cfg = self._synthetic_config()
    for ex in synthetic.generate_many(cfg, seed, n):
      d = ex.to_dict()
      d["spec"] = list(d["spec"])
      yield ex.id, d


def decode_long_example(row: dict[str, Any]) -> dict[str, Any]:
  """A data-source row (bytes, arrays) back to Python values with parsed JSON fields."""
  def s(v):
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)
  return {"id": s(row["id"]), "question_ids": [s(v) for v in row["question_ids"]],
          "questions": [s(v) for v in row["questions"]],
          "answers": json.loads(s(row["answers_json"])),
          "gold_positions": json.loads(s(row["gold_positions_json"])),
          "context": s(row["context"]), "num_docs": int(row["num_docs"])}
