"""tfds builders: array_record written and read back with as_data_source, without TensorFlow."""
from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest

from atommem_jax.data import builders, longctx, raw, synthetic
from tests import _data_fixtures as fx

# ../shared/data beside the repo (real records; the tests skip where it is absent)
DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


def _prepare(builder):
  builder.download_and_prepare(file_format="array_record")
  return builder


def test_no_tensorflow_needed():
  assert importlib.util.find_spec("tensorflow") is None  # the builds below run without it


def test_hotpotqa_long_matches_longctx_and_keeps_gold(tmp_path):
  raw_dir = tmp_path / "raw"
  raw_dir.mkdir()
  fx.write_json(raw_dir / "hotpot_dev_distractor_v1.json", fx.hotpot_records(12))
  cfg = builders.LongQAConfig(name="docs9", num_docs=9)
  b = _prepare(builders.HotpotqaLong(config=cfg, data_dir=tmp_path / "tfds", raw_dir=raw_dir))
  ds = b.as_data_source("validation")
  assert len(ds) == 12 and "train" not in b.info.splits
  records = raw.read_hotpotqa(raw_dir / "hotpot_dev_distractor_v1.json")
  expected = list(longctx.build_examples(records, longctx.LongDocConfig(num_docs=9)))
  for i, ex in enumerate(expected):  # same order, same content
    row = builders.decode_long_example(ds[i])
    assert row["id"] == ex.id and row["context"] == ex.context and row["num_docs"] == 9
    assert row["answers"] == [list(a) for a in ex.answers]
    rec = records[i]
    got = {longctx.document_at(row["context"], p) for p in row["gold_positions"][0]}
    assert got == {rec.paragraphs[s].render() for s in rec.supporting}


def test_subset_file_and_multi_mode(tmp_path):
  raw_dir = tmp_path / "raw"
  raw_dir.mkdir()
  fx.write_json(raw_dir / "musique_ans_v1.0_dev.jsonl", fx.musique_records(8), jsonl=True)
  (raw_dir / "validation_subset.json").write_text(json.dumps([5, 2, 7]))
  cfg = builders.LongQAConfig(name="docs10", num_docs=10)
  ds = _prepare(builders.MusiqueLong(config=cfg, data_dir=tmp_path / "a", raw_dir=raw_dir)
                ).as_data_source("validation")
  assert [builders.decode_long_example(ds[i])["id"] for i in range(len(ds))] == [
      "2hop__5", "2hop__2", "2hop__7"]
  assert builders.decode_long_example(ds[0])["answers"] == [["A5", "alias 5"]]
  (raw_dir / "validation_subset.json").unlink()
  cfg = builders.LongQAConfig(name="multi12", num_docs=30, mode="multi")
  ds = _prepare(builders.MusiqueLong(config=cfg, data_dir=tmp_path / "b", raw_dir=raw_dir)
                ).as_data_source("validation")
  rows = [builders.decode_long_example(ds[i]) for i in range(len(ds))]
  assert sum(len(r["questions"]) for r in rows) == 8
  assert all(len(r["gold_positions"]) == len(r["questions"]) for r in rows)


def test_twowiki_skips_rows_without_context(tmp_path):
  raw_dir = tmp_path / "raw"
  raw_dir.mkdir()
  recs = fx.hotpot_records(4)
  del recs[2]["context"]
  fx.write_json(raw_dir / "dev.json", recs)
  cfg = builders.LongQAConfig(name="docs8", num_docs=8)
  ds = _prepare(builders.TwowikiLong(config=cfg, data_dir=tmp_path / "t", raw_dir=raw_dir)
                ).as_data_source("validation")
  assert len(ds) == 3


def test_missing_raw_files_named(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(raw.RawDataError, match="none of the raw files .*hotpot_dev_distractor_v1"):
    _prepare(builders.HotpotqaLong(config="docs50", data_dir=tmp_path / "x", raw_dir=empty))
  with pytest.raises(raw.RawDataError, match=r"mine\.json: raw data file for split 'validation'"):
    _prepare(builders.HotpotqaLong(config="docs50", data_dir=tmp_path / "y", raw_dir=empty,
                                   files={"validation": "mine.json"}))


def test_synthetic_builder_round_trip(tmp_path):
  cfg = builders.SyntheticBuilderConfig(name="tiny", train_size=4, validation_size=3, seed=5)
  b = _prepare(builders.SyntheticMemory(config=cfg, data_dir=tmp_path))
  train, val = b.as_data_source("train"), b.as_data_source("validation")
  assert len(train) == 4 and len(val) == 3
  ex = synthetic.generate(synthetic.SyntheticConfig(), 10, 1)  # train seed = 2 * 5
  row = train[1]
  assert row["question"].decode() == ex.question and row["answer"].decode() == ex.answer
  assert [r.decode() for r in row["oracle_responses"]] == [s.response for s in ex.oracle]
  assert list(row["oracle_chunks"]) == [s.chunk for s in ex.oracle]
  assert {val[i]["id"] for i in range(3)}.isdisjoint({train[i]["id"] for i in range(4)})


def test_builder_configs_cover_protocol():
  names = [c.name for c in builders.HotpotqaLong.BUILDER_CONFIGS]
  assert names == ([f"docs{n}" for n in longctx.NUM_DOCS_SETTINGS] + ["multi200"]
                   + ["tokens8k", "tokens32k", "tokens128k"])


def test_target_tokens_config(tmp_path):
  raw_dir = tmp_path / "raw"
  raw_dir.mkdir()
  fx.write_json(raw_dir / "hotpot_dev_distractor_v1.json", fx.hotpot_records(30, per=5, sentences=2))
  cfg = builders.LongQAConfig(name="tok3000", target_tokens=3000)
  tok = fx.ByteTokenizer()  # 1 token per byte
  ds = _prepare(builders.HotpotqaLong(config=cfg, data_dir=tmp_path / "a", raw_dir=raw_dir,
                                      tokenizer=tok)).as_data_source("validation")
  for i in range(len(ds)):
    n = len(tok.encode(builders.decode_long_example(ds[i])["context"]))
    assert abs(n - 3000) <= 60
  with pytest.raises(ValueError, match="needs the builder's tokenizer"):
    _prepare(builders.HotpotqaLong(config=cfg, data_dir=tmp_path / "b", raw_dir=raw_dir))


def test_real_hotpotqa_builder(tmp_path):
  """Builds docs200 from the real 200 HotpotQA dev records in ../shared/data (skips without)."""
  if not (DATA / "hotpotqa/hotpot.json").is_file():
    pytest.skip("no real data")
  b = _prepare(builders.HotpotqaLong(config="docs200", data_dir=tmp_path, raw_dir=DATA / "hotpotqa",
                                     files={"validation": "hotpot.json"}))
  ds = b.as_data_source("validation")
  records = raw.read_hotpotqa(DATA / "hotpotqa/hotpot.json")
  assert len(ds) == 200
  for i in range(0, 200, 17):
    row = builders.decode_long_example(ds[i])
    rec = records[i]
    assert row["num_docs"] == 200
    got = {longctx.document_at(row["context"], p) for p in row["gold_positions"][0]}
    assert got == {rec.paragraphs[s].render() for s in rec.supporting}
