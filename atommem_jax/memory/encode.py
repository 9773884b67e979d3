"""Host side of a memory step: parsed responses -> fixed-size `OpBatch` arrays.

The rollout engine does: parse on host -> `encode_ops` -> `jax.jit(jax.vmap(apply))`.
All texts of the batch that need an embedding are embedded in ONE call of `embed_fn`.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from atommem_jax import protocol
from atommem_jax.memory import state as state_lib
from atommem_jax.memory.text_table import TextTable

EmbedFn = Callable[[list[str]], np.ndarray]  # texts -> float32 [N, D]


def encode_ops(steps: Sequence[protocol.ParsedStep], table: TextTable, embed_fn: EmbedFn,
               max_ops: int, dim: int) -> state_lib.OpBatch:
  """Encodes one parsed step per rollout into an `OpBatch` with leading axis [B, M].

  Ops beyond `max_ops` are not applied but counted (`dropped`, err_too_many_ops).
  Texts go into `table`; create / update / read texts are embedded with `embed_fn`.
  """
  if max_ops <= 0:
    raise ValueError(f"encode_ops: max_ops must be positive, got {max_ops}")
  b = len(steps)
  kind = np.zeros((b, max_ops), np.int32)
  index = np.zeros((b, max_ops), np.int32)
  text = np.full((b, max_ops), -1, np.int32)
  emb = np.zeros((b, max_ops, dim), np.float32)
  dropped = np.zeros((b,), np.int32)
  to_embed: list[tuple[int, int, str]] = []
  for r, step in enumerate(steps):
    ops = step.ops
    dropped[r] = max(0, len(ops) - max_ops)
    for m, op in enumerate(ops[:max_ops]):
      kind[r, m] = state_lib.KIND_CODES[op.kind]
      # Any index beyond int32 is out of range anyway: clip, and apply reports BAD_INDEX.
      index[r, m] = min(op.id, np.iinfo(np.int32).max) if op.id is not None else 0
      if op.kind != protocol.DELETE:
        text[r, m] = table.add(op.text)
      if op.kind in (protocol.CREATE, protocol.UPDATE, protocol.READ):
        to_embed.append((r, m, op.text))
  if to_embed:
    vecs = np.asarray(embed_fn([t for _, _, t in to_embed]), np.float32)
    if vecs.shape != (len(to_embed), dim):
      raise ValueError(f"encode_ops: embed_fn returned shape {vecs.shape}, expected "
                       f"({len(to_embed)}, {dim})")
    for (r, m, _), v in zip(to_embed, vecs):
      emb[r, m] = v
  return state_lib.OpBatch(kind=kind, index=index, text=text, embedding=emb, dropped=dropped)
