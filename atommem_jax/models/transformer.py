"""Decoder-only transformer (Qwen3 / Qwen2 / Llama) in Flax NNX, with a KV cache.

Design choices (why, not what):

* Layers are *stacked*: every per-layer weight is one `[L, ...]` array. Training, scoring
  and prefill run the layers as a single `jax.lax.scan`, so their compile time is
  independent of depth (Qwen3-8B's 36 layers trace once). Decode (a cache, a few new
  tokens) runs an unrolled layer loop instead, over a cache held as one array per layer:
  each layer writes its T new slots with an in-place `dynamic_update_slice` and reads its
  own keys without the per-layer copy XLA:CPU makes when slicing a stacked `[L, ...]` cache
  inside the sampler's `lax.while_loop` (measured with the changes in docs/design_notes.md:
  45 -> 21 ms per batch-16 step of a 512-hidden, 8-layer model; the decode step is small,
  so unrolling it compiles in seconds).
* Weights are stored in "einsum layout" (`q_proj: [L, D, H, Dh]`, `o_proj: [L, H, Dh, D]`,
  ...): no reshapes in the hot path, and every dimension has a logical axis name
  (`layers`, `vocab`, `embed`, `mlp`, `heads`, `kv_heads`, `head_dim`) attached as NNX
  `sharding_names` metadata (flax 0.12 stores it as `out_sharding`). `param_logical_axes`
  lists them so sharding rules can be checked against each tensor.
* GQA never materialises repeated K/V: each KV head's G query heads (times T queries) form
  the rows of one matmul against that head's keys, `[B, Hkv, G*T, Dh] x [B, Hkv, Dh, S]`.
* Numerics follow `transformers`: RMSNorm and softmax in float32, RoPE as rotate-half with
  float32 angles, logits returned as float32 whatever the compute dtype.

Public API (the model contract):
  Transformer(config, *, rngs)(tokens, positions, cache=None, attn_mask=None) -> (logits, cache)
  init_cache(config, batch, max_len, dtype=None) -> Cache
  init_params(config, seed=0) -> nnx.State
  apply(config, params, tokens, positions, cache=None, attn_mask=None, *, remat=False,
        prefill=False, layers=None) -> (logits, cache)
  decode_weights(config, params) -> DecodeWeights for apply(..., layers=) in decode loops
  forward(config, params, input_ids) -> logits
  hidden_states(config, params, tokens, positions, cache=None, attn_mask=None, *, prefill=False,
                shared_prefix=0, segment_ids=None) -> (hidden, cache)
  unembed(config, params, hidden) -> logits
  param_logical_axes(config) -> [(path, axes, shape)]
"""
from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from atommem_jax.models import partitioning
from atommem_jax.models import splash
from atommem_jax.models.config import ModelConfig

Array = jax.Array

_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)  # finite: fully-masked rows stay NaN-free


@flax.struct.dataclass
class Cache:
  """Preallocated KV cache: one array per layer, so a decode step reads and writes each
  layer's cache in place (a stacked `[L, ...]` cache makes XLA:CPU copy the layer's slice out
  on every read, which at long contexts costs more than the attention itself).

  k: L arrays `[B, Hkv, Dh, S]`, keys stored transposed so a decode step's scores are a
    plain `[G*T, Dh] x [Dh, S]` matmul per head (1.6x faster than contracting `[S, Dh]`
    keys on their last axis at S = 2,100 on CPU);
  v: L arrays `[B, Hkv, S, Dh]`;
  index: int32 scalar, the next slot to write (shared by the batch; per-row padding is
    expressed through positions and the attention mask). The caller keeps
    `index + T <= S`: under jit the index is traced, and XLA's dynamic_update_slice would
    clamp an overflowing write instead of failing.
  """

  k: tuple[Array, ...]
  v: tuple[Array, ...]
  index: Array

  @property
  def max_len(self) -> int:
    return self.v[0].shape[2]

  @property
  def batch(self) -> int:
    return self.v[0].shape[0]


def init_cache(config: ModelConfig, batch: int, max_len: int, dtype: Any = None) -> Cache:
  """An empty cache for `batch` sequences of up to `max_len` tokens (prompt + generation)."""
  if batch <= 0 or max_len <= 0:
    raise ValueError(f"init_cache: batch and max_len must be positive, got {batch}, {max_len}")
  dtype = config.jnp_dtype if dtype is None else dtype
  kshape = (batch, config.num_kv_heads, config.head_dim, max_len)
  vshape = (batch, config.num_kv_heads, max_len, config.head_dim)
  n = config.num_layers
  return Cache(k=tuple(jnp.zeros(kshape, dtype) for _ in range(n)),
               v=tuple(jnp.zeros(vshape, dtype) for _ in range(n)),
               index=jnp.zeros((), jnp.int32))


# ----------------------------------------------------------------------------- parameters


def _param(rngs: nnx.Rngs | None, shape: tuple[int, ...], axes: tuple[str, ...], dtype: Any,
           init: str) -> nnx.Param:
  """A parameter with logical axis names; init is 'normal' (std 0.02), 'ones' or 'zeros'."""
  assert len(shape) == len(axes), (shape, axes)
  if init == "normal":
    # The barrier stops XLA folding the scale into the sampler's constants under jit, so a
    # jitted or sharded init (training.sharding.sharded_init) equals this eager one bit for bit.
    value = 0.02 * jax.lax.optimization_barrier(jax.random.normal(rngs.params(), shape,
                                                                  jnp.float32))
  elif init == "ones":
    value = jnp.ones(shape, jnp.float32)
  else:
    value = jnp.zeros(shape, jnp.float32)
  # eager_sharding=False: the names are metadata for sharding rules, not a request to shard
  # now (there is no mesh at construction time).
  return nnx.Param(value.astype(dtype), sharding_names=axes, eager_sharding=False)


class DecoderStack(nnx.Module):
  """All decoder layers' weights, stacked along a leading `layers` axis."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    c = config
    L, D, F, H, K, Dh = (c.num_layers, c.hidden_size, c.intermediate_size, c.num_heads,
                         c.num_kv_heads, c.head_dim)
    p = functools.partial(_param, rngs, dtype=c.jnp_param_dtype)
    self.input_norm = p((L, D), ("layers", "embed"), init="ones")
    self.q_proj = p((L, D, H, Dh), ("layers", "embed", "heads", "head_dim"), init="normal")
    self.k_proj = p((L, D, K, Dh), ("layers", "embed", "kv_heads", "head_dim"), init="normal")
    self.v_proj = p((L, D, K, Dh), ("layers", "embed", "kv_heads", "head_dim"), init="normal")
    self.o_proj = p((L, H, Dh, D), ("layers", "heads", "head_dim", "embed"), init="normal")
    if c.attention_bias:
      self.q_bias = p((L, H, Dh), ("layers", "heads", "head_dim"), init="zeros")
      self.k_bias = p((L, K, Dh), ("layers", "kv_heads", "head_dim"), init="zeros")
      self.v_bias = p((L, K, Dh), ("layers", "kv_heads", "head_dim"), init="zeros")
      if _has_o_bias(c):
        self.o_bias = p((L, D), ("layers", "embed"), init="zeros")
    if c.use_qk_norm:
      self.q_norm = p((L, Dh), ("layers", "head_dim"), init="ones")
      self.k_norm = p((L, Dh), ("layers", "head_dim"), init="ones")
    self.post_attn_norm = p((L, D), ("layers", "embed"), init="ones")
    self.gate_proj = p((L, D, F), ("layers", "embed", "mlp"), init="normal")
    self.up_proj = p((L, D, F), ("layers", "embed", "mlp"), init="normal")
    self.down_proj = p((L, F, D), ("layers", "mlp", "embed"), init="normal")


def _has_o_bias(config: ModelConfig) -> bool:
  """HF Llama/Qwen3 put a bias on o_proj too when attention_bias is set; Qwen2 never does."""
  return config.attention_bias and config.family != "qwen2"


class Transformer(nnx.Module):
  """Decoder-only LM. See the module docstring for layout and numerics."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    c = config
    p = functools.partial(_param, rngs, dtype=c.jnp_param_dtype)
    self.embed = p((c.vocab_size, c.hidden_size), ("vocab", "embed"), init="normal")
    self.layers = DecoderStack(c, rngs=rngs)
    self.final_norm = p((c.hidden_size,), ("embed",), init="ones")
    if not c.tie_word_embeddings:
      self.lm_head = p((c.hidden_size, c.vocab_size), ("embed", "vocab"), init="normal")

  def __call__(self, tokens: Array, positions: Array, cache: Cache | None = None,
               attn_mask: Array | None = None, *, remat: bool = False, prefill: bool = False,
               layers: DecodeWeights | None = None
               ) -> tuple[Array, Cache | None]:
    """Logits `[B, T, V]` float32 for int32 `tokens`/`positions` `[B, T]`.

    With a cache: writes K/V at slots `[index, index + T)`, attends over all S slots under
    `attn_mask` `[B, T, S]` (True = may attend; required, the caller owns padding and
    causality) and returns the cache advanced by T. Without: causal attention over the T
    tokens, AND-ed with `attn_mask` `[B, T, T]` if given. remat: recompute each layer's
    activations in the backward pass (`jax.checkpoint` on the scanned layer) for training.
    prefill: the cache is empty and the mask causal; attend among the new tokens only.
    layers: `decode_weights(...)` for the cached path (see `_forward`).
    """
    lm_head = None if self.config.tie_word_embeddings else self.lm_head[...]
    return _forward(self.config, self.embed[...], self.stacked_layer_params(),
                    self.final_norm[...], lm_head, tokens, positions, cache, attn_mask,
                    remat=remat, prefill=prefill, layers=layers)

  def stacked_layer_params(self) -> dict[str, Array]:
    """The decoder weights as raw `[L, ...]` arrays, by name."""
    return {k: v[...] for k, v in vars(self.layers).items() if isinstance(v, nnx.Param)}


# ----------------------------------------------------------------------------- numerics


def rms_norm(x: Array, weight: Array, eps: float) -> Array:
  """RMSNorm over the last axis in float32, scaled in the input dtype (as transformers)."""
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return weight.astype(x.dtype) * y.astype(x.dtype)


def apply_rope(x: Array, positions: Array, theta: float) -> Array:
  """Rotate-half RoPE. x `[B, T, N, Dh]`, positions `[B, T]` (per row: left padding works)."""
  dh = x.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, dh, 2, dtype=jnp.float32) / dh))  # [Dh/2]
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, Dh/2]
  cos = jnp.cos(angles)[:, :, None, :].astype(x.dtype)  # [B, T, 1, Dh/2]
  sin = jnp.sin(angles)[:, :, None, :].astype(x.dtype)
  x1, x2 = x[..., : dh // 2], x[..., dh // 2:]
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


@flax.struct.dataclass
class SegmentMask:
  """The `[B, T, S]` attention mask of packed rows, kept factored so that no array larger
  than one query block's `[B, blk, S]` slice ever exists: query i may attend to key j iff
  both lie in the same segment (equal, non-zero ids) and `j <= i + offset`.

  `_attention_heads` slices it like a dense mask (`mask[:, q0:q1, k0:k1]`) and densifies
  only the block it works on; a padding query (id 0) sees nothing (its output is unused).
  """

  q_segments: Array  # [B, T] int32 segment id of each query, 0 = padding
  k_segments: Array  # [B, S] int32 segment id of each key
  offset: int = flax.struct.field(pytree_node=False, default=0)  # key index of query 0

  @property
  def shape(self) -> tuple[int, int, int]:
    return (*self.q_segments.shape, self.k_segments.shape[-1])

  def __getitem__(self, index: tuple[slice, slice, slice]) -> "SegmentMask":
    rows, qs, ks = index
    if any(s.step not in (None, 1) for s in index):
      raise ValueError(f"SegmentMask supports unit-step slices only, got {index}")
    q0, k0 = qs.indices(self.shape[1])[0], ks.indices(self.shape[2])[0]
    return SegmentMask(self.q_segments[rows, qs], self.k_segments[rows, ks],
                       offset=self.offset + q0 - k0)

  def dense(self) -> Array:
    """The bool mask `[B, T, S]` (call it on a block, not on a whole long row)."""
    t, s = self.shape[1:]
    causal = jnp.arange(s)[None, :] <= jnp.arange(t)[:, None] + self.offset  # [T, S]
    q, k = self.q_segments[:, :, None], self.k_segments[:, None, :]
    return (q == k) & (q != 0) & causal[None]


def gqa_attention(q: Array, k: Array, v: Array, mask: Array, causal_block: int = 0) -> Array:
  """Grouped-query attention without repeating K/V.

  q `[B, T, H, Dh]`, k/v `[B, S, Hkv, Dh]`, mask `[B, T, S]` bool -> `[B, T, H, Dh]`.
  causal_block > 0 declares the mask causal with the T queries as the last T of the S
  keys (query i sees no key after S - T + i): queries are then processed in blocks of that
  size, each against the keys up to its own end only. Same result; half the score FLOPs,
  and [B, H, blk, S] score tiles instead of one [B, H, T, S] tensor (long prefills on CPU
  are bound by that tensor's memory traffic).
  """
  k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)  # [B, Hkv, S, Dh]
  return _attention_heads(q, k, v, mask, causal_block)


def _attention_heads(q: Array, k: Array, v: Array, mask: Array, causal_block: int = 0, *,
                     keys_transposed: bool = False) -> Array:
  """`gqa_attention` on heads-major keys/values: v `[B, Hkv, S, Dh]`, k the same or, with
  keys_transposed, `[B, Hkv, Dh, S]` (the cache layout).

  A head group's G query heads and T queries are merged into one `M = G * T` row axis, so
  both contractions are rank-4 batched matmuls `[B, Hkv]` x (`[M, Dh] @ [Dh, S]`,
  `[M, S] @ [S, Dh]`) that XLA:CPU hands to its fast matmul library; the rank-5 form
  (`btkgd,bksd->bkgts`) fell back to XLA's naive dot emitter and cost 3x in decode.
  """
  b, t, h, dh = q.shape
  hkv, s = v.shape[1], v.shape[2]
  g = h // hkv
  if causal_block and s >= t > causal_block:
    # Causal with the queries as the last t of the s keys (s - t keys precede them all).
    offset = s - t
    outs = []
    for start in range(0, t, causal_block):
      end = offset + min(t, start + causal_block)
      kb = k[:, :, :, :end] if keys_transposed else k[:, :, :end]
      outs.append(_attention_heads(q[:, start:start + causal_block], kb, v[:, :, :end],
                                   mask[:, start:start + causal_block, :end],
                                   keys_transposed=keys_transposed))
    return jnp.concatenate(outs, axis=1)
  qm = q.reshape(b, t, hkv, g, dh).transpose(0, 2, 3, 1, 4).reshape(b, hkv, g * t, dh)
  spec = "bkmd,bkds->bkms" if keys_transposed else "bkmd,bksd->bkms"
  scores = jnp.einsum(spec, qm, k, preferred_element_type=jnp.float32) * (dh ** -0.5)
  scores = scores.reshape(b, hkv, g, t, s)  # [B, Hkv, G, T, S]
  if isinstance(mask, SegmentMask):
    mask = mask.dense()  # [B, T, S] for this query block only
  scores = jnp.where(mask[:, None, None, :, :], scores, _MASK_VALUE)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(b, hkv, g * t, s)
  out = jnp.einsum("bkms,bksd->bkmd", probs, v)  # [B, Hkv, G*T, Dh]
  return out.reshape(b, hkv, g, t, dh).transpose(0, 3, 1, 2, 4).reshape(b, t, h, dh)


PREFILL_QUERY_BLOCK = 512  # query block of causal prefill attention (see gqa_attention)
# Largest attention score tile `[rows, H, query block, S]` float32 that one pass of CPU
# prefill attention materialises (see `_prefill_attention`); about a Zen 4 / Ice Lake L3 slice.
CPU_SCORE_TILE_BYTES = 8 << 20


def _attention_rows_per_pass(batch: int, heads: int, queries: int, keys: int) -> int:
  """How many batch rows `_prefill_attention` gives one pass: all of them off CPU; on CPU as
  many as keep the score tile within CPU_SCORE_TILE_BYTES (at least 1)."""
  if partitioning.platform() != "cpu":
    return batch
  tile = heads * min(queries, PREFILL_QUERY_BLOCK) * keys * 4
  return max(1, min(batch, CPU_SCORE_TILE_BYTES // tile))


def _prefill_attention(q: Array, k: Array, v: Array, mask: Array) -> Array:
  """Causal blocked attention (`_attention_heads`) over a batch, a few rows per pass.

  XLA:CPU materialises every elementwise step of the softmax over the whole score tensor;
  for a batch that tensor (`[B, H, block, S]`: 0.9 GB for 32 rows x 1,700 keys of a small
  model) streams through DRAM several times per layer, while one row's tile stays in cache.
  Rows are therefore processed by a `lax.map` in groups that keep the tile cache-sized,
  which makes a batched prefill cost per row what a single-row one does. Off CPU the whole
  batch is one pass. q `[B, T, H, Dh]`, k/v `[B, Hkv, S, Dh]`, mask `[B, T, S]`.
  """
  b, t, h, _ = q.shape
  rows = _attention_rows_per_pass(b, h, t, k.shape[2])
  if rows >= b:
    return _attention_heads(q, k, v, mask, PREFILL_QUERY_BLOCK)
  one_row = lambda xs: _attention_heads(  # noqa: E731  (mask may be a SegmentMask pytree)
      *jax.tree.map(lambda a: a[None], xs), PREFILL_QUERY_BLOCK)[0]
  return jax.lax.map(one_row, (q, k, v, mask), batch_size=rows)


def _qkv(c: ModelConfig, w: dict[str, Array], x: Array, positions: Array
         ) -> tuple[Array, Array, Array]:
  """A layer's rotated queries `[B, T, H, Dh]` and keys/values `[B, Hkv, T, Dh]`.

  `w` holds either the checkpoint-layout weights (`q_proj [D, H, Dh]`, ...) or, from
  `decode_weights`, one fused feature-major matrix `qkv_t [(H + 2 Hkv) Dh, D]`.
  """
  h = rms_norm(x, w["input_norm"], c.rms_norm_eps)  # [B, T, D]
  if "qkv_t" in w:
    b, t, _ = h.shape
    nq, nk = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    qkv = _feature_major_matmul(h, w["qkv_t"])  # [B, T, (H + 2 Hkv) Dh]
    q = qkv[..., :nq].reshape(b, t, c.num_heads, c.head_dim)
    k = qkv[..., nq:nq + nk].reshape(b, t, c.num_kv_heads, c.head_dim)
    v = qkv[..., nq + nk:].reshape(b, t, c.num_kv_heads, c.head_dim)
  else:
    q = jnp.einsum("btd,dhk->bthk", h, w["q_proj"])  # [B, T, H, Dh]
    k = jnp.einsum("btd,dhk->bthk", h, w["k_proj"])  # [B, T, Hkv, Dh]
    v = jnp.einsum("btd,dhk->bthk", h, w["v_proj"])
  if c.attention_bias:
    q, k, v = q + w["q_bias"], k + w["k_bias"], v + w["v_bias"]
  if c.use_qk_norm:
    q = rms_norm(q, w["q_norm"], c.rms_norm_eps)
    k = rms_norm(k, w["k_norm"], c.rms_norm_eps)
  q = apply_rope(q, positions, c.rope_theta)
  k = apply_rope(k, positions, c.rope_theta)
  return q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)


def _feature_major_matmul(x: Array, w_t: Array) -> Array:
  """`x @ w_t.T` for x `[B, T, Din]`, w_t `[Dout, Din]`, computed as `[Dout, B, T]`.

  With few rows (decode) XLA:CPU's matmul streams a `[Dout, Din]` weight as the left operand
  15-35% faster than a `[Din, Dout]` one as the right (a 576 x 49,152 head: 10.0 -> 6.6 ms
  at batch 16); the transpose back of the small `[Dout, B, T]` result is nearly free.
  """
  return jnp.einsum("od,btd->obt", w_t, x).transpose(1, 2, 0)


def _attn_out_and_mlp(c: ModelConfig, w: dict[str, Array], x: Array, attn: Array) -> Array:
  """Residual stream after the attention output projection and the SwiGLU MLP (weights in
  either layout, see `_qkv`)."""
  if "o_t" in w:
    b, t = attn.shape[:2]
    out = _feature_major_matmul(attn.reshape(b, t, -1), w["o_t"])
  else:
    out = jnp.einsum("bthk,hkd->btd", attn, w["o_proj"])
  if "o_bias" in w:
    out = out + w["o_bias"]
  x = x + out
  h = rms_norm(x, w["post_attn_norm"], c.rms_norm_eps)
  if "gate_up_t" in w:
    gate_up = _feature_major_matmul(h, w["gate_up_t"])  # [B, T, 2F]
    gate, up = gate_up[..., :c.intermediate_size], gate_up[..., c.intermediate_size:]
    return x + _feature_major_matmul(jax.nn.silu(gate) * up, w["down_t"])
  gate = jnp.einsum("btd,df->btf", h, w["gate_proj"])
  up = jnp.einsum("btd,df->btf", h, w["up_proj"])
  return x + jnp.einsum("btf,fd->btd", jax.nn.silu(gate) * up, w["down_proj"])


@flax.struct.dataclass
class DecodeWeights:
  """Weights rearranged once for many decode steps (see `decode_weights`).

  layers: per layer, the norms and biases as stored plus fused feature-major matrices
    `qkv_t [(H + 2 Hkv) Dh, D]`, `o_t [D, H Dh]`, `gate_up_t [2F, D]`, `down_t [D, F]`;
  head_t: the output head as `[V, D]` (the tied embedding itself, or lm_head transposed).
  """

  layers: tuple[dict[str, Array], ...]
  head_t: Array


def _decode_layer(c: ModelConfig, w: dict[str, Array]) -> dict[str, Array]:
  """One layer's weights in the `DecodeWeights` layout."""
  L = lambda a: a.reshape(a.shape[0], -1)  # noqa: E731  [D, ...] -> [D, prod(...)]
  out = {k: v for k, v in w.items() if not k.endswith("_proj")}
  out["qkv_t"] = jnp.concatenate([L(w["q_proj"]), L(w["k_proj"]), L(w["v_proj"])], 1).T
  out["o_t"] = w["o_proj"].reshape(-1, c.hidden_size).T
  out["gate_up_t"] = jnp.concatenate([w["gate_proj"], w["up_proj"]], 1).T
  out["down_t"] = w["down_proj"].T
  return out


def unstack_layers(layer_params: dict[str, Array]) -> tuple[dict[str, Array], ...]:
  """Per-layer weight dicts (checkpoint layout) from the stacked `[L, ...]` ones."""
  n = next(iter(layer_params.values())).shape[0]
  return tuple({k: v[i] for k, v in layer_params.items()} for i in range(n))


def _forward(config: ModelConfig, embed: Array, lp: dict[str, Array], final_norm: Array,
             lm_head: Array | None, tokens: Array, positions: Array, cache: Cache | None,
             attn_mask: Array | None, return_hidden: bool = False, remat: bool = False,
             prefill: bool = False, layers: DecodeWeights | None = None,
             shared_prefix: int = 0, segment_ids: Array | None = None
             ) -> tuple[Array, Cache | None]:
  """The pure forward pass over raw arrays (what `Transformer.__call__` and `apply` run).

  Two layer loops, one numerics:
  * no cache, or prefill: one `lax.scan` over the stacked layers (compile time independent
    of depth; `remat` applies here). prefill: the cache is empty (index 0) and `attn_mask`
    is causal, so the T new tokens attend among themselves only (blocked), and their K/V
    come out of the scan and are written into each layer's cache after it.
  * cache, not prefill (decode, or appending T tokens): an unrolled loop over layers, each
    reading and writing its own cache arrays in place. `layers` (from `decode_weights`)
    supplies weights already sliced per layer and rearranged for few-row matmuls; else
    the stacked weights are sliced here.
  shared_prefix (static, prefill only): the cache's first `shared_prefix` slots already hold
  a prefix that every row shares (`cache.index == shared_prefix`); the T new tokens attend
  to it and causally among themselves. The prefix's keys/values are read from row 0 and
  broadcast, so a batch of prompts with a common head (a system prompt; GRPO's G samples
  of one question) prefills that head once instead of B times.
  return_hidden: return the final-norm hidden states `[B, T, D]` (compute dtype) instead of
  the logits (for embedders, and for chunked log-prob computation over large vocabularies).
  segment_ids (no cache only): int `[B, T]` ids of packed segments (1.. inside a row, 0 =
  padding); a token attends causally within its own segment. The mask stays factored
  (`SegmentMask`): only one query block's slice is ever formed, never a `[B, T, T]` array.
  """
  c = config
  dtype = c.jnp_dtype
  if tokens.ndim != 2 or positions.shape != tokens.shape:
    raise ValueError(f"tokens and positions must both be [B, T]; got {tokens.shape} and "
                     f"{positions.shape}")
  b, t = tokens.shape
  if segment_ids is not None:
    if cache is not None or attn_mask is not None:
      raise ValueError("segment_ids is for the no-cache forward and replaces attn_mask; got "
                       f"cache={cache is not None}, attn_mask={attn_mask is not None}")
    if segment_ids.shape != (b, t):
      raise ValueError(f"segment_ids must be [B, T] = {(b, t)}, got {segment_ids.shape}")
    mask = SegmentMask(segment_ids, segment_ids)
  elif cache is None:
    mask = jnp.tril(jnp.ones((t, t), bool))[None]  # [1, T, T]
    if attn_mask is not None:
      if attn_mask.shape != (b, t, t):
        raise ValueError(f"attn_mask must be [B, T, T] = {(b, t, t)} without a cache, got "
                         f"{attn_mask.shape}")
      mask = mask & attn_mask
    mask = jnp.broadcast_to(mask, (b, t, t))
  else:
    s = cache.max_len
    if attn_mask is None:
      raise ValueError("attn_mask [B, T, S] is required with a cache (padding + causality)")
    if attn_mask.shape != (b, t, s):
      raise ValueError(f"attn_mask must be [B, T, S] = {(b, t, s)} with a cache, got "
                       f"{attn_mask.shape}")
    if cache.batch != b:
      raise ValueError(f"cache batch {cache.batch} != tokens batch {b}")
    if len(cache.v) != c.num_layers:
      raise ValueError(f"cache has {len(cache.v)} layers, the model {c.num_layers}")
    mask = attn_mask.astype(bool)
    if prefill:
      mask = mask[:, :, :shared_prefix + t]
  if prefill and cache is None:
    raise ValueError("prefill=True needs a cache to fill")
  if shared_prefix and not prefill:
    raise ValueError("shared_prefix needs prefill=True")

  # Under sharding rules: gather from a table split by vocabulary only (FSDP's split of its
  # embed dim would clash with the rows' split over fsdp), then split the rows. No-ops otherwise.
  x = partitioning.constrain(embed, ("vocab", None))[tokens].astype(dtype)  # [B, T, D]
  x = partitioning.constrain(x, partitioning.ACT_BTD)
  if cache is not None and not prefill:
    per_layer = unstack_layers(lp) if layers is None else layers.layers
    if layers is not None:
      lm_head = layers.head_t  # [V, D]
    new_k, new_v = [], []
    for w, kc, vc in zip(per_layer, cache.k, cache.v):
      w = {k: v.astype(dtype) for k, v in w.items()}
      q, k, v = _qkv(c, w, x, positions)
      kc = jax.lax.dynamic_update_slice(kc, jnp.swapaxes(k, 2, 3).astype(kc.dtype),
                                        (0, 0, 0, cache.index))  # [B, Hkv, Dh, S]
      vc = jax.lax.dynamic_update_slice(vc, v.astype(vc.dtype), (0, 0, cache.index, 0))
      new_k.append(kc)
      new_v.append(vc)
      attn = _attention_heads(q, kc.astype(dtype), vc.astype(dtype), mask,
                              keys_transposed=True)  # [B, T, H, Dh]
      x = _attn_out_and_mlp(c, w, x, attn)
    new_cache = Cache(k=tuple(new_k), v=tuple(new_v), index=cache.index + t)
  else:
    lp = {k: v.astype(dtype) for k, v in lp.items()}
    xs: Any = lp
    fused = c.attention == "splash" and cache is None
    if fused and attn_mask is not None:
      raise ValueError("model.attention=splash takes causality and segment_ids, not a dense "
                       "attn_mask; pass segment_ids or use model.attention=xla")
    if shared_prefix:  # row 0's prefix keys/values, per layer: [L, 1, Hkv, P0, Dh]
      xs = (lp, jnp.stack([jnp.swapaxes(kc[:1, :, :, :shared_prefix], 2, 3) for kc in cache.k]),
            jnp.stack([vc[:1, :, :shared_prefix] for vc in cache.v]))

    def layer(x, xs):
      w = xs[0] if shared_prefix else xs
      q, k, v = _qkv(c, w, x, positions)
      keys, values = k, v
      if shared_prefix:
        shape = (b,) + xs[1].shape[1:]  # [B, Hkv, P0, Dh]
        keys = jnp.concatenate([jnp.broadcast_to(xs[1].astype(dtype), shape), k], axis=2)
        values = jnp.concatenate([jnp.broadcast_to(xs[2].astype(dtype), shape), v], axis=2)
      if fused:  # the Pallas splash kernel (models/splash.py)
        attn = splash.splash_attention(q, keys, values, segment_ids)
      else:
        attn = _prefill_attention(q, keys, values, mask)  # [B, T, H, Dh]
      x = partitioning.constrain(_attn_out_and_mlp(c, w, x, attn), partitioning.ACT_BTD)
      return x, ((k, v) if prefill else None)

    if remat:  # keep only each layer's input; recompute the rest when differentiating
      layer = jax.checkpoint(layer, policy=jax.checkpoint_policies.nothing_saveable)
    x, kv = jax.lax.scan(layer, x, xs)  # kv: ([L, B, Hkv, T, Dh], same) when prefill
    new_cache = None
    if prefill:
      ks, vs = kv
      new_cache = Cache(
          k=tuple(jax.lax.dynamic_update_slice(kc, jnp.swapaxes(ks[i], 2, 3).astype(kc.dtype),
                                               (0, 0, 0, cache.index))
                  for i, kc in enumerate(cache.k)),
          v=tuple(jax.lax.dynamic_update_slice(vc, vs[i].astype(vc.dtype), (0, 0, cache.index, 0))
                  for i, vc in enumerate(cache.v)),
          index=cache.index + t)
  x = rms_norm(x, final_norm, c.rms_norm_eps)
  if return_hidden:
    return x, new_cache
  if layers is not None:
    logits = _feature_major_matmul(x, lm_head.astype(dtype))  # [B, T, V]
  elif lm_head is None:
    logits = jnp.einsum("btd,vd->btv", x, embed.astype(dtype), preferred_element_type=jnp.float32)
  else:
    logits = jnp.einsum("btd,dv->btv", x, lm_head.astype(dtype), preferred_element_type=jnp.float32)
  return partitioning.constrain(logits.astype(jnp.float32), partitioning.ACT_BTV), new_cache


# ----------------------------------------------------------------------------- functional API


@functools.lru_cache(maxsize=None)
def _graphdef(config: ModelConfig) -> nnx.GraphDef:
  """The (static) module structure for a config, built abstractly once."""
  abstract = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
  return nnx.split(abstract)[0]


def abstract_params(config: ModelConfig) -> nnx.State:
  """Params as `jax.ShapeDtypeStruct`s (with metadata): nothing is allocated."""
  return nnx.split(nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0))))[1]


def init_params(config: ModelConfig, seed: int = 0) -> nnx.State:
  """Randomly initialised params (`nnx.State`, as `nnx.split(model)` returns them)."""
  return nnx.split(Transformer(config, rngs=nnx.Rngs(seed)))[1]


def apply(config: ModelConfig, params: nnx.State, tokens: Array, positions: Array,
          cache: Cache | None = None, attn_mask: Array | None = None, *, remat: bool = False,
          prefill: bool = False, layers: DecodeWeights | None = None
          ) -> tuple[Array, Cache | None]:
  """Functional `Transformer.__call__`; jit it with `config` static (it is hashable)."""
  model = nnx.merge(_graphdef(config), params)
  return model(tokens, positions, cache, attn_mask, remat=remat, prefill=prefill, layers=layers)


def decode_weights(config: ModelConfig, params: nnx.State) -> DecodeWeights:
  """Weights for `apply(..., layers=...)`: sliced per layer, fused and transposed once,
  read by many decode steps (a second copy of the weights: the sampler makes it on CPU
  only, see `sampler._unstack_weights`)."""
  model = nnx.merge(_graphdef(config), params)
  dtype = config.jnp_dtype
  layers = tuple(_decode_layer(config, {k: v.astype(dtype) for k, v in w.items()})
                 for w in unstack_layers(model.stacked_layer_params()))
  head = model.embed[...] if config.tie_word_embeddings else model.lm_head[...].T
  return DecodeWeights(layers=layers, head_t=head.astype(dtype))


def hidden_states(config: ModelConfig, params: nnx.State, tokens: Array, positions: Array,
                  cache: Cache | None = None, attn_mask: Array | None = None, *,
                  remat: bool = False, prefill: bool = False, shared_prefix: int = 0,
                  segment_ids: Array | None = None) -> tuple[Array, Cache | None]:
  """As `apply`, but returns the final-norm hidden states `[B, T, D]` instead of logits.

  shared_prefix: see `_forward` (a prefill after a prefix common to all rows).
  segment_ids: `[B, T]` packed-segment ids for the no-cache forward (see `_forward`)."""
  model = nnx.merge(_graphdef(config), params)
  return _forward(config, model.embed[...], model.stacked_layer_params(), model.final_norm[...],
                  None, tokens, positions, cache, attn_mask, return_hidden=True, remat=remat,
                  prefill=prefill, shared_prefix=shared_prefix, segment_ids=segment_ids)


def unembed(config: ModelConfig, params: nnx.State, hidden: Array) -> Array:
  """Float32 logits `[..., V]` from final hidden states `[..., D]` (tied or untied head)."""
  if config.tie_word_embeddings:
    w = params["embed"][...].astype(hidden.dtype)  # [V, D]
    return jnp.einsum("...d,vd->...v", hidden, w, preferred_element_type=jnp.float32)
  w = params["lm_head"][...].astype(hidden.dtype)  # [D, V]
  return jnp.einsum("...d,dv->...v", hidden, w, preferred_element_type=jnp.float32)


@functools.partial(jax.jit, static_argnums=0)
def _forward_jit(config: ModelConfig, params: nnx.State, input_ids: Array) -> Array:
  b, t = input_ids.shape
  positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  return apply(config, params, input_ids, positions)[0]


def forward(config: ModelConfig, params: nnx.State, input_ids: Any) -> Array:
  """Logits `[B, T, V]` float32 for unpadded int `input_ids` `[B, T]` (positions 0..T-1)."""
  input_ids = jnp.asarray(input_ids, jnp.int32)
  if input_ids.ndim != 2:
    raise ValueError(f"forward: input_ids must be [batch, seq], got shape {input_ids.shape}")
  if not isinstance(input_ids, jax.core.Tracer):  # eager call: out-of-range ids would clamp
    lo, hi = int(jnp.min(input_ids)), int(jnp.max(input_ids))
    if lo < 0 or hi >= config.vocab_size:
      raise ValueError(f"forward: input_ids must lie in [0, {config.vocab_size}), got "
                       f"[{lo}, {hi}]")
  return _forward_jit(config, params, input_ids)


def param_logical_axes(config: ModelConfig) -> list[tuple[str, tuple[str, ...], tuple[int, ...]]]:
  """(param path like 'layers/q_proj', logical axis names, shape) for every parameter."""
  out = []
  for path, var in nnx.to_flat_state(abstract_params(config)):
    axes = tuple(var.get_metadata().get("out_sharding") or ())
    out.append(("/".join(str(p) for p in path), axes, tuple(var.get_value().shape)))
  return out
