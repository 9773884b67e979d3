"""Low-rank adapters (LoRA) on the stacked decoder weights, as pure functions over pytrees.

A target weight `W [L, *in_dims, *out_dims]` (e.g. `q_proj [L, embed, heads, head_dim]`,
`o_proj [L, heads, head_dim, embed]`) gets `A [L, in, r]` and `B [L, r, out]` (in / out =
the flattened input / output dims); the effective weight is `W + (alpha / r) * A @ B`.
`B` starts at zero, so an adapted model starts exactly at its base. Training differentiates
the adapters only (the base is an argument, never updated), which is what users
fine-tuning 8B models on small slices expect, and what makes a trained policy small enough
to ship (SmolLM2-135M, rank 8 on q/v: about 2 MB).

An adapter file (`save`) records its LoRA config and the base model it applies to (the
`model.source` and settings the base is loaded from), so `model.source=lora:<file>` loads
base + adapters as one policy (`agent/build.load_model`).
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

# Target name -> how many dims after the layer axis are inputs (the rest are outputs).
INPUT_DIMS: Mapping[str, int] = {"q_proj": 1, "k_proj": 1, "v_proj": 1, "o_proj": 2,
                                 "gate_proj": 1, "up_proj": 1, "down_proj": 1}
Adapters = dict[str, dict[str, jax.Array]]  # target -> {"a": [L, in, r], "b": [L, r, out]}


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  rank: int = 8
  alpha: float = 16.0
  targets: tuple[str, ...] = ("q_proj", "v_proj")  # or "q_proj,v_proj", as configs write it

  def __post_init__(self):
    if isinstance(self.targets, str):
      object.__setattr__(self, "targets",
                         tuple(t.strip() for t in self.targets.split(",") if t.strip()))
    if self.rank <= 0:
      raise ValueError(f"lora.rank must be positive, got {self.rank}")
    if not self.alpha > 0:
      raise ValueError(f"lora.alpha must be > 0, got {self.alpha}")
    if not self.targets:
      raise ValueError("lora.targets is empty")
    if bad := [t for t in self.targets if t not in INPUT_DIMS]:
      raise ValueError(f"lora.targets: unknown {bad}; known: {sorted(INPUT_DIMS)}")
    object.__setattr__(self, "targets", tuple(self.targets))

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


def _split(shape: tuple[int, ...], target: str) -> tuple[int, int, int]:
  """(layers, in, out) of a stacked target weight."""
  n_in = INPUT_DIMS[target]
  layers, rest = shape[0], shape[1:]
  return layers, int(np.prod(rest[:n_in])), int(np.prod(rest[n_in:]))


def init(cfg: LoraConfig, base_params: Any, seed: int = 0) -> Adapters:
  """Adapters for `base_params` (an nnx.State from `transformer.init_params` / loaders):
  A ~ N(0, 1/in), B = 0 (float32)."""
  keys = jax.random.split(jax.random.key(seed), len(cfg.targets))
  out: Adapters = {}
  for key, t in zip(keys, cfg.targets):
    layers, n_in, n_out = _split(tuple(base_params["layers"][t].shape), t)
    a = jax.random.normal(key, (layers, n_in, cfg.rank), jnp.float32) / np.sqrt(n_in)
    out[t] = {"a": a, "b": jnp.zeros((layers, cfg.rank, n_out), jnp.float32)}
  return out


def merge(base_params: Any, adapters: Adapters, cfg: LoraConfig) -> Any:
  """The effective params: each target `W + scale * A @ B` (in W's dtype); differentiable
  w.r.t. the adapters, jittable (cfg static)."""
  layers = dict(base_params["layers"])
  for t, ab in adapters.items():
    w = layers[t][...]
    delta = jnp.einsum("lir,lro->lio", ab["a"], ab["b"]) * cfg.scale  # [L, in, out]
    layers[t] = layers[t].replace(w + delta.reshape(w.shape).astype(w.dtype))
  merged = dict(base_params)
  merged["layers"] = type(base_params["layers"])(layers)
  return type(base_params)(merged)


def num_params(adapters: Adapters) -> int:
  return int(sum(x.size for x in jax.tree.leaves(adapters)))


def abstract(cfg: LoraConfig, abstract_base: Any) -> Adapters:
  """The adapters' `jax.ShapeDtypeStruct`s for a base given by its shapes (nothing
  allocated): the restore target of a LoRA run's checkpoint."""
  return jax.eval_shape(lambda: init(cfg, abstract_base))


def save(adapters: Adapters, cfg: LoraConfig, path: str | os.PathLike,
         base: Mapping[str, Any] | None = None) -> pathlib.Path:
  """One safetensors file; the LoRA config (and `base`, how to load the base model: e.g.
  {"source": "smollm2"}) in its metadata."""
  from safetensors.numpy import save_file

  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tensors = {f"{t}.{k}": np.asarray(v, np.float32) for t, ab in adapters.items()
             for k, v in ab.items()}
  meta = {"lora": json.dumps({"rank": cfg.rank, "alpha": cfg.alpha,
                              "targets": list(cfg.targets)})}
  if base is not None:
    meta["base"] = json.dumps(dict(base))
  save_file(tensors, str(path), metadata=meta)
  return path


def load(path: str | os.PathLike) -> tuple[LoraConfig, Adapters]:
  from safetensors import safe_open

  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"LoRA adapter file {path} does not exist")
  with safe_open(str(path), framework="numpy") as f:
    meta = f.metadata() or {}
    if "lora" not in meta:
      raise ValueError(f"{path} is not a LoRA adapter file (no 'lora' metadata)")
    cfg = LoraConfig(**{k: (tuple(v) if k == "targets" else v)
                        for k, v in json.loads(meta["lora"]).items()})
    adapters: Adapters = {}
    for name in f.keys():
      t, k = name.rsplit(".", 1)
      adapters.setdefault(t, {})[k] = jnp.asarray(f.get_tensor(name))
  if set(adapters) != set(cfg.targets) or any(set(ab) != {"a", "b"} for ab in adapters.values()):
    raise ValueError(f"{path}: tensors {sorted(adapters)} do not match targets {cfg.targets}")
  return cfg, adapters


def base_of(path: str | os.PathLike) -> dict[str, Any]:
  """The base model an adapter file was trained on (its `save(base=...)`)."""
  from safetensors import safe_open

  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"LoRA adapter file {path} does not exist")
  with safe_open(str(path), framework="numpy") as f:
    meta = f.metadata() or {}
  if "base" not in meta:
    raise ValueError(f"{path} does not say which base model it adapts (no 'base' metadata)")
  return json.loads(meta["base"])
