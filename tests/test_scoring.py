"""Scoring path tests: packed-row log-probs vs a per-segment reference (values, entropy,
gradients), chunking, agreement with the sampler's log-probs, and peak memory."""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from atommem_jax.models import sampler
from atommem_jax.models import scoring
from atommem_jax.models import transformer
from atommem_jax.models.config import tiny
from atommem_jax.models.transformer import SegmentMask

# Segment lengths of each packed row; the rest of a row (T = 20) is padding.
LAYOUTS = ((5, 9, 3), (12, 6), (20,))
T = 20


def _pack(layouts, vocab: int, seed: int = 0):
  """Random packed rows: tokens, positions, segment_ids `[B, T]` and each row's segments."""
  rng = np.random.default_rng(seed)
  b = len(layouts)
  tokens, positions, segments = (np.zeros((b, T), np.int32) for _ in range(3))
  for row, lens in enumerate(layouts):
    start = 0
    for i, n in enumerate(lens):
      tokens[row, start:start + n] = rng.integers(0, vocab, n)
      positions[row, start:start + n] = np.arange(n)
      segments[row, start:start + n] = i + 1
      start += n
  return tokens, positions, segments


def _reference(config, params, tokens, layouts):
  """log-probs and entropies `[B, T]` from a plain causal forward over each segment on its
  own (one segment per row of a batch, right-padded: causality hides the padding)."""
  spans = [(row, start, n) for row, lens in enumerate(layouts)
           for start, n in zip(np.cumsum((0,) + lens[:-1]), lens)]
  alone = np.zeros((len(spans), T), np.int32)  # [S, T]
  for i, (row, start, n) in enumerate(spans):
    alone[i, :n] = tokens[row, start:start + n]
  logp = jax.nn.log_softmax(transformer.forward(config, params, alone), axis=-1)  # [S, T, V]
  picked = jnp.take_along_axis(logp[:, :-1], jnp.asarray(alone[:, 1:, None]), axis=-1)[..., 0]
  entropy = -jnp.sum(jnp.exp(logp[:, :-1]) * logp[:, :-1], axis=-1)  # [S, T-1]
  lp, ent = jnp.zeros((len(layouts), T), jnp.float32), jnp.zeros((len(layouts), T), jnp.float32)
  for i, (row, start, n) in enumerate(spans):
    lp = lp.at[row, start + 1:start + n].set(picked[i, :n - 1])
    ent = ent.at[row, start + 1:start + n].set(entropy[i, :n - 1])
  return lp, ent


def _score(config, **kw):
  return jax.jit(lambda p, t, pos, s: scoring.token_logprobs(config, p, t, pos, s, **kw))


@pytest.fixture(scope="module")
def packed():
  return _pack(LAYOUTS, 512)


# ----------------------------------------------------------------------------- segment mask


def test_segment_mask_slices_like_its_dense_mask():
  seg = jnp.asarray([[1, 1, 2, 2, 2, 0], [3, 3, 3, 3, 0, 0]], jnp.int32)
  mask = SegmentMask(seg, seg)
  dense = np.asarray(mask.dense())  # [2, 6, 6]
  expected = np.zeros((2, 6, 6), bool)
  for b in range(2):
    for i in range(6):
      for j in range(6):
        expected[b, i, j] = seg[b, i] != 0 and seg[b, i] == seg[b, j] and j <= i
  np.testing.assert_array_equal(dense, expected)
  for q0, q1, k0, k1 in [(2, 5, 0, 5), (3, 6, 1, 4), (0, 2, 0, 6)]:
    np.testing.assert_array_equal(mask[:, q0:q1, k0:k1].dense(), dense[:, q0:q1, k0:k1])


def test_scored_mask_skips_segment_starts_and_padding():
  seg = jnp.asarray([[1, 1, 1, 2, 2, 0, 0], [1, 2, 2, 2, 3, 3, 0]], jnp.int32)
  np.testing.assert_array_equal(scoring.scored_mask(seg), [[0, 1, 1, 0, 1, 0, 0],
                                                           [0, 0, 1, 1, 0, 1, 0]])


def test_segment_ids_argument_is_checked():
  config = tiny("qwen3")
  params = transformer.init_params(config)
  x = jnp.zeros((2, 4), jnp.int32)
  with pytest.raises(ValueError, match="segment_ids must be"):
    transformer.hidden_states(config, params, x, x, segment_ids=jnp.zeros((2, 5), jnp.int32))
  with pytest.raises(ValueError, match="replaces attn_mask"):
    transformer.hidden_states(config, params, x, x, attn_mask=jnp.ones((2, 4, 4), bool),
                              segment_ids=x)
  with pytest.raises(ValueError, match="no-cache"):
    transformer.hidden_states(config, params, x, x, cache=transformer.init_cache(config, 2, 8),
                              attn_mask=jnp.ones((2, 4, 8), bool), segment_ids=x)


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("family,tied,chunk_size", [("qwen3", False, 7), ("llama", True, T),
                                                   ("qwen2", False, 3), ("qwen3", True, 64)])
def test_logprobs_and_entropy_equal_per_segment_reference(packed, family, tied, chunk_size):
  config = tiny(family, tie_word_embeddings=tied)
  params = transformer.init_params(config, seed=3)
  tokens, positions, segments = packed
  lp, ent = _score(config, chunk_size=chunk_size, return_entropy=True)(
      params, tokens, positions, segments)
  assert lp.shape == ent.shape == (len(LAYOUTS), T) and lp.dtype == jnp.float32
  ref_lp, ref_ent = _reference(config, params, tokens, LAYOUTS)
  np.testing.assert_allclose(lp, ref_lp, atol=1e-5, rtol=0)
  np.testing.assert_allclose(ent, ref_ent, atol=1e-5, rtol=0)
  scored = np.asarray(scoring.scored_mask(segments))
  assert np.all(np.asarray(lp)[~scored] == 0) and np.all(np.asarray(lp)[scored] < 0)
  no_entropy = _score(config, chunk_size=chunk_size)(params, tokens, positions, segments)
  np.testing.assert_array_equal(no_entropy, lp)


def test_blocked_and_row_grouped_attention_paths(packed, monkeypatch):
  """Query blocks (slicing the SegmentMask) and the per-row `lax.map` give the same values."""
  config = tiny("qwen3")
  params = transformer.init_params(config, seed=4)
  tokens, positions, segments = packed
  expected = _score(config)(params, tokens, positions, segments)
  monkeypatch.setattr(transformer, "PREFILL_QUERY_BLOCK", 6)  # 4 query blocks of T = 20
  monkeypatch.setattr(transformer, "CPU_SCORE_TILE_BYTES", 1)  # one row per pass
  assert transformer._attention_rows_per_pass(3, 4, T, T) == 1  # pylint: disable=protected-access
  blocked = _score(config, chunk_size=5)(params, tokens, positions, segments)
  np.testing.assert_allclose(blocked, expected, atol=1e-6, rtol=0)


def test_bfloat16_params_and_compute(packed):
  config = tiny("llama", tie_word_embeddings=True, param_dtype="bfloat16", dtype="bfloat16")
  params = transformer.init_params(config, seed=5)
  tokens, positions, segments = packed
  lp, ent = _score(config, chunk_size=8, return_entropy=True)(params, tokens, positions, segments)
  assert lp.dtype == ent.dtype == jnp.float32
  ref_lp, ref_ent = _reference(config, params, tokens, LAYOUTS)  # bf16 too: same rounding scale
  np.testing.assert_allclose(lp, ref_lp, atol=2e-2, rtol=0)
  np.testing.assert_allclose(ent, ref_ent, atol=2e-2, rtol=0)
  f32 = tiny("llama", tie_word_embeddings=True)
  f32_lp = _score(f32)(jax.tree.map(lambda a: a.astype(jnp.float32), params), tokens, positions,
                       segments)
  np.testing.assert_allclose(lp, f32_lp, atol=5e-2, rtol=0)


def test_rejects_bad_inputs(packed):
  config = tiny("qwen3")
  params = transformer.init_params(config)
  tokens, positions, segments = packed
  with pytest.raises(ValueError, match=r"must all be \[B, T\]"):
    scoring.token_logprobs(config, params, tokens, positions[:, :-1], segments)
  with pytest.raises(ValueError, match="segment_ids must be an integer array"):
    scoring.token_logprobs(config, params, tokens, positions, segments.astype(np.float32))
  with pytest.raises(ValueError, match="chunk_size must be a positive int, got 0"):
    scoring.token_logprobs(config, params, tokens, positions, segments, chunk_size=0)
  with pytest.raises(ValueError, match=r"tokens must lie in \[0, 512\), got \[0, 512\]"):
    scoring.token_logprobs(config, params, np.where(tokens == tokens.max(), 512, tokens),
                           positions, segments)


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("family,tied,remat", [("qwen3", False, True), ("llama", True, False)])
def test_gradient_equals_reference_gradient(packed, family, tied, remat):
  config = tiny(family, tie_word_embeddings=tied)
  params = transformer.init_params(config, seed=6)
  tokens, positions, segments = packed
  weights = jnp.asarray(np.random.default_rng(1).normal(size=(len(LAYOUTS), T)), jnp.float32)

  def loss(p, chunk_size):
    return jnp.sum(weights * scoring.token_logprobs(config, p, tokens, positions, segments,
                                                    remat=remat, chunk_size=chunk_size))

  def ref_loss(p):
    return jnp.sum(weights * _reference(config, p, tokens, LAYOUTS)[0])

  grad = jax.jit(jax.grad(loss), static_argnums=1)
  g_chunked, g_whole = grad(params, 6), grad(params, T)
  g_ref = jax.grad(ref_loss)(params)
  leaves = jax.tree_util.tree_leaves_with_path(g_ref)
  assert len(leaves) == len(jax.tree.leaves(g_chunked)) > 5
  for (path, ref), got, whole in zip(leaves, jax.tree.leaves(g_chunked), jax.tree.leaves(g_whole)):
    scale = float(jnp.max(jnp.abs(ref)))
    assert scale > 0, path
    np.testing.assert_allclose(got, ref, atol=1e-4 * scale, rtol=0, err_msg=str(path))
    np.testing.assert_allclose(got, whole, atol=1e-5 * scale, rtol=0, err_msg=str(path))


# ----------------------------------------------------------------------------- sampler agreement


def _sampled_rows(prompts, out):
  """Each prompt + its response as one segment per row, right-padded; plus the same rows
  packed into a single row. Returns both layouts and where each response's tokens sit."""
  seqs = [p + r for p, r in zip(prompts, out.to_lists())]
  width = sum(len(s) for s in seqs)
  rows = np.zeros((len(seqs), width), np.int32)
  row_pos, row_seg = np.zeros_like(rows), np.zeros_like(rows)
  packed = [np.zeros((1, width), np.int32) for _ in range(3)]
  start = 0
  spans = []
  for b, s in enumerate(seqs):
    n = len(s)
    rows[b, :n], row_pos[b, :n], row_seg[b, :n] = s, np.arange(n), 1
    packed[0][0, start:start + n], packed[1][0, start:start + n] = s, np.arange(n)
    packed[2][0, start:start + n] = b + 1
    spans.append((len(prompts[b]), n, start))
    start += n
  return (rows, row_pos, row_seg), tuple(packed), spans


def _check_sampler_agreement(config, params, prompts, out, atol, chunk_size=16) -> float:
  """Recomputes the sampled responses' log-probs both per row and packed; returns the max
  abs difference to `out.logprobs` (asserting it is below atol)."""
  per_row, packed_row, spans = _sampled_rows(prompts, out)
  score = _score(config, chunk_size=chunk_size)
  lp_rows = np.asarray(score(params, *per_row))
  lp_packed = np.asarray(score(params, *packed_row))[0]
  worst = 0.0
  for b, (plen, n, start) in enumerate(spans):
    expected = out.logprobs[b, :out.lengths[b]]
    assert len(expected) == n - plen > 0
    assert np.all(out.logprobs[b, out.lengths[b]:] == 0)
    for got in (lp_rows[b, plen:n], lp_packed[start + plen:start + n]):
      np.testing.assert_allclose(got, expected, atol=atol, rtol=0)
      worst = max(worst, float(np.max(np.abs(got - expected))))
  return worst


@pytest.mark.parametrize("unstacked,shared_head", [(True, False), (False, True)],
                         ids=["decode_weights-ragged", "stacked_weights-shared_head"])
def test_logprobs_agree_with_sampler(monkeypatch, unstacked, shared_head):
  """`generate(...).logprobs` are the raw distribution's log-probs (temperature 1, no
  filtering): the scoring path must reproduce them on both decode paths (CPU's default
  per-layer `decode_weights` copy, and the accelerators' stacked weights) and both prefills
  (ragged prompts; a shared prompt head prefilled once, see sampler.shared_head_length)."""
  config = tiny("qwen3", eos_token_id=None)
  params = transformer.init_params(config, seed=7)
  rng = np.random.default_rng(2)
  if shared_head:
    head = rng.integers(3, 512, sampler.MIN_SHARED_PREFIX + 6).tolist()
    prompts = [head + rng.integers(3, 512, n).tolist() for n in (4, 9)]
  else:
    prompts = [rng.integers(3, 512, n).tolist() for n in (5, 17, 11)]
  calls = []
  monkeypatch.setattr(sampler, "_unstack_weights", lambda: calls.append(unstacked) or unstacked)
  sampler._decode.clear_cache()  # pylint: disable=protected-access  (retrace: the path is static)
  out = sampler.generate(config, params, prompts, max_new_tokens=12, temperature=1.0, seed=3,
                         stop_token_ids=None)
  sampler._decode.clear_cache()  # pylint: disable=protected-access
  assert calls == [unstacked]  # the decode loop was traced with the path under test
  assert (sampler.shared_head_length(prompts) > 0) == shared_head
  assert np.all(out.lengths == 12)
  _check_sampler_agreement(config, params, prompts, out, atol=1e-4)


@pytest.mark.slow
def test_logprobs_agree_with_sampler_on_smollm2():
  from atommem_jax.models.gguf_io import from_gguf
  from atommem_jax.models.tokenizer import load_tokenizer, smollm2_gguf_path

  path = smollm2_gguf_path()
  config, params = from_gguf(path)
  tok = load_tokenizer(path)
  passage = (
      "The Amazon rainforest covers much of the Amazon basin of South America. The basin "
      "encompasses seven million square kilometres, of which five and a half million are "
      "covered by the rainforest. The region includes territory belonging to nine nations. "
      "The majority of the forest is contained within Brazil, with 60% of the rainforest, "
      "followed by Peru with 13%, Colombia with 10%, and with minor amounts in Venezuela, "
      "Ecuador, Bolivia, Guyana, Suriname and French Guiana. ") * 3
  questions = ["Which country holds most of the Amazon rainforest, and how much of it?",
               "Summarise the passage in two sentences."]
  chats = [tok.apply_chat_template(
      [{"role": "system", "content": "You read documents and keep notes in memory."},
       {"role": "user", "content": f"Document:\n{passage}\nQuestion: {q}"}],
      add_generation_prompt=True, tokenize=False) for q in questions]
  prompts = [tok.encode(text, add_special_tokens=False) for text in chats]
  assert all(200 <= len(p) <= 600 for p in prompts), [len(p) for p in prompts]
  out = sampler.generate(config, params, prompts, max_new_tokens=32, temperature=1.0, seed=0,
                         stop_token_ids=None)
  worst = _check_sampler_agreement(config, params, prompts, out, atol=1e-4, chunk_size=64)
  print(f"SmolLM2-135M sampler vs scoring max |dlogprob| = {worst:.3g} over "
        f"{int(out.lengths.sum())} tokens, prompts {[len(p) for p in prompts]}")


# ----------------------------------------------------------------------------- memory


def test_chunked_scoring_never_holds_full_logits():
  """The compiled gradient's temporaries stay far below one `[B, T, V]` float32 logits array
  when chunked, and exceed it when not (so the bound below can tell them apart)."""
  config = tiny("qwen3", vocab_size=32_768, num_layers=1, hidden_size=32, intermediate_size=64,
                num_heads=2, num_kv_heads=1)
  params = transformer.init_params(config)
  b, t = 4, 256
  full_logits = b * t * config.vocab_size * 4  # 128 MiB
  tokens = jnp.zeros((b, t), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  segments = jnp.ones((b, t), jnp.int32)

  def temp_bytes(chunk_size: int) -> int:
    def loss(p):
      return jnp.sum(scoring.token_logprobs(config, p, tokens, positions, segments,
                                            chunk_size=chunk_size))
    compiled = jax.jit(jax.grad(loss)).lower(params).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  chunked, whole = temp_bytes(8), temp_bytes(t)
  print(f"grad temp bytes: chunked {chunked / 2**20:.1f} MiB, unchunked {whole / 2**20:.1f} MiB, "
        f"[B, T, V] f32 logits {full_logits / 2**20:.1f} MiB")
  assert whole > full_logits
  assert chunked < full_logits / 4


def test_segment_attention_never_forms_a_full_mask():
  """Past one query block (T > PREFILL_QUERY_BLOCK) the compiled segment-aware forward holds
  masks of one block (`[.., 512, S]`) only; a dense `attn_mask` input is `[B, T, T]`."""
  config = tiny("qwen3", num_layers=1, hidden_size=32, intermediate_size=64, num_heads=2,
                num_kv_heads=1)
  params = transformer.init_params(config)
  b, t = 2, 3 * transformer.PREFILL_QUERY_BLOCK
  tokens = jnp.zeros((b, t), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  full = re.compile(rf"\[[0-9,]*{t},{t}\]")  # any array whose last two dims are [T, T]

  def hlo(**kw) -> str:
    fn = lambda p: transformer.hidden_states(config, p, tokens, positions, **kw)[0]  # noqa: E731
    return jax.jit(fn).lower(params).compile().as_text()

  assert not full.search(hlo(segment_ids=jnp.ones((b, t), jnp.int32)))
  assert full.search(hlo(attn_mask=jnp.ones((b, t, t), bool)))
