"""Known-answer tests of the official-style QA metrics."""
from __future__ import annotations

import pytest

from atommem_jax.data import metrics as m


@pytest.mark.parametrize("text,expected", [
    ("The Beatles!", "beatles"),
    ("  an   Apple, a day ", "apple day"),
    ("U.S.A.", "usa"),
    ("Theater", "theater"),  # "the" only as a whole word
    ("", ""),
])
def test_normalize_answer(text, expected):
  assert m.normalize_answer(text) == expected


def test_exact_match_articles_punctuation_case():
  assert m.exact_match("the Eiffel Tower.", "Eiffel tower") == 1.0
  assert m.exact_match("Eiffel", "Eiffel Tower") == 0.0


def test_f1_partial_overlap_values():
  # pred tokens [new, york, city], gold [new, york]: p = 2/3, r = 1, f1 = 0.8
  p, r, f1 = m.precision_recall_f1("New York City", "New York")
  assert p == pytest.approx(2 / 3) and r == 1.0 and f1 == pytest.approx(0.8)
  assert m.f1_score("Paris", "London") == 0.0


def test_yes_no_noanswer_rule():
  # Token overlap would give "no" vs "no way" an F1 of 2/3; the official rule gives 0.
  assert m.f1_score("no", "no way") == 0.0
  assert m.f1_score("no way", "no") == 0.0
  assert m.f1_score("yes", "Yes.") == 1.0
  assert m.exact_match("noanswer", "noanswer") == 1.0
  assert m.f1_score("yes", "no") == 0.0


def test_best_over_aliases():
  golds = ["Robert", "Bob Smith"]
  assert m.exact_match("bob smith", golds) == 1.0
  assert m.f1_score("Bob", golds) == pytest.approx(2 / 3)  # best alias: "bob smith"
  p, r, f1 = m.precision_recall_f1("Bob", golds)
  assert (p, r) == (1.0, 0.5)


def test_empty_strings():
  assert m.exact_match("", "Paris") == 0.0
  assert m.f1_score("", "Paris") == 0.0
  assert m.sub_em("", "Paris") == 0.0  # "" is a substring of everything: must not count
  assert m.exact_match("", "") == 1.0 and m.f1_score("", "") == 1.0
  assert m.exact_match(None, "x") == 0.0
  with pytest.raises(ValueError, match="empty list"):
    m.exact_match("x", [])
  with pytest.raises(ValueError, match="must be a str"):
    m.f1_score(3, "x")


def test_sub_em_both_directions():
  assert m.sub_em("The answer is Paris, France", "Paris") == 1.0
  assert m.sub_em("Paris", "Paris, France") == 1.0
  assert m.sub_em("Lyon", "Paris") == 0.0


@pytest.mark.parametrize("pred,golds,expected", [
    ("no", "Norway", 0.0),  # the cases bidirectional sub-EM gets wrong
    ("Norway", "no", 0.0),
    ("s", "Rush", 0.0),
    ("Rush", "s", 0.0),
    ("the band Rush", "Rush", 1.0),
    ("Rush", "The Rush!", 1.0),  # articles and punctuation are normalised away
    ("New York City", "New York", 1.0),  # contiguous tokens
    ("New York", "New York City", 0.0),  # a prediction shorter than the gold
    ("York New", "New York", 0.0),  # order matters
    ("New big York", "New York", 0.0),  # contiguity matters
    ("Rushmore", "Rush", 0.0),  # whole tokens only
    ("It was Rush.", ["Genesis", "Rush"], 1.0),  # best over golds
    ("", "Rush", 0.0),  # an empty side never matches a non-empty one
    ("Rush", "...", 0.0),
    ("", "", 1.0),
    ("no, it was not", "no", 1.0),
    ("yes or no", "no", 0.0),  # hedging between yes and no earns nothing
    ("Yes.", ["yes"], 1.0),
])
def test_contains_match_known_cases(pred, golds, expected):
  assert m.contains_match(pred, golds) == expected


def test_contains_is_stricter_than_sub_em():
  for pred, gold in (("no", "Norway"), ("s", "Rush"), ("Norway", "no")):
    assert m.sub_em(pred, gold) == 1.0 and m.contains_match(pred, gold) == 0.0
  with pytest.raises(ValueError, match="empty list"):
    m.contains_match("x", [])


def test_score_all_side_by_side():
  s = m.score_all("It is Paris", ["Paris"])
  assert s == {"exact_match": 0.0, "f1": pytest.approx(2 * (1 / 3) / (1 / 3 + 1)),
               "contains": 1.0, "sub_em": 1.0, "precision": pytest.approx(1 / 3), "recall": 1.0}
  mean = m.mean_scores(["Paris", "x", "Parisian"], [["Paris"], ["y"], ["Paris"]])
  assert mean["exact_match"] == pytest.approx(1 / 3) and mean["sub_em"] == pytest.approx(2 / 3)
  assert mean["contains"] == pytest.approx(1 / 3)
  with pytest.raises(ValueError, match="2 predictions vs 1"):
    m.mean_scores(["a", "b"], [["a"]])


@pytest.mark.parametrize("text,expected", [
    ("<final_answer>\\boxed{Paris}</final_answer>", "Paris"),
    ("\\boxed{a} then \\boxed{ {b} c }", "{b} c"),  # last box; nested braces kept
    ("\\boxed{good} and \\boxed{broken", "good"),  # unbalanced last box: earlier one
    ("no box here", None),
])
def test_extract_boxed(text, expected):
  assert m.extract_boxed(text) == expected


def test_extract_boxed_is_the_protocol_one():
  from atommem_jax import protocol

  assert m.extract_boxed is protocol.extract_boxed


def test_extract_answer_falls_back_to_text():
  assert m.extract_answer("  plain  ") == "plain"
  assert m.extract_answer("x \\boxed{y}") == "y"
