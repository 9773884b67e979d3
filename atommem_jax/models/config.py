"""Decoder-only transformer configuration (Qwen3 / Qwen2 / Llama families).

One frozen dataclass drives model construction, checkpoint I/O and sharding. It validates
itself on construction so a bad config fails before any compute.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax.numpy as jnp

Family = Literal["qwen3", "qwen2", "llama"]
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


ATTENTION = ("xla", "splash")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyper-parameters of a decoder-only LM.

  family selects the per-family details: qwen3 = q/k RMSNorm, no qkv bias; qwen2 = q/k/v
  bias, no q/k-norm; llama = neither. head_dim may differ from hidden_size // num_heads.
  """

  family: Family = "qwen3"
  vocab_size: int = 151_936
  hidden_size: int = 4096
  intermediate_size: int = 12_288
  num_layers: int = 36
  num_heads: int = 32
  num_kv_heads: int = 8
  head_dim: int = 128
  rope_theta: float = 1_000_000.0
  rms_norm_eps: float = 1e-6
  tie_word_embeddings: bool = False
  max_position_embeddings: int = 40_960
  attention_bias: bool = False  # q/k/v projection bias (True for qwen2)
  param_dtype: str = "float32"  # storage dtype of parameters
  dtype: str = "float32"  # compute dtype of activations
  bos_token_id: int | None = None
  eos_token_id: int | tuple[int, ...] | None = None
  # Attention of the no-cache forward (training, log-probs): "xla" (einsums; any platform)
  # or "splash" (the Pallas splash kernel, TPU; models/splash.py). Not part of a checkpoint.
  attention: str = "xla"

  def __post_init__(self):
    if self.family not in ("qwen3", "qwen2", "llama"):
      raise ValueError(f"ModelConfig.family must be qwen3, qwen2 or llama, got {self.family!r}")
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                 "num_kv_heads", "head_dim"):
      if getattr(self, name) <= 0:
        raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"ModelConfig.num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
          f"({self.num_kv_heads}) for grouped-query attention")
    if self.attention not in ATTENTION:
      raise ValueError(f"ModelConfig.attention must be one of {ATTENTION}, got {self.attention!r}")
    for name in ("param_dtype", "dtype"):
      if getattr(self, name) not in _DTYPES:
        raise ValueError(f"ModelConfig.{name} must be one of {sorted(_DTYPES)}, got {getattr(self, name)!r}")

  @property
  def use_qk_norm(self) -> bool:
    return self.family == "qwen3"

  @property
  def jnp_param_dtype(self) -> Any:
    return _DTYPES[self.param_dtype]

  @property
  def jnp_dtype(self) -> Any:
    return _DTYPES[self.dtype]

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)


def qwen3_8b(**kw) -> ModelConfig:
  """Qwen3-8B (the AtomMem paper's base; AtomMem-8B has the same shape)."""
  return ModelConfig(family="qwen3", vocab_size=151_936, hidden_size=4096, intermediate_size=12_288,
                     num_layers=36, num_heads=32, num_kv_heads=8, head_dim=128, rope_theta=1e6,
                     rms_norm_eps=1e-6, tie_word_embeddings=False, max_position_embeddings=40_960,
                     bos_token_id=151_643, eos_token_id=(151_645, 151_643), **kw)


def smollm2_135m(**kw) -> ModelConfig:
  """SmolLM2-135M-Instruct (Llama architecture), the default CPU policy."""
  return ModelConfig(family="llama", vocab_size=49_152, hidden_size=576, intermediate_size=1536,
                     num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64, rope_theta=100_000.0,
                     rms_norm_eps=1e-5, tie_word_embeddings=True, max_position_embeddings=8192,
                     bos_token_id=1, eos_token_id=2, **kw)


def tiny(family: Family = "qwen3", **kw) -> ModelConfig:
  """A random tiny model for tests (fast on CPU)."""
  base = dict(family=family, vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2,
              num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=10_000.0, rms_norm_eps=1e-6,
              tie_word_embeddings=False, max_position_embeddings=2048,
              attention_bias=(family == "qwen2"))
  base.update(kw)
  return ModelConfig(**base)
