"""Device MemoryState: CRUD semantics, Memory-i resolution, errors, jit(vmap(apply))."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from atommem_jax import protocol
from atommem_jax.memory import encode
from atommem_jax.memory import state as S
from atommem_jax.memory.text_table import TextTable

D = 4


def onehot(i: int, scale: float = 1.0) -> np.ndarray:
  v = np.zeros((D,), np.float32)
  v[i % D] = scale
  return v


def cfg(**kw) -> S.MemoryConfig:
  return S.MemoryConfig(**{"capacity": 4, "dim": D, "top_k": 3, **kw})


def test_create_assigns_stable_ids_and_overflow_is_counted():
  s = S.init_state(cfg())
  ids = []
  for i in range(5):
    s, new_id, status = S.create(s, i, onehot(i))
    ids.append((int(new_id), int(status)))
  assert ids == [(0, S.OK), (1, S.OK), (2, S.OK), (3, S.OK), (-1, S.OVERFLOW)]
  c = S.counters(s)
  assert c["creates"] == 4 and c["err_overflow"] == 1
  assert int(s.next_id) == 4 and bool(s.alive.all())


def test_delete_frees_slot_but_ids_are_never_reused():
  s = S.init_state(cfg())
  for i in range(4):
    s, _, _ = S.create(s, i, onehot(i))
  s, status = S.delete_id(s, 1)
  assert int(status) == S.OK
  s, status = S.delete_id(s, 1)
  assert int(status) == S.NOT_ALIVE  # deleting a deleted entry
  s, status = S.delete_id(s, 17)
  assert int(status) == S.BAD_INDEX  # never issued
  s, new_id, status = S.create(s, 9, onehot(1))
  assert (int(new_id), int(status)) == (4, S.OK)
  assert int(s.entry_id[1]) == 4 and int(s.text[1]) == 9  # slot reused, new id
  c = S.counters(s)
  assert c["err_not_alive"] == 1 and c["err_bad_index"] == 1 and c["deletes"] == 1


def test_evict_oldest_replaces_smallest_id():
  s = S.init_state(cfg())
  create = functools.partial(S.create, overflow="evict_oldest")
  for i in range(4):
    s, _, _ = create(s, i, onehot(i))
  s, _ = S.delete_id(s, 0)
  s, _, _ = create(s, 10, onehot(0))  # fills the free slot, no eviction
  s, new_id, status = create(s, 11, onehot(0))  # full: evicts id 1
  assert (int(new_id), int(status)) == (5, S.OK)
  assert sorted(np.asarray(s.entry_id).tolist()) == [2, 3, 4, 5]
  assert S.counters(s)["evictions"] == 1


def test_search_orders_by_score_then_lower_id_independent_of_slot():
  s = S.init_state(cfg(top_k=4))
  for i in range(4):
    s, _, _ = S.create(s, i, onehot(0, scale=1.0 if i != 2 else 2.0))
  s, _ = S.delete_id(s, 0)
  s, _, _ = S.create(s, 4, onehot(0))  # id 4 lands in slot 0 (the lowest slot)
  ids, scores = S.search(s, onehot(0), 4)
  assert np.asarray(ids).tolist() == [2, 1, 3, 4]
  np.testing.assert_allclose(np.asarray(scores), [2, 1, 1, 1])
  ids, scores = S.search(s, onehot(0), 4, similarity="cosine")
  assert np.asarray(ids).tolist() == [1, 2, 3, 4]  # cosine: all ties -> by id


def test_search_pads_with_minus_one_when_few_alive():
  s = S.init_state(cfg())
  s, _, _ = S.create(s, 0, onehot(0))
  ids, scores = S.search(s, onehot(0), 3)
  assert np.asarray(ids).tolist() == [0, -1, -1]
  assert np.isneginf(np.asarray(scores)[1:]).all()
  ids, scores = S.search(s, onehot(0), 2 * s.alive.shape[0] + 1)  # k beyond the capacity
  assert ids.shape == scores.shape == (2 * s.alive.shape[0] + 1,)
  assert np.asarray(ids).tolist()[:2] == [0, -1] and np.isneginf(np.asarray(scores)[1:]).all()


def test_read_shows_nothing_without_query_then_records_shown_ids():
  s = S.init_state(cfg())
  for i in range(3):
    s, _, _ = S.create(s, i, onehot(i))
  s, ids, _ = S.read(s)
  assert np.asarray(ids).tolist() == [-1, -1, -1]
  s = S.set_query(s, 7, onehot(2))
  s, ids, _ = S.read(s)
  assert np.asarray(ids)[0] == 2 and np.asarray(s.shown_ids).tolist() == np.asarray(ids).tolist()
  assert S.counters(s)["reads"] == 1


def _table_embed(dim=D):
  def embed(texts):
    return np.stack([onehot(sum(map(ord, t)) % dim) for t in texts])
  return embed


def test_apply_resolves_memory_i_against_the_prompt_numbering():
  c = cfg()
  table = TextTable()
  embed = lambda texts: np.stack([onehot(0, scale=float(len(t))) for t in texts])
  # Step 1: three entries whose scores order them c(3) > bb(2) > a(1) for query "q".
  step1 = protocol.parse("<add_memory>a</add_memory><add_memory>bb</add_memory>"
                         "<add_memory>ccc</add_memory><update_query>q</update_query>")
  s, status = S.apply(S.init_state(c), jax.tree.map(lambda x: x[0], encode.encode_ops(
      [step1], table, embed, 6, D)), c)
  assert np.asarray(status).tolist() == [0] * 6
  assert np.asarray(s.shown_ids).tolist() == [2, 1, 0]  # Memory 1 = ccc, 2 = bb, 3 = a
  # Step 2: delete Memory 1 then modify Memory 2: still "bb" (prompt numbering), then a bad one.
  step2 = protocol.parse("<delete_memory>Memory 1</delete_memory>"
                         "<modify_memory>Memory 2: bbbbb</modify_memory>"
                         "<delete_memory>Memory 1</delete_memory>"
                         "<modify_memory>Memory 5: x</modify_memory>"
                         "<update_memory>notes</update_memory>")
  s, status = S.apply(s, jax.tree.map(lambda x: x[0], encode.encode_ops(
      [step2], table, embed, 6, D)), c)
  assert np.asarray(status).tolist() == [S.OK, S.OK, S.NOT_ALIVE, S.BAD_INDEX, S.OK, S.OK]
  assert table.lookup(np.asarray(s.text)[np.asarray(s.alive)]) == ["a", "bbbbb"]
  assert np.asarray(s.shown_ids).tolist() == [1, 0, -1]  # refreshed for the next prompt
  assert table.get(s.scratchpad) == "notes"
  cnt = S.counters(s)
  assert (cnt["creates"], cnt["updates"], cnt["deletes"], cnt["scratchpads"]) == (3, 1, 1, 1)
  assert (cnt["err_not_alive"], cnt["err_bad_index"]) == (1, 1)


def test_blank_delete_mode_keeps_an_empty_entry():
  c = cfg(delete_mode="blank")
  s = S.init_state(c)
  s, _, _ = S.create(s, 5, onehot(1))
  s, status = S.delete_id(s, 0, delete_mode="blank")
  assert int(status) == S.OK and bool(s.alive[0]) and int(s.text[0]) == -1
  assert float(jnp.abs(s.embedding[0]).sum()) == 0.0


def test_encode_ops_counts_dropped_ops_and_validates_embed_shape():
  table = TextTable()
  step = protocol.parse("".join(f"<add_memory>m{i}</add_memory>" for i in range(5)))
  ops = encode.encode_ops([step], table, _table_embed(), 3, D)
  assert ops.kind.shape == (1, 3) and int(ops.dropped[0]) == 2
  s, _ = S.apply(S.init_state(cfg()), jax.tree.map(lambda x: x[0], ops), cfg())
  assert S.counters(s)["err_too_many_ops"] == 2 and S.counters(s)["creates"] == 3
  with pytest.raises(ValueError, match="embed_fn returned shape"):
    encode.encode_ops([step], table, lambda t: np.zeros((1, D)), 3, D)


def test_text_table_is_append_only_and_rejects_unknown_handles():
  t = TextTable(["x"])
  assert t.add("y") == 1 and t.add("x") == 0 and t.get(-1) == ""
  with pytest.raises(ValueError, match="unknown text handle 5"):
    t.get(5)


def test_config_validation_names_field():
  with pytest.raises(ValueError, match="overflow"):
    S.MemoryConfig(overflow="drop")
  with pytest.raises(ValueError, match="top_k"):
    S.MemoryConfig(capacity=2, top_k=3)


def _random_ops(rng: np.random.Generator, b: int, m: int, dim: int) -> S.OpBatch:
  kind = rng.integers(0, 6, size=(b, m)).astype(np.int32)
  index = rng.integers(0, 5, size=(b, m)).astype(np.int32)
  text = rng.integers(0, 100, size=(b, m)).astype(np.int32)
  emb = rng.integers(-2, 3, size=(b, m, dim)).astype(np.float32)  # exact dot products
  return S.OpBatch(kind=kind, index=index, text=text, embedding=emb,
                   dropped=rng.integers(0, 2, size=(b,)).astype(np.int32))


def test_jit_vmap_apply_over_64_states_equals_per_state_loop():
  c = S.MemoryConfig(capacity=6, dim=D, top_k=3, overflow="error")
  rng = np.random.default_rng(0)
  b, m = 64, 8
  batched = jax.jit(jax.vmap(functools.partial(S.apply, config=c)))
  single = jax.jit(functools.partial(S.apply, config=c))
  states = S.init_batch(c, b)
  per_state = [S.init_state(c) for _ in range(b)]
  for _ in range(3):  # several steps, so Memory i resolves against refreshed shown_ids
    ops = _random_ops(rng, b, m, D)
    states, status = batched(states, ops)
    for r in range(b):
      per_state[r], st = single(per_state[r], jax.tree.map(lambda x: x[r], ops))
      np.testing.assert_array_equal(np.asarray(status[r]), np.asarray(st))
  for r in range(b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x[r]), np.asarray(y)),
                 states, per_state[r])
  assert S.counters(states)["creates"].sum() > 0 and S.counters(states)["err_bad_index"].sum() > 0


def test_disabled_ops_are_exact_no_ops():
  s = S.init_state(cfg())
  s, _, _ = S.create(s, 0, onehot(0))
  s = S.set_query(s, 1, onehot(0))
  s, _, _ = S.read(s)
  off = jnp.asarray(False)
  for f in (lambda t: S.create(t, 5, onehot(1), enabled=off)[::2],
            lambda t: S.create(t, 5, onehot(1), overflow="evict_oldest", enabled=off)[::2],
            lambda t: S.update(t, 1, 5, onehot(1), enabled=off),
            lambda t: S.update(t, 9, 5, onehot(1), enabled=off),  # would be BAD_INDEX
            lambda t: S.delete(t, 1, enabled=off), lambda t: S.delete(t, 1, "blank", enabled=off),
            lambda t: (S.set_query(t, 5, onehot(1), enabled=off), S.OK),
            lambda t: (S.set_scratchpad(t, 5, enabled=off), S.OK)):
    new, status = f(s)
    assert int(status) == S.OK
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), new, s)


@pytest.mark.parametrize("overflow,delete_mode", [("error", "remove"), ("evict_oldest", "blank")])
def test_apply_equals_sequential_primitives(overflow, delete_mode):
  """apply defers embedding writes to one scatter (last write to a row wins): same result."""
  c = S.MemoryConfig(capacity=4, dim=D, top_k=3, overflow=overflow, delete_mode=delete_mode)
  rng = np.random.default_rng(1)
  fast = jax.jit(functools.partial(S.apply, config=c))
  prims = {S.CREATE: jax.jit(lambda s, i, t, e: S.create(s, t, e, overflow)[::2]),
           S.UPDATE: jax.jit(lambda s, i, t, e: S.update(s, i, t, e)),
           S.DELETE: jax.jit(lambda s, i, t, e: S.delete(s, i, delete_mode)),
           S.READ: jax.jit(lambda s, i, t, e: (S.set_query(s, t, e), jnp.int32(0))),
           S.SCRATCHPAD: jax.jit(lambda s, i, t, e: (S.set_scratchpad(s, t), jnp.int32(0)))}
  s_fast = s_ref = S.init_state(c)
  for _ in range(6):
    ops = jax.tree.map(lambda x: x[0], _random_ops(rng, 1, 10, D))
    ops = ops.replace(index=np.asarray(rng.integers(1, 3, 10), np.int32))  # frequent repeats
    s_fast, status = fast(s_fast, ops)
    statuses = []
    for kind, i, t, e in zip(ops.kind, ops.index, ops.text, ops.embedding):
      if kind == S.NOOP:
        statuses.append(0)
        continue
      s_ref, st = prims[int(kind)](s_ref, i, t, e)
      statuses.append(int(st))
    s_ref = S._bump(s_ref, S.C_ERR_TOO_MANY_OPS, ops.dropped)
    s_ref, _, _ = S.read(s_ref)
    assert np.asarray(status).tolist() == statuses
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 s_fast, s_ref)
