"""Long-document construction: the MemAgent/RULER protocol, gold coverage, determinism, budgets."""
from __future__ import annotations

import collections
import random

import pytest

from atommem_jax.data import longctx, raw
from tests import _data_fixtures as fx


@pytest.fixture(scope="module")
def records():
  return [raw.QARecord(r["_id"], r["question"], (r["answer"],),
                       tuple(raw.Paragraph(t, "".join(s)) for t, s in r["context"]), (0, 1))
          for r in fx.hotpot_records(30, per=5, shared=1)]


def _records(**kw):
  return [raw.QARecord(r["_id"], r["question"], (r["answer"],),
                       tuple(raw.Paragraph(t, "".join(s)) for t, s in r["context"]), (0, 1))
          for r in fx.hotpot_records(**kw)]


@pytest.fixture(scope="module")
def bpe():
  return fx.make_bpe_tokenizer()


def _ruler_reference(records, num_docs, seed=42):
  """RULER qa.py as MemAgent runs it, written out directly (global random, fixed Random(4))."""
  docs = sorted({f"{p.title}\n{p.text}" for r in records for p in r.paragraphs})
  index = {d: i for i, d in enumerate(docs)}
  random.seed(seed)
  out = []
  for r in records:
    curr = [index[f"{p.title}\n{p.text}"] for p in r.paragraphs]
    if num_docs < len(docs):
      addition = [i for i, _ in enumerate(docs) if i not in curr]
      all_docs = curr + random.sample(addition, max(0, num_docs - len(curr)))
      all_docs = [docs[i] for i in all_docs]
    else:
      all_docs = list(docs)
    random.Random(4).shuffle(all_docs)
    out.append("\n\n".join(f"Document {i + 1}:\n{d}" for i, d in enumerate(all_docs)))
  return out


@pytest.mark.parametrize("num_docs", [6, 20, 1000])
def test_matches_ruler_reference(records, num_docs):
  got = [e.context for e in longctx.build_examples(records, longctx.LongDocConfig(num_docs=num_docs))]
  assert got == _ruler_reference(records, num_docs)


def test_corpus_dedup_sorted(records):
  corpus = longctx.build_corpus(records)
  assert corpus == sorted(set(corpus))
  assert len(corpus) == 30 * 4 + 1  # the shared paragraph counted once


def _check_gold(examples, records_by_id):
  for ex in examples:
    for qid, positions in zip(ex.question_ids, ex.gold_positions):
      r = records_by_id[qid]
      assert len(positions) == len(r.supporting)
      got = {longctx.document_at(ex.context, p) for p in positions}
      assert got == {r.paragraphs[s].render() for s in r.supporting}


@pytest.mark.parametrize("per_example_seed", [False, True])
def test_every_gold_paragraph_present_and_located(records, per_example_seed):
  cfg = longctx.LongDocConfig(num_docs=12, per_example_seed=per_example_seed)
  exs = list(longctx.build_examples(records, cfg))
  assert all(e.num_docs == 12 and e.context.count("\n\nDocument ") == 11 for e in exs)
  _check_gold(exs, {r.id: r for r in records})


def test_deterministic_and_seed_sensitive(records):
  cfg = longctx.LongDocConfig(num_docs=10)
  a = [e.context for e in longctx.build_examples(records, cfg)]
  b = [e.context for e in longctx.build_examples(records, cfg)]
  c = [e.context for e in longctx.build_examples(records, longctx.LongDocConfig(num_docs=10, seed=7))]
  assert a == b and a != c


def test_per_example_seed_is_order_independent(records):
  cfg = longctx.LongDocConfig(num_docs=10, per_example_seed=True)
  full = {e.id: e.context for e in longctx.build_examples(records, cfg)}
  sub = list(longctx.build_examples(records, cfg, subset=[7, 3]))
  assert [e.id for e in sub] == ["q7", "q3"]
  assert all(e.context == full[e.id] for e in sub)


def test_subset_file(records, tmp_path):
  p = tmp_path / "subset.json"
  p.write_text("[4, 0]")
  assert longctx.load_subset_file(p) == [4, 0]
  p2 = tmp_path / "subset.txt"
  p2.write_text("4\n0\n")
  assert longctx.load_subset_file(p2) == [4, 0]
  p2.write_text("4\nx\n")
  with pytest.raises(ValueError, match=r"subset.txt: entry 1 \('x'\)"):
    longctx.load_subset_file(p2)
  with pytest.raises(ValueError, match="subset index 99 out of range"):
    list(longctx.build_examples(records, longctx.LongDocConfig(), subset=[99]))


@pytest.mark.parametrize("target", [2500, 4000, 6000])
def test_target_tokens_within_two_percent(bpe, target):
  records = _records(n=40, per=5, shared=1, sentences=2)  # short paragraphs: ~20-40 tokens
  cfg = longctx.LongDocConfig(target_tokens=target)
  exs = list(longctx.build_examples(records, cfg, tokenizer=bpe, subset=range(8)))
  for e in exs:
    n = len(bpe.encode(e.context, add_special_tokens=False))
    assert n == e.num_tokens
    assert abs(n - target) <= 0.02 * target, (n, target)
  _check_gold(exs, {r.id: r for r in records})


def test_target_tokens_errors(records, bpe):
  with pytest.raises(ValueError, match="needs a tokenizer"):
    list(longctx.build_examples(records, longctx.LongDocConfig(target_tokens=100)))
  with pytest.raises(ValueError, match="own paragraphs alone"):
    list(longctx.build_examples(records, longctx.LongDocConfig(target_tokens=20), tokenizer=bpe))
  with pytest.raises(ValueError, match="could only reach"):
    list(longctx.build_examples(records, longctx.LongDocConfig(target_tokens=10**6), tokenizer=bpe))


def test_multi_question_mode(records):
  cfg = longctx.LongDocConfig(num_docs=60, mode="multi")
  exs = list(longctx.build_examples(records, cfg))
  assert [q for e in exs for q in e.question_ids] == [r.id for r in records]  # all, in order
  assert all(len(e.questions) == len(e.answers) == len(e.gold_positions) for e in exs)
  assert all(e.num_docs == 60 for e in exs)
  _check_gold(exs, {r.id: r for r in records})


def test_group_size_distribution():
  cfg = longctx.LongDocConfig(mode="multi")
  sizes = [len(g) for g in longctx._groups(200_000, cfg)][:-1]
  counts = collections.Counter(sizes)
  assert set(counts) == set(range(1, 11))
  assert counts[1] / len(sizes) == pytest.approx(0.5, abs=0.01)
  for k in range(2, 11):
    assert counts[k] / len(sizes) == pytest.approx(0.5 / 9, abs=0.01)


def test_config_and_input_errors(records):
  with pytest.raises(ValueError, match="num_docs must be positive"):
    longctx.LongDocConfig(num_docs=0)
  with pytest.raises(ValueError, match="mode must be"):
    longctx.LongDocConfig(mode="pairs")
  with pytest.raises(ValueError, match="no records"):
    list(longctx.build_examples([], longctx.LongDocConfig()))
  with pytest.raises(ValueError, match="is not in the corpus"):
    list(longctx.build_examples(records, longctx.LongDocConfig(), corpus=["x"]))
