"""Differentiable per-token log-probs of packed rows: the trainer's scoring path.

A training row packs several (prompt, response) turns back to back: `tokens`, `positions`
(restarting at 0 in each segment) and `segment_ids` (1.. per segment, 0 = padding), all
int32 `[B, T]`. Scoring one needs two things the sampler's forward does not give:

* attention confined to each segment without a dense `[B, T, T]` mask input: the
  transformer's no-cache forward takes the `[B, T]` ids and forms the mask per query block
  (`transformer.SegmentMask`), with one rematerialised `lax.scan` over the layers;
* no `[B, T, V]` float32 logits at once (Qwen3's 152k vocabulary makes that 600 kB per
  token): the output head, log-softmax, the gather of each next token and the entropy run
  over chunks of the sequence under `lax.map`, each chunk under `jax.checkpoint`, so the
  forward holds one chunk's logits and the backward recomputes them chunk by chunk.

Agreement with the sampler: `sampler.generate(...).logprobs` is `log_softmax(logits)[token]`
of the raw model distribution (temperature 1, before top-k / top-p filtering); this module
computes exactly that quantity for every token from the same final hidden states and the
same output head, so the two agree to float rounding (tests/test_scoring.py checks 1e-4,
on a tiny random model and on SmolLM2-135M).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from atommem_jax.models import transformer
from atommem_jax.models.config import ModelConfig

Array = jax.Array

# Sequence positions per output-head chunk: one chunk's float32 logits are
# B * DEFAULT_CHUNK_SIZE * V * 4 bytes (B = 8 rows of Qwen3's vocabulary: 1.2 GB).
DEFAULT_CHUNK_SIZE = 256


def scored_mask(segment_ids: Array) -> Array:
  """Which tokens get a log-prob: those with an earlier token of their own segment (not a
  segment's first token, not padding). bool `[B, T]` from int `[B, T]` segment ids."""
  prev = jnp.pad(segment_ids[:, :-1], ((0, 0), (1, 0)))  # [B, T]: id of the token before, 0 at t=0
  return (segment_ids != 0) & (segment_ids == prev)


def token_logprobs(config: ModelConfig, params: nnx.State, tokens: Array, positions: Array,
                   segment_ids: Array, *, remat: bool = True,
                   chunk_size: int = DEFAULT_CHUNK_SIZE, return_entropy: bool = False
                   ) -> Array | tuple[Array, Array]:
  """`logprobs[b, t] = log p(tokens[b, t] | the earlier tokens of its segment)`, float32 `[B, T]`.

  0 at each segment's first token and at padding (see `scored_mask`). With return_entropy,
  also the entropy `[B, T]` of the distribution each log-prob was read from (0 where the
  log-prob is). Differentiable w.r.t. `params`; jit it with `config` (and the keywords)
  static. remat: recompute each layer in the backward pass (training); chunk_size: sequence
  positions per output-head chunk (the largest logits array is `[B, chunk_size, V]`).
  Token ids must lie in `[0, vocab_size)` (checked when the call is not traced).
  """
  if not isinstance(tokens, jax.core.Tracer):  # concrete: an out-of-range id would gather garbage
    ids = np.asarray(tokens)
    if ids.size and (ids.min() < 0 or ids.max() >= config.vocab_size):
      raise ValueError(f"token_logprobs: tokens must lie in [0, {config.vocab_size}), got "
                       f"[{ids.min()}, {ids.max()}]")
  tokens, positions, segment_ids = (jnp.asarray(a) for a in (tokens, positions, segment_ids))
  if tokens.ndim != 2 or positions.shape != tokens.shape or segment_ids.shape != tokens.shape:
    raise ValueError(f"tokens, positions and segment_ids must all be [B, T]; got {tokens.shape}, "
                     f"{positions.shape} and {segment_ids.shape}")
  for name, a in (("tokens", tokens), ("positions", positions), ("segment_ids", segment_ids)):
    if not jnp.issubdtype(a.dtype, jnp.integer):
      raise ValueError(f"{name} must be an integer array, got dtype {a.dtype}")
  if not isinstance(chunk_size, int) or chunk_size <= 0:
    raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
  tokens, positions, segment_ids = (a.astype(jnp.int32) for a in (tokens, positions, segment_ids))

  hidden, _ = transformer.hidden_states(config, params, tokens, positions, remat=remat,
                                        segment_ids=segment_ids)  # [B, T, D]
  b, t, d = hidden.shape
  c = min(chunk_size, t)
  n = -(-t // c)
  pad = n * c - t
  # The hidden state at t predicts token t + 1 (what is scored at t + 1 after the shift below).
  next_tokens = jnp.pad(tokens[:, 1:], ((0, 0), (0, 1 + pad)))  # [B, n*C]
  hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))  # [B, n*C, D]
  xs = (hidden.reshape(b, n, c, d).swapaxes(0, 1),
        next_tokens.reshape(b, n, c).swapaxes(0, 1))  # [n, B, C, D], [n, B, C]

  @jax.checkpoint  # the backward recomputes a chunk's logits instead of keeping all n
  def score_chunk(chunk: tuple[Array, Array]) -> tuple[Array, ...]:
    h, y = chunk
    logits = transformer.unembed(config, params, h)  # [B, C, V] float32
    log_z = jax.nn.logsumexp(logits, axis=-1)  # [B, C]
    picked = jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0]  # [B, C]
    if not return_entropy:
      return (picked - log_z,)
    probs = jnp.exp(logits - log_z[..., None])  # [B, C, V]
    return picked - log_z, log_z - jnp.sum(probs * logits, axis=-1)

  outs = jax.lax.map(score_chunk, xs)  # each [n, B, C]
  scored = scored_mask(segment_ids)  # [B, T]

  def to_tokens(per_chunk: Array) -> Array:
    """`[n, B, C]` values predicted at t -> `[B, T]` values of token t (masked)."""
    at_prev = per_chunk.swapaxes(0, 1).reshape(b, n * c)[:, :t - 1]  # [B, T-1]
    return jnp.where(scored, jnp.pad(at_prev, ((0, 0), (1, 0))), 0.0)  # [B, T]

  if return_entropy:
    return to_tokens(outs[0]), to_tokens(outs[1])
  return to_tokens(outs[0])
