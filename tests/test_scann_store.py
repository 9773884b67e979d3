"""ScannStore beyond the shared contract: versions, ANN switch, persistence, pure_callback."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from atommem_jax.memory import state as S
from atommem_jax.memory.scann_store import (AnnConfig, MemoryOpError, ScannStore, search_callback,
                                            top_k_by_score_then_id)


def clustered(n: int, d: int, seed: int, centers: int = 20) -> np.ndarray:
  rng = np.random.default_rng(seed)
  c = rng.normal(size=(centers, d))
  x = c[rng.integers(0, centers, n)] + 0.5 * rng.normal(size=(n, d))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact(x: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
  return top_k_by_score_then_id(np.broadcast_to(ids, (len(q), len(ids))), q @ x.T, k)[0]


def test_public_import_path():
  import atommem_jax.memory as memory

  assert memory.ScannStore is ScannStore and memory.MemoryOpError is MemoryOpError
  with pytest.raises(AttributeError, match="no attribute 'Nope'"):
    memory.Nope  # noqa: B018


def test_writes_return_new_versions_and_old_ones_stay_readable():
  s0 = ScannStore(2)
  s1, a = s0.create("a", [1, 0])
  s2, b = s1.create("b", [0, 1])
  s3 = s2.update(a, "a'", [0, 2])
  s4 = s3.delete(b)
  branch, c = s2.create("c", [1, 1])  # writing from an older version branches
  assert (a, b, c) == (0, 1, 2)
  assert [len(s) for s in (s0, s1, s2, s3, s4, branch)] == [0, 1, 2, 2, 1, 3]
  assert s4.read([0, 1], 5) == [(0, "a'", 2.0)]
  assert s2.read([0, 1], 5) == [(1, "b", 1.0), (0, "a", 0.0)]
  assert branch.items() == [(0, "a"), (1, "b"), (2, "c")]
  assert s3.read([0, 1], 1) == [(0, "a'", 2.0)]
  assert s0.read([1, 0], 3) == []


def test_errors_carry_device_status_codes():
  s, a = ScannStore(2, capacity=1).create("a", [1, 0])
  with pytest.raises(MemoryOpError) as e:
    s.create("b", [1, 0])
  assert e.value.code == S.OVERFLOW
  gone = s.delete(a)
  for op, code in [(lambda: gone.delete(a), S.NOT_ALIVE), (lambda: s.update(7, "x", [0, 1]), S.BAD_INDEX),
                   (lambda: s.text(-1), S.BAD_INDEX)]:
    with pytest.raises(MemoryOpError) as e:
      op()
    assert e.value.code == code
  with pytest.raises(ValueError, match="embedding dim 3 != store dim 2"):
    s.create("x", [1, 2, 3])
  with pytest.raises(ValueError, match="finite"):
    s.create("x", [np.nan, 0])
  with pytest.raises(ValueError, match="overflow"):
    ScannStore(2, overflow="drop")


def test_evict_oldest_in_bulk():
  s, _ = ScannStore(2, capacity=3, overflow="evict_oldest").create_many(
      ["a", "b", "c"], np.eye(2, dtype=np.float32)[[0, 1, 0]])
  s, ids = s.create_many(["d", "e"], np.ones((2, 2), np.float32))
  assert ids == [3, 4] and [i for i, _ in s.items()] == [2, 3, 4]


def test_top_k_resolves_ties_at_the_cut_by_id():
  scores = np.array([[1.0, 5.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]], np.float32)
  ids = np.array([[9, 0, 8, 7, 6, 5, 4, 3, 2, 1]])
  top_ids, top_scores = top_k_by_score_then_id(ids, scores, 2)
  assert top_ids.tolist() == [[0, 1]] and top_scores.tolist() == [[5.0, 1.0]]


ANN = AnnConfig(ann_threshold=1000, leaves_to_search_frac=0.3, reorder=100, rebuild_growth=1.5)


def test_switches_to_scann_above_threshold_with_high_recall_and_exact_scores():
  x = clustered(3000, 16, seed=0)
  q = clustered(50, 16, seed=1)
  small, _ = ScannStore(16, ann=ANN).create_many([f"t{i}" for i in range(999)], x[:999])
  assert not small.uses_ann
  np.testing.assert_array_equal(small.search(q, 10)[0], exact(x[:999], np.arange(999), q, 10))
  big, ids = small.create_many([f"t{i}" for i in range(999, 3000)], x[999:])
  assert big.uses_ann and ids[-1] == 2999
  got, scores = big.search(q, 10)
  want = exact(x, np.arange(3000), q, 10)
  recall = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, want)])
  assert recall >= 0.9, recall
  np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", q, x[got]), rtol=1e-5, atol=1e-6)
  # Mutations go through ScaNN's upsert / delete.
  top = int(got[0, 0])
  gone = big.delete(top)
  assert top not in gone.search(q[:1], 10)[0]
  moved = big.update(top, "moved", -q[0])
  assert top not in moved.search(q[:1], 10)[0][0]
  # The old version still holds it (reading it rebuilds the index from the log).
  assert big.text(top) == f"t{top}" and moved.text(top) == "moved" and len(big) == 3000


def test_save_load_round_trip(tmp_path):
  x = clustered(1500, 16, seed=2)
  s, _ = ScannStore(16, ann=ANN).create_many([f"t{i}" for i in range(1500)], x)
  s = s.delete(3).delete(700)
  s.save(tmp_path / "ann")
  loaded = ScannStore.load(tmp_path / "ann")
  assert (tmp_path / "ann" / "scann").is_dir() and loaded.uses_ann
  assert len(loaded) == 1498 and loaded.next_id == 1500 and loaded.items() == s.items()
  np.testing.assert_array_equal(loaded.search(x[:20], 5)[0], s.search(x[:20], 5)[0])
  with pytest.raises(MemoryOpError):
    loaded.delete(700)
  small = ScannStore(16)
  small, _ = small.create_many(["a", "b", "c"], x[:3])
  small.delete(1).save(tmp_path / "exact")
  back = ScannStore.load(tmp_path / "exact")
  assert back.items() == [(0, "a"), (2, "c")] and back.next_id == 3
  back, new_id = back.create("d", x[5])
  assert new_id == 3
  with pytest.raises(FileNotFoundError, match="store.json"):
    ScannStore.load(tmp_path / "missing")


def test_pure_callback_from_jit_and_vmap():
  x = clustered(40, 8, seed=3)
  store, _ = ScannStore(8).create_many([str(i) for i in range(40)], x)
  f = jax.jit(search_callback(store, 4))
  ids, scores = f(jnp.asarray(x[:6]))
  want_ids, want_scores = store.search(x[:6], 4)
  np.testing.assert_array_equal(np.asarray(ids), want_ids)
  np.testing.assert_allclose(np.asarray(scores), want_scores, rtol=1e-6)
  vids, _ = jax.jit(jax.vmap(f))(jnp.asarray(x[:6]).reshape(2, 3, 8))
  np.testing.assert_array_equal(np.asarray(vids).reshape(6, 4), want_ids)


def test_scann_path_is_exact_when_probing_everything():
  """Probe all leaves and reorder all candidates: ScaNN plumbing (docids, upsert, delete)
  must then give exactly the brute-force answer."""
  full = AnnConfig(ann_threshold=1000, leaves_to_search_frac=1.0, reorder=4000)
  x = clustered(1200, 16, seed=4)
  q = clustered(30, 16, seed=5)
  s, _ = ScannStore(16, ann=full).create_many([str(i) for i in range(1200)], x)
  s = s.delete(5).update(7, "moved", x[0])
  s, new_id = s.create("new", q[0])
  assert s.uses_ann
  ids = np.array([i for i, _ in s.items()])
  vecs = x.copy()
  vecs[7] = x[0]
  vecs = np.concatenate([vecs, q[:1]])[ids]
  np.testing.assert_array_equal(s.search(q, 10)[0], exact(vecs, ids, q, 10))
  assert s.read(q[0], 1)[0][:2] == (new_id, "new")
