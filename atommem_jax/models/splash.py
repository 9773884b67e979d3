"""Fused causal attention for the training forward on TPU: the Pallas splash-attention kernel.

XLA's attention (`transformer._attention_heads`) writes each layer's `[H, T, T]` float32
scores and probabilities to HBM and reads them back (forward, remat recompute, backward): at
the paper's 18,432-token SFT rows that traffic, not the matmuls, sets a v5p step's time
(launch/README.md). The splash kernel (`jax.experimental.pallas.ops.tpu.splash_attention`,
the one MaxText uses) streams key/value blocks through VMEM with an online softmax, never
forms the scores in HBM, and skips the blocks above the causal diagonal; packed rows come in
as segment ids. Selected by `ModelConfig.attention = "splash"` (experiment key
`model.attention`); only the no-cache forward (training, log-probs) uses it, the sampler's
prefill and decode keep XLA attention.

Where it runs: compiled by Mosaic when tracing for TPU (`partitioning.platform()`, which
launch/aot.py sets on a CPU host); on CPU the Pallas interpreter runs the same kernel (for
tests: exact but slow); a GPU is refused (the kernel is TPU-only). Under sharding rules the
kernel runs per device in a `shard_map` over the batch (and heads, if a rule shards them):
a custom call is opaque to XLA's partitioner.

CPU test runs with several fake devices need the flag tests/conftest.py sets
(`--xla_cpu_enable_concurrency_optimized_scheduler=false`): without it XLA:CPU can
deadlock any sharded step in its collectives (seen with XLA attention too).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from atommem_jax.models import partitioning

Array = jax.Array

BLOCK = 512  # query / key block of every kernel phase (T must be a multiple of min(T, BLOCK))
MIN_BLOCK = 128  # a TPU lane tile: the smallest block Mosaic accepts


def block_size(seq_len: int) -> int:
  """The kernel's block for rows of `seq_len` tokens; ValueError naming the length when none
  fits (rows must be a multiple of 128 tokens, and of 512 beyond 512)."""
  block = min(BLOCK, seq_len)
  if seq_len % block or block % MIN_BLOCK:
    raise ValueError(f"splash attention needs rows of a multiple of {MIN_BLOCK} tokens (of "
                     f"{BLOCK} beyond {BLOCK}); got {seq_len}: change batch.seq_len or use "
                     "model.attention=xla")
  return block


@functools.lru_cache(maxsize=32)
def _mask(seq_len: int, heads: int):
  """The causal block mask of `heads` query heads (hashable: the kernel library caches its
  numpy block processing per mask)."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

  return sm.MultiHeadMask([sm.CausalMask((seq_len, seq_len)) for _ in range(heads)])


def _kernel(seq_len: int, heads: int, interpret: bool):
  """A causal multi-head splash kernel, built inside the trace that uses it (its block-mask
  arrays become that program's constants; cached across traces they would leak tracers)."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

  b = block_size(seq_len)
  blocks = sk.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b,
                         block_kv_dkv=b, block_kv_dkv_compute=b, use_fused_bwd_kernel=True)
  return sk.make_splash_mha(_mask(seq_len, heads), block_sizes=blocks, head_shards=1,
                            q_seq_shards=1, interpret=interpret)


def _local(q: Array, k: Array, v: Array, segment_ids: Array | None, interpret: bool) -> Array:
  """One device's attention: q `[B, T, H, Dh]`, k/v `[B, Hkv, T, Dh]` -> `[B, T, H, Dh]`."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

  _, t, h, dh = q.shape
  kernel = _kernel(t, h, interpret)
  qh = jnp.swapaxes(q * jnp.asarray(dh ** -0.5, q.dtype), 1, 2)  # [B, H, T, Dh]
  if segment_ids is None:
    out = jax.vmap(lambda a, b_, c: kernel(a, b_, c))(qh, k, v)
  else:
    out = jax.vmap(lambda a, b_, c, s: kernel(a, b_, c, segment_ids=sk.SegmentIds(s, s)))(
        qh, k, v, segment_ids)
  return jnp.swapaxes(out, 1, 2)  # [B, T, H, Dh]


def splash_attention(q: Array, k: Array, v: Array, segment_ids: Array | None) -> Array:
  """Causal attention within segments: q `[B, T, H, Dh]`, k/v `[B, Hkv, T, Dh]` (query head
  i reads kv head i // (H / Hkv), as `transformer.gqa_attention`), segment_ids int `[B, T]`
  (None: one segment per row) -> `[B, T, H, Dh]` in q's dtype."""
  platform = partitioning.platform()
  if platform not in ("tpu", "cpu"):
    raise ValueError(f"model.attention=splash is a TPU kernel (on CPU the Pallas interpreter "
                     f"runs it for tests); this traces for {platform!r}: use model.attention=xla")
  block_size(q.shape[1])
  interpret = platform != "tpu"
  active = partitioning.active_rules()
  if active is None:
    return _local(q, k, v, segment_ids, interpret)
  mesh, rules = active
  spec = lambda names, x: partitioning.logical_to_spec(  # noqa: E731
      names, x.shape, mesh, rules, what=f"splash attention {names}")
  q_spec = spec(("batch", None, "heads", None), q)
  kv_spec = spec(("batch", "kv_heads", None, None), k)
  in_specs = [q_spec, kv_spec, kv_spec]
  args = [q, k, v]
  if segment_ids is not None:
    in_specs.append(PartitionSpec(q_spec[0], None))
    args.append(segment_ids)
  fn = lambda q_, k_, v_, *s: _local(q_, k_, v_, s[0] if s else None, interpret)  # noqa: E731
  return jax.shard_map(fn, mesh=mesh, in_specs=tuple(in_specs), out_specs=q_spec,
                       check_vma=False)(*args)
