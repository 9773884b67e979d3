"""Baselines take an untagged answering reply as the answer (no repeated calls)."""
from __future__ import annotations

from atommem_jax.agent import environment as env_lib
from atommem_jax.agent import policies as pol
from atommem_jax.agent.rollout import Action

from test_rollout import EP, _engine


class StubLM:
  """Stands in for LMClient: answers every answering prompt with free text, no tags."""

  sampling = pol.SamplingConfig(max_new_tokens=8, max_answer_tokens=8)

  def __init__(self, reply: str):
    self.reply, self.calls = reply, 0

  def complete(self, chats, max_new_tokens, stop_strings=()):
    self.calls += 1
    return [Action(text=self.reply) for _ in chats]


def test_untagged_reply_is_the_answer_and_asked_once():
  lm = StubLM("I think it is \\boxed{Paris}.")
  [t] = _engine().run([EP], pol.RAGPolicy(lm))
  assert t.answers == ["Paris"] and t.scores["exact_match"] == 1.0
  assert lm.calls == 1  # reading is scripted; one answering call, not one per remaining budget
  answering = [s for s in t.steps if s.phase == env_lib.ANSWERING and not s.events["scripted"]]
  assert len(answering) == 1 and answering[0].parse_errors == []


def test_plain_text_reply_and_tagged_reply():
  assert pol.answer_text("Paris") == "<final_answer>\\boxed{Paris}</final_answer>"
  tagged = "<final_answer>\\boxed{Rome}</final_answer>"
  assert pol.answer_text(tagged) == tagged
  assert "(no answer)" in pol.answer_text("   ")


def test_static_baselines_run_questions_with_stray_whitespace():
  """A real HotpotQA question starts with a space; RAG's scripted Read of the question used
  to fail the protocol's round-trip check and crash the evaluation."""
  import dataclasses
  ep = dataclasses.replace(EP, questions=(" " + EP.questions[0] + "\n",))
  for policy in (pol.RAGPolicy(StubLM("\\boxed{Paris}")),
                 pol.StaticSummaryPolicy(StubLM("\\boxed{Paris}"))):
    [t] = _engine().run([ep], policy)
    assert t.answers == ["Paris"], policy.name
