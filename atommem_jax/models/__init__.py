"""Policy model: decoder-only transformer, sampler, HF / GGUF checkpoint I/O.

Public names are imported lazily (PEP 562) so importing one submodule never pays for,
or depends on, the others.
"""
from __future__ import annotations

import importlib
from typing import Any

from atommem_jax.models.config import ModelConfig

_LAZY = {
    # transformer.py
    "Transformer": "transformer",
    "forward": "transformer",
    "apply": "transformer",
    "init_params": "transformer",
    "init_cache": "transformer",
    # hf_io.py
    "from_pretrained": "hf_io",
    "save_pretrained": "hf_io",
    # gguf_io.py
    "from_gguf": "gguf_io",
    # tokenizer.py
    "load_tokenizer": "tokenizer",
    "smollm2_gguf_path": "tokenizer",
    # sampler.py
    "generate": "sampler",
}

__all__ = ["ModelConfig", *_LAZY]


def __getattr__(name: str) -> Any:
  if name in _LAZY:
    module = importlib.import_module(f"atommem_jax.models.{_LAZY[name]}")
    return getattr(module, name)
  raise AttributeError(f"module 'atommem_jax.models' has no attribute {name!r}")
