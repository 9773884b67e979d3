"""Transformer: shapes, logical axes, KV-cache and padding consistency, GQA/RoPE maths, dtypes."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from atommem_jax.models import transformer as tr
from atommem_jax.models.config import tiny

FAMILIES = ("qwen3", "qwen2", "llama")
AXES_VOCAB = {"vocab", "embed", "mlp", "heads", "kv_heads", "head_dim", "layers"}
_apply = jax.jit(tr.apply, static_argnums=0)


def _ids(shape, seed=0, vocab=512):
  return jnp.asarray(np.random.RandomState(seed).randint(0, vocab, shape), jnp.int32)


def _random_params(config, seed=0):
  """Params with O(1) norms/biases so family-specific paths actually move the logits."""
  params = tr.init_params(config, seed)
  rng = np.random.RandomState(seed + 1)

  def perturb(path, x):
    name = str(path[-2].key) if len(path) > 1 else ""
    if "norm" in name or "bias" in name:
      return x + jnp.asarray(0.3 * rng.randn(*x.shape), x.dtype)
    return x
  return jax.tree_util.tree_map_with_path(perturb, params)


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_shapes_and_dtype(family):
  config = tiny(family)
  params = tr.init_params(config)
  logits = tr.forward(config, params, _ids((2, 7)))
  assert logits.shape == (2, 7, config.vocab_size) and logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))


def test_module_call_equals_functional_apply():
  config = tiny("qwen3")
  model = tr.Transformer(config, rngs=nnx.Rngs(3))
  ids = _ids((1, 5))
  pos = jnp.arange(5, dtype=jnp.int32)[None]
  direct, _ = model(ids, pos)
  via_apply, _ = tr.apply(config, nnx.split(model)[1], ids, pos)
  np.testing.assert_array_equal(np.asarray(direct), np.asarray(via_apply))


@pytest.mark.parametrize("family,tied", [("qwen3", False), ("qwen2", True), ("llama", True)])
def test_every_param_has_logical_axes(family, tied):
  config = tiny(family, tie_word_embeddings=tied)
  rows = tr.param_logical_axes(config)
  paths = {path for path, _, _ in rows}
  assert ("lm_head" in paths) == (not tied)
  assert ("layers/q_norm" in paths) == (family == "qwen3")
  assert ("layers/q_bias" in paths) == (family == "qwen2")
  for path, axes, shape in rows:
    assert len(axes) == len(shape), path
    assert set(axes) <= AXES_VOCAB, (path, axes)
    assert (axes[0] == "layers") == path.startswith("layers/"), path
    if "layers" in axes:
      assert shape[axes.index("layers")] == config.num_layers
    for ax, n in zip(axes, shape):
      want = {"vocab": config.vocab_size, "embed": config.hidden_size,
              "mlp": config.intermediate_size, "heads": config.num_heads,
              "kv_heads": config.num_kv_heads, "head_dim": config.head_dim}.get(ax)
      assert want is None or n == want, (path, ax, n)
  # The metadata is what nnx's own partition-spec machinery sees.
  specs = nnx.get_partition_spec(tr.abstract_params(config))
  flat = {"/".join(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(specs)}
  for path, axes, _ in rows:
    assert tuple(flat[path]) == axes


@pytest.mark.parametrize("family", FAMILIES)
def test_prefill_then_decode_matches_full_forward(family):
  config = tiny(family, num_heads=4, num_kv_heads=1, head_dim=8)  # GQA ratio 4, Dh != D/H
  params = _random_params(config)
  t, prefill, s = 9, 4, 12
  ids = _ids((2, t))
  full = tr.forward(config, params, ids)
  pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (2, t))
  mask = jnp.arange(s)[None, None, :] <= pos[:, :, None]  # [B, T, S] causal over slots
  cache = tr.init_cache(config, 2, s)
  logits, cache = _apply(config, params, ids[:, :prefill], pos[:, :prefill], cache,
                         mask[:, :prefill])
  np.testing.assert_allclose(logits, full[:, :prefill], atol=1e-5)
  assert int(cache.index) == prefill
  for i in range(prefill, t):
    step, cache = _apply(config, params, ids[:, i:i + 1], pos[:, i:i + 1], cache,
                         mask[:, i:i + 1])
    np.testing.assert_allclose(step[:, 0], full[:, i], atol=1e-5)
  assert int(cache.index) == t
  assert len(cache.k) == len(cache.v) == config.num_layers
  assert cache.k[0].shape == (2, config.num_kv_heads, config.head_dim, s)  # keys transposed
  assert cache.v[0].shape == (2, config.num_kv_heads, s, config.head_dim)


@pytest.mark.parametrize("family,tied", [("qwen3", False), ("qwen2", True), ("llama", True)])
def test_decode_weights_path_equals_stacked_path(family, tied):
  """The cached path on `decode_weights` (fused, feature-major matrices; what the sampler
  uses on CPU) equals the same path slicing the stacked weights (what it uses elsewhere),
  and prefill=True fills the same cache as the step-by-step path."""
  config = tiny(family, num_heads=4, num_kv_heads=2, head_dim=8, tie_word_embeddings=tied)
  params = _random_params(config, seed=3)
  prepared = tr.decode_weights(config, params)
  assert set(prepared.layers[0]) >= {"qkv_t", "o_t", "gate_up_t", "down_t"}
  assert prepared.head_t.shape == (config.vocab_size, config.hidden_size)
  t, s = 5, 8
  ids = _ids((2, t), seed=4)
  pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (2, t))
  mask = jnp.arange(s)[None, None, :] <= pos[:, :, None]
  run = jax.jit(lambda p, c, layers, **kw: tr.apply(config, p, ids, pos, c, mask, layers=layers,
                                                    **kw), static_argnames="prefill")
  plain, plain_cache = run(params, tr.init_cache(config, 2, s), None)
  fast, fast_cache = run(params, tr.init_cache(config, 2, s), prepared)
  np.testing.assert_allclose(fast, plain, atol=1e-5)
  _, prefilled = run(params, tr.init_cache(config, 2, s), None, prefill=True)
  for a, b, c in zip(plain_cache.k + plain_cache.v, fast_cache.k + fast_cache.v,
                     prefilled.k + prefilled.v):
    np.testing.assert_allclose(b, a, atol=1e-5)
    np.testing.assert_allclose(c, a, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padded_batch_matches_unpadded_rows(family):
  """Prefill a left-padded batch, decode greedily with per-row positions and masks; every
  row's logits (prompt and decoded steps) equal an unpadded single-row forward."""
  config = tiny(family)
  params = _random_params(config, seed=1)
  rows = [np.asarray(_ids((7,), seed=2)), np.asarray(_ids((4,), seed=3)),
          np.asarray(_ids((1,), seed=4))]
  t, new, s = 7, 3, 10
  pad = np.array([t - len(r) for r in rows])
  tokens = np.stack([np.concatenate([np.zeros(p, np.int32), r]) for p, r in zip(pad, rows)])
  pos = np.maximum(np.arange(t)[None] - pad[:, None], 0).astype(np.int32)  # [B, T]
  valid = np.arange(s)[None] >= pad[:, None]  # [B, S] non-padding slots
  slot = np.arange(s)[None, None, :]
  mask = (slot <= np.arange(t)[None, :, None]) & valid[:, None, :]  # [B, T, S]
  cache = tr.init_cache(config, len(rows), s)
  logits, cache = _apply(config, params, jnp.asarray(tokens), jnp.asarray(pos), cache,
                         jnp.asarray(mask))
  seqs, steps = [list(r) for r in rows], [logits[:, -1]]
  for k in range(new):
    nxt = np.asarray(jnp.argmax(steps[-1], -1), np.int32)  # [B]
    for seq, n in zip(seqs, nxt):
      seq.append(int(n))
    step_pos = (t - pad + k)[:, None].astype(np.int32)  # [B, 1]
    step_mask = np.broadcast_to((slot <= t + k) & valid[:, None, :], (len(rows), 1, s))
    out, cache = _apply(config, params, jnp.asarray(nxt[:, None]), jnp.asarray(step_pos), cache,
                        jnp.asarray(step_mask))
    steps.append(out[:, 0])
  steps = np.stack([np.asarray(x) for x in steps], 1)  # [B, new + 1, V]
  for b, r in enumerate(rows):
    single = np.asarray(tr.forward(config, params, jnp.asarray(seqs[b])[None]))[0]
    np.testing.assert_allclose(logits[b, pad[b]:], single[:len(r)], atol=1e-5)
    np.testing.assert_allclose(steps[b], single[len(r) - 1:], atol=1e-5)


def test_attn_mask_without_cache_is_anded_with_causal():
  config = tiny("llama")
  params = _random_params(config)
  ids = _ids((1, 6))
  pos = jnp.arange(6, dtype=jnp.int32)[None]
  everything = jnp.ones((1, 6, 6), bool)
  a, _ = tr.apply(config, params, ids, pos, attn_mask=everything)
  b, _ = tr.apply(config, params, ids, pos)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_gqa_attention_equals_repeated_kv_reference():
  rng = np.random.RandomState(0)
  b, t, s, h, hkv, dh = 2, 3, 5, 6, 2, 4
  q, k, v = (jnp.asarray(rng.randn(*shape), jnp.float32)
             for shape in ((b, t, h, dh), (b, s, hkv, dh), (b, s, hkv, dh)))
  mask = jnp.asarray(rng.rand(b, t, s) > 0.3).at[:, :, 0].set(True)
  out = tr.gqa_attention(q, k, v, mask)
  kr, vr = jnp.repeat(k, h // hkv, axis=2), jnp.repeat(v, h // hkv, axis=2)  # [B, S, H, Dh]
  scores = jnp.einsum("bthd,bshd->bhts", q, kr) / np.sqrt(dh)
  scores = jnp.where(mask[:, None], scores, -jnp.inf)
  ref = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(scores, -1), vr)
  np.testing.assert_allclose(out, ref, atol=1e-5)


def test_fully_masked_rows_stay_finite():
  q = jnp.ones((1, 1, 2, 4))
  k = v = jnp.ones((1, 3, 1, 4))
  out = tr.gqa_attention(q, k, v, jnp.zeros((1, 1, 3), bool))
  assert bool(jnp.all(jnp.isfinite(out)))


def test_rope_scores_depend_only_on_relative_position():
  rng = np.random.RandomState(0)
  q = jnp.asarray(rng.randn(1, 1, 1, 16), jnp.float32)
  k = jnp.asarray(rng.randn(1, 1, 1, 16), jnp.float32)

  def score(m, n):
    qm = tr.apply_rope(q, jnp.array([[m]]), 10_000.0)
    kn = tr.apply_rope(k, jnp.array([[n]]), 10_000.0)
    return float(jnp.sum(qm * kn))

  assert score(3, 1) == pytest.approx(score(12, 10), abs=1e-4)
  assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)
  np.testing.assert_allclose(tr.apply_rope(q, jnp.array([[0]]), 1e4), q)  # position 0: identity


def test_bfloat16_params_and_compute():
  config32 = tiny("qwen3")
  config16 = config32.replace(param_dtype="bfloat16", dtype="bfloat16")
  params32 = _random_params(config32)
  params16 = tr.init_params(config16)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params16))
  params16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params32)
  ids = _ids((2, 6))
  l32 = tr.forward(config32, params32, ids)
  l16 = tr.forward(config16, params16, ids)  # [B, T, V]
  assert l16.dtype == jnp.float32
  # Relative bounds (bf16 keeps 8 mantissa bits, eps 2**-8 = 0.4%; measured: 0.8% on the
  # logits, log-prob error 0.7% of their spread): an absolute bound on raw logits would
  # hold for any error small next to the logits' scale, which a random model sets.
  rel = float(jnp.linalg.norm(l16 - l32) / jnp.linalg.norm(l32))
  assert rel < 0.02, f"bf16 logits off by {rel:.2%} (relative L2)"
  lp32, lp16 = jax.nn.log_softmax(l32), jax.nn.log_softmax(l16)  # [B, T, V]
  spread = float(jnp.min(jnp.max(lp32, -1) - jnp.min(lp32, -1)))  # narrowest row's range
  err = float(jnp.max(jnp.abs(lp16 - lp32)))
  assert err < 0.02 * spread, f"bf16 log-probs off by {err:.4f}, spread {spread:.4f}"
  cache = tr.init_cache(config16, 2, 8)
  assert {a.dtype for a in cache.k + cache.v} == {jnp.dtype(jnp.bfloat16)}


@pytest.mark.parametrize("kwargs,match", [
    (dict(attn_mask=None, use_cache=True), "required with a cache"),
    (dict(attn_mask=jnp.ones((1, 4, 5), bool), use_cache=True), r"\[B, T, S\]"),
    (dict(attn_mask=jnp.ones((1, 4, 5), bool), use_cache=False), r"\[B, T, T\]"),
])
def test_bad_masks_raise(kwargs, match):
  config = tiny("llama")
  params = tr.init_params(config)
  cache = tr.init_cache(config, 1, 8) if kwargs["use_cache"] else None
  ids = _ids((1, 4))
  with pytest.raises(ValueError, match=match):
    tr.apply(config, params, ids, jnp.arange(4)[None], cache, kwargs["attn_mask"])


def test_forward_rejects_bad_input_ids():
  config = tiny("llama")
  params = tr.init_params(config)
  with pytest.raises(ValueError, match=r"\[batch, seq\]"):
    tr.forward(config, params, jnp.arange(4))
  with pytest.raises(ValueError, match=r"\[0, 512\)"):
    tr.forward(config, params, jnp.array([[1, 512]]))


@pytest.mark.parametrize("tied", [False, True])
def test_hidden_states_then_unembed_equals_logits(tied):
  config = tiny("qwen3", tie_word_embeddings=tied)
  params = _random_params(config)
  ids = _ids((2, 5))
  pos = jnp.broadcast_to(jnp.arange(5, dtype=jnp.int32), (2, 5))
  hidden, cache = tr.hidden_states(config, params, ids, pos)
  assert hidden.shape == (2, 5, config.hidden_size) and cache is None
  np.testing.assert_allclose(tr.unembed(config, params, hidden), tr.forward(config, params, ids),
                             atol=1e-5)


def test_remat_gives_the_same_loss_and_grads():
  config = tiny("qwen2")
  params = _random_params(config)
  ids = _ids((2, 6))
  pos = jnp.broadcast_to(jnp.arange(6, dtype=jnp.int32), (2, 6))

  def loss(p, remat):
    logits, _ = tr.apply(config, p, ids, pos, remat=remat)
    logp = jax.nn.log_softmax(logits[:, :-1])
    return -jnp.mean(jnp.take_along_axis(logp, ids[:, 1:, None], -1))

  (l0, g0), (l1, g1) = (jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, r)
                        for r in (False, True))
  np.testing.assert_allclose(l0, l1, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(g0)) > 0


@pytest.mark.parametrize("tile_bytes,rows", [(1, 1), (2 * 4 * 8 * 8 * 4, 2)])
def test_prefill_attention_in_row_groups_equals_one_pass(monkeypatch, tile_bytes, rows):
  """CPU prefill attention runs a few batch rows per pass (cache-sized score tiles); the
  result and its gradient must not depend on the grouping."""
  b, t, h, hkv, dh = 5, 8, 4, 2, 4  # 5 rows: groups of 2 leave a remainder
  rng = np.random.RandomState(0)
  q = jnp.asarray(rng.randn(b, t, h, dh), jnp.float32)
  k, v = (jnp.asarray(rng.randn(b, hkv, t, dh), jnp.float32) for _ in range(2))
  mask = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, t, t))
  mask = mask.at[1, :, :3].set(False).at[1, :3, :3].set(jnp.eye(3, dtype=bool))  # left pad
  whole = tr._attention_heads(q, k, v, mask, tr.PREFILL_QUERY_BLOCK)
  monkeypatch.setattr(tr, "CPU_SCORE_TILE_BYTES", tile_bytes)
  assert tr._attention_rows_per_pass(b, h, t, t) == rows
  np.testing.assert_allclose(tr._prefill_attention(q, k, v, mask), whole, atol=1e-6)
  grad = lambda f: jax.grad(lambda q: jnp.sum(f(q, k, v, mask) ** 2))(q)  # noqa: E731
  np.testing.assert_allclose(grad(tr._prefill_attention),
                             grad(lambda *a: tr._attention_heads(*a, tr.PREFILL_QUERY_BLOCK)),
                             atol=1e-5)


def test_row_grouped_forward_equals_one_pass(monkeypatch):
  config = tiny("qwen3")
  params = _random_params(config)
  ids = _ids((3, 10))
  pos = jnp.broadcast_to(jnp.arange(10, dtype=jnp.int32), (3, 10))
  scans = lambda: str(jax.make_jaxpr(  # noqa: E731  scan count of a traced forward
      lambda p: tr.apply(config, p, ids, pos))(params)).count("scan[")
  whole, _ = tr.apply(config, params, ids, pos)  # eager: the patched constant is read
  one_pass_scans = scans()
  monkeypatch.setattr(tr, "CPU_SCORE_TILE_BYTES", 1)
  assert scans() == one_pass_scans + 1  # the row-group lax.map inside the layer scan
  grouped, _ = tr.apply(config, params, ids, pos)
  np.testing.assert_allclose(grouped, whole, atol=1e-5)
