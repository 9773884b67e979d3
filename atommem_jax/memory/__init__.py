"""Agent memory: device `MemoryState` + CRUD, ScaNN long-term store, sentence embedders.

Exports are lazy so importing the device state never loads ScaNN or the encoder.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "MemoryConfig": "state", "MemoryState": "state", "OpBatch": "state",
    "init_state": "state", "init_batch": "state", "apply": "state",
    "TextTable": "text_table", "encode_ops": "encode",
    "ScannStore": "scann_store", "AnnConfig": "scann_store", "MemoryOpError": "scann_store",
    "search_callback": "scann_store",
    "HashingEmbedder": "embedder", "MiniLMEmbedder": "embedder", "PolicyEmbedder": "embedder",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
  if name in _EXPORTS:
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
