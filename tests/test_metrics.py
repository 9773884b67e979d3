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


def test_score_all_side_by_side():
  s = m.score_all("It is Paris", ["Paris"])
  assert s == {"exact_match": 0.0, "f1": pytest.approx(2 * (1 / 3) / (1 / 3 + 1)),
               "sub_em": 1.0, "precision": pytest.approx(1 / 3), "recall": 1.0}
  mean = m.mean_scores(["Paris", "x"], [["Paris"], ["y"]])
  assert mean["exact_match"] == 0.5 and mean["sub_em"] == 0.5
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


def test_extract_answer_falls_back_to_text():
  assert m.extract_answer("  plain  ") == "plain"
  assert m.extract_answer("x \\boxed{y}") == "y"
