"""Answer metrics: exact match, token F1 (precision, recall), strict containment and sub-EM,
best over aliases.

Normalisation and the yes/no/noanswer rule follow the official HotpotQA evaluation script
(itself SQuAD v1.1's normaliser): lower case, strip punctuation, drop the articles a/an/the,
collapse whitespace. If either side normalises to "yes", "no" or "noanswer" and the two differ,
F1/precision/recall are 0 (token overlap must not reward "no" vs "yes, ...").

Empty strings: an empty prediction scores 0 against a non-empty gold. Both sides empty after
normalisation is EM 1 and F1 1 (SQuAD v2 convention; the HotpotQA script would give F1 0 since it
never sees empty golds). A gold list must not be empty (ValueError): scoring against nothing is
a bug upstream, not a zero.

`contains` (`contains_match`) is the strict containment metric: the normalised gold occurs in the
normalised prediction as whole, contiguous tokens ("the band Rush" contains "Rush"; "Norway"
does not contain "no", "Rush" does not contain "s"). A yes/no/noanswer gold must not share the
prediction with another of those words ("yes or no" does not contain "no"), so hedging between
the two answers of a comparison question earns nothing. It still rewards an answer padded with
extra words, so a training reward built on it should keep a length or format term beside it.

`sub_em` is MemAgent's lenient "accuracy", kept under its name so our tables compare with
published ones: the normalised gold is a *character* substring of the normalised prediction or
vice versa (an empty side never matches a non-empty one). It counts "no" vs "Norway" and "s" vs
"Rush" as correct, so a policy can game it with short or long fragments: it must never be a
training reward (use `exact_match`, `f1` or `contains`).
"""
from __future__ import annotations

import collections
import re
import string
from typing import Sequence

from atommem_jax.protocol import extract_boxed  # the one boxed extractor, re-exported here

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = frozenset(string.punctuation)
_SPECIAL = ("yes", "no", "noanswer")


def normalize_answer(text: str) -> str:
  """Official HotpotQA/SQuAD normalisation (order: lower, punctuation, articles, whitespace)."""
  text = text.lower()
  text = "".join(ch for ch in text if ch not in _PUNCT)
  text = _ARTICLES.sub(" ", text)
  return " ".join(text.split())


def _golds(golds: str | Sequence[str]) -> list[str]:
  if isinstance(golds, str):
    return [golds]
  golds = list(golds)
  if not golds:
    raise ValueError("golds: empty list of gold answers")
  for g in golds:
    if not isinstance(g, str):
      raise ValueError(f"golds: every gold answer must be a str, got {type(g).__name__}")
  return golds


def _check_pred(prediction: str) -> str:
  if prediction is None:
    return ""
  if not isinstance(prediction, str):
    raise ValueError(f"prediction must be a str or None, got {type(prediction).__name__}")
  return prediction


def _prf_single(pred_norm: str, gold_norm: str) -> tuple[float, float, float]:
  """(f1, precision, recall) of one normalised prediction against one normalised gold."""
  if not pred_norm or not gold_norm:
    v = float(pred_norm == gold_norm)
    return v, v, v
  if (pred_norm in _SPECIAL or gold_norm in _SPECIAL) and pred_norm != gold_norm:
    return 0.0, 0.0, 0.0
  p_toks, g_toks = pred_norm.split(), gold_norm.split()
  same = sum((collections.Counter(p_toks) & collections.Counter(g_toks)).values())
  if same == 0:
    return 0.0, 0.0, 0.0
  precision = same / len(p_toks)
  recall = same / len(g_toks)
  return 2 * precision * recall / (precision + recall), precision, recall


def precision_recall_f1(prediction: str, golds: str | Sequence[str]) -> tuple[float, float, float]:
  """(precision, recall, f1) of the alias with the best F1 (ties: the first such alias)."""
  pred = normalize_answer(_check_pred(prediction))
  best = max((_prf_single(pred, normalize_answer(g)) for g in _golds(golds)),
             key=lambda t: t[0])
  f1, p, r = best
  return p, r, f1


def exact_match(prediction: str, golds: str | Sequence[str]) -> float:
  """1.0 if the normalised prediction equals any normalised gold, else 0.0."""
  pred = normalize_answer(_check_pred(prediction))
  return float(any(pred == normalize_answer(g) for g in _golds(golds)))


def f1_score(prediction: str, golds: str | Sequence[str]) -> float:
  """Token F1, best over golds."""
  return precision_recall_f1(prediction, golds)[2]


def precision_score(prediction: str, golds: str | Sequence[str]) -> float:
  return precision_recall_f1(prediction, golds)[0]


def recall_score(prediction: str, golds: str | Sequence[str]) -> float:
  return precision_recall_f1(prediction, golds)[1]


def sub_em(prediction: str, golds: str | Sequence[str]) -> float:
  """1.0 if a normalised gold is in the normalised prediction or vice versa (MemAgent's acc).

  Character substrings, so "no" vs "Norway" counts: for comparison with published tables
  only, never a training reward (see the module docstring)."""
  pred = normalize_answer(_check_pred(prediction))
  for g in _golds(golds):
    gold = normalize_answer(g)
    if pred == gold or (pred and gold and (gold in pred or pred in gold)):
      return 1.0
  return 0.0


def _contains_single(pred_toks: list[str], gold_toks: list[str]) -> bool:
  """Whether `gold_toks` occurs in `pred_toks` as a contiguous run (both normalised)."""
  if not gold_toks or not pred_toks:
    return pred_toks == gold_toks
  if len(gold_toks) == 1 and gold_toks[0] in _SPECIAL:
    # A yes/no answer hedged with the other one ("yes or no") is no answer.
    return gold_toks[0] in pred_toks and not (set(pred_toks) & set(_SPECIAL)) - {gold_toks[0]}
  n = len(gold_toks)
  return any(pred_toks[i:i + n] == gold_toks for i in range(len(pred_toks) - n + 1))


def contains_match(prediction: str, golds: str | Sequence[str]) -> float:
  """1.0 if a normalised gold occurs in the normalised prediction on token boundaries.

  Strict containment: whole normalised tokens, contiguous, best over golds; an empty side never
  matches a non-empty one. Unlike `sub_em`, "no" is not in "Norway" and "s" is not in "Rush".
  """
  pred = normalize_answer(_check_pred(prediction)).split()
  return float(any(_contains_single(pred, normalize_answer(g).split()) for g in _golds(golds)))


def score_all(prediction: str, golds: str | Sequence[str]) -> dict[str, float]:
  """EM, F1, strict containment, sub-EM, precision and recall side by side (never an LLM
  judge)."""
  p, r, f1 = precision_recall_f1(prediction, golds)
  return {"exact_match": exact_match(prediction, golds), "f1": f1,
          "contains": contains_match(prediction, golds), "sub_em": sub_em(prediction, golds),
          "precision": p, "recall": r}


def mean_scores(predictions: Sequence[str], golds: Sequence[str | Sequence[str]]
                ) -> dict[str, float]:
  """Corpus means of `score_all` (lengths must match)."""
  if len(predictions) != len(golds):
    raise ValueError(f"mean_scores: {len(predictions)} predictions vs {len(golds)} gold lists")
  if not predictions:
    raise ValueError("mean_scores: no predictions")
  totals = collections.Counter()
  for p, g in zip(predictions, golds):
    totals.update(score_all(p, g))
  return {k: v / len(predictions) for k, v in totals.items()}


def extract_answer(text: str) -> str:
  """The boxed answer if any, else the text itself, stripped (for scoring free-form output)."""
  boxed = extract_boxed(text)
  return boxed if boxed is not None else text.strip()
