"""The privileged teacher for real multi-hop QA, and the real-data episodes it plays on.

Real train records from ../shared/data (skipped where absent), own paragraphs only, cut into
small sections with the local test tokenizer so that sentences straddle sections; every run
goes through the real `RolloutEngine` with the hashing embedder (no model).
"""
from __future__ import annotations

import importlib
import json
import pathlib
import re

import pytest

from atommem_jax import protocol
from atommem_jax.agent import environment as env_lib
from atommem_jax.agent import episodes as ep_lib
from atommem_jax.agent import policies as pol
from atommem_jax.agent import teacher as teacher_lib
from atommem_jax.agent.rollout import RolloutConfig, RolloutEngine
from atommem_jax.agent.trajectory import StepRecord, Trajectory
from atommem_jax.data import raw
from atommem_jax.data.metrics import score_all
from atommem_jax.memory import state as mem_lib
from atommem_jax.memory.embedder import HashingEmbedder
from tests import _data_fixtures as fx

DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "hotpotqa").is_dir(), reason=f"no {DATA}")
DATASETS = ("hotpotqa", "2wiki", "musique")


def _engine(tokenizer, chunk_size=192, overlap=0):
  cfg = RolloutConfig(env=env_lib.EnvConfig(chunk_size=chunk_size, overlap=overlap, max_calls=0),
                      memory=mem_lib.MemoryConfig(capacity=64, dim=128, top_k=6))
  return RolloutEngine(cfg, tokenizer, HashingEmbedder(dim=128).embed, score_all)


@pytest.fixture(scope="module")
def train_eps():
  """4 train questions per dataset, each with its own paragraphs only."""
  return {d: ep_lib.train_episodes(d, DATA, num_docs=0, max_examples=4) for d in DATASETS}


@pytest.fixture(scope="module")
def runs(train_eps, test_tokenizer):
  eng = _engine(test_tokenizer)
  return {d: eng.run(eps, teacher_lib.RealDataTeacher()).trajectories
          for d, eps in train_eps.items()}


def _titles(t: Trajectory) -> set[str]:
  return {title for lab in t.meta["supporting"] for title in lab["titles"]}


def _body(text: str, titles: set[str]) -> str:
  """An entry's text without the teacher's "Title: " prefix (labels, not shown text)."""
  for title in sorted(titles, key=len, reverse=True):
    if text.startswith(f"{title}: "):
      return text[len(title) + 2:]
  return text.split(": ", 1)[1]


# --- episodes ---------------------------------------------------------------------------------

@needs_data
@pytest.mark.parametrize("dataset", DATASETS)
def test_train_episodes_keep_only_the_teacher_labels(dataset, train_eps):
  eps = train_eps[dataset]
  path = raw.find_train_file(dataset, DATA)
  assert not raw.is_dev_file(path) and raw.is_dev_file(raw.find_dev_file(dataset, DATA))
  records = {r.id: r for r in ep_lib.read_records(dataset, str(path))}
  for e in eps:
    assert set(e.meta) == {"dataset", "num_docs", "gold_positions", "supporting"}
    [lab] = e.meta["supporting"]
    assert set(lab) == {"id", "titles", "facts", "hops"}
    r = records[lab["id"]]
    assert e.golds == (r.answers,) and e.episode_id == f"{dataset}-{r.id}-0"
    # Own paragraphs only: every one of them, and nothing else.
    assert e.meta["num_docs"] == len({p.render() for p in r.paragraphs}) == len(
        re.findall(r"(?m)^Document \d+:$", e.document))
    for pos in e.meta["gold_positions"][0]:
      title = e.document.split(f"Document {pos}:\n", 1)[1].split("\n", 1)[0]
      assert title in lab["titles"]
    texts = {}  # a MuSiQue title may head several paragraphs
    for p in r.paragraphs:
      texts[p.title] = texts.get(p.title, "") + "\n" + p.text
    assert lab["titles"] == list(dict.fromkeys(t for t, _ in lab["facts"]))
    assert sorted(lab["titles"]) == sorted({r.paragraphs[i].title for i in r.supporting})
    for title, sentence in lab["facts"]:
      assert sentence and sentence in texts[title] and sentence in e.document
    if dataset == "musique":  # the sentence holding each hop's sub-answer
      assert list(dict.fromkeys(t for t, _ in lab["hops"])) == lab["titles"]
      assert lab["hops"][-1][1] == r.answers[0]
      for (title, sentence), (_, sub) in zip(lab["facts"], lab["hops"]):
        assert sub.lower() in sentence.lower()
    else:
      assert lab["hops"] == []


@needs_data
def test_2wiki_train_file_reads_with_the_dev_reader():
  """The 'preprocess' train file is the official 2Wiki format plus MIGRES fields."""
  recs = ep_lib.read_records("2wiki", str(raw.find_train_file("2wiki", DATA)))
  assert len(recs) == 500 and all(r.supporting_sentences for r in recs)
  dev_ids = {r.id for r in ep_lib.read_records("2wiki", str(raw.find_dev_file("2wiki", DATA)))}
  assert not dev_ids & {r.id for r in recs}


@needs_data
def test_eval_dev_episodes_come_from_the_same_builder():
  from atommem_jax.eval import episodes as eval_episodes

  got = eval_episodes.real_episodes("musique", DATA, 50, 3)
  want = ep_lib.episodes_from_file("musique", raw.find_dev_file("musique", DATA), 50,
                                   max_examples=3)
  assert [(e.episode_id, e.document, e.meta) for e in got] == [
      (e.episode_id, e.document, e.meta) for e in want]
  assert got[0].episode_id.endswith("-50") and got[0].meta["num_docs"] == 50


def test_records_keep_sentence_labels_and_decomposition(tmp_path):
  recs = fx.hotpot_records(2)
  recs[0]["supporting_facts"].append([recs[0]["context"][1][0], 99])  # a label slip: skipped
  r = raw.read_hotpotqa(fx.write_json(tmp_path / "h.json", recs))[0]
  assert r.supporting_sentences == ((0, recs[0]["context"][0][1][0]),
                                    (1, recs[0]["context"][1][1][1]))
  m = fx.musique_records(1)
  m[0]["question_decomposition"] = [{"answer": "x", "paragraph_support_idx": 3},
                                    {"answer": "A0", "paragraph_support_idx": 1}]
  r = raw.read_musique(fx.write_json(tmp_path / "m.json", m))[0]
  assert r.decomposition == ((3, "x"), (1, "A0"))
  lab = ep_lib.teacher_labels(r)
  assert lab["titles"] == ["M0-3", "M0-1"] and lab["hops"] == [["M0-3", "x"], ["M0-1", "A0"]]
  m[0]["question_decomposition"][0]["paragraph_support_idx"] = 17
  with pytest.raises(raw.RawDataError, match="paragraph_support_idx=17"):
    raw.read_musique(fx.write_json(tmp_path / "m.json", m))


def test_sentence_around_keeps_abbreviations_and_dates():
  text = "He moved to Mississippi. It joined on Dec. 10, 1817 as a state. The end."
  at = text.index("Dec. 10, 1817")
  assert ep_lib.sentence_around(text, at, at + 13) == "It joined on Dec. 10, 1817 as a state."
  with pytest.raises(ValueError, match="outside"):
    ep_lib.sentence_around(text, 5, 500)


# --- the teacher --------------------------------------------------------------------------------

@needs_data
@pytest.mark.parametrize("dataset", DATASETS)
def test_teacher_answers_and_writes_the_supporting_facts(dataset, runs):
  trajs = runs[dataset]
  for t in trajs:
    assert t.answers == [g[0] for g in t.golds] and t.scores["exact_match"] == 1.0
    assert t.op_counts["unread_sections"] == 0
    [lab] = t.meta["supporting"]
    bridges = set(lab["titles"]) | {a for _, a in lab["hops"]}
    reads = [op["text"] for s in t.steps if s.phase == env_lib.READING
             for op in s.ops if op["kind"] == protocol.READ]
    assert any(q.split("; ")[0] in bridges for q in reads), reads  # the bridge query
    for s in t.steps:
      assert protocol.parse(s.response_text).errors == () and not s.op_errors
      if s.ops or s.answer is not None:  # every tagged turn carries the scratchpad
        assert s.ops[0]["kind"] == protocol.SCRATCHPAD
      for op in s.ops:  # only indices the prompt displayed
        if op["kind"] in (protocol.UPDATE, protocol.DELETE):
          assert 1 <= op["id"] <= len(s.shown_memories)
      if s.phase == env_lib.ANSWERING and s.answer is None:
        assert [op["kind"] for op in s.ops] == [protocol.SCRATCHPAD, protocol.READ]
  stats = teacher_lib.support_stats(trajs)
  assert stats["facts_held"] == 1.0 and stats["answered_with_support"] == 1.0
  creates = [op["text"] for t in trajs for s in t.steps for op in s.ops
             if op["kind"] == protocol.CREATE]
  assert len(creates) >= stats["facts"] * 0.8


@needs_data
def test_updates_extend_entries_and_deletes_drop_distractors_or_superseded_parts(runs):
  kinds = {protocol.UPDATE: 0, protocol.DELETE: 0}
  for t in (t for ts in runs.values() for t in ts):
    titles = _titles(t)
    sentences = [s for lab in t.meta["supporting"] for _, s in lab["facts"]]
    for s in t.steps:
      for op in s.ops:
        if op["kind"] not in kinds:
          continue
        kinds[op["kind"]] += 1
        old = s.shown_memories[op["id"] - 1]
        if op["kind"] == protocol.UPDATE:  # a refinement: more of the same paragraph
          assert op["text"].startswith(old) and len(op["text"]) > len(old)
        else:  # a lead whose title is not supporting, or a cut sentence made whole elsewhere
          title = old.split(": ", 1)[0]
          assert title not in titles or any(
              s_.startswith(_body(old, titles)) and s_ != _body(old, titles)
              for s_ in sentences), old
  assert kinds[protocol.UPDATE] > 0 and kinds[protocol.DELETE] > 0, kinds


@needs_data
def test_everything_written_was_shown_at_or_before_that_step(runs):
  """No overlap: the sections shown so far, joined, are the document read so far. A new
  entry's text (past its "Title: ") lies in it; an updated entry is the displayed entry
  plus text that lies in it (so, by induction, every entry is made of shown text)."""
  for t in (t for ts in runs.values() for t in ts):
    titles, seen = _titles(t), {}
    for s in t.steps:
      if s.phase == env_lib.READING:
        seen[s.chunk] = s.section
      read_so_far = "".join(seen[c] for c in sorted(seen))
      for op in s.ops:
        if op["kind"] == protocol.CREATE:
          assert _body(op["text"], titles) in read_so_far, (t.episode_id, s.index, op)
        elif op["kind"] == protocol.UPDATE:
          old = s.shown_memories[op["id"] - 1]
          assert op["text"].startswith(old), (t.episode_id, s.index, op)
          assert op["text"][len(old):].strip() in read_so_far, (t.episode_id, s.index, op)


@needs_data
@pytest.mark.parametrize("dataset", DATASETS)
def test_never_writes_supporting_sentences_it_was_not_shown(dataset, train_eps, test_tokenizer):
  """The supporting sentences are removed from the sections the environment shows (the
  episode's document still holds them): the teacher never writes them, nor notes their
  paragraphs, and answers all the same (the answer is its label)."""
  eng = _engine(test_tokenizer)
  blind = fx.blind_episodes(eng, train_eps[dataset])
  trajs = eng.run(blind, teacher_lib.RealDataTeacher()).trajectories
  for e, t in zip(blind, trajs):
    sentences = [s for lab in e.meta["supporting"] for _, s in lab["facts"]]
    assert all(s in e.document for s in sentences)  # present, but never shown
    for s in t.steps:
      for sentence in sentences:
        assert sentence[:30] not in s.response_text
      assert not any(op["kind"] == protocol.CREATE and op["text"].split(": ", 1)[0] in _titles(t)
                     for op in s.ops)
    assert t.scores["exact_match"] == 1.0
    assert teacher_lib.support_stats([t])["facts_held"] == 0.0


@needs_data
def test_inside_rendered_teacher_the_trajectory_is_exact_sft_data(train_eps, test_tokenizer):
  from atommem_jax.models import config as model_config

  mc = model_config.tiny("qwen3", vocab_size=max(512, len(test_tokenizer)),
                         eos_token_id=test_tokenizer.eos_token_id)
  student = pol.AtomMemPolicy(pol.LMClient(mc, test_tokenizer,
                                           pol.SamplingConfig(max_prompt_tokens=8192)))
  eps = train_eps["hotpotqa"][:2]
  bare = _engine(test_tokenizer).run(eps, teacher_lib.RealDataTeacher()).trajectories
  rendered = _engine(test_tokenizer).run(
      eps, pol.RenderedTeacher(teacher_lib.RealDataTeacher(), student)).trajectories
  im_end = test_tokenizer.convert_tokens_to_ids("<|im_end|>")
  for r, b in zip(rendered, bare):
    assert r.answers == b.answers and [s.ops for s in r.steps] == [s.ops for s in b.steps]
    for s, sb in zip(r.steps, b.steps):
      assert test_tokenizer.decode(s.prompt_ids, skip_special_tokens=False) == s.prompt_text
      assert test_tokenizer.decode(s.response_ids, skip_special_tokens=True) == s.response_text
      assert s.response_text == sb.response_text and s.applied_text == ""
      assert s.response_ids[-1] == im_end
      if s.phase == env_lib.READING:
        assert s.section in s.prompt_text
  assert student.lm.truncated_prompts == 0


# --- pure pieces --------------------------------------------------------------------------------

def test_cut_sentence_parts_are_found_at_the_section_edges():
  sentence = "Lilu is a masculine Akkadian word for a spirit."
  end = "Document 3:\nLilu\nLilu is a masculine Akk"
  assert teacher_lib.shown_prefix(end, sentence, 10) == "Lilu is a masculine Akk"
  assert teacher_lib.shown_prefix(end + "\ufffd", sentence, 10) == "Lilu is a masculine Akk"
  assert teacher_lib.shown_prefix(end, sentence, 30) is None  # too short to be worth a note
  assert teacher_lib.shown_prefix(sentence + " More.", sentence, 10) is None  # not a cut
  assert teacher_lib.shown_suffix("adian word for a spirit.\n\nDocument 4:", sentence, 10) == (
      "adian word for a spirit.")
  assert teacher_lib.shown_suffix("Another text entirely.", sentence, 10) is None
  assert teacher_lib.shown_paragraphs(
      "x.\n\nDocument 2:\nGallu\nGallu is a demon of the underworld. It is old.\n\n"
      "Document 3:\nLilu\nLilu is a spirit") == [("Gallu", "Gallu is a demon of the underworld.")]


def _traj(em: float, parse_errors=(), op_errors=()) -> Trajectory:
  step = StepRecord(index=0, phase="answering", chunk=0, question=0, prompt_text="",
                    response_text="", parse_errors=list(parse_errors), op_errors=list(op_errors))
  return Trajectory(episode_id=f"e{em}", method="atommem", questions=["q"], golds=[["a"]],
                    answers=["a"], steps=[step], scores={"exact_match": em, "f1": em})


def test_keep_successful_is_rejection_sampling_by_score():
  trajs = [_traj(1.0), _traj(0.0), _traj(1.0, parse_errors=["unclosed_tag"]),
           _traj(0.5, op_errors=["delete: bad_index"])]
  assert teacher_lib.keep_successful(trajs) == [trajs[0]]
  assert teacher_lib.keep_successful(trajs, clean=False) == [trajs[0], trajs[2]]
  assert teacher_lib.keep_successful(trajs, "f1", 0.5, clean=False) == [trajs[0], trajs[2],
                                                                       trajs[3]]
  with pytest.raises(ValueError, match="no score 'contains'"):
    teacher_lib.keep_successful(trajs, "contains")


def test_teacher_config_and_episode_labels_are_checked():
  with pytest.raises(ValueError, match="candidates"):
    teacher_lib.TeacherConfig(candidates=-1)
  with pytest.raises(ValueError, match="nothing_text"):
    teacher_lib.TeacherConfig(nothing_text="<add_memory>x</add_memory>")
  synthetic = env_lib.Episode("syn", ("q?",), (("a",),), "doc")
  with pytest.raises(ValueError, match="no per-question 'supporting' labels"):
    teacher_lib.facts_of(synthetic)


# --- the eval CLI ---------------------------------------------------------------------------------

@needs_data
def test_eval_cli_runs_the_teacher_without_a_model(tmp_path, test_tokenizer_dir):
  from atommem_jax.eval import config as cfg_lib
  from atommem_jax.eval import runner

  c = importlib.import_module("configs.eval_teacher").get_config()
  c.output_dir = str(tmp_path / "out")
  c.max_examples = 3
  c.embedder = "hashing"
  c.model.tokenizer = str(test_tokenizer_dir)
  c.data.dataset = "hotpotqa,musique"
  c.data.num_docs = "12"
  res = runner.evaluate(c, echo=lambda s: None)
  assert res["teacher"]["exact_match"] == 1.0 and res["teacher"]["n"] == 6
  rows = [json.loads(x) for x in (tmp_path / "out" / "trajectories.jsonl").read_text().splitlines()]
  assert {r["meta"]["dataset"] for r in rows} == {"hotpotqa", "musique"}
  c.data.dataset = "synthetic"
  with pytest.raises(cfg_lib.ConfigError, match="^methods: \\['teacher'\\] read real"):
    cfg_lib.validate(c)
  c.data.dataset, c.model.tokenizer = "hotpotqa", ""
  with pytest.raises(cfg_lib.ConfigError, match="^model.tokenizer: model.source='none'"):
    cfg_lib.validate(c)
