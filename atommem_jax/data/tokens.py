"""The one place that calls a tokenizer: anything with `encode` (and `decode` for chunking).

HF tokenizers take `add_special_tokens=False` (we count/cut raw text, no BOS); minimal test
tokenizers may not accept the keyword, so it is only passed when supported.
"""
from __future__ import annotations

import inspect
from typing import Any, Protocol, Sequence


class TokenizerLike(Protocol):
  def encode(self, text: str, *args: Any, **kwargs: Any) -> Sequence[int]: ...
  def decode(self, ids: Sequence[int], *args: Any, **kwargs: Any) -> str: ...


def _accepts_kw(fn: Any, name: str) -> bool:
  try:
    params = inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return False
  return name in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def encode(tokenizer: TokenizerLike, text: str) -> list[int]:
  """Token ids of `text` without special tokens."""
  if not hasattr(tokenizer, "encode"):
    raise ValueError(f"tokenizer {type(tokenizer).__name__} has no encode()")
  if _accepts_kw(tokenizer.encode, "add_special_tokens"):
    ids = tokenizer.encode(text, add_special_tokens=False)
  else:
    ids = tokenizer.encode(text)
  return list(getattr(ids, "ids", ids))


def count(tokenizer: TokenizerLike, text: str) -> int:
  return len(encode(tokenizer, text))


def decode(tokenizer: TokenizerLike, ids: Sequence[int]) -> str:
  if not hasattr(tokenizer, "decode"):
    raise ValueError(f"tokenizer {type(tokenizer).__name__} has no decode()")
  return tokenizer.decode(list(ids))
