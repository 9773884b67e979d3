"""Embedders: Flax BERT vs transformers/sentence-transformers, policy and hashing embedders."""
from __future__ import annotations

import functools


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from atommem_jax.memory import embedder as E

SENTENCES = [
    "Film X was directed by Ann Lee.", "Ann Lee was born in Oslo in 1950.",
    "The capital of Norway is Oslo.", "Who directed Film X?", "A cat sat on the mat.",
    "Photosynthesis converts light into chemical energy.", "The stock market fell sharply today.",
    "Shakespeare wrote Hamlet around 1600.", "Mount Everest is the highest mountain on Earth.",
    "She plays the violin in an orchestra.", "Water boils at 100 degrees Celsius at sea level.",
    "The Eiffel Tower is in Paris.", "He scored two goals in the final.",
    "Quantum computers use qubits.", "The museum opened a new exhibition on Roman art.",
    "Rain is expected tomorrow afternoon.", "Bananas are rich in potassium.",
    "The treaty was signed in 1648.", "Neural networks learn from data.",
    "Her novel won the Booker Prize.", "The river flows into the Atlantic Ocean.",
    "Coffee originated in Ethiopia.", "The bridge was completed in 1937.",
    "Jupiter has dozens of moons.", "The band released their debut album in 1969.",
    "Penguins live mostly in the Southern Hemisphere.", "The CEO resigned after the scandal.",
    "Chess originated in India.", "The marathon distance is 42.195 kilometres.",
    "Vaccines train the immune system.", "The painting was stolen in 1911.",
    "He was born in a small village near Kyoto.", "The company is headquartered in Seattle.",
    "Tea is the second most consumed drink in the world.", "The volcano erupted in 79 AD.",
    "She became the first woman to win the prize.", "The library holds millions of books.",
    "Lightning is a discharge of static electricity.", "The film premiered at Cannes.",
    "Bees communicate by dancing.", "The Great Wall is visible in many photographs.",
    "The algorithm runs in linear time.", "He moved to Berlin in 1933.",
    "The orchestra performed Beethoven's Ninth.", "Glaciers are retreating worldwide.",
    "The recipe calls for two eggs.", "The spacecraft landed on Mars.",
    "Tokyo hosted the Olympics in 1964 and 2021.", "A long sentence " + "with many words " * 30,
    "",
]
assert len(SENTENCES) == 50


@pytest.fixture(scope="module")
def minilm():
  return E.MiniLMEmbedder(batch_size=8)


def test_minilm_embeddings_are_unit_norm_order_and_batch_invariant(minilm):
  a = minilm(SENTENCES[:12])
  assert a.shape == (12, 384) and a.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
  rev = minilm(SENTENCES[:12][::-1])[::-1]  # different batches and buckets
  np.testing.assert_allclose(rev, a, atol=2e-5)
  sim = a @ a.T
  assert sim[0, 3] > sim[0, 4] and sim[1, 2] > sim[1, 5]  # related sentences are closer
  assert minilm([]).shape == (0, 384)


def test_tiny_random_bert_matches_transformers(tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  cfg = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=37,
                                max_position_embeddings=64, hidden_act="gelu")
  torch.manual_seed(0)
  hf = transformers.BertModel(cfg, add_pooling_layer=False).eval()
  hf.save_pretrained(tmp_path)
  config, model = E.load_bert(tmp_path)
  assert config.num_layers == 2 and config.intermediate_size == 37
  rng = np.random.default_rng(0)
  ids = rng.integers(1, 99, size=(3, 10)).astype(np.int32)
  mask = np.ones((3, 10), bool)
  mask[1, 6:] = mask[2, 3:] = False
  with torch.no_grad():
    want = hf(input_ids=torch.tensor(ids, dtype=torch.long),
              attention_mask=torch.tensor(mask, dtype=torch.long)).last_hidden_state.numpy()
  got = np.asarray(model(ids, mask))
  np.testing.assert_allclose(got[mask], want[mask], atol=2e-5, rtol=1e-4)


def test_load_bert_errors_name_the_problem(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    E.load_bert(tmp_path)
  with pytest.raises(ValueError, match="hidden_act"):
    E.BertConfig.from_hf({"model_type": "bert", "hidden_act": "relu"})
  cfg = E.BertConfig(vocab_size=5, hidden_size=4, num_layers=1, num_heads=2, intermediate_size=8,
                     max_position_embeddings=8)
  with pytest.raises(ValueError, match="missing tensor 'embeddings.word_embeddings.weight'"):
    E._bert_pure_dict(cfg, {})


def test_minilm_parity_with_sentence_transformers(minilm):
  """Acceptance: cosine >= 0.9999 vs sentence-transformers (torch) on 50 sentences, offline."""
  st = pytest.importorskip("sentence_transformers")
  ref = st.SentenceTransformer(str(E.minilm_dir()), device="cpu").encode(
      SENTENCES, batch_size=16, convert_to_numpy=True)
  ours = minilm(SENTENCES)
  cos = (ours * ref).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1))
  assert cos.min() >= 0.9999, (cos.min(), int(cos.argmin()))


class _CharTokenizer:
  """Stands in for a HF tokenizer: one id per character (the test needs ids, not BPE)."""

  pad_token_id = 0

  def encode(self, text, add_special_tokens=False):
    return [1 + ord(ch) % 500 for ch in text]


def test_policy_embedder_pools_hidden_states():
  from atommem_jax.models import transformer as tf
  from atommem_jax.models.config import tiny

  config = tiny("llama")
  test_tokenizer = _CharTokenizer()
  # Random params filled into the abstract structure (much faster than tf.init_params on CPU).
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda a: jnp.asarray(rng.normal(0, 0.2, a.shape).astype(a.dtype)),
                        tf.abstract_params(config))
  policy_emb = E.PolicyEmbedder(config, test_tokenizer, batch_size=3, buckets=(8, 64))
  emb = functools.partial(policy_emb.embed, params=params)
  texts = ["memory about Oslo", "a", "x " * 40]
  out = emb(texts)
  assert out.shape == (3, config.hidden_size)
  np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
  # Alone (other batch company, "a" padded to 8 instead of 64): same vectors.
  for i, t in enumerate(texts):
    np.testing.assert_allclose(out[i], emb([t])[0], atol=2e-6)
  # The 80-token text is truncated to the largest bucket: its first 64 tokens.
  np.testing.assert_allclose(out[2], emb(["x " * 32])[0], atol=2e-6)
  # The pooled states are the final hidden states: projecting them gives the model's logits.
  ids = jnp.asarray([test_tokenizer.encode(texts[0])], jnp.int32)
  logits = np.asarray(policy_emb.hidden_states(params, ids)) @ np.asarray(params["lm_head"][...])
  np.testing.assert_allclose(logits, np.asarray(tf.forward(config, params, ids)), atol=1e-4)
  # Parameters are an argument of each call: other weights, other vectors (same embedder).
  params2 = jax.tree.map(lambda a: a * 1.5, params)
  assert not np.allclose(policy_emb.embed(texts, params=params2), out, atol=1e-3)


def test_hashing_embedder_is_deterministic_normalised_and_lexical():
  h = E.HashingEmbedder(dim=64)
  texts = ["Ann Lee was born in Oslo", "ann lee was born in OSLO!", "quantum qubits", ""]
  a = h(texts)
  assert a.shape == (4, 64)
  np.testing.assert_allclose(np.linalg.norm(a[:3], axis=1), 1.0, atol=1e-6)
  assert not a[3].any()
  assert a[0] @ a[1] > 0.95 and abs(a[0] @ a[2]) < 0.5
  np.testing.assert_array_equal(a, E.HashingEmbedder(dim=64)(texts))
  b = h(["Ann Lee was born in Bergen"])[0]
  assert 0.3 < a[0] @ b < 0.95  # shared words give partial similarity
  with pytest.raises(ValueError, match="dim"):
    E.HashingEmbedder(dim=0)
