"""Host-side append-only text table: the device memory state holds int32 handles into it.

Append-only means a handle, once issued, always names the same text, so any old
`MemoryState` (a GRPO group member, a logged step) can be rendered back to text later.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

NO_TEXT = -1


class TextTable:
  """Interned, append-only strings; handle -1 is the empty text."""

  def __init__(self, texts: Iterable[str] = ()):
    self._texts: list[str] = []
    self._index: dict[str, int] = {}
    for t in texts:
      self.add(t)

  def __len__(self) -> int:
    return len(self._texts)

  def add(self, text: str) -> int:
    """Handle of `text` (the same text gets the same handle)."""
    if not isinstance(text, str):
      raise ValueError(f"TextTable.add expects str, got {type(text).__name__}")
    handle = self._index.get(text)
    if handle is None:
      handle = self._index[text] = len(self._texts)
      self._texts.append(text)
    return handle

  def get(self, handle: int) -> str:
    handle = int(handle)
    if handle == NO_TEXT:
      return ""
    if not 0 <= handle < len(self._texts):
      raise ValueError(f"TextTable: unknown text handle {handle} (table holds {len(self._texts)})")
    return self._texts[handle]

  def lookup(self, handles: Sequence[int] | np.ndarray) -> list[str]:
    return [self.get(h) for h in np.asarray(handles).reshape(-1)]
