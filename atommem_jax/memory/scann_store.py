"""ScaNN-backed long-term memory store behind a functional facade.

A `ScannStore` value answers for ONE version of the memory; `create` / `update` / `delete`
return a new value and leave the old one readable. Internally all versions of a store
share one `_Shared` object:
  * an append-only version tree (each version = parent version + one op), so writes from an
    old version branch instead of overwriting;
  * an append-only table of every text and vector ever written (rows);
  * ONE cache (live entries as dense arrays, plus a ScaNN searcher once large) synchronised
    to some version: moved forward by replaying the ops in between (the common, linear
    case costs one upsert / delete), rebuilt from the log when another branch or an older
    version is read.

Search is exact brute force (numpy; score desc, ties by lower id: the same order as the
device `MemoryState`) below `ann_threshold` live entries, and ScaNN tree + asymmetric
hashing + exact reordering above it; the tree is retrained when the store has grown
`rebuild_growth` times since the last build (ScaNN's incremental upserts otherwise keep
the old partitioning). Candidates from ScaNN are re-scored exactly and re-sorted with the
same tie rule, so only recall, not order, is approximate.

Errors match the device state's status codes, raised as `MemoryOpError` (a ValueError
carrying `.code`): BAD_INDEX (an id never issued), NOT_ALIVE (deleted), OVERFLOW (capacity).
Not thread-safe for concurrent writers; reads take a lock since they move the cache.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import threading
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from atommem_jax.memory.state import BAD_INDEX, NOT_ALIVE, OK, OVERFLOW, STATUS_NAMES

_CREATE, _UPDATE, _DELETE = 0, 1, 2


class MemoryOpError(ValueError):
  """A rejected store op; `.code` is a device status code (OVERFLOW, BAD_INDEX, NOT_ALIVE)."""

  def __init__(self, code: int, message: str):
    super().__init__(f"{STATUS_NAMES[code]}: {message}")
    self.code = code


@dataclasses.dataclass(frozen=True)
class AnnConfig:
  """When and how to switch from exact search to ScaNN tree + AH."""

  ann_threshold: int = 20_000  # live entries at which ScaNN takes over
  rebuild_growth: float = 2.0  # retrain the tree after this much growth since the last build
  leaves_per_sqrt: float = 1.0  # num_leaves = leaves_per_sqrt * sqrt(n)
  leaves_to_search_frac: float = 0.03  # fraction of leaves probed per query
  min_leaves_to_search: int = 8
  dims_per_block: int = 2  # AH: dimensions per 4-bit code block
  anisotropic_threshold: float = 0.2
  reorder: int = 200  # candidates re-scored in float before the final top-k
  training_sample: int = 100_000
  num_threads: int = 0  # 0 = ScaNN default
  parallel_search: bool = True  # batched queries on ScaNN's thread pool

  def __post_init__(self):
    if self.ann_threshold < 1 or self.rebuild_growth <= 1.0 or self.reorder < 1:
      raise ValueError(f"AnnConfig: ann_threshold >= 1, rebuild_growth > 1 and reorder >= 1 "
                       f"required, got {self}")


class _Rows:
  """Append-only texts + vectors (amortised growth)."""

  def __init__(self, dim: int):
    self.texts: list[str] = []
    self.vecs = np.zeros((0, dim), np.float32)
    self.n = 0

  def add(self, texts: Sequence[str], vecs: np.ndarray) -> int:
    start, m = self.n, len(texts)
    if start + m > len(self.vecs):
      # Grow by 1.25x (not 2x): at 1e6 x 384 floats a doubling would briefly cost 3 GB.
      grown = np.zeros((max(start + m, int(1.25 * len(self.vecs)), 16), self.vecs.shape[1]),
                       np.float32)
      grown[:start] = self.vecs[:start]
      self.vecs = grown
    self.vecs[start:start + m] = vecs
    self.texts.extend(texts)
    self.n += m
    return start


class _Cache:
  """Live entries of one version: id -> slot, dense ids / vectors, optional ScaNN searcher."""

  def __init__(self, dim: int):
    self.version = 0
    self.slot: dict[int, int] = {}
    self.ids = np.zeros((0,), np.int64)
    self.rows = np.zeros((0,), np.int64)
    self.mat = np.zeros((0, dim), np.float32)
    self.n = 0
    self.searcher = None
    self.built_size = 0

  def _reserve(self, m: int) -> None:
    need = self.n + m
    if need > len(self.ids):
      cap = max(need, int(1.25 * len(self.ids)), 16)
      for name in ("ids", "rows", "mat"):
        old = getattr(self, name)
        new = np.zeros((cap,) + old.shape[1:], old.dtype)
        new[:self.n] = old[:self.n]
        setattr(self, name, new)

  def put(self, ids: np.ndarray, rows: np.ndarray, vecs: np.ndarray) -> None:
    """Inserts new ids or overwrites existing ones."""
    fresh = [i for i, e in enumerate(ids) if int(e) not in self.slot]
    self._reserve(len(fresh))
    for i, e in enumerate(ids):
      s = self.slot.get(int(e))
      if s is None:
        s = self.slot[int(e)] = self.n
        self.n += 1
        self.ids[s] = e
      self.rows[s] = rows[i]
      self.mat[s] = vecs[i]
    if self.searcher is not None:
      self.searcher.upsert([int(e) for e in ids], np.asarray(vecs, np.float32),
                           batch_size=max(1, min(len(ids), 4096)))

  def remove(self, entry_id: int) -> None:
    s = self.slot.pop(entry_id)
    last = self.n - 1
    if s != last:  # swap-remove keeps the dense arrays contiguous
      self.ids[s], self.rows[s], self.mat[s] = self.ids[last], self.rows[last], self.mat[last]
      self.slot[int(self.ids[s])] = s
    self.n -= 1
    if self.searcher is not None:
      self.searcher.delete([entry_id])


@dataclasses.dataclass
class _Shared:
  """Everything every version of one store shares."""

  dim: int
  capacity: int | None
  overflow: str
  ann: AnnConfig
  rows: _Rows
  # Version tree: version v > 0 is op v-1 applied to version parent[v-1].
  parent: list[int] = dataclasses.field(default_factory=list)
  op: list[tuple[int, int, int, int]] = dataclasses.field(default_factory=list)  # kind, id, row, n
  next_id: list[int] = dataclasses.field(default_factory=lambda: [0])  # per version
  size: list[int] = dataclasses.field(default_factory=lambda: [0])  # live entries per version
  cache: _Cache | None = None
  # Queries answered per search path, over every version: proves which path served a read.
  reads: dict[str, int] = dataclasses.field(default_factory=lambda: {"exact": 0, "ann": 0})
  lock: threading.RLock = dataclasses.field(default_factory=threading.RLock)

  def add_version(self, parent: int, op: tuple[int, int, int, int], next_id: int, size: int) -> int:
    self.parent.append(parent)
    self.op.append(op)
    self.next_id.append(next_id)
    self.size.append(size)
    return len(self.parent)

  def path(self, version: int, stop: int) -> list[int] | None:
    """Versions from just after `stop` up to `version`, or None if `stop` is no ancestor."""
    out = []
    while version > stop:
      out.append(version)
      version = self.parent[version - 1]
    return out[::-1] if version == stop else None

  def sync(self, version: int) -> _Cache:
    """Moves the cache to `version` (replay forward, or rebuild from the root)."""
    cache = self.cache
    steps = self.path(version, cache.version) if cache is not None else None
    if steps is None:
      cache = self.cache = _Cache(self.dim)
      steps = self.path(version, 0)
    for v in steps:
      self._replay(cache, self.op[v - 1])
      cache.version = v
    self._maybe_rebuild(cache)
    return cache

  def _replay(self, cache: _Cache, op: tuple[int, int, int, int]) -> None:
    kind, entry_id, row, n = op
    if kind == _DELETE:
      cache.remove(entry_id)
      return
    rows = np.arange(row, row + n)
    cache.put(np.arange(entry_id, entry_id + n), rows, self.rows.vecs[row:row + n])

  def _maybe_rebuild(self, cache: _Cache) -> None:
    n = cache.n
    if n < self.ann.ann_threshold:
      cache.searcher, cache.built_size = None, 0
      return
    if cache.searcher is not None and n < self.ann.rebuild_growth * cache.built_size:
      return
    cache.searcher = build_searcher(cache.mat[:n], cache.ids[:n], self.ann)
    cache.built_size = n


def top_k_by_score_then_id(ids: np.ndarray, scores: np.ndarray, k: int
                           ) -> tuple[np.ndarray, np.ndarray]:
  """Exact top-k per row ordered by (score desc, id asc); ids/scores [Q, n], k <= n.

  argpartition alone would cut arbitrarily among entries tied with the k-th score, so rows
  with such ties are resolved over every entry scoring >= the k-th score.
  """
  q, n = scores.shape
  if n <= 4 * k:
    top = np.lexsort((ids, -scores), axis=-1)[:, :k]  # lexsort: the last key is primary
    return np.take_along_axis(ids, top, -1), np.take_along_axis(scores, top, -1)
  part = np.argpartition(-scores, k - 1, axis=-1)[:, :k]  # [Q, k], unordered
  kth = np.take_along_axis(scores, part, -1).min(-1)  # [Q]
  out_ids = np.take_along_axis(ids, part, -1)
  out_scores = np.take_along_axis(scores, part, -1)
  order = np.lexsort((out_ids, -out_scores), axis=-1)
  out_ids = np.take_along_axis(out_ids, order, -1)
  out_scores = np.take_along_axis(out_scores, order, -1)
  for r in np.flatnonzero((scores >= kth[:, None]).sum(-1) > k):  # ties at the cut
    cand = np.flatnonzero(scores[r] >= kth[r])
    top = cand[np.lexsort((ids[r, cand], -scores[r, cand]))[:k]]
    out_ids[r], out_scores[r] = ids[r, top], scores[r, top]
  return out_ids, out_scores


def build_searcher(vecs: np.ndarray, ids: np.ndarray, ann: AnnConfig):
  """A mutable ScaNN tree + AH + reorder searcher over `vecs` with integer docids `ids`."""
  from scann.scann_ops.py import scann_ops_pybind  # heavy import, only when needed

  n = len(vecs)
  leaves = max(2, int(ann.leaves_per_sqrt * np.sqrt(n)))
  probe = min(leaves, max(ann.min_leaves_to_search, int(round(ann.leaves_to_search_frac * leaves))))
  searcher = (scann_ops_pybind.builder(np.ascontiguousarray(vecs), 10, "dot_product")
              .tree(num_leaves=leaves, num_leaves_to_search=probe,
                    training_sample_size=min(n, ann.training_sample))
              .score_ah(ann.dims_per_block, anisotropic_quantization_threshold=ann.anisotropic_threshold)
              .reorder(ann.reorder)
              .build(docids=[int(i) for i in ids]))
  if ann.num_threads:
    searcher.set_num_threads(ann.num_threads)
  return searcher


class ScannStore:
  """One version of a long-term memory store. Immutable: writes return a new store.

  Args:
    dim: embedding dimension.
    capacity: max live entries (None = unbounded); see `overflow`.
    overflow: "error" (OVERFLOW error when full) or "evict_oldest" (drop the smallest id).
    ann: when / how ScaNN takes over from exact search.
  """

  def __init__(self, dim: int, *, capacity: int | None = None, overflow: str = "error",
               ann: AnnConfig | None = None, _shared: _Shared | None = None, _version: int = 0):
    if _shared is None:
      if dim <= 0:
        raise ValueError(f"ScannStore: dim must be positive, got {dim}")
      if capacity is not None and capacity <= 0:
        raise ValueError(f"ScannStore: capacity must be positive or None, got {capacity}")
      if overflow not in ("error", "evict_oldest"):
        raise ValueError(f"ScannStore: overflow must be 'error' or 'evict_oldest', got {overflow!r}")
      _shared = _Shared(dim, capacity, overflow, ann or AnnConfig(), _Rows(dim))
    self._s = _shared
    self._v = _version

  # --- Introspection. ----------------------------------------------------------------------
  @property
  def dim(self) -> int:
    return self._s.dim

  @property
  def version(self) -> int:
    return self._v

  @property
  def next_id(self) -> int:
    return self._s.next_id[self._v]

  def __len__(self) -> int:
    return self._s.size[self._v]

  @property
  def uses_ann(self) -> bool:
    """Whether reads of this version go through ScaNN (vs exact brute force)."""
    return len(self) >= self._s.ann.ann_threshold

  @property
  def reads_served(self) -> dict[str, int]:
    """Queries answered so far by each path ("exact" numpy, "ann" ScaNN tree + AH), over
    every version of this store (a copy)."""
    return dict(self._s.reads)

  @property
  def index_config(self) -> str | None:
    """The text config of the ScaNN searcher serving this version; None when exact."""
    with self._s.lock:
      searcher = self._cache().searcher
    return None if searcher is None else searcher.config()

  def _cache(self) -> _Cache:
    return self._s.sync(self._v)

  def sync(self) -> "ScannStore":
    """Brings the shared index to this version now (else the next read does it lazily)."""
    with self._s.lock:
      self._cache()
    return self

  def _vecs(self, embeddings, m: int) -> np.ndarray:
    vecs = np.asarray(embeddings, np.float32).reshape(m, -1)
    if vecs.shape[1] != self.dim:
      raise ValueError(f"ScannStore: embedding dim {vecs.shape[1]} != store dim {self.dim}")
    if not np.isfinite(vecs).all():
      raise ValueError("ScannStore: embeddings must be finite")
    return vecs

  def _child(self, op, next_id: int, size: int) -> "ScannStore":
    return ScannStore(self.dim, _shared=self._s,
                      _version=self._s.add_version(self._v, op, next_id, size))

  def _status(self, entry_id: int) -> int:
    if not 0 <= entry_id < self.next_id:
      return BAD_INDEX
    with self._s.lock:
      return OK if entry_id in self._cache().slot else NOT_ALIVE

  # --- Writes. -----------------------------------------------------------------------------
  def create(self, text: str, embedding) -> tuple["ScannStore", int]:
    """Adds one entry; returns (new store, its stable id)."""
    store, ids = self.create_many([text], self._vecs(embedding, 1))
    return store, ids[0]

  def create_many(self, texts: Sequence[str], embeddings) -> tuple["ScannStore", list[int]]:
    """Adds entries with consecutive ids in one version (bulk loading)."""
    texts = list(texts)
    m = len(texts)
    if m == 0:
      return self, []
    vecs = self._vecs(embeddings, m)
    store, size = self, len(self)
    cap = self._s.capacity
    if cap is not None and size + m > cap:
      if self._s.overflow == "error" or m > cap:
        raise MemoryOpError(OVERFLOW, f"store holds {size} of {cap} entries; cannot add {m}")
      with self._s.lock:
        alive = np.sort(self._cache().ids[:size])
      for victim in alive[:size + m - cap]:  # evict the oldest
        store = store.delete(int(victim))
      size = len(store)
    row = self._s.rows.add(texts, vecs)
    first = store.next_id
    new = store._child((_CREATE, first, row, m), first + m, size + m)
    return new, list(range(first, first + m))

  def update(self, entry_id: int, text: str, embedding) -> "ScannStore":
    """Replaces the text and embedding of a live entry."""
    entry_id = int(entry_id)
    vecs = self._vecs(embedding, 1)
    if (st := self._status(entry_id)) != OK:
      raise MemoryOpError(st, f"cannot update entry {entry_id}")
    row = self._s.rows.add([text], vecs)
    return self._child((_UPDATE, entry_id, row, 1), self.next_id, len(self))

  def delete(self, entry_id: int) -> "ScannStore":
    """Removes a live entry (its id is never reused)."""
    entry_id = int(entry_id)
    if (st := self._status(entry_id)) != OK:
      raise MemoryOpError(st, f"cannot delete entry {entry_id}")
    return self._child((_DELETE, entry_id, -1, 1), self.next_id, len(self) - 1)

  # --- Reads. ------------------------------------------------------------------------------
  def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k for a batch of queries: (ids int64 [Q, k], scores float32 [Q, k]), -1/-inf padded.

    Exact below the ANN threshold; above it ScaNN candidates re-scored exactly. Order:
    score descending, ties by lower id.
    """
    q = np.asarray(queries, np.float32)
    single = q.ndim == 1
    q = self._vecs(q, 1 if single else len(q))  # [Q, D]
    if k <= 0:
      raise ValueError(f"ScannStore.search: k must be positive, got {k}")
    with self._s.lock:
      cache = self._cache()
      n = cache.n
      ids_out = np.full((len(q), k), -1, np.int64)
      scores_out = np.full((len(q), k), -np.inf, np.float32)
      if n == 0:
        return ids_out, scores_out
      self._s.reads["exact" if cache.searcher is None else "ann"] += len(q)
      if cache.searcher is None:
        cand_ids = np.broadcast_to(cache.ids[:n], (len(q), n))  # [Q, n]
        cand_scores = q @ cache.mat[:n].T  # [Q, n]
      else:
        # 2k candidates, so that ties at the k-th score can be broken by id; rows whose tie
        # runs past the candidates are asked again as deep as the reorder stage goes.
        want = min(n, 2 * k)
        cand_ids, cand_scores = self._ann_candidates(cache, q, want)
        kth = np.sort(cand_scores, axis=-1)[:, -min(k, want)]
        deeper = np.flatnonzero((cand_scores[:, -1] >= kth) & (want < n))
        if len(deeper):
          deep = min(n, max(self._s.ann.reorder, want))
          d_ids, d_scores = self._ann_candidates(cache, q[deeper], deep)
          pad = d_ids.shape[1] - cand_ids.shape[1]
          cand_ids = np.pad(cand_ids, ((0, 0), (0, pad)), constant_values=-1)
          cand_scores = np.pad(cand_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
          cand_ids[deeper], cand_scores[deeper] = d_ids, d_scores
    m = min(k, cand_ids.shape[1])
    ids_out[:, :m], scores_out[:, :m] = top_k_by_score_then_id(cand_ids, cand_scores, m)
    ids_out[~np.isfinite(scores_out)] = -1
    return ids_out, scores_out

  def _ann_candidates(self, cache, q: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """ScaNN's `width` best candidates per query, re-scored exactly: ids, scores [Q, width]
    (sorted by score desc; -1 / -inf padded)."""
    search = (cache.searcher.search_batched_parallel if self._s.ann.parallel_search
              else cache.searcher.search_batched)
    found, _ = search(q, final_num_neighbors=width)
    cand_ids = np.full((len(q), width), -1, np.int64)
    for i, f in enumerate(found):
      cand_ids[i, :len(f)] = f
    slots = np.array([[cache.slot[int(e)] if e >= 0 else 0 for e in row] for row in cand_ids])
    cand_scores = np.einsum("qd,qcd->qc", q, cache.mat[slots])  # exact re-scoring
    cand_scores[cand_ids < 0] = -np.inf
    order = np.argsort(-cand_scores, axis=-1, kind="stable")
    return np.take_along_axis(cand_ids, order, -1), np.take_along_axis(cand_scores, order, -1)

  def read(self, query_embedding, k: int) -> list[tuple[int, str, float]]:
    """Top-k entries for one query as (id, text, score), best first."""
    ids, scores = self.search(np.asarray(query_embedding, np.float32).reshape(1, -1), k)
    return [(int(i), self.text(int(i)), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]

  def text(self, entry_id: int) -> str:
    """Current text of a live entry."""
    if (st := self._status(entry_id)) != OK:
      raise MemoryOpError(st, f"no live entry {entry_id}")
    with self._s.lock:
      cache = self._cache()
      return self._s.rows.texts[int(cache.rows[cache.slot[entry_id]])]

  def items(self) -> list[tuple[int, str]]:
    """All live (id, text), by id."""
    with self._s.lock:
      cache = self._cache()
      pairs = sorted(zip(cache.ids[:cache.n].tolist(), cache.rows[:cache.n].tolist()))
      return [(i, self._s.rows.texts[r]) for i, r in pairs]

  # --- Persistence. ------------------------------------------------------------------------
  def save(self, path: str | os.PathLike) -> None:
    """Writes this version (live entries, next id, settings, and the ScaNN index if any).

    Older versions are not saved: a loaded store starts a fresh history at this content.
    """
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with self._s.lock:
      cache = self._cache()
      n = cache.n
      order = np.argsort(cache.ids[:n], kind="stable")
      ids, rows = cache.ids[:n][order], cache.rows[:n][order]
      np.save(path / "embeddings.npy", cache.mat[:n][order])
      np.save(path / "ids.npy", ids)
      texts = [self._s.rows.texts[int(r)] for r in rows]
      if cache.searcher is not None:
        (path / "scann").mkdir(exist_ok=True)
        cache.searcher.serialize(str(path / "scann"))
    meta = {"format": 1, "dim": self.dim, "next_id": self.next_id, "capacity": self._s.capacity,
            "overflow": self._s.overflow, "ann": dataclasses.asdict(self._s.ann),
            "built_size": cache.built_size, "texts": texts}
    (path / "store.json").write_text(json.dumps(meta), encoding="utf-8")

  @classmethod
  def load(cls, path: str | os.PathLike) -> "ScannStore":
    """Reads a store written by `save` (reusing its ScaNN index instead of retraining)."""
    path = pathlib.Path(path)
    meta_path = path / "store.json"
    if not meta_path.is_file():
      raise FileNotFoundError(f"ScannStore.load: no store.json in {path}")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format") != 1:
      raise ValueError(f"ScannStore.load: unsupported format {meta.get('format')!r} in {meta_path}")
    vecs, ids = np.load(path / "embeddings.npy"), np.load(path / "ids.npy")
    texts = meta["texts"]
    if not len(vecs) == len(ids) == len(texts):
      raise ValueError(f"ScannStore.load: {path} holds {len(vecs)} vectors, {len(ids)} ids, "
                       f"{len(texts)} texts")
    store = cls(meta["dim"], capacity=meta["capacity"], overflow=meta["overflow"],
                ann=AnnConfig(**meta["ann"]))
    s = store._s
    row = s.rows.add(texts, vecs)
    # One version per contiguous run of ids (gaps from deletes are preserved).
    version = 0
    runs = np.split(np.arange(len(ids)), np.flatnonzero(np.diff(ids) != 1) + 1) if len(ids) else []
    for run in runs:
      version = s.add_version(version, (_CREATE, int(ids[run[0]]), row + int(run[0]), len(run)),
                              int(ids[run[-1]]) + 1, s.size[version] + len(run))
    s.next_id[version] = meta["next_id"]
    cache = s.cache = _Cache(s.dim)
    for v in s.path(version, 0):
      s._replay(cache, s.op[v - 1])
      cache.version = v
    if (path / "scann").is_dir():
      from scann.scann_ops.py import scann_ops_pybind
      cache.searcher = scann_ops_pybind.load_searcher(str(path / "scann"))
      cache.built_size = meta["built_size"]
    s._maybe_rebuild(cache)
    return cls(s.dim, _shared=s, _version=version)


def search_callback(store: ScannStore, k: int) -> Callable[[jax.Array], tuple[jax.Array, jax.Array]]:
  """A jit-compatible search over `store` (fixed version) through `jax.pure_callback`.

  Returns f(queries float32 [..., D]) -> (ids int32 [..., k], scores float32 [..., k]).
  Under `vmap` the callback receives the whole batch at once (one ScaNN batched call).
  """
  def host(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = np.asarray(q, np.float32)
    ids, scores = store.search(q.reshape(-1, store.dim), k)
    shape = q.shape[:-1] + (k,)
    return ids.astype(np.int32).reshape(shape), scores.reshape(shape)

  def f(queries: jax.Array) -> tuple[jax.Array, jax.Array]:
    shape = queries.shape[:-1] + (k,)
    out = (jax.ShapeDtypeStruct(shape, jnp.int32), jax.ShapeDtypeStruct(shape, jnp.float32))
    return jax.pure_callback(host, out, queries, vmap_method="expand_dims")

  return f
