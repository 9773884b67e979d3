"""The privileged MemAgent-style teacher (agent/memagent_teacher.py) on real train episodes.

Real train records from ../shared/data (skipped where absent), own paragraphs only, cut into
192-token sections without overlap with the local test tokenizer, so that sentences
straddle sections and the sections shown so far, joined, are the document read so far.
Every run goes through the real `RolloutEngine` with the `memagent` rollout config
(`build.rollout_config`: only `<update_memory>` is applied) and the hashing embedder.
"""
from __future__ import annotations

import pathlib

import pytest

from atommem_jax import protocol
from atommem_jax.agent import build
from atommem_jax.agent import environment as env_lib
from atommem_jax.agent import episodes as ep_lib
from atommem_jax.agent import memagent_teacher as mt
from atommem_jax.agent import policies as pol
from atommem_jax.agent import teacher as teacher_lib
from atommem_jax.agent.rollout import RolloutEngine
from atommem_jax.agent.trajectory import Trajectory
from atommem_jax.data.metrics import score_all
from atommem_jax.memory.embedder import HashingEmbedder
from configs import common
from tests import _data_fixtures as fx

DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "hotpotqa").is_dir(), reason=f"no {DATA}")
DATASETS = ("hotpotqa", "2wiki", "musique")
BUDGET = 1000  # configs/common.py max_memory_chars
TIGHT = 160  # smaller than most pairs of supporting sentences


def _engine(tokenizer, chunk_size=192, overlap=0) -> RolloutEngine:
  c = common.base()
  c.env.chunk_size, c.env.overlap, c.env.max_calls = chunk_size, overlap, 0
  c.memory.capacity, c.memory.top_k = 64, 6
  cfg = build.rollout_config(c, "memagent", 128)
  assert cfg.allowed_ops == (protocol.SCRATCHPAD,)
  return RolloutEngine(cfg, tokenizer, HashingEmbedder(dim=128).embed, score_all)


def _teacher(budget: int = BUDGET) -> mt.MemAgentTeacher:
  return mt.make_memagent_teacher(max_chars=budget)


@pytest.fixture(scope="module")
def train_eps():
  """3 train questions per dataset, each with its own paragraphs only."""
  return {d: ep_lib.train_episodes(d, DATA, num_docs=0, max_examples=3) for d in DATASETS}


@pytest.fixture(scope="module")
def runs(train_eps, test_tokenizer):
  eng = _engine(test_tokenizer)
  return {(d, budget): eng.run(eps, _teacher(budget)).trajectories
          for d, eps in train_eps.items() for budget in (BUDGET, TIGHT)}


def _facts(t: Trajectory) -> list[tuple[str, str]]:
  return [(title, s) for lab in t.meta["supporting"] for title, s in lab["facts"]]


def _lines(pad: str) -> list[str]:
  return [x for x in pad.split("\n") if x]


def _made_of_shown_text(line: str, read: str) -> bool:
  """"Title: text" with both the title and the text in the document read so far (a title
  may itself hold ": ", so every split is tried)."""
  at = line.find(": ")
  while at != -1:
    if line[:at] in read and line[at + 2:] in read:
      return True
    at = line.find(": ", at + 1)
  return False


# --- the teacher ---------------------------------------------------------------------------------

@needs_data
@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("budget", (BUDGET, TIGHT))
def test_replies_parse_and_the_scratchpad_keeps_the_budget(dataset, budget, runs):
  for t in runs[dataset, budget]:
    assert t.method == mt.NAME and t.op_counts["unread_sections"] == 0
    assert t.answers == [g[0] for g in t.golds] and t.scores["exact_match"] == 1.0
    for s in t.steps:
      parsed = protocol.parse(s.response_text)
      assert parsed.errors == () and not s.parse_errors and not s.op_errors, s.response_text
      assert 0 < len(s.scratchpad_after) <= budget
      if s.phase == env_lib.READING:  # exactly the reply the memagent step prompt asks for
        assert [op["kind"] for op in s.ops] == [protocol.SCRATCHPAD] and parsed.answer is None
        assert s.response_text == f"<update_memory>{s.scratchpad_after}</update_memory>"
        assert s.events["advanced"]
      else:  # the answer prompt's form, read by environment.answer_of
        assert s.ops == [] and s.response_text == f"<final_answer>\\boxed{{{s.answer}}}" \
            "</final_answer>"
    assert t.final_memory["entries"] == []  # no long-term store


@needs_data
@pytest.mark.parametrize("dataset", DATASETS)
def test_final_scratchpad_holds_every_supporting_sentence_shown(dataset, runs):
  for t in runs[dataset, BUDGET]:
    pad = t.final_memory["scratchpad"]
    lines = _lines(pad)
    for title, sentence in _facts(t):  # all shown: the whole document is read
      assert f"{title}: {sentence.strip()}" in lines, (t.episode_id, title, sentence, pad)
    titles = {title for title, _ in _facts(t)}
    if len(titles) > 1:  # "Still need" went once everything was held
      assert not any(x.startswith(mt.STILL_NEED) for x in lines)
    leads = [x for x in lines if x.split(": ", 1)[0] not in titles]
    assert leads == []  # leads are dropped once a fact is found


@needs_data
def test_sentences_cut_by_a_section_boundary_are_noted_then_completed(runs):
  cut = 0
  for t in (t for d in DATASETS for t in runs[d, BUDGET]):
    whole = {f"{title}: {s.strip()}" for title, s in _facts(t)}
    titles = {title for title, _ in _facts(t)}
    for s in t.steps:
      for x in _lines(s.scratchpad_after):
        if x.split(": ", 1)[0] in titles and x not in whole:  # the part shown before the cut
          cut += 1
          assert any(w.startswith(x) and w in _lines(t.final_memory["scratchpad"])
                     for w in whole), x
  assert cut > 0


@needs_data
def test_still_need_and_leads_are_written_along_the_way(runs):
  trajs = [t for d in DATASETS for t in runs[d, BUDGET]]
  pads = [s.scratchpad_after for t in trajs for s in t.steps]
  assert any(mt.STILL_NEED in p for p in pads)
  leads = 0
  for t in trajs:  # only titles the labels name as still missing
    titles = {title for title, _ in _facts(t)}
    for s in t.steps:
      for x in _lines(s.scratchpad_after):
        if x.startswith(mt.STILL_NEED):
          assert set(x[len(mt.STILL_NEED):].strip().rstrip(".").split("; ")) <= titles
        elif x != mt.MemAgentTeacherConfig.empty_text and x.split(": ", 1)[0] not in titles:
          leads += 1  # a lead: a non-supporting paragraph that echoes the question
  assert leads > 0


@needs_data
def test_over_budget_it_drops_the_oldest_facts_first(runs):
  """Fact lines (supporting titles) that leave the scratchpad are always its oldest ones
  (a line completed or cut to fit stays the same fact), and a fact once dropped never
  comes back."""
  dropped_any = 0
  for t in (t for d in DATASETS for t in runs[d, TIGHT]):
    titles = {title for title, _ in _facts(t)}
    prev: list[str] = []
    gone: list[str] = []
    for s in t.steps:
      lines = [x for x in _lines(s.scratchpad_after) if x.split(": ", 1)[0] in titles]
      kept = [any(y.startswith(x) or x.startswith(y) for y in lines) for x in prev]
      n_dropped = kept.count(False)
      assert kept == [False] * n_dropped + [True] * (len(prev) - n_dropped), (prev, lines)
      gone += prev[:n_dropped]
      assert not any(y.startswith(x) or x.startswith(y) for x in gone for y in lines)
      dropped_any += n_dropped
      prev = lines
  assert dropped_any > 0  # the tight budget did drop facts


@needs_data
@pytest.mark.parametrize("budget", (BUDGET, TIGHT))
def test_everything_written_was_shown_at_or_before_that_step(budget, runs):
  """No overlap: the sections shown so far, joined, are the document read so far; every
  line of every scratchpad but the "Still need" / nothing-yet lines is "Title: text" with
  both parts in it."""
  empty = mt.MemAgentTeacherConfig.empty_text
  for t in (t for d in DATASETS for t in runs[d, budget]):
    seen: dict[int, str] = {}
    for s in t.steps:
      if s.phase == env_lib.READING:
        seen[s.chunk] = s.section
      read_so_far = "".join(seen[c] for c in sorted(seen))
      for x in _lines(s.scratchpad_after):
        if x.startswith(mt.STILL_NEED) or x == empty:
          continue
        assert _made_of_shown_text(x, read_so_far), (t.episode_id, s.index, x)


@needs_data
@pytest.mark.parametrize("dataset", DATASETS)
def test_never_writes_supporting_sentences_it_was_not_shown(dataset, train_eps, test_tokenizer):
  """The supporting sentences are removed from the sections the environment shows (the
  episode's document still holds them): the teacher never writes them nor notes their
  paragraphs, and answers all the same (the answer is its label)."""
  eng = _engine(test_tokenizer)
  blind = fx.blind_episodes(eng, train_eps[dataset])
  trajs = eng.run(blind, _teacher()).trajectories
  for e, t in zip(blind, trajs):
    facts = _facts(t)
    assert all(s in e.document for _, s in facts)  # present, but never shown
    titles = {title for title, _ in facts}
    for s in t.steps:
      assert not s.parse_errors and not s.op_errors
      for _, sentence in facts:
        assert sentence[:30] not in s.response_text
      for x in _lines(s.scratchpad_after):
        assert x.split(": ", 1)[0] not in titles and not x.startswith(mt.STILL_NEED), x
    assert t.scores["exact_match"] == 1.0


@needs_data
def test_inside_rendered_teacher_the_trajectory_is_exact_memagent_sft_data(train_eps,
                                                                          test_tokenizer):
  from atommem_jax.models import config as model_config

  mc = model_config.tiny("qwen3", vocab_size=max(512, len(test_tokenizer)),
                         eos_token_id=test_tokenizer.eos_token_id)
  student = pol.MemAgentPolicy(pol.LMClient(mc, test_tokenizer,
                                            pol.SamplingConfig(max_prompt_tokens=8192)))
  eps = train_eps["hotpotqa"][:2]
  bare = _engine(test_tokenizer).run(eps, _teacher()).trajectories
  wrapped = pol.RenderedTeacher(_teacher(), student)
  assert wrapped.name == mt.NAME and wrapped.advance_rule == "every_step"
  rendered = _engine(test_tokenizer).run(eps, wrapped).trajectories
  im_end = test_tokenizer.convert_tokens_to_ids("<|im_end|>")
  for r, b in zip(rendered, bare):
    assert r.answers == b.answers and [s.ops for s in r.steps] == [s.ops for s in b.steps]
    assert r.final_memory["scratchpad"] == b.final_memory["scratchpad"]
    before = "(empty)"
    for s, sb in zip(r.steps, b.steps):
      assert test_tokenizer.decode(s.prompt_ids, skip_special_tokens=False) == s.prompt_text
      assert test_tokenizer.decode(s.response_ids, skip_special_tokens=True) == s.response_text
      assert s.response_text == sb.response_text and s.applied_text == ""
      assert s.response_ids[-1] == im_end
      assert before in s.prompt_text  # the memagent prompts show the scratchpad
      if s.phase == env_lib.READING:
        assert s.section in s.prompt_text and "<update_memory>" in s.prompt_text
        before = s.scratchpad_after
      else:
        assert "\\boxed{short answer}" in s.prompt_text
  assert student.lm.truncated_prompts == 0


# --- pure pieces ---------------------------------------------------------------------------------

def _episode(sections: tuple[str, ...]) -> env_lib.Episode:
  facts = [["Gallu", "Gallu is a demon of the Mesopotamian underworld."],
           ["Lilu", "Lilu is a masculine Akkadian word for a spirit of the storm."]]
  meta = {"supporting": [{"id": "x", "titles": ["Gallu", "Lilu"], "facts": facts,
                          "hops": []}]}
  return env_lib.Episode("hand", ("Which spirit was a demon of the underworld?",), (("Gallu",),),
                         "".join(sections), meta=meta, sections=sections)


SECTIONS = ("Document 1:\nUtukku\nUtukku is a spirit of the underworld in Sumerian myth.\n\n",
            "Document 2:\nGallu\nGallu is a demon of the Mesopotamian underworld. Old.\n\n",
            "Document 3:\nLilu\nLilu is a masculine Akkad",
            "ian word for a spirit of the storm. More text.")
LEAD = "Utukku: Utukku is a spirit of the underworld in Sumerian myth."
GALLU = "Gallu: Gallu is a demon of the Mesopotamian underworld."
LILU = "Lilu: Lilu is a masculine Akkadian word for a spirit of the storm."


def _pads(tokenizer, budget: int) -> list[str]:
  t = _engine(tokenizer).run([_episode(SECTIONS)], _teacher(budget)).trajectories[0]
  assert t.answers == ["Gallu"] and not any(s.parse_errors for s in t.steps)
  return [s.scratchpad_after for s in t.steps if s.phase == env_lib.READING]


def test_leads_still_need_and_a_cut_sentence_completed_from_the_next_section(test_tokenizer):
  assert _pads(test_tokenizer, BUDGET) == [
      LEAD,  # a lead before the first fact
      f"{GALLU}\nStill need: Lilu.",  # the lead dropped, the missing paragraph named
      f"{GALLU}\nLilu: Lilu is a masculine Akkad",  # the part shown before the cut
      f"{GALLU}\n{LILU}"]  # completed from the next section's start


def test_a_cut_sentence_is_completed_across_an_overlap(test_tokenizer):
  """The next section starts inside the sentence but before the cut (overlapping windows
  shorter than the sentence): the part noted and the rest shown now cover it."""
  sections = SECTIONS[:3] + ("masculine Akkadian word for a spirit of the storm. More text.",)
  t = _engine(test_tokenizer).run([_episode(sections)], _teacher()).trajectories[0]
  assert t.final_memory["scratchpad"] == f"{GALLU}\n{LILU}"


def test_the_budget_drops_leads_then_still_need_then_the_oldest_facts(test_tokenizer):
  assert _pads(test_tokenizer, 70) == [
      LEAD, GALLU, "Lilu: Lilu is a masculine Akkad", LILU]
  # Too small for anything but one cut fact: the prefix of the newest that fits.
  assert _pads(test_tokenizer, 40) == [
      mt.MemAgentTeacherConfig.empty_text, "Gallu: Gallu is a demon of the",
      "Lilu: Lilu is a masculine Akkad", "Lilu: Lilu is a masculine Akkadian word"]


def test_config_is_checked_and_the_scratchpad_must_be_its_own():
  with pytest.raises(ValueError, match="max_chars"):
    mt.MemAgentTeacherConfig(max_chars=protocol.DEFAULT_MAX_CHARS + 1)
  with pytest.raises(ValueError, match="empty_text"):
    mt.MemAgentTeacherConfig(empty_text="<update_memory>x</update_memory>")
  assert mt.make_memagent_teacher(300).config.max_chars == 300
  with pytest.raises(ValueError, match="no per-question 'supporting' labels"):
    teacher_lib.facts_of(env_lib.Episode("syn", ("q?",), (("a",),), "doc"))
