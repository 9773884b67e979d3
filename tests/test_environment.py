"""Step semantics of the chunk-stream environment (official AtomMem rules + our fixes)."""
from __future__ import annotations

import dataclasses

import pytest

from atommem_jax.agent import environment as env


@dataclasses.dataclass
class _Op:
  kind: str
  text: str = ""
  id: int | None = None


@dataclasses.dataclass
class _Step:
  ops: tuple = ()
  answer: str | None = None
  errors: tuple = ()


def S(*kinds, answer=None):
  return _Step(ops=tuple(_Op(k) for k in kinds), answer=answer)


def test_chunk_windows_overlap_both_sides_and_cover_document():
  w = env.chunk_windows(1050, 400, 100)
  assert w == [(0, 500), (300, 900), (700, 1050)]
  assert env.chunk_windows(0, 400, 100) == [(0, 0)]  # an empty document is one empty section
  covered = set()
  for a, b in w:
    covered.update(range(a, b))
  assert covered == set(range(1050))


@pytest.mark.parametrize("kinds,advances", [
    ((), True),  # tagless response: the stream moves on (official behaviour)
    (("create",), True),
    (("update",), True),
    (("scratchpad", "create", "read"), True),
    (("scratchpad",), False),  # scratchpad only: same section again
    (("read",), False),  # a query change: same section with new results
    (("delete",), False),
    (("scratchpad", "read"), False),
])
def test_reading_advances_only_on_create_update_or_tagless(kinds, advances):
  c = env.new_cursor(3, 1, env.EnvConfig(max_calls=10))
  c2, ev = env.step(c, S(*kinds))
  assert ev.advanced == advances
  assert c2.chunk == (1 if advances else 0)
  assert c2.calls == 1 and c2.phase == env.READING


def test_every_step_rule_always_advances():
  c = env.new_cursor(2, 1, env.EnvConfig(max_calls=10, advance="every_step"))
  c, ev = env.step(c, S("scratchpad"), advance_rule="every_step")
  assert ev.advanced and c.chunk == 1
  with pytest.raises(ValueError, match="advance"):
    env.EnvConfig(advance="sometimes")


def test_query_times_count_per_section_and_reset_on_advance():
  c = env.new_cursor(2, 1, env.EnvConfig(max_calls=10))
  c, _ = env.step(c, S("read"))
  c, _ = env.step(c, S("read", "read"))
  assert c.query_times == 3 and c.chunk == 0
  c, _ = env.step(c, S("create"))
  assert c.query_times == 0 and c.chunk == 1


def test_answering_phase_multi_question_and_query_limit():
  cfg = env.EnvConfig(max_calls=50, max_query_times=3)
  c = env.new_cursor(1, 3, cfg)
  c, _ = env.step(c, S("create"))
  assert c.phase == env.ANSWERING
  c, ev = env.step(c, S(answer="Paris"))
  assert ev.answered == 0 and c.question == 1
  for _ in range(3):  # three query changes are allowed ...
    c, ev = env.step(c, S("read"))
    assert ev.skipped is None and c.question == 1
  c, ev = env.step(c, S("read"))  # ... the fourth skips the question
  assert ev.skipped == 1 and c.question == 2 and c.query_times == 0
  c, ev = env.step(c, S("read", answer="42"))  # query then answer in one response
  assert ev.answered == 2 and c.done
  assert c.final_answers() == ("Paris", None, "42")


def test_premature_answer_is_ignored_and_flagged():
  c = env.new_cursor(2, 1, env.EnvConfig(max_calls=10))
  c, ev = env.step(c, S("scratchpad", answer="x"))
  assert ev.premature_answer and c.question == 0 and c.chunk == 0


def test_call_budget_official_mode_ends_episode_and_unanswered_are_none():
  c = env.new_cursor(5, 2, env.EnvConfig(max_calls=3, answer_after_budget=False))
  for _ in range(3):
    c, _ = env.step(c, S("read"))
  assert c.done and c.reading_cut and c.final_answers() == (None, None)
  with pytest.raises(ValueError, match="finished episode"):
    env.step(c, S())


def test_call_budget_spent_while_reading_moves_to_answering():
  cfg = env.EnvConfig(max_calls=3, max_query_times=1)
  c = env.new_cursor(5, 2, cfg)
  for _ in range(3):
    c, _ = env.step(c, S("create"))
  assert c.chunk == 3 and c.reading_cut and c.phase == env.ANSWERING and c.unread_sections == 2
  c, ev = env.step(c, S(answer="a"))
  assert ev.answered == 0 and c.phase == env.ANSWERING
  c, _ = env.step(c, S("read"))  # one query change allowed, then the answer
  c, ev = env.step(c, S(answer="b"))
  assert ev.answered == 1 and c.done and c.final_answers() == ("a", "b")


def test_answering_allowance_is_bounded():
  cfg = env.EnvConfig(max_calls=2, max_query_times=1)
  c = env.new_cursor(5, 1, cfg)
  n = 0
  while not c.done:
    c, _ = env.step(c, S("scratchpad"))  # never advances, never answers
    n += 1
  assert n == cfg.max_calls + cfg.answer_budget(1) == 4
  assert c.final_answers() == (None,)


def test_answer_budget_only_when_reading_was_cut():
  """An episode that read every section within the budget answers within the budget: the
  extra answering calls exist only for an episode whose reading the budget cut short."""
  cfg = env.EnvConfig(max_calls=4, max_query_times=3)
  c = env.new_cursor(2, 1, cfg)
  for _ in range(2):
    c, _ = env.step(c, S("create"))
  assert c.phase == env.ANSWERING and not c.reading_cut
  n = 0
  while not c.done:
    c, _ = env.step(c, S("scratchpad"))  # never answers
    n += 1
  assert n == 2 and c.calls == cfg.max_calls  # not max_calls + answer_budget
  # Reading that ends exactly on the last budgeted call spent the budget reading: answers
  # still get their calls.
  c = env.new_cursor(2, 1, env.EnvConfig(max_calls=2))
  for _ in range(2):
    c, _ = env.step(c, S("create"))
  assert c.unread_sections == 0 and c.reading_cut and c.phase == env.ANSWERING


def test_automatic_budget_and_config_validation():
  assert env.EnvConfig(max_calls=0).call_budget(4, 2) == 2 * 4 + 4 * 2
  with pytest.raises(ValueError, match="overlap"):
    env.EnvConfig(chunk_size=100, overlap=100)
  with pytest.raises(ValueError, match="chunk_size"):
    env.EnvConfig(chunk_size=0)


def test_episode_validation():
  with pytest.raises(ValueError, match="no questions"):
    env.Episode("e", (), (), "doc")
  with pytest.raises(ValueError, match="gold"):
    env.Episode("e", ("q",), (), "doc")
  with pytest.raises(ValueError, match="question 1 is blank"):
    env.Episode("e", ("q", " \n "), (("a",), ("b",)), "doc")


def test_episode_questions_are_whitespace_normalised():
  """Real HotpotQA has questions with a leading space; a question doubles as a Read query,
  which the protocol stores stripped, so the two must agree."""
  e = env.Episode("e", (" Who was born\nearlier,  A or B? ",), (("A",),), "doc")
  assert e.questions == ("Who was born earlier, A or B?",)
