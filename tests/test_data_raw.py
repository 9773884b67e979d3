"""Raw readers: the three formats into QARecord, and errors that name file and field."""
from __future__ import annotations

import json
import pathlib

import pytest

from atommem_jax.data import raw
from tests import _data_fixtures as fx

# ../shared/data beside the repo (real records; the tests skip where it is absent)
DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.parametrize("jsonl", [False, True])
def test_hotpotqa_json_and_jsonl(tmp_path, jsonl):
  path = fx.write_json(tmp_path / "h.json", fx.hotpot_records(3), jsonl=jsonl)
  recs = raw.read_hotpotqa(path)
  assert [r.id for r in recs] == ["q0", "q1", "q2"]
  r = recs[0]
  assert r.answers == ("ans 0",)
  assert r.paragraphs[0].title == "Topic 0-0"
  assert r.paragraphs[0].text == "".join(fx.hotpot_records(1)[0]["context"][0][1])
  assert r.paragraphs[0].render().startswith("Topic 0-0\nTopic 0-0 sentence 0")
  assert r.supporting == (0, 1)


def test_musique_aliases_and_supporting(tmp_path):
  path = fx.write_json(tmp_path / "m.jsonl", fx.musique_records(2), jsonl=True)
  r = raw.read_musique(path)[1]
  assert r.answers == ("A1", "alias 1")
  assert r.supporting == (1, 3)
  assert r.paragraphs[2].text == "Paragraph 2 of 1."


def test_2wiki_missing_context(tmp_path):
  recs = fx.hotpot_records(3)
  for r in recs:
    r["evidences"] = [["a", "b", "c"]]
  del recs[1]["context"]
  path = fx.write_json(tmp_path / "w.json", recs)
  with pytest.raises(raw.RawDataError, match=r"w\.json: record 1 \(q1\): missing field 'context'"):
    raw.read_2wiki(path)
  assert [r.id for r in raw.read_2wiki(path, missing_context="skip")] == ["q0", "q2"]


def test_missing_file_names_file(tmp_path):
  with pytest.raises(raw.RawDataError, match="nope.json: raw data file not found"):
    raw.read_hotpotqa(tmp_path / "nope.json")


@pytest.mark.parametrize("mutate,match", [
    (lambda r: r.pop("question"), "missing field 'question'"),
    (lambda r: r.__setitem__("answer", 3), "field 'answer' has type int"),
    (lambda r: r["context"].__setitem__(0, ["t", "not a list"]), r"'context'\[0\]"),
    (lambda r: r.__setitem__("supporting_facts", [["Nowhere", 0]]), "title 'Nowhere' absent"),
    (lambda r: r.__setitem__("supporting_facts", [5]), r"'supporting_facts'\[0\]"),
    (lambda r: r.__setitem__("supporting_facts", [["Topic 1-0", "0"]]), r"'supporting_facts'\[0\]"),
    (lambda r: r.__setitem__("supporting_facts", [["Topic 1-0", -1]]), "non-negative integer"),
])
def test_malformed_field_named(tmp_path, mutate, match):
  recs = fx.hotpot_records(2)
  mutate(recs[1])
  path = fx.write_json(tmp_path / "bad.json", recs)
  with pytest.raises(raw.RawDataError, match=r"bad\.json: record 1.*" + match):
    raw.read_hotpotqa(path)


def test_malformed_json_and_musique_paragraph(tmp_path):
  p = tmp_path / "broken.json"
  p.write_text('[{"_id": 1,')
  with pytest.raises(raw.RawDataError, match="broken.json: invalid JSON"):
    raw.read_hotpotqa(p)
  p = tmp_path / "lines.jsonl"
  p.write_text(json.dumps(fx.musique_records(1)[0]) + "\n{oops\n")
  with pytest.raises(raw.RawDataError, match="lines.jsonl: line 2: invalid JSON"):
    raw.read_musique(p)
  recs = fx.musique_records(1)
  del recs[0]["paragraphs"][2]["paragraph_text"]
  path = fx.write_json(tmp_path / "mq.json", recs)
  with pytest.raises(raw.RawDataError, match=r"mq\.json: record 0.*'paragraphs'\[2\]\.paragraph_text"):
    raw.read_musique(path)
  with pytest.raises(ValueError, match="dataset must be one of"):
    raw.read_records("squad", path)
  recs = fx.musique_records(1)
  recs[0]["paragraphs"][1]["is_supporting"] = "yes"
  path = fx.write_json(tmp_path / "mq2.json", recs)
  with pytest.raises(raw.RawDataError, match=r"mq2\.json: record 0.*'paragraphs'\[1\]\.is_supporting"):
    raw.read_musique(path)


def test_real_files():
  """The real records in ../shared/data (see its SOURCES.md files); skips without them."""
  if not DATA.is_dir():
    pytest.skip("no /work/shared/data")
  hp = raw.read_hotpotqa(DATA / "hotpotqa/hotpot_dev_distractor_v1.first53.json")
  assert len(hp) == 53 and hp[0].id == "5a8b57f25542995d1e6f1371" and hp[0].answers == ("yes",)
  assert all(len(r.supporting) >= 2 for r in hp)
  assert len(raw.read_hotpotqa(DATA / "hotpotqa/hotpot.json")) == 200
  assert len(raw.read_2wiki(DATA / "2wikimultihopqa/wikihop.json", missing_context="skip")) == 164
  mq = raw.read_musique(DATA / "musique/musique.json")
  assert len(mq) == 200 and all(len(r.paragraphs) == 20 and r.supporting for r in mq)
  assert len(raw.read_corpus(DATA / "2wikimultihopqa/2wikimultihopqa_corpus.json")) == 6119
