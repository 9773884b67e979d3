"""Sampler tests: HF greedy parity, batching/padding invariance, stopping, sampling, log-probs."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from atommem_jax.models import sampler
from atommem_jax.models import transformer
from atommem_jax.models.config import ModelConfig, tiny
from atommem_jax.models.sampler import bucket_length, generate, stop_string_tables

PROMPT_LENS = (3, 11, 7, 1)


def _prompts(vocab: int, lens=PROMPT_LENS, seed: int = 0) -> list[list[int]]:
  rng = np.random.default_rng(seed)
  return [rng.integers(3, vocab, n).tolist() for n in lens]


def _full_logits(config, params, prompts, new_tokens) -> list[np.ndarray]:
  """Uncached forward over each prompt + its new tokens, right-padded into one batch.

  Causal attention makes right padding invisible to the real positions. Returns, per row,
  the logits `[len(new), V]` that predicted each new token.
  """
  seqs = [p + n for p, n in zip(prompts, new_tokens)]
  width = max(len(s) for s in seqs)
  batch = np.zeros((len(seqs), width), np.int32)
  for b, s in enumerate(seqs):
    batch[b, :len(s)] = s
  logits = np.asarray(transformer.forward(config, params, jnp.asarray(batch)))  # [B, T, V]
  return [logits[b, len(p) - 1:len(p) - 1 + len(n)] for b, (p, n) in
          enumerate(zip(prompts, new_tokens))]


@pytest.fixture(scope="module")
def model() -> tuple[ModelConfig, object]:
  config = tiny("qwen3", eos_token_id=None)
  return config, transformer.init_params(config, seed=1)


# ----------------------------------------------------------------------------- HF parity


def _hf_model(family: str, tie: bool):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  kw = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=10_000.0,
            rms_norm_eps=1e-6, tie_word_embeddings=tie, max_position_embeddings=2048)
  cls = {"qwen3": transformers.Qwen3Config, "qwen2": transformers.Qwen2Config,
         "llama": transformers.LlamaConfig}[family]
  if family == "qwen2":
    kw.pop("head_dim")
    kw["hidden_size"] = 64  # qwen2 derives head_dim = hidden / heads = 16
  torch.manual_seed(0)
  hf = transformers.AutoModelForCausalLM.from_config(cls(**kw)).eval()
  with torch.no_grad():  # HF inits norms to 1 and biases to 0: randomise them for a real test
    for name, p in hf.named_parameters():
      if name.endswith("norm.weight") or name.endswith("bias"):
        p.add_(0.1 * torch.randn_like(p))
  return hf


@pytest.mark.parametrize("family,tie", [("qwen3", False), ("llama", True), ("qwen2", False)])
def test_greedy_matches_transformers(family, tie, tmp_path):
  torch = pytest.importorskip("torch")
  from atommem_jax.models.hf_io import from_pretrained

  hf = _hf_model(family, tie)
  hf.save_pretrained(tmp_path)
  config, params = from_pretrained(tmp_path)
  prompts = _prompts(config.vocab_size)
  out = generate(config, params, prompts, max_new_tokens=12, stop_token_ids=None)
  assert out.tokens.shape == (len(prompts), 12)
  for prompt, got in zip(prompts, out.to_lists()):
    with torch.no_grad():
      ref = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                        eos_token_id=None, pad_token_id=0)
    assert got == ref[0, len(prompt):].tolist()


# ----------------------------------------------------------------------------- greedy / batching


def test_batched_equals_one_at_a_time(model):
  config, params = model
  prompts = _prompts(config.vocab_size)
  batched = generate(config, params, prompts, max_new_tokens=8)
  for b, prompt in enumerate(prompts):
    single = generate(config, params, [prompt], max_new_tokens=8)
    np.testing.assert_array_equal(single.tokens[0], batched.tokens[b])
    np.testing.assert_allclose(single.logprobs[0], batched.logprobs[b], atol=1e-5)


def test_greedy_equals_argmax_of_full_forward(model):
  """The cached decode path agrees with an uncached forward over prompt + generation."""
  config, params = model
  prompts = _prompts(config.vocab_size)
  out = generate(config, params, prompts, max_new_tokens=8)
  for new, logits in zip(out.to_lists(), _full_logits(config, params, prompts, out.to_lists())):
    assert new == logits.argmax(-1).tolist()


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_prompt_arrays_equal_ragged_prompts(model, side):
  config, params = model
  prompts = _prompts(config.vocab_size)
  width = max(map(len, prompts)) + 2
  padded = np.full((len(prompts), width), 7, np.int32)  # pad value must not matter
  for b, p in enumerate(prompts):
    if side == "left":
      padded[b, width - len(p):] = p
    else:
      padded[b, :len(p)] = p
  ragged = generate(config, params, prompts, max_new_tokens=6)
  out = generate(config, params, padded, max_new_tokens=6,
                 prompt_lengths=[len(p) for p in prompts], padding_side=side)
  np.testing.assert_array_equal(out.tokens, ragged.tokens)
  np.testing.assert_allclose(out.logprobs, ragged.logprobs, atol=1e-6)


def test_padded_prompt_array_errors(model):
  config, params = model
  arr = np.ones((2, 4), np.int32)
  with pytest.raises(ValueError, match="needs prompt_lengths"):
    generate(config, params, arr, max_new_tokens=2)
  with pytest.raises(ValueError, match="prompt_lengths must be in"):
    generate(config, params, arr, max_new_tokens=2, prompt_lengths=[0, 4])
  with pytest.raises(ValueError, match="padding_side"):
    generate(config, params, arr, max_new_tokens=2, prompt_lengths=[1, 4], padding_side="middle")


def test_position_limit_counts_real_tokens_not_the_bucket(model):
  config, params = model  # max_position_embeddings 2048 in tiny()
  # A 1100-token prompt padded into a 2048 bucket: positions only reach 1100 + 8.
  out = generate(config, params, [[5] * 1100], max_new_tokens=8, bucket_sizes=(2048,))
  assert out.tokens.shape == (1, 8)


def test_bucket_does_not_change_output(model):
  config, params = model
  prompts = _prompts(config.vocab_size)
  small = generate(config, params, prompts, max_new_tokens=8, bucket_sizes=(16,))
  large = generate(config, params, prompts, max_new_tokens=8, bucket_sizes=(64,))
  np.testing.assert_array_equal(small.tokens, large.tokens)
  np.testing.assert_allclose(small.logprobs, large.logprobs, atol=1e-5)


def test_top_k_1_equals_greedy(model):
  config, params = model
  prompts = _prompts(config.vocab_size)
  greedy = generate(config, params, prompts, max_new_tokens=8)
  top1 = generate(config, params, prompts, max_new_tokens=8, temperature=0.7, top_k=1, seed=3)
  np.testing.assert_array_equal(greedy.tokens, top1.tokens)


# ----------------------------------------------------------------------------- stopping


def test_stop_token_ids_stop_each_row_exactly(model):
  config, params = model
  prompts = _prompts(config.vocab_size)
  free = generate(config, params, prompts, max_new_tokens=8, stop_token_ids=None)
  assert (free.lengths == 8).all()
  stop = int(free.tokens[0, 3])  # row 0 must stop at (the first occurrence of) this token
  out = generate(config, params, prompts, max_new_tokens=8, stop_token_ids=[stop, 10**6],
                 pad_id=7)
  for b in range(len(prompts)):
    row = free.tokens[b].tolist()
    n = row.index(stop) + 1 if stop in row else 8
    assert out.lengths[b] == n
    assert out.tokens[b, :n].tolist() == row[:n]
    assert (out.tokens[b, n:] == 7).all() and (out.logprobs[b, n:] == 0).all()
  assert out.lengths[0] == free.tokens[0].tolist().index(stop) + 1


def test_stop_token_defaults_to_config_eos(model):
  config, params = model
  prompts = _prompts(config.vocab_size)
  free = generate(config, params, prompts, max_new_tokens=8)
  eos = int(free.tokens[1, 2])
  out = generate(config.replace(eos_token_id=(10**6, eos)), params, prompts, max_new_tokens=8)
  assert out.lengths[1] == free.tokens[1].tolist().index(eos) + 1


def _first_completion(pieces: list[bytes], pattern: bytes) -> int | None:
  """Brute force: number of pieces after which `pattern` first occurs in their concatenation."""
  for n in range(1, len(pieces) + 1):
    if pattern in b"".join(pieces[:n]):
      return n
  return None


def test_stop_string_tables_match_brute_force():
  vocab = [b"", b"<", b"/", b"</", b"fin", b"al", b">", b"al>", b"</final>", b"x</fi",
           b"nal>yz", b"<<", b"a", b"f", b"i", b"n", b"l", b">\n"]
  strings = ["</final>", "<<a", "l>"]
  tables, lens = stop_string_tables(vocab, strings)
  assert tables.shape == (3, 9, len(vocab)) and lens.tolist() == [8, 3, 2]
  rng = np.random.default_rng(0)
  seqs = [rng.integers(0, len(vocab), 12).tolist() for _ in range(3000)]
  seqs += [[9, 10], [3, 4, 7], [1, 1, 12], [11, 12], [2, 3, 13, 14, 15, 5, 6]]
  for seq in seqs:
    for k, s in enumerate(strings):
      state, got = 0, None
      for n, tok in enumerate(seq, 1):
        state = int(tables[k, state, tok])
        if state == lens[k]:
          got = n
          break
      assert got == _first_completion([vocab[t] for t in seq], s.encode()), (seq, s)


def test_stop_string_tables_reject_empty_string():
  with pytest.raises(ValueError, match="empty"):
    stop_string_tables([b"a"], ["</x>", ""])


def _boundary_stop_string(tok, row: list[int]) -> str | None:
  """4 ASCII characters of the row's text that straddle a token boundary (2 on each side)."""
  text = tok.decode(row, skip_special_tokens=True)
  for i in range(1, len(row)):
    head = tok.decode(row[:i], skip_special_tokens=True)
    at = len(head)
    if (at >= 2 and text.startswith(head) and len(text) >= at + 2
        and text[at - 2:at + 2].isascii() and text[at - 2:at + 2].isprintable()
        and tok.decode(row[i:i + 1], skip_special_tokens=True)):
      return text[at - 2:at + 2]
  return None


def _stop_after(tok, row: list[int], strings) -> int:
  """Reference: the fewest tokens whose decoded text contains a stop string, else all."""
  for n in range(1, len(row) + 1):
    if any(s in tok.decode(row[:n], skip_special_tokens=True) for s in strings):
      return n
  return len(row)


def test_stop_strings_split_across_tokens(test_tokenizer):
  tok = test_tokenizer
  config = tiny("llama", vocab_size=len(tok), eos_token_id=None)
  params = transformer.init_params(config, seed=2)
  prompts = [tok.encode(t) for t in ("<update_memory>the cat", "Question: who?", "Memory 1:",
                                     "<final_answer>")]
  free = generate(config, params, prompts, max_new_tokens=24, temperature=1.0, seed=5)
  rows = free.to_lists()
  stop = next(s for s in (_boundary_stop_string(tok, r) for r in rows) if s)
  strings = [stop, "</final_answer>"]
  out = generate(config, params, prompts, max_new_tokens=24, temperature=1.0, seed=5,
                 stop_strings=strings, tokenizer=tok)
  for b, row in enumerate(rows):
    want = _stop_after(tok, row, strings)
    assert out.lengths[b] == want, (b, stop)
    assert out.tokens[b, :want].tolist() == row[:want]
  assert (out.lengths < 24).any()  # the chosen string did stop some row early


def test_token_bytes_concatenate_to_decoded_text(test_tokenizer):
  tok = test_tokenizer
  pieces = sampler.token_bytes(tok, len(tok) + 5)
  assert len(pieces) == len(tok) + 5 and pieces[-1] == b""
  text = "<update_memory>Paris, café</update_memory>\n<final_answer>\\boxed{42}</final_answer>"
  ids = tok.encode(text) + [tok.convert_tokens_to_ids("<|im_end|>")]
  assert b"".join(pieces[i] for i in ids) == tok.decode(ids, skip_special_tokens=True).encode()


def test_stop_strings_need_tokenizer(model):
  config, params = model
  with pytest.raises(ValueError, match="tokenizer"):
    generate(config, params, [[1, 2]], max_new_tokens=2, stop_strings=["</x>"])


# ----------------------------------------------------------------------------- sampling


def test_sampling_reproducible_and_seed_dependent(model):
  config, params = model
  prompts = _prompts(config.vocab_size)
  a = generate(config, params, prompts, max_new_tokens=8, temperature=1.0, seed=11)
  b = generate(config, params, prompts, max_new_tokens=8, temperature=1.0, seed=11)
  c = generate(config, params, prompts, max_new_tokens=8, temperature=1.0, seed=12)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(a.logprobs, b.logprobs)
  assert (a.tokens != c.tokens).any()


def _first_token_samples(config, params, prompt, n, **kw) -> np.ndarray:
  return generate(config, params, [prompt] * n, max_new_tokens=1, bucket_sizes=(8,),
                  **kw).tokens[:, 0]


def test_top_k_and_top_p_restrict_support():
  config = tiny("llama", vocab_size=16, eos_token_id=None)
  params = transformer.init_params(config, seed=4)
  prompt = [3, 1, 4, 1, 5]
  logits = np.asarray(transformer.forward(config, params, jnp.asarray([prompt]))[0, -1])
  temperature = 0.05  # sharpens the tiny random model's near-uniform logits
  probs = np.asarray(jax.nn.softmax(logits / temperature))
  order = np.argsort(-probs)

  free = _first_token_samples(config, params, prompt, 400, temperature=temperature, seed=0)
  assert len(set(free.tolist())) > 3  # the unrestricted support is wider than what we cut to

  topk = _first_token_samples(config, params, prompt, 400, temperature=temperature, top_k=3)
  assert set(topk.tolist()) == set(order[:3].tolist())

  top_p = float(probs[order[:2]].sum() + 1e-3)  # nucleus = the 3 most likely tokens
  nucleus = _first_token_samples(config, params, prompt, 400, temperature=temperature,
                                 top_p=top_p)
  assert set(nucleus.tolist()) == set(order[:3].tolist())
  # Empirical frequencies follow the renormalised nucleus distribution.
  want = probs[order[:3]] / probs[order[:3]].sum()
  got = np.array([(nucleus == t).mean() for t in order[:3]])
  np.testing.assert_allclose(got, want, atol=0.08)


def test_logprobs_are_unfiltered_log_softmax_of_full_forward(model):
  config, params = model
  prompts = _prompts(config.vocab_size)
  out = generate(config, params, prompts, max_new_tokens=8, temperature=0.8, top_k=20, seed=2)
  new_tokens = out.to_lists()
  for b, logits in enumerate(_full_logits(config, params, prompts, new_tokens)):
    logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))  # [N, V]
    want = logp[np.arange(len(new_tokens[b])), new_tokens[b]]
    np.testing.assert_allclose(out.logprobs[b, :len(new_tokens[b])], want, atol=1e-4)


# ----------------------------------------------------------------------------- compilation


def test_second_call_in_same_bucket_does_not_recompile(model):
  config, params = model
  generate(config, params, _prompts(config.vocab_size), max_new_tokens=8, temperature=0.5)
  before = dict(sampler.TRACE_COUNTS)
  generate(config, params, _prompts(config.vocab_size, (20, 2, 31, 9), seed=1),
           max_new_tokens=8, temperature=0.9, seed=1)  # same bucket (32) and batch
  assert dict(sampler.TRACE_COUNTS) == before
  generate(config, params, _prompts(config.vocab_size, (40, 2, 3, 4)), max_new_tokens=8,
           temperature=0.9)  # bucket 64: one new prefill and one new decode
  assert sampler.TRACE_COUNTS["prefill"] == before["prefill"] + 1
  assert sampler.TRACE_COUNTS["decode"] == before["decode"] + 1


# ----------------------------------------------------------------------------- validation


def test_bucket_length():
  assert bucket_length(1, (32, 64)) == 32
  assert bucket_length(32, (64, 32)) == 32
  assert bucket_length(33, (32, 64)) == 64
  assert bucket_length(130, (32, 64)) == 192
  with pytest.raises(ValueError, match="bucket_sizes"):
    bucket_length(3, ())


@pytest.mark.parametrize("kwargs,match", [
    (dict(prompts=[]), "non-empty"),
    (dict(prompts=[[1], []]), "at least one token"),
    (dict(prompts=[[1, 512]]), r"prompts\[0\]"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(temperature=-1.0), "temperature"),
    (dict(temperature=1.0, top_k=0), "top_k"),
    (dict(temperature=1.0, top_p=0.0), "top_p"),
    (dict(max_new_tokens=4000), "max_position_embeddings"),
    (dict(stop_strings="</x>", tokenizer=object()), "sequence of strings"),
])
def test_bad_arguments_raise(model, kwargs, match):
  config, params = model
  args = dict(prompts=[[1, 2, 3]], max_new_tokens=2) | kwargs
  with pytest.raises(ValueError, match=match):
    generate(config, params, args.pop("prompts"), **args)


def test_to_lists_trims_padding():
  out = sampler.GenerationOutput(tokens=np.array([[5, 6, 0], [7, 0, 0]], np.int32),
                                 lengths=np.array([2, 1], np.int32),
                                 logprobs=np.zeros((2, 3), np.float32))
  assert out.to_lists() == [[5, 6], [7]]



# ----------------------------------------------------------------------------- categorical


def test_categorical_matches_softmax_and_never_draws_excluded_tokens():
  """The two-level inverse-CDF sampler: frequencies follow softmax(logits) (chi-square on
  200k draws), over a vocabulary that is not a multiple of the block (padded last block),
  with -inf entries in the middle, at the edges and a whole excluded block."""
  vocab = 3 * sampler.SAMPLE_BLOCK + 37
  rng = np.random.default_rng(0)
  logits = rng.normal(0.0, 1.5, vocab).astype(np.float32)
  excluded = np.zeros(vocab, bool)
  excluded[[0, 5, vocab - 1]] = True
  excluded[sampler.SAMPLE_BLOCK:2 * sampler.SAMPLE_BLOCK] = True  # a whole block of zero mass
  logits[excluded] = -np.inf
  rows = 4000
  draws = jax.jit(jax.vmap(lambda k: sampler.categorical(
      k, jnp.broadcast_to(jnp.asarray(logits), (rows, vocab)))))(
          jax.random.split(jax.random.key(1), 50))  # [50, rows]
  draws = np.asarray(draws).ravel()
  assert draws.min() >= 0 and draws.max() < vocab
  counts = np.bincount(draws, minlength=vocab)
  assert counts[excluded].sum() == 0
  probs = np.asarray(jax.nn.softmax(jnp.asarray(logits)))
  expected = probs * draws.size
  keep = expected > 0
  chi2 = float((((counts - expected) ** 2)[keep] / expected[keep]).sum())
  dof = int(keep.sum()) - 1
  assert chi2 < dof + 5 * np.sqrt(2 * dof), (chi2, dof)  # ~5 sigma above the mean


def test_categorical_point_mass_and_per_row_distributions():
  """One surviving token is always drawn; rows sample from their own logits."""
  vocab = 600
  point = np.full(vocab, -np.inf, np.float32)
  point[vocab - 3] = 0.0  # in the padded last block
  two = np.full(vocab, -np.inf, np.float32)
  two[[10, 300]] = [0.0, np.log(3.0)]  # probabilities 1/4, 3/4
  logits = jnp.asarray(np.stack([point, two]))
  draws = np.asarray(jax.jit(jax.vmap(lambda k: sampler.categorical(k, logits)))(
      jax.random.split(jax.random.key(0), 20_000)))  # [N, 2]
  assert (draws[:, 0] == vocab - 3).all()
  assert set(np.unique(draws[:, 1]).tolist()) == {10, 300}
  assert abs((draws[:, 1] == 300).mean() - 0.75) < 0.015


def test_generate_same_with_and_without_unstacked_decode_weights(model, monkeypatch):
  """The sampler's CPU-only weight preparation changes speed, not tokens or log-probs."""
  config, params = model
  prompts = _prompts(config.vocab_size)
  fast = generate(config, params, prompts, max_new_tokens=6, temperature=0.7, seed=5)
  monkeypatch.setattr(sampler, "_unstack_weights", lambda: False)
  sampler._decode.clear_cache()  # the choice is made at trace time
  plain = generate(config, params, prompts, max_new_tokens=6, temperature=0.7, seed=5)
  sampler._decode.clear_cache()
  np.testing.assert_array_equal(fast.tokens, plain.tokens)
  np.testing.assert_allclose(fast.logprobs, plain.logprobs, atol=1e-5)


# ----------------------------------------------------------------------------- shared head


def test_shared_head_length_rounds_down_to_an_eighth_of_its_octave():
  head = list(range(3, 1203))  # 1,200 common tokens
  prompts = [head + [7, 8], head + [9], head + [10, 11, 12]]
  assert sampler.shared_head_length(prompts) == 1152  # quantum 1024 / 8 = 128
  assert sampler.shared_head_length(prompts[:1]) == 0  # one row: nothing shared
  assert sampler.shared_head_length([head[:200] + [1], head[:200] + [2]]) == 192  # quantum 64
  assert sampler.shared_head_length([head[:70] + [1], head[:70] + [2]]) == 64
  assert sampler.shared_head_length([head[:50] + [1], head[:50] + [2]]) == 0  # < 64
  assert sampler.shared_head_length([[1] + head[:99], [2] + head[:99]]) == 0  # differ at 0
  # Each row keeps at least one token of its own: identical prompts share all but the last.
  assert sampler.shared_head_length([head[:65], head[:65]]) == 64
  assert sampler.shared_head_length([head[:64], head[:64]]) == 0


def test_generate_with_shared_head_equals_unshared_and_full_forward(model):
  """Prompts with a 90-token common head (64 shared after rounding) and suffixes of 1..30
  tokens: the same greedy tokens as without sharing, and log-probs equal to a full
  uncached forward over each prompt + its new tokens."""
  config, params = model
  rng = np.random.default_rng(7)
  head = rng.integers(3, config.vocab_size, 90).tolist()
  prompts = [head + rng.integers(3, config.vocab_size, n).tolist() for n in (30, 1, 12, 5)]
  buckets = (16, 32, 64, 128)
  assert sampler.shared_head_length(prompts) == 64
  shared = generate(config, params, prompts, max_new_tokens=7, bucket_sizes=buckets)
  plain = generate(config, params, prompts, max_new_tokens=7, bucket_sizes=buckets,
                   share_prefix=False)
  np.testing.assert_array_equal(shared.tokens, plain.tokens)
  np.testing.assert_allclose(shared.logprobs, plain.logprobs, atol=1e-5)
  new_tokens = shared.to_lists()
  for b, logits in enumerate(_full_logits(config, params, prompts, new_tokens)):
    logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    want = logp[np.arange(len(new_tokens[b])), new_tokens[b]]
    np.testing.assert_allclose(shared.logprobs[b, :len(new_tokens[b])], want, atol=1e-4)
  # Sampling: same seed, same draws (the logits agree to rounding).
  a = generate(config, params, prompts, max_new_tokens=7, temperature=1.0, seed=3,
               bucket_sizes=buckets)
  c = generate(config, params, prompts, max_new_tokens=7, temperature=1.0, seed=3,
               bucket_sizes=buckets, share_prefix=False)
  np.testing.assert_array_equal(a.tokens, c.tokens)


def test_shared_head_prefill_blocks_queries_with_a_key_offset(model, monkeypatch):
  """The suffix prefill after a shared head attends in query blocks whose keys start at
  the head: force tiny blocks so several blocks (and a ragged last one) are exercised."""
  config, params = model
  monkeypatch.setattr(transformer, "PREFILL_QUERY_BLOCK", 8)
  sampler._prefill.clear_cache()
  rng = np.random.default_rng(8)
  head = rng.integers(3, config.vocab_size, 70).tolist()
  prompts = [head + rng.integers(3, config.vocab_size, n).tolist() for n in (27, 3)]
  shared = generate(config, params, prompts, max_new_tokens=4, bucket_sizes=(32, 64))
  sampler._prefill.clear_cache()
  monkeypatch.undo()
  plain = generate(config, params, prompts, max_new_tokens=4, bucket_sizes=(32, 64),
                   share_prefix=False)
  sampler._prefill.clear_cache()
  np.testing.assert_array_equal(shared.tokens, plain.tokens)
  np.testing.assert_allclose(shared.logprobs, plain.logprobs, atol=1e-5)
