"""One answer extraction for every method: an untagged answering reply is the answer."""
from __future__ import annotations

import dataclasses

from atommem_jax import protocol
from atommem_jax.agent import environment as env_lib
from atommem_jax.agent import policies as pol
from atommem_jax.agent.rollout import Action

from test_rollout import EP, _engine


class StubEncoder:
  def encode(self, messages):
    return str(messages), []


class StubLM:
  """Stands in for LMClient: answers every prompt with the same free text, no tags."""

  sampling = pol.SamplingConfig(max_new_tokens=8, max_answer_tokens=8)
  encoder = StubEncoder()

  def __init__(self, reply: str):
    self.reply, self.calls = reply, 0

  def complete(self, params, prompts, max_new_tokens, stop_strings=()):
    self.calls += 1
    return [Action(text=self.reply) for _ in prompts]


def test_untagged_reply_is_the_answer_and_asked_once():
  lm = StubLM("I think it is \\boxed{Paris}.")
  [t] = _engine().run([EP], pol.RAGPolicy(lm)).trajectories
  assert t.answers == ["Paris"] and t.scores["exact_match"] == 1.0
  assert lm.calls == 1  # reading is scripted; one answering call, not one per remaining budget
  answering = [s for s in t.steps if s.phase == env_lib.ANSWERING and not s.events["scripted"]]
  assert len(answering) == 1 and answering[0].parse_errors == []
  assert answering[0].response_text == lm.reply  # the model's text is kept as written
  assert answering[0].events["untagged_answer"] and t.op_counts["untagged_answers"] == 1


def test_answer_rule_is_the_same_for_every_method():
  """`answer_of`: the tag wins; an untagged reply answers with its boxed content or text;
  a reply with other tags, or blank, does not answer."""
  cases = {"<final_answer>\\boxed{Rome}</final_answer>": ("Rome", False),
           "Paris": ("Paris", True), "so \\boxed{Oslo} it is": ("Oslo", True),
           "   ": (None, False), "<update_query>capital</update_query>": (None, False)}
  for text, want in cases.items():
    assert env_lib.answer_of(protocol.parse(text)) == want, text
  # AtomMem follows the same rule: a prompted model that forgets the tag still answers.
  c = env_lib.Cursor(num_chunks=0, num_questions=1, call_budget=3)
  c, ev = env_lib.step(c, protocol.parse("Paris"))
  assert c.answers == ("Paris",) and ev.untagged_answer and c.done


def test_static_baselines_run_questions_with_stray_whitespace():
  """A real HotpotQA question starts with a space; RAG's scripted Read of the question used
  to fail the protocol's round-trip check and crash the evaluation."""
  ep = dataclasses.replace(EP, questions=(" " + EP.questions[0] + "\n",))
  for policy in (pol.RAGPolicy(StubLM("\\boxed{Paris}")),
                 pol.StaticSummaryPolicy(StubLM("\\boxed{Paris}"))):
    [t] = _engine().run([ep], policy).trajectories
    assert t.answers == ["Paris"], policy.name


def test_static_summary_keeps_the_model_text_and_applies_its_interpretation():
  policy = pol.StaticSummaryPolicy(StubLM("Notes: <b>Paris</b> is the capital"))
  [t] = _engine().run([EP], policy).trajectories
  first = t.steps[0]
  assert first.response_text == "Notes: <b>Paris</b> is the capital"
  assert first.applied_text.startswith("<add_memory>") and first.ops[0]["kind"] == "create"
