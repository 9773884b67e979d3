"""Batched autoregressive sampling: one jitted prefill + one jitted `lax.while_loop` decode.

Layout of one call (B prompts sharing their first H tokens, suffix bucket length Q,
P = H + Q, N = max_new_tokens, cache length S = P + N):

  slots  0 .. H-1            the shared head (H = 0 unless prompts share >= 64 tokens)
  slots  H .. H+pad_b-1      left padding of row b's suffix (never attended to)
  slots  H+pad_b .. P-1      the rest of row b's prompt; positions continue from H
  slot   P + i               the i-th new token; position len_b + i

Suffixes are left-padded to the smallest bucket >= the longest one, so all rows share
the KV-cache write index and a handful of compiled shapes serve every request; RoPE
positions are per row, so padding never shifts a sequence. The shared head (the prompts'
longest common prefix, rounded down, see `shared_head_length`) is prefilled once as a
single row and copied into every row's cache: a batch of agent prompts with one system
prompt, or GRPO's G samples of a question, pay for it once.

Stop strings are matched ON DEVICE, with no host round trip per step: for each stop
string we precompute a KMP automaton over bytes, lifted to tokens as a table
`[len(s) + 1, V]` (state before the token, token id) -> state after the token's bytes, with
the full-match state absorbing. One gather per step and stop string advances every row;
a row stops right after the token that completes any stop string (that token is kept; text
it carries past the stop string stays in it). This is exact for byte-level BPE tokenizers
(GPT-2 / Qwen / SmolLM2 family) and for SentencePiece ones with `<0xNN>` byte fallback.
Cost: building a table is O((len(s) + 1) * V * max_token_bytes) numpy work once per
(tokenizer, stop strings), cached; device memory is K * (len(s) + 1) * V int16 (about 30 MB
for six 16-byte tags on Qwen3's 152k vocab); per step it is K gathers of B elements.
Special (added, `special=True`) tokens contribute no text, as in
`decode(..., skip_special_tokens=True)`.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import re
from collections.abc import Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from atommem_jax.models import partitioning, transformer
from atommem_jax.models.config import ModelConfig

# Powers of two up to 256, then alternating 1.5x and 1.33x steps: a prompt (or the suffix
# after a shared head) longer than 256 wastes at most a third of its prefill on padding.
DEFAULT_BUCKETS: tuple[int, ...] = (32, 64, 128, 256, 384, 512, 768, 1024, 1536, 2048, 3072,
                                    4096, 6144, 8192)

# Incremented each time a jitted function is traced (i.e. compiled); tests read it to
# prove that a second call with the same shapes reuses the compiled program.
TRACE_COUNTS: collections.Counter[str] = collections.Counter()


@dataclasses.dataclass(frozen=True)
class GenerationOutput:
  """New tokens of every prompt, on the host.

  tokens: int32 `[B, N]` new token ids; row b holds `lengths[b]` tokens, then `pad_id`.
    A stop token (or the token completing a stop string) is included and counted.
  lengths: int32 `[B]`.
  logprobs: float32 `[B, N]`: log-probability of each generated token under the model's
    raw next-token distribution, `log_softmax(logits)[token]` at temperature 1 and before
    top-k / top-p filtering (the policy's log-prob, what GRPO's ratio needs); 0 after the
    end of a row.
  """

  tokens: np.ndarray
  lengths: np.ndarray
  logprobs: np.ndarray

  def to_lists(self) -> list[list[int]]:
    """New token ids of each prompt, without padding."""
    return [row[:n].tolist() for row, n in zip(self.tokens, self.lengths)]


@flax.struct.dataclass
class _SamplingState:
  """Loop carry of the decode `while_loop` (a frozen pytree)."""

  step: jax.Array  # int32 []: number of tokens written to `tokens` so far
  tokens: jax.Array  # int32 [B, N]
  logprobs: jax.Array  # float32 [B, N]
  lengths: jax.Array  # int32 [B]
  done: jax.Array  # bool [B]
  stop_state: jax.Array  # int32 [B, K] KMP state per stop string
  cache: Any  # transformer.Cache
  key: jax.Array


@dataclasses.dataclass(frozen=True)
class _Sampling:
  """Static sampling options (hashable: part of the compiled function's key)."""

  greedy: bool
  top_k: int | None
  use_top_p: bool


# ----------------------------------------------------------------------------- sampling


def _filter_logits(logits: jax.Array, temperature: jax.Array, top_p: jax.Array,
                   opts: _Sampling) -> jax.Array:
  """Temperature, then top-k, then top-p (the order of HF's logits warpers)."""
  logits = logits / temperature  # [B, V]
  if opts.top_k is not None:
    kth = jax.lax.top_k(logits, opts.top_k)[0][:, -1:]  # [B, 1]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if opts.use_top_p:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]  # [B, V] descending
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # [B, V]
    keep = mass_before < top_p  # always keeps the most likely token
    threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return logits


SAMPLE_BLOCK = 256  # vocabulary block of the two-level inverse-CDF sampler


def categorical(key: jax.Array, logits: jax.Array) -> jax.Array:
  """One token `[B]` per row of float32 `logits` `[B, V]` (-inf = excluded), exactly
  distributed as softmax(logits), by a two-level inverse CDF.

  Why not `jax.random.categorical`: it draws V Gumbel variates per row, and on CPU random
  bits are the cost (8.4 ms for `[16, 32000]`, a third of a decode step); this draws 2
  uniforms per row (0.4 ms). A block of SAMPLE_BLOCK tokens is chosen with probability its
  mass, then a token within it with probability its share of that mass. Both targets are
  clamped strictly below the cumulative total they are compared with, so a token (or
  block: its mass is a sum of zeros, exactly 0) of zero probability is never the first to
  exceed its target: filtered tokens and the padding of the last block cannot be drawn.
  """
  b, v = logits.shape
  n_blocks = -(-v // SAMPLE_BLOCK)
  weights = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))  # [B, V], 1 at the max
  weights = jnp.pad(weights, ((0, 0), (0, n_blocks * SAMPLE_BLOCK - v)))
  weights = weights.reshape(b, n_blocks, SAMPLE_BLOCK)
  # Prefix sums only where needed: over the [B, nb] block masses, then inside the one
  # chosen block per row (a cumsum over all V lowers to a reduce-window on CPU: 2 ms).
  across = jnp.cumsum(jnp.sum(weights, axis=-1), axis=-1)  # [B, nb]: mass of blocks 0..j
  u = jax.random.uniform(key, (2, b, 1), jnp.float32)  # [0, 1)

  def below(frac: jax.Array, total: jax.Array) -> jax.Array:
    return jnp.minimum(frac * total, jnp.nextafter(total, jnp.zeros_like(total)))

  block = jnp.sum(across <= below(u[0], across[:, -1:]), axis=-1)  # [B], < nb
  row = jnp.take_along_axis(weights, block[:, None, None], axis=1)[:, 0]  # [B, blk]
  within = jnp.cumsum(row, axis=-1)  # [B, blk]
  offset = jnp.sum(within <= below(u[1], within[:, -1:]), axis=-1)  # [B], < blk
  return block * SAMPLE_BLOCK + offset


def _sample(logits: jax.Array, key: jax.Array, temperature: jax.Array, top_p: jax.Array,
            opts: _Sampling) -> tuple[jax.Array, jax.Array]:
  """Next token `[B]` and its log-prob under the unfiltered softmax `[B]`."""
  logits = logits.astype(jnp.float32)  # [B, V]
  if opts.greedy:
    token = jnp.argmax(logits, axis=-1)
  else:
    token = categorical(key, _filter_logits(logits, temperature, top_p, opts))
  token = token.astype(jnp.int32)
  logprob = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), token[:, None], axis=-1)[:, 0]
  return token, logprob


def _record(state: _SamplingState, token: jax.Array, logprob: jax.Array, stop_ids: jax.Array,
            stop_tables: jax.Array | None, stop_lens: jax.Array | None,
            pad_id: int) -> _SamplingState:
  """Writes this step's tokens for live rows and updates the per-row stop flags."""
  live = ~state.done  # [B]
  token = jnp.where(live, token, pad_id)
  logprob = jnp.where(live, logprob, 0.0)
  stopped = jnp.any(token[:, None] == stop_ids[None, :], axis=-1)  # [B]
  stop_state = state.stop_state
  if stop_tables is not None:
    k = jnp.arange(stop_tables.shape[0])[None, :]  # [1, K]
    new = stop_tables[k, stop_state, token[:, None]].astype(jnp.int32)  # [B, K]
    stop_state = jnp.where(live[:, None], new, stop_state)
    stopped |= jnp.any(stop_state == stop_lens[None, :], axis=-1)
  return state.replace(
      step=state.step + 1,
      tokens=jax.lax.dynamic_update_slice(state.tokens, token[:, None], (0, state.step)),
      logprobs=jax.lax.dynamic_update_slice(state.logprobs, logprob[:, None], (0, state.step)),
      lengths=state.lengths + live.astype(jnp.int32),
      done=state.done | (live & stopped),
      stop_state=stop_state,
  )


# ----------------------------------------------------------------------------- compiled steps


def _valid_slots(head: jax.Array | int, pad: jax.Array, slots: jax.Array) -> jax.Array:
  """Whether each of `slots` holds a real token of each row: outside the row's padding
  `[head, head + pad_b)`. pad `[B]` -> `[B, 1, len(slots)]`."""
  slots = slots[None, None, :]
  return (slots < head) | (slots >= head + pad[:, None, None])


def _decode_mask(head: jax.Array, pad: jax.Array, limit: jax.Array, seq_len: int) -> jax.Array:
  """Keys a new token may attend to: its row's prompt and generated slots `< limit`."""
  slots = jnp.arange(seq_len)
  return _valid_slots(head, pad, slots) & (slots[None, None, :] < limit)  # [B, 1, S]


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "opts", "pad_id",
                                             "head_len"))
def _prefill(config: ModelConfig, params, tokens: jax.Array, pad: jax.Array, key: jax.Array,
             temperature: jax.Array, top_p: jax.Array, stop_ids: jax.Array,
             stop_tables: jax.Array | None, stop_lens: jax.Array | None, *,
             max_new_tokens: int, opts: _Sampling, pad_id: int, head_len: int = 0
             ) -> _SamplingState:
  """Runs the prompts `[B, P]` (module docstring layout) and samples the first new token."""
  TRACE_COUNTS["prefill"] += 1
  batch, plen = tokens.shape
  seq_len = plen + max_new_tokens
  slot = jnp.arange(plen)  # [P]
  positions = jnp.where(slot[None, :] < head_len, slot[None, :],
                        jnp.maximum(slot[None, :] - pad[:, None], 0)).astype(jnp.int32)  # [B, P]
  key_slots = jnp.arange(seq_len)[None, None, :]  # [1, 1, S]
  query = slot[None, :, None]  # [1, P, 1]
  # Causal over the row's own prompt; a padding query sees only itself so that no softmax
  # row is empty (its output is never used).
  mask = (key_slots <= query) & (_valid_slots(head_len, pad, jnp.arange(seq_len))
                                 | (key_slots == query))  # [B, P, S]
  cache = transformer.init_cache(config, batch, seq_len)
  if head_len:
    # The shared head once, as one row; its keys/values are then copied into every row.
    head_cache = transformer.init_cache(config, 1, head_len)
    _, head_cache = transformer.hidden_states(
        config, params, tokens[:1, :head_len], positions[:1, :head_len], cache=head_cache,
        attn_mask=mask[:1, :head_len, :head_len], prefill=True)
    fill = lambda c, h: jax.lax.dynamic_update_slice(  # noqa: E731
        c, jnp.broadcast_to(h, (batch,) + h.shape[1:]), (0, 0, 0, 0))
    cache = transformer.Cache(k=tuple(map(fill, cache.k, head_cache.k)),
                              v=tuple(map(fill, cache.v, head_cache.v)),
                              index=jnp.asarray(head_len, jnp.int32))
  # One pass over the (rest of the) prompt fills the cache; only the last position goes
  # through the output head (a [B, P, D] x [D, V] head would be ~40% of a 32k-vocab prefill).
  hidden, cache = transformer.hidden_states(
      config, params, tokens[:, head_len:], positions[:, head_len:], cache=cache,
      attn_mask=mask[:, head_len:], prefill=True, shared_prefix=head_len)  # [B, P - H, D]
  logits = transformer.unembed(config, params, hidden[:, -1:])  # [B, 1, V]
  k = 0 if stop_tables is None else stop_tables.shape[0]
  state = _SamplingState(
      step=jnp.zeros((), jnp.int32),
      tokens=jnp.full((batch, max_new_tokens), pad_id, jnp.int32),
      logprobs=jnp.zeros((batch, max_new_tokens), jnp.float32),
      lengths=jnp.zeros((batch,), jnp.int32),
      done=jnp.zeros((batch,), bool),
      stop_state=jnp.zeros((batch, k), jnp.int32),
      cache=cache,
      key=key,
  )
  token, logprob = _sample(logits[:, -1], jax.random.fold_in(key, 0), temperature, top_p, opts)
  return _record(state, token, logprob, stop_ids, stop_tables, stop_lens, pad_id)


def _unstack_weights() -> bool:
  """Whether the decode loop works on a per-layer copy of the weights.

  On CPU, XLA materialises every static slice of a stacked `[L, ...]` weight inside a
  `while_loop` body, i.e. copies all weights on every decode step; one copy before the
  loop is far cheaper (on a batch-16 step of a 50M-parameter model: 6.8 -> 4.1 ms for the
  slicing alone). Accelerators fuse the slice into the matmul and cannot spare the memory
  for a second copy of an 8B model, so they slice in the loop.
  """
  return partitioning.platform() == "cpu"


@functools.partial(jax.jit, static_argnames=("config", "opts", "pad_id"), donate_argnums=(2,))
def _decode(config: ModelConfig, params, state: _SamplingState, head: jax.Array, pad: jax.Array,
            prompt_lens: jax.Array, temperature: jax.Array, top_p: jax.Array,
            stop_ids: jax.Array, stop_tables: jax.Array | None, stop_lens: jax.Array | None, *,
            opts: _Sampling, pad_id: int) -> _SamplingState:
  """Feeds the last token and samples the next until every row stopped or N tokens exist."""
  TRACE_COUNTS["decode"] += 1
  max_new_tokens = state.tokens.shape[1]
  seq_len = state.cache.max_len
  plen = seq_len - max_new_tokens
  # Slice the stacked weights into per-layer arrays once, outside the loop (see
  # `_unstack_weights`); the loop body then reads each layer's weights in place.
  layers = transformer.decode_weights(config, params) if _unstack_weights() else None

  def cond(s: _SamplingState) -> jax.Array:
    return (s.step < max_new_tokens) & ~jnp.all(s.done)

  def body(s: _SamplingState) -> _SamplingState:
    i = s.step - 1  # index of the token fed now; it lives in cache slot P + i
    last = jax.lax.dynamic_slice_in_dim(s.tokens, i, 1, axis=1)  # [B, 1]
    positions = (prompt_lens + i)[:, None]  # [B, 1]
    mask = _decode_mask(head, pad, plen + i + 1, seq_len)  # [B, 1, S]
    logits, cache = transformer.apply(config, params, last, positions, cache=s.cache,
                                      attn_mask=mask, layers=layers)  # [B, 1, V]
    token, logprob = _sample(logits[:, 0], jax.random.fold_in(s.key, s.step), temperature,
                             top_p, opts)
    return _record(s.replace(cache=cache), token, logprob, stop_ids, stop_tables, stop_lens,
                   pad_id)

  return jax.lax.while_loop(cond, body, state)


# ----------------------------------------------------------------------------- stop strings


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
  """Inverse of GPT-2's bytes_to_unicode: the character that stands for each byte."""
  printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
               + list(range(ord("®"), ord("ÿ") + 1)))
  chars, n = {}, 0
  for b in range(256):
    if b in printable:
      chars[chr(b)] = b
    else:
      chars[chr(256 + n)] = b
      n += 1
  return chars


_HEX_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def token_bytes(tokenizer: Any, vocab_size: int) -> list[bytes]:
  """The bytes each token id contributes to decoded text (`b""` for special tokens).

  Supports byte-level BPE decoders and SentencePiece-style (`▁`, `<0xNN>`) ones; raises
  ValueError for anything else rather than matching stop strings wrongly.
  """
  backend = getattr(tokenizer, "backend_tokenizer", None)
  if backend is None:
    raise ValueError("stop_strings need a fast (tokenizers-backed) tokenizer; got "
                     f"{type(tokenizer).__name__}")
  decoder = str(backend.decoder.__getstate__()) if backend.decoder is not None else "None"
  byte_level = "ByteLevel" in decoder
  if not byte_level and "Metaspace" not in decoder and "ByteFallback" not in decoder:
    raise ValueError(f"stop_strings: unsupported tokenizer decoder {decoder[:200]!r}; "
                     "expected byte-level BPE or SentencePiece")
  added = tokenizer.added_tokens_decoder  # {id: AddedToken}
  pieces = tokenizer.convert_ids_to_tokens(list(range(min(len(tokenizer), vocab_size))))
  table = _byte_decoder()
  out = []
  for i, piece in enumerate(pieces):
    if i in added:
      out.append(b"" if added[i].special else added[i].content.encode("utf-8"))
    elif piece is None:
      out.append(b"")
    elif byte_level:
      out.append(bytes(table[c] for c in piece) if all(c in table for c in piece)
                 else piece.encode("utf-8"))
    elif m := _HEX_BYTE.match(piece):
      out.append(bytes([int(m.group(1), 16)]))
    else:
      out.append(piece.replace("▁", " ").encode("utf-8"))
  out.extend([b""] * (vocab_size - len(out)))  # ids the tokenizer does not know
  return out


def _kmp_delta(pattern: bytes) -> np.ndarray:
  """KMP automaton `[m + 1, 256]` over bytes; the match state m is absorbing."""
  m = len(pattern)
  delta = np.zeros((m + 1, 256), np.int32)
  delta[0, pattern[0]] = 1
  fallback = 0
  for q in range(1, m):
    delta[q] = delta[fallback]
    delta[q, pattern[q]] = q + 1
    fallback = delta[fallback, pattern[q]]
  delta[m] = m
  return delta


def stop_string_tables(tokens_as_bytes: Sequence[bytes],
                       stop_strings: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """Per stop string, the token-level automaton `[K, Lmax + 1, V]` and lengths `[K]`.

  `tables[k, q, v]` is the state after reading token v's bytes from state q (the length of
  the longest prefix of stop string k that ends the text so far); it equals `lens[k]` iff
  the string was completed anywhere inside the token.
  """
  encoded = [s.encode("utf-8") for s in stop_strings]
  if any(not s for s in encoded):
    raise ValueError("stop_strings must not contain an empty string")
  vocab = len(tokens_as_bytes)
  token_len = np.array([len(b) for b in tokens_as_bytes], np.int64)  # [V]
  flat = np.zeros((vocab, max(1, int(token_len.max()))), np.uint8)  # [V, Lb]
  for i, b in enumerate(tokens_as_bytes):
    flat[i, :len(b)] = np.frombuffer(b, np.uint8)
  # Tokens still holding a byte at offset j; sorting by length makes each a prefix slice.
  order = np.argsort(-token_len, kind="stable")
  flat, token_len = flat[order], token_len[order]
  lens = np.array([len(s) for s in encoded], np.int32)
  tables = np.zeros((len(encoded), int(lens.max()) + 1, vocab), np.int16)
  for k, pattern in enumerate(encoded):
    delta = _kmp_delta(pattern)
    state = np.repeat(np.arange(len(pattern) + 1, dtype=np.int32)[:, None], vocab, 1)  # [m+1, V]
    for j in range(flat.shape[1]):
      n = int(np.searchsorted(-token_len, -j, side="left"))  # tokens with len > j
      if n == 0:
        break
      state[:, :n] = delta[state[:, :n], flat[None, :n, j]]
    tables[k, :len(pattern) + 1, order] = state.T
  return tables, lens


_STOP_CACHE: dict[tuple[int, int, tuple[str, ...]], tuple[Any, jax.Array, jax.Array]] = {}


def _stop_arrays(tokenizer: Any, stop_strings: tuple[str, ...],
                 vocab_size: int) -> tuple[jax.Array, jax.Array]:
  key = (id(tokenizer), vocab_size, stop_strings)
  hit = _STOP_CACHE.get(key)
  if hit is None or hit[0] is not tokenizer:  # id() may be reused after garbage collection
    tables, lens = stop_string_tables(token_bytes(tokenizer, vocab_size), stop_strings)
    hit = (tokenizer, jnp.asarray(tables), jnp.asarray(lens))
    if len(_STOP_CACHE) > 16:
      _STOP_CACHE.clear()
    _STOP_CACHE[key] = hit
  return hit[1], hit[2]


# ----------------------------------------------------------------------------- entry point


def bucket_length(length: int, bucket_sizes: Sequence[int]) -> int:
  """Smallest bucket >= length; past the largest, the next multiple of the largest."""
  buckets = sorted(bucket_sizes)
  if not buckets or buckets[0] <= 0:
    raise ValueError(f"bucket_sizes must be positive, got {bucket_sizes!r}")
  for b in buckets:
    if b >= length:
      return b
  return -(-length // buckets[-1]) * buckets[-1]


MIN_SHARED_PREFIX = 64  # shorter common heads are prefilled per row (not worth a pass)


def batch_bucket(n: int) -> int:
  """The padded batch size for n rows: the next power of two."""
  return 1 << max(0, (n - 1).bit_length())


def shared_head_length(prompts: Sequence[Sequence[int]]) -> int:
  """Tokens every prompt starts with, leaving each row at least one token of its own,
  rounded down to a multiple of an eighth of its power of two (at most 12.5% of the head
  goes unshared, and at most 8 head lengths per octave compile); 0 for a single prompt or
  a head shorter than MIN_SHARED_PREFIX."""
  if len(prompts) < 2:
    return 0
  first = np.asarray(prompts[0])
  common = min(len(p) for p in prompts) - 1
  for p in prompts[1:]:
    diff = np.flatnonzero(np.asarray(p[:common]) != first[:common])
    common = int(diff[0]) if diff.size else common
    if common < MIN_SHARED_PREFIX:
      return 0
  quantum = max(MIN_SHARED_PREFIX, (1 << (common.bit_length() - 1)) // 8)
  return common // quantum * quantum


def _unpad(prompts: Any, prompt_lengths: Any, padding_side: str) -> list[Sequence[int]]:
  """Ragged token lists from `generate`'s two prompt forms (see its docstring)."""
  if padding_side not in ("left", "right"):
    raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
  if prompt_lengths is None:
    if isinstance(prompts, (np.ndarray, jax.Array)) and np.ndim(prompts) == 2:
      raise ValueError("a padded [B, T] prompt array needs prompt_lengths (and padding_side)")
    return list(prompts)
  arr = np.asarray(prompts)
  lengths = np.asarray(prompt_lengths)
  if arr.ndim != 2 or lengths.shape != (arr.shape[0],):
    raise ValueError(f"padded prompts must be [B, T] with prompt_lengths [B]; got "
                     f"{arr.shape} and {lengths.shape}")
  if lengths.min(initial=1) < 1 or lengths.max(initial=0) > arr.shape[1]:
    raise ValueError(f"prompt_lengths must be in [1, T={arr.shape[1]}], got {lengths.tolist()}")
  t = arr.shape[1]
  if padding_side == "left":
    return [arr[b, t - n:].tolist() for b, n in enumerate(lengths.tolist())]
  return [arr[b, :n].tolist() for b, n in enumerate(lengths.tolist())]


def _stop_id_array(stop_token_ids: int | Sequence[int] | None) -> jax.Array:
  if stop_token_ids is None:
    ids: list[int] = []
  elif isinstance(stop_token_ids, (int, np.integer)):
    ids = [int(stop_token_ids)]
  else:
    ids = [int(t) for t in stop_token_ids]
  return jnp.asarray(ids or [-1], jnp.int32)  # -1 never matches a sampled token


_USE_CONFIG_EOS = object()


def generate(config: ModelConfig, params: Any, prompts: Sequence[Sequence[int]], *,
             max_new_tokens: int = 256, temperature: float = 0.0, top_k: int | None = None,
             top_p: float | None = None, stop_token_ids: Any = _USE_CONFIG_EOS,
             stop_strings: Sequence[str] = (), tokenizer: Any = None, seed: int = 0,
             pad_id: int = 0, bucket_sizes: Sequence[int] = DEFAULT_BUCKETS,
             prompt_lengths: Sequence[int] | np.ndarray | None = None,
             padding_side: str = "left", share_prefix: bool = True,
             bucket_batch: bool = True) -> GenerationOutput:
  """Samples up to `max_new_tokens` new tokens for each prompt.

  `prompts` is a ragged list of token-id lists, or an already padded int array `[B, T]`
  with `prompt_lengths` `[B]` and `padding_side` ("left": the tokens are the last
  length_b of the row, as HF tokenizers pad for generation; "right": the first length_b).
  Either way each row's positions start at 0 at its first real token and padding is never
  attended to (rows are re-padded into a bucket internally).

  temperature 0 is greedy (top_k / top_p ignored); otherwise softmax(logits / temperature)
  restricted to the top_k tokens and then to the smallest top_p nucleus. A row stops after
  emitting any of `stop_token_ids` (default: `config.eos_token_id`) or a token that
  completes one of `stop_strings` (needs `tokenizer`). Same seed, same inputs -> same output.
  share_prefix: prefill the prompts' common head (see `shared_head_length`) once for the
  whole batch (see the module docstring); results
  equal the unshared computation up to float rounding.
  bucket_batch: pad the batch to the next power of two with copies of the first prompt
  (their outputs are dropped), so a rollout whose batch shrinks as episodes finish reuses
  a handful of compiled shapes instead of compiling one per batch size.
  """
  prompts = _unpad(prompts, prompt_lengths, padding_side)
  if not prompts:
    raise ValueError("prompts must be a non-empty list of token-id lists")
  n_real = len(prompts)
  if bucket_batch:
    prompts = list(prompts) + [prompts[0]] * (batch_bucket(n_real) - n_real)
  if any(len(p) == 0 for p in prompts):
    raise ValueError("prompts: every prompt needs at least one token")
  if max_new_tokens <= 0:
    raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0, got {temperature}")
  if top_k is not None and not 1 <= top_k <= config.vocab_size:
    raise ValueError(f"top_k must be in [1, vocab_size={config.vocab_size}], got {top_k}")
  if top_p is not None and not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p must be in (0, 1], got {top_p}")
  if stop_strings and tokenizer is None:
    raise ValueError("stop_strings needs the tokenizer that produced the token ids")
  if isinstance(stop_strings, str):
    raise ValueError("stop_strings must be a sequence of strings, not a single string")
  if stop_token_ids is _USE_CONFIG_EOS:
    stop_token_ids = config.eos_token_id

  lens = np.array([len(p) for p in prompts], np.int32)
  # Positions restart at 0 on every row, so the longest real prompt (not the bucket) bounds them.
  if int(lens.max()) + max_new_tokens > config.max_position_embeddings:
    raise ValueError(f"longest prompt {int(lens.max())} + max_new_tokens {max_new_tokens} exceeds "
                     f"max_position_embeddings={config.max_position_embeddings}")
  for b, p in enumerate(prompts):
    if min(p) < 0 or max(p) >= config.vocab_size:
      raise ValueError(f"prompts[{b}] has token ids outside [0, {config.vocab_size})")
  head = shared_head_length(prompts) if share_prefix else 0
  qlen = bucket_length(int(lens.max()) - head, bucket_sizes)
  tokens = np.full((len(prompts), head + qlen), pad_id, np.int32)  # [B, P]
  for b, p in enumerate(prompts):
    tokens[b, :head] = p[:head]
    tokens[b, head + qlen - (len(p) - head):] = p[head:]  # suffix left-padded
  pad = jnp.asarray(qlen - (lens - head))

  opts = _Sampling(greedy=temperature == 0.0, top_k=None if temperature == 0.0 else top_k,
                   use_top_p=temperature != 0.0 and top_p is not None and top_p < 1.0)
  stop_tables = stop_lens = None
  if stop_strings:
    stop_tables, stop_lens = _stop_arrays(tokenizer, tuple(stop_strings), config.vocab_size)
  common = dict(
      temperature=jnp.float32(max(temperature, 1e-6)), top_p=jnp.float32(top_p or 1.0),
      stop_ids=_stop_id_array(stop_token_ids), stop_tables=stop_tables, stop_lens=stop_lens)
  key = jax.random.key(seed, impl="rbg")  # XLA's RngBitGenerator: far cheaper than threefry
  state = _prefill(config, params, jnp.asarray(tokens), pad, key, head_len=head,
                   max_new_tokens=max_new_tokens, opts=opts, pad_id=pad_id, **common)
  if max_new_tokens > 1:  # the first token came from the prefill logits
    state = _decode(config, params, state, jnp.asarray(head, jnp.int32), pad, jnp.asarray(lens),
                    opts=opts, pad_id=pad_id, **common)
  out_tokens, out_lens, out_logprobs = jax.device_get((state.tokens, state.lengths, state.logprobs))
  return GenerationOutput(tokens=np.asarray(out_tokens)[:n_real],
                          lengths=np.asarray(out_lens)[:n_real],
                          logprobs=np.asarray(out_logprobs)[:n_real])
