"""Per-rollout memory as an immutable pytree with pure, jittable, vmappable CRUD.

One `MemoryState` per rollout; a batch of rollouts is the same pytree with a leading axis,
so the rollout engine runs `jax.jit(jax.vmap(apply))` over all of them at once.

Texts live on the host: all text passes through the host anyway (parsing, prompt
rendering), so the device state keeps int32 handles into an append-only `TextTable`
(`memory/text_table.py`) plus the embeddings it needs for search. That keeps the state
small and fixed-shape. Handle -1 means "no text". Where the episode stands (section,
question, query changes) is not memory: the environment's `Cursor` owns it, alone.

Addressing. Entries have stable ids (`entry_id`, never reused, from `next_id`); a slot is
reused after a delete but gets a new id. The policy writes `Memory i`: that is resolved via
`shown_ids`, the stable ids displayed as `Memory 1..k` in the last prompt, which `apply`
refreshes from the current query after each step (the numbering a response refers to is
the one its prompt showed, even if earlier ops in the same response changed memory).

Failures are never silent: every op returns a status code (`OK`, `OVERFLOW`, `BAD_INDEX`,
`NOT_ALIVE`) and is counted in `counts` (see `COUNTER_NAMES`).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

# Op status codes (int32, per op).
OK, OVERFLOW, BAD_INDEX, NOT_ALIVE = 0, 1, 2, 3
STATUS_NAMES = ("ok", "overflow", "bad_index", "not_alive")

# Op kinds of an encoded `OpBatch` (NOOP pads the fixed-size batch).
NOOP, CREATE, READ, UPDATE, DELETE, SCRATCHPAD = 0, 1, 2, 3, 4, 5
KIND_CODES = {"create": CREATE, "read": READ, "update": UPDATE, "delete": DELETE,
              "scratchpad": SCRATCHPAD}

# Counters, one int32 each in `MemoryState.counts`.
COUNTER_NAMES = ("creates", "reads", "updates", "deletes", "scratchpads", "evictions",
                 "err_overflow", "err_bad_index", "err_not_alive", "err_too_many_ops")
(C_CREATES, C_READS, C_UPDATES, C_DELETES, C_SCRATCHPADS, C_EVICTIONS, C_ERR_OVERFLOW,
 C_ERR_BAD_INDEX, C_ERR_NOT_ALIVE, C_ERR_TOO_MANY_OPS) = range(len(COUNTER_NAMES))
# numpy, not jnp: a jnp array built at import would start JAX's backends before a
# multi-host run can call jax.distributed.initialize.
_ERROR_COUNTER = np.array([-1, C_ERR_OVERFLOW, C_ERR_BAD_INDEX, C_ERR_NOT_ALIVE], np.int32)

Overflow = Literal["error", "evict_oldest"]
DeleteMode = Literal["remove", "blank"]
Similarity = Literal["dot", "cosine"]


@dataclasses.dataclass(frozen=True)
class MemoryConfig:
  """Static memory settings (hashable, so they can be jit static arguments).

  overflow: "error" rejects a create when all C slots are alive (counted OVERFLOW);
    "evict_oldest" replaces the alive entry with the smallest id (counted eviction).
  delete_mode: "remove" frees the slot (ours); "blank" is the official AtomMem behaviour,
    which keeps the entry but empties its text (handle -1, zero embedding).
  """

  capacity: int = 256
  dim: int = 384
  top_k: int = 6
  overflow: Overflow = "error"
  delete_mode: DeleteMode = "remove"
  similarity: Similarity = "dot"

  def __post_init__(self):
    if self.capacity <= 0 or self.dim <= 0 or self.top_k <= 0:
      raise ValueError(f"MemoryConfig.capacity, dim and top_k must be positive, got "
                       f"{self.capacity}, {self.dim}, {self.top_k}")
    if self.top_k > self.capacity:
      raise ValueError(f"MemoryConfig.top_k ({self.top_k}) exceeds capacity ({self.capacity})")
    if self.overflow not in ("error", "evict_oldest"):
      raise ValueError(f"MemoryConfig.overflow must be 'error' or 'evict_oldest', got {self.overflow!r}")
    if self.delete_mode not in ("remove", "blank"):
      raise ValueError(f"MemoryConfig.delete_mode must be 'remove' or 'blank', got {self.delete_mode!r}")
    if self.similarity not in ("dot", "cosine"):
      raise ValueError(f"MemoryConfig.similarity must be 'dot' or 'cosine', got {self.similarity!r}")


@struct.dataclass
class MemoryState:
  """One rollout's memory. Shapes: C = capacity, D = embedding dim, k = top_k."""

  scratchpad: jax.Array  # int32 [] text handle (-1 = empty)
  text: jax.Array  # int32 [C] text handles
  embedding: jax.Array  # float32 [C, D]
  alive: jax.Array  # bool [C]
  entry_id: jax.Array  # int32 [C] stable id of the slot's entry (-1 = never used)
  next_id: jax.Array  # int32 []
  query: jax.Array  # int32 [] text handle of the current query (-1 = none set)
  query_embedding: jax.Array  # float32 [D]
  shown_ids: jax.Array  # int32 [k] ids shown as Memory 1..k (-1 padded)
  counts: jax.Array  # int32 [len(COUNTER_NAMES)]

  @property
  def capacity(self) -> int:
    return self.alive.shape[-1]


@struct.dataclass
class OpBatch:
  """A fixed-size, array-encoded list of ops for one state (M = max ops per step).

  `index` is the 1-based `Memory i` display index (update/delete); `text` a text handle;
  `embedding` the text's embedding (create/update/read). Padding has kind NOOP.
  `dropped` counts ops that did not fit in M (counted as err_too_many_ops, never lost silently).
  """

  kind: jax.Array  # int32 [M]
  index: jax.Array  # int32 [M]
  text: jax.Array  # int32 [M]
  embedding: jax.Array  # float32 [M, D]
  dropped: jax.Array  # int32 []

  @property
  def valid(self) -> jax.Array:
    return self.kind != NOOP  # bool [M]


def init_state(config: MemoryConfig) -> MemoryState:
  """An empty memory (use `jax.tree.map(lambda x: jnp.stack([x]*B), ...)` or `init_batch`)."""
  c, d, k = config.capacity, config.dim, config.top_k
  i32 = functools.partial(jnp.asarray, dtype=jnp.int32)
  return MemoryState(
      scratchpad=i32(-1), text=jnp.full((c,), -1, jnp.int32),
      embedding=jnp.zeros((c, d), jnp.float32), alive=jnp.zeros((c,), bool),
      entry_id=jnp.full((c,), -1, jnp.int32), next_id=i32(0), query=i32(-1),
      query_embedding=jnp.zeros((d,), jnp.float32), shown_ids=jnp.full((k,), -1, jnp.int32),
      counts=jnp.zeros((len(COUNTER_NAMES),), jnp.int32))


def init_batch(config: MemoryConfig, batch: int) -> MemoryState:
  """`batch` empty memories stacked on a leading axis."""
  return jax.tree.map(lambda x: jnp.broadcast_to(x, (batch,) + x.shape), init_state(config))


def _bump(state: MemoryState, counter, amount=1) -> MemoryState:
  return state.replace(counts=state.counts.at[counter].add(jnp.asarray(amount, jnp.int32)))


def _count_status(state: MemoryState, status: jax.Array) -> MemoryState:
  """Adds 1 to the error counter of a non-OK status."""
  counter = jnp.asarray(_ERROR_COUNTER)[status]
  return state.replace(counts=state.counts.at[jnp.maximum(counter, 0)].add(
      (status != OK).astype(jnp.int32)))


def _put(arr: jax.Array, slot: jax.Array, value, write: jax.Array) -> jax.Array:
  """`arr[slot] = value` if `write` else unchanged: O(row) work, even under vmap.

  (`jnp.where(write, arr.at[slot].set(v), arr)` would select over the whole [C, D] array.)
  """
  value = jnp.asarray(value, arr.dtype)
  return arr.at[slot].set(jnp.where(write, value, arr[slot]))


def _on(enabled) -> jax.Array:
  return jnp.asarray(True if enabled is None else enabled, bool)


def _slot_of(state: MemoryState, entry_id: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(slot, status) of a stable id: BAD_INDEX if never issued, NOT_ALIVE if deleted."""
  entry_id = jnp.asarray(entry_id, jnp.int32)
  match = (state.entry_id == entry_id) & state.alive & (entry_id >= 0)  # [C]
  slot = jnp.argmax(match)
  issued = (entry_id >= 0) & (entry_id < state.next_id)
  status = jnp.where(match.any(), OK, jnp.where(issued, NOT_ALIVE, BAD_INDEX))
  return slot, status.astype(jnp.int32)


def resolve_index(state: MemoryState, index: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Stable id of the entry displayed as `Memory index` (1-based), or -1 with BAD_INDEX."""
  k = state.shown_ids.shape[-1]
  index = jnp.asarray(index, jnp.int32)
  in_range = (index >= 1) & (index <= k)
  entry_id = jnp.where(in_range, state.shown_ids[jnp.clip(index - 1, 0, k - 1)], -1)
  return entry_id, jnp.where(entry_id >= 0, OK, BAD_INDEX).astype(jnp.int32)


# Every op takes `enabled` (a bool, default True): when False it is an exact no-op
# (status OK, nothing counted). `apply` runs all op kinds gated by the op's kind, which
# under vmap costs a few row writes, where a `lax.switch` would become a select over
# whole-state copies of every branch.


def _create_slot(state: MemoryState, overflow: Overflow) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(slot a create writes, whether it may, whether a free slot exists)."""
  free = ~state.alive  # [C]
  has_free = free.any()
  if overflow == "evict_oldest":
    oldest = jnp.argmin(jnp.where(state.alive, state.entry_id, jnp.iinfo(jnp.int32).max))
    return jnp.where(has_free, jnp.argmax(free), oldest), jnp.asarray(True), has_free
  return jnp.argmax(free), has_free, has_free


def create(state: MemoryState, text: jax.Array, embedding: jax.Array,
           overflow: Overflow = "error", enabled=None) -> tuple[MemoryState, jax.Array, jax.Array]:
  """Adds an entry. Returns (state, new id or -1, status)."""
  on = _on(enabled)
  slot, fits, has_free = _create_slot(state, overflow)
  ok = on & fits
  new_id = state.next_id
  new = state.replace(
      text=_put(state.text, slot, text, ok), embedding=_put(state.embedding, slot, embedding, ok),
      alive=_put(state.alive, slot, True, ok), entry_id=_put(state.entry_id, slot, new_id, ok),
      next_id=state.next_id + ok.astype(jnp.int32))
  new = _bump(new, C_CREATES, ok)
  new = _bump(new, C_EVICTIONS, ok & ~has_free)
  status = jnp.where(on & ~fits, OVERFLOW, OK).astype(jnp.int32)
  return _count_status(new, status), jnp.where(ok, new_id, -1), status


def update_id(state: MemoryState, entry_id: jax.Array, text: jax.Array,
              embedding: jax.Array, enabled=None) -> tuple[MemoryState, jax.Array]:
  """Replaces the text and embedding of the entry with stable id `entry_id`."""
  on = _on(enabled)
  slot, status = _slot_of(state, entry_id)
  status = jnp.where(on, status, OK)
  ok = on & (status == OK)
  new = state.replace(text=_put(state.text, slot, text, ok),
                      embedding=_put(state.embedding, slot, embedding, ok))
  return _count_status(_bump(new, C_UPDATES, ok), status), status


def delete_id(state: MemoryState, entry_id: jax.Array, delete_mode: DeleteMode = "remove",
              enabled=None) -> tuple[MemoryState, jax.Array]:
  """Deletes the entry with stable id `entry_id` ("blank": official empty-entry semantics)."""
  on = _on(enabled)
  slot, status = _slot_of(state, entry_id)
  status = jnp.where(on, status, OK)
  ok = on & (status == OK)
  if delete_mode == "blank":
    new = state.replace(text=_put(state.text, slot, -1, ok),
                        embedding=_put(state.embedding, slot, 0.0, ok))
  else:
    new = state.replace(alive=_put(state.alive, slot, False, ok))
  return _count_status(_bump(new, C_DELETES, ok), status), status


def update(state: MemoryState, index: jax.Array, text: jax.Array, embedding: jax.Array,
           enabled=None) -> tuple[MemoryState, jax.Array]:
  """`<modify_memory>Memory index: ...`: updates the entry the last prompt showed there."""
  # An unresolvable index gives id -1, which update_id reports (and counts) as BAD_INDEX.
  return update_id(state, resolve_index(state, index)[0], text, embedding, enabled)


def delete(state: MemoryState, index: jax.Array, delete_mode: DeleteMode = "remove",
           enabled=None) -> tuple[MemoryState, jax.Array]:
  """`<delete_memory>Memory index`: deletes the entry the last prompt showed there."""
  return delete_id(state, resolve_index(state, index)[0], delete_mode, enabled)


def set_scratchpad(state: MemoryState, text: jax.Array, enabled=None) -> MemoryState:
  on = _on(enabled)
  return _bump(state.replace(scratchpad=jnp.where(on, jnp.asarray(text, jnp.int32),
                                                  state.scratchpad)), C_SCRATCHPADS, on)


def set_query(state: MemoryState, text: jax.Array, embedding: jax.Array,
              enabled=None) -> MemoryState:
  """`<update_query>`: sets the persistent query (results show from the next prompt on)."""
  on = _on(enabled)
  return _bump(state.replace(
      query=jnp.where(on, jnp.asarray(text, jnp.int32), state.query),
      query_embedding=jnp.where(on, jnp.asarray(embedding, jnp.float32), state.query_embedding)),
      C_READS, on)


def search(state: MemoryState, query_embedding: jax.Array, k: int,
           similarity: Similarity = "dot") -> tuple[jax.Array, jax.Array]:
  """Exact masked top-k over alive entries: (ids [k], scores [k]); -1 / -inf padded.

  Order: score descending, ties broken by the lower stable id (a two-key sort, so the
  result does not depend on which slot an entry happens to occupy).
  """
  emb = state.embedding  # [C, D]
  q = jnp.asarray(query_embedding, jnp.float32)  # [D]
  if similarity == "cosine":
    emb = emb / jnp.maximum(jnp.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
    q = q / jnp.maximum(jnp.linalg.norm(q), 1e-12)
  scores = jnp.where(state.alive, emb @ q, -jnp.inf)  # [C]
  ids = jnp.where(state.alive, state.entry_id, jnp.iinfo(jnp.int32).max)  # [C]
  neg, sorted_ids = jax.lax.sort((-scores, ids), num_keys=2)
  if k > sorted_ids.shape[0]:  # more asked than the capacity: pad with "not found"
    extra = k - sorted_ids.shape[0]
    neg = jnp.pad(neg, (0, extra), constant_values=jnp.inf)
    sorted_ids = jnp.pad(sorted_ids, (0, extra), constant_values=-1)
  top_ids, top_scores = sorted_ids[:k], -neg[:k]
  found = jnp.isfinite(top_scores)
  return jnp.where(found, top_ids, -1), jnp.where(found, top_scores, -jnp.inf)


def read(state: MemoryState, similarity: Similarity = "dot"
         ) -> tuple[MemoryState, jax.Array, jax.Array]:
  """Retrieves top-k for the current query and records them as the displayed `Memory 1..k`.

  With no query set nothing is shown (official behaviour: no entries until a query).
  """
  k = state.shown_ids.shape[-1]
  ids, scores = search(state, state.query_embedding, k, similarity)
  has_query = state.query >= 0
  ids = jnp.where(has_query, ids, -1)
  scores = jnp.where(has_query, scores, -jnp.inf)
  return state.replace(shown_ids=ids), ids, scores


def apply(state: MemoryState, ops: OpBatch, config: MemoryConfig | None = None
          ) -> tuple[MemoryState, jax.Array]:
  """Applies one step's ops in order, then refreshes `shown_ids` for the next prompt.

  `Memory i` in every op resolves against the ids shown in the prompt the step answered
  (the `shown_ids` on entry), not against numbering changed by earlier ops of the step.
  Returns (new state, status [M]). Jit with `config` static and the state donated, e.g.
  `jax.jit(jax.vmap(functools.partial(apply, config=cfg)), donate_argnums=0)`: donation
  lets XLA write the few changed embedding rows in place; without it every call copies
  the whole [B, C, D] embedding batch (the dominant cost at C=1024, D=384).
  """
  config = config or MemoryConfig(capacity=state.capacity, dim=state.embedding.shape[-1],
                                  top_k=state.shown_ids.shape[-1])
  c = state.capacity
  no_rows = jnp.zeros((c, 0), jnp.float32)

  def step(s: MemoryState, op):
    kind, index, text, emb = op
    # Which embedding row this op writes (decided on the state before it), for later.
    slot_c, fits, _ = _create_slot(s, config.overflow)
    slot_u, st_u = _slot_of(s, resolve_index(s, index)[0])
    found = st_u == OK
    blank = config.delete_mode == "blank"
    write = ((kind == CREATE) & fits) | ((kind == UPDATE) & found) | (
        (kind == DELETE) & found & blank)
    row = jnp.where(write, jnp.where(kind == CREATE, slot_c, slot_u), c)  # c = no write
    value = jnp.where(kind == DELETE, 0.0, emb)  # [D]
    # The ops themselves, on a state whose embedding has no columns (nothing big copied).
    s = s.replace(embedding=no_rows)
    s, _, st_create = create(s, text, emb[:0], config.overflow, enabled=kind == CREATE)
    s, st_update = update(s, index, text, emb[:0], enabled=kind == UPDATE)
    s, st_delete = delete(s, index, config.delete_mode, enabled=kind == DELETE)
    s = set_query(s, text, emb, enabled=kind == READ)
    s = set_scratchpad(s, text, enabled=kind == SCRATCHPAD)
    return s, (st_create | st_update | st_delete, row, value)  # at most one status non-OK

  embedding = state.embedding  # [C, D]
  small, (status, rows, values) = jax.lax.scan(
      step, state.replace(embedding=no_rows), (ops.kind, ops.index, ops.text, ops.embedding))
  # All embedding writes of the step in one scatter; of several writes to a row the last wins.
  m = rows.shape[0]
  later = jnp.arange(m)[None, :] > jnp.arange(m)[:, None]  # [M, M]: column op is later
  overwritten = ((rows[None, :] == rows[:, None]) & later & (rows[None, :] < c)).any(1)  # [M]
  rows = jnp.where(overwritten, c, rows)
  state = small.replace(embedding=embedding.at[rows].set(values, mode="drop"))
  state = _bump(state, C_ERR_TOO_MANY_OPS, ops.dropped)
  state, _, _ = read(state, config.similarity)
  return state, status


def counters(state: MemoryState) -> dict[str, np.ndarray]:
  """Host-side view of the op counters by name (works on batched states too)."""
  counts = np.asarray(state.counts)
  return {name: counts[..., i] for i, name in enumerate(COUNTER_NAMES)}
