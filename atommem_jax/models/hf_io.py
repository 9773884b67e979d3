"""Hugging Face checkpoint interop: config.json + (sharded) safetensors <-> our params.

Loading streams: each tensor is read from a memory-mapped safetensors file, converted
(dtype + layout) on its own and copied into a preallocated buffer of its stacked `[L, ...]`
parameter; a parameter becomes a device array as soon as all its slices have arrived, and its
host buffer is dropped. Peak host memory is therefore about one checkpoint plus one stacked
parameter, never two checkpoints -- what an 8B model on a pod host needs.

safetensors is read and written by a tiny raw reader/writer (8-byte header length, JSON
header, flat little-endian data) rather than `safe_open(framework="numpy")`, because numpy has
no bfloat16 and `safe_open` refuses BF16 tensors; `ml_dtypes.bfloat16` (a JAX dependency)
fills the gap, so fp32 and bf16 checkpoints take the same path.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from atommem_jax.models import transformer
from atommem_jax.models.config import ModelConfig

_ARCHS = {"Qwen3ForCausalLM": "qwen3", "Qwen2ForCausalLM": "qwen2", "LlamaForCausalLM": "llama"}
_MODEL_TYPES = {"qwen3": "qwen3", "qwen2": "qwen2", "llama": "llama"}
_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
              "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32, "I16": np.int16,
              "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_NP_TO_ST = {np.dtype(v): k for k, v in _ST_DTYPES.items()}
_DTYPE_NAMES = {np.dtype(np.float32): "float32", np.dtype(ml_dtypes.bfloat16): "bfloat16",
                np.dtype(np.float16): "float16"}
DEFAULT_MAX_SHARD_BYTES = 5 * 2**30


# ----------------------------------------------------------------------------- config


def _rope_theta(hf: dict[str, Any]) -> float:
  """rope_theta from a transformers 4 (`rope_theta` + `rope_scaling`) or 5 (`rope_parameters`)
  config; any scaling other than plain RoPE is rejected rather than silently ignored."""
  params = hf.get("rope_parameters") or {}
  scaling = hf.get("rope_scaling") or {}
  for d, field in ((params, "rope_parameters"), (scaling, "rope_scaling")):
    rope_type = d.get("rope_type", d.get("type", "default"))
    if rope_type not in ("default", None):
      raise ValueError(f"config.json {field}: unsupported RoPE type {rope_type!r} (only plain "
                       "RoPE is implemented)")
  theta = params.get("rope_theta", hf.get("rope_theta"))
  if theta is None:
    raise ValueError("config.json has no rope_theta (neither top level nor in rope_parameters)")
  return float(theta)


def config_from_hf(hf_config: dict[str, Any]) -> ModelConfig:
  """ModelConfig from a Qwen3/Qwen2/Llama `config.json` dict; unsupported features raise."""
  archs = hf_config.get("architectures") or []
  if archs:
    if len(archs) != 1 or archs[0] not in _ARCHS:
      raise ValueError(f"config.json architectures {archs} not supported; expected one of "
                       f"{sorted(_ARCHS)}")
    family = _ARCHS[archs[0]]
  elif hf_config.get("model_type") in _MODEL_TYPES:
    family = _MODEL_TYPES[hf_config["model_type"]]
  else:
    raise ValueError(f"config.json model_type {hf_config.get('model_type')!r} not supported; "
                     f"expected one of {sorted(_MODEL_TYPES)}")
  act = hf_config.get("hidden_act", "silu")
  if act != "silu":
    raise ValueError(f"config.json hidden_act {act!r} not supported (only silu / SwiGLU)")
  if hf_config.get("mlp_bias"):
    raise ValueError("config.json mlp_bias=true is not supported")
  if hf_config.get("use_sliding_window"):
    raise ValueError("config.json use_sliding_window=true is not supported")
  try:
    hidden, heads = int(hf_config["hidden_size"]), int(hf_config["num_attention_heads"])
    # transformers' Qwen3Config defaults head_dim to 128; the others derive it.
    default_head_dim = 128 if family == "qwen3" else hidden // heads
    eos = hf_config.get("eos_token_id")
    return ModelConfig(
        family=family,
        vocab_size=int(hf_config["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(hf_config["intermediate_size"]),
        num_layers=int(hf_config["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(hf_config.get("num_key_value_heads") or heads),
        head_dim=int(hf_config.get("head_dim") or default_head_dim),
        rope_theta=_rope_theta(hf_config),
        rms_norm_eps=float(hf_config.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(hf_config.get("tie_word_embeddings", False)),
        max_position_embeddings=int(hf_config.get("max_position_embeddings", 2048)),
        attention_bias=True if family == "qwen2" else bool(hf_config.get("attention_bias", False)),
        bos_token_id=hf_config.get("bos_token_id"),
        eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
    )
  except KeyError as e:
    raise ValueError(f"config.json is missing required field {e.args[0]!r}") from None


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
  """A `config.json` dict that `transformers.AutoConfig` reads back to the same model."""
  c = config
  arch = {v: k for k, v in _ARCHS.items()}[c.family]
  eos = list(c.eos_token_id) if isinstance(c.eos_token_id, tuple) else c.eos_token_id
  out: dict[str, Any] = {
      "architectures": [arch],
      "model_type": c.family,
      "vocab_size": c.vocab_size,
      "hidden_size": c.hidden_size,
      "intermediate_size": c.intermediate_size,
      "num_hidden_layers": c.num_layers,
      "num_attention_heads": c.num_heads,
      "num_key_value_heads": c.num_kv_heads,
      "head_dim": c.head_dim,
      "hidden_act": "silu",
      "max_position_embeddings": c.max_position_embeddings,
      "rms_norm_eps": c.rms_norm_eps,
      "tie_word_embeddings": c.tie_word_embeddings,
      "rope_theta": c.rope_theta,  # transformers 4
      "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},  # transformers 5
      "bos_token_id": c.bos_token_id,
      "eos_token_id": eos,
      "dtype": c.param_dtype,
      "torch_dtype": c.param_dtype,
  }
  if c.family == "qwen2":
    if not c.attention_bias:
      raise ValueError("qwen2 always has q/k/v bias in transformers; config.attention_bias=False "
                       "cannot be exported")
  else:
    out["attention_bias"] = c.attention_bias
  if c.family == "qwen3":
    out["use_sliding_window"] = False
  return out


# ----------------------------------------------------------------------------- name/layout map


class _Entry:
  """How one HF tensor maps onto (a layer slice of) one of our params."""

  def __init__(self, path: tuple[str, ...], layer: int | None, hf_shape: tuple[int, ...],
               to_ours: Callable[[np.ndarray], np.ndarray],
               to_hf: Callable[[np.ndarray], np.ndarray]):
    self.path, self.layer, self.hf_shape = path, layer, hf_shape
    self.to_ours, self.to_hf = to_ours, to_hf


def _layout(config: ModelConfig) -> dict[str, _Entry]:
  """HF tensor name -> _Entry, in the order transformers writes them (per layer)."""
  c = config
  D, F, H, K, Dh, V = (c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads,
                       c.head_dim, c.vocab_size)
  ident = lambda w: w  # noqa: E731
  transpose = lambda w: w.T  # noqa: E731

  def proj_in(n):  # HF [n*Dh, D] <-> ours [D, n, Dh]
    return (lambda w: w.T.reshape(D, n, Dh)), (lambda w: w.reshape(D, n * Dh).T)

  def bias(n):  # HF [n*Dh] <-> ours [n, Dh]
    return (lambda b: b.reshape(n, Dh)), (lambda b: b.reshape(n * Dh))

  out: dict[str, _Entry] = {"model.embed_tokens.weight": _Entry(("embed",), None, (V, D), ident,
                                                                 ident)}
  for i in range(c.num_layers):
    pre = f"model.layers.{i}."
    L = lambda name, hf_shape, fns: _Entry(("layers", name), i, hf_shape, *fns)  # noqa: E731
    out[pre + "input_layernorm.weight"] = L("input_norm", (D,), (ident, ident))
    out[pre + "self_attn.q_proj.weight"] = L("q_proj", (H * Dh, D), proj_in(H))
    out[pre + "self_attn.k_proj.weight"] = L("k_proj", (K * Dh, D), proj_in(K))
    out[pre + "self_attn.v_proj.weight"] = L("v_proj", (K * Dh, D), proj_in(K))
    out[pre + "self_attn.o_proj.weight"] = L(
        "o_proj", (D, H * Dh), (lambda w: w.T.reshape(H, Dh, D), lambda w: w.reshape(H * Dh, D).T))
    if c.attention_bias:
      out[pre + "self_attn.q_proj.bias"] = L("q_bias", (H * Dh,), bias(H))
      out[pre + "self_attn.k_proj.bias"] = L("k_bias", (K * Dh,), bias(K))
      out[pre + "self_attn.v_proj.bias"] = L("v_bias", (K * Dh,), bias(K))
      if transformer._has_o_bias(c):  # pylint: disable=protected-access
        out[pre + "self_attn.o_proj.bias"] = L("o_bias", (D,), (ident, ident))
    if c.use_qk_norm:
      out[pre + "self_attn.q_norm.weight"] = L("q_norm", (Dh,), (ident, ident))
      out[pre + "self_attn.k_norm.weight"] = L("k_norm", (Dh,), (ident, ident))
    out[pre + "post_attention_layernorm.weight"] = L("post_attn_norm", (D,), (ident, ident))
    out[pre + "mlp.gate_proj.weight"] = L("gate_proj", (F, D), (transpose, transpose))
    out[pre + "mlp.up_proj.weight"] = L("up_proj", (F, D), (transpose, transpose))
    out[pre + "mlp.down_proj.weight"] = L("down_proj", (D, F), (transpose, transpose))
  out["model.norm.weight"] = _Entry(("final_norm",), None, (D,), ident, ident)
  if not c.tie_word_embeddings:
    out["lm_head.weight"] = _Entry(("lm_head",), None, (V, D), transpose, transpose)
  return out


# Tensors some checkpoints carry that we do not need (recomputed or tied).
_IGNORED = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")


# ----------------------------------------------------------------------------- params <-> tensors


def _np_dtype(dtype: Any) -> np.dtype:
  d = np.dtype(jnp.dtype(dtype))
  if d not in _DTYPE_NAMES:
    raise ValueError(f"unsupported parameter dtype {d} (use float32, bfloat16 or float16)")
  return d


def _flat_shardings(shardings: nnx.State | None, paths: Iterable[tuple[str, ...]]
                    ) -> dict[tuple[str, ...], jax.sharding.Sharding | None]:
  """path -> Sharding from an nnx.State of shardings shaped like the params (or None)."""
  if shardings is None:
    return {path: None for path in paths}
  flat = {}
  for path, leaf in nnx.to_flat_state(shardings):
    flat[path] = leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf
  missing = [p for p in paths if p not in flat]
  if missing:
    raise ValueError(f"shardings have no entry for {['/'.join(p) for p in missing]}")
  return flat


def params_from_hf_tensors(config: ModelConfig, tensors: Iterable[tuple[str, np.ndarray]],
                           dtype: Any = None, shardings: nnx.State | None = None) -> nnx.State:
  """Params from HF-named tensors, consumed one at a time (see the module docstring).

  shardings: optional nnx.State of `jax.sharding.Sharding` with the params' structure (e.g.
  logical axes from `nnx.get_partition_spec(transformer.abstract_params(config))` mapped
  through sharding rules); each parameter is `device_put` with its sharding as soon as it is
  complete, so no device ever holds a whole unsharded checkpoint.
  Raises ValueError naming any unexpected, duplicated, mis-shaped or missing tensor.
  """
  np_dtype = _np_dtype(config.jnp_param_dtype if dtype is None else dtype)
  layout = _layout(config)
  abstract = transformer.abstract_params(config)
  flat = dict(nnx.to_flat_state(abstract))
  placement = _flat_shardings(shardings, flat)
  shapes = {path: tuple(var.get_value().shape) for path, var in flat.items()}
  needed = {path: (config.num_layers if path[0] == "layers" else 1) for path in flat}
  buffers: dict[tuple[str, ...], np.ndarray] = {}
  filled: dict[tuple[str, ...], int] = {}
  done: dict[tuple[str, ...], jax.Array] = {}
  seen: set[str] = set()
  for name, array in tensors:
    if name not in layout:
      if _IGNORED.fullmatch(name) or (name == "lm_head.weight" and config.tie_word_embeddings):
        continue
      raise ValueError(f"unexpected tensor {name!r} for a {config.family} model with "
                       f"{config.num_layers} layers")
    if name in seen:
      raise ValueError(f"tensor {name!r} appears twice in the checkpoint")
    seen.add(name)
    entry = layout[name]
    if tuple(array.shape) != entry.hf_shape:
      raise ValueError(f"tensor {name!r} has shape {tuple(array.shape)}, expected "
                       f"{entry.hf_shape} for this config")
    value = entry.to_ours(np.asarray(array)).astype(np_dtype)
    if entry.layer is None:
      buf = np.ascontiguousarray(value)
    else:
      if entry.path not in buffers:
        buffers[entry.path] = np.empty(shapes[entry.path], np_dtype)
      buffers[entry.path][entry.layer] = value
      buf = None
    filled[entry.path] = filled.get(entry.path, 0) + 1
    if filled[entry.path] == needed[entry.path]:
      host = buffers.pop(entry.path) if buf is None else buf
      sharding = placement[entry.path]
      done[entry.path] = jnp.asarray(host) if sharding is None else jax.device_put(host, sharding)
      del host
    del array, value
  missing = sorted(set(layout) - seen)
  if missing:
    shown = ", ".join(missing[:8]) + (f" ... ({len(missing)} in all)" if len(missing) > 8 else "")
    raise ValueError(f"checkpoint is missing tensors: {shown}")
  for path, var in flat.items():
    var.set_value(done[path])
  return nnx.from_flat_state(flat)


def params_to_hf_tensors(config: ModelConfig, params: nnx.State
                         ) -> Iterator[tuple[str, np.ndarray]]:
  """HF-named numpy tensors (in the params' dtype), one at a time, in transformers' order."""
  flat = {path: var for path, var in nnx.to_flat_state(params)}
  for name, entry in _layout(config).items():
    if entry.path not in flat:
      raise ValueError(f"params have no {'/'.join(entry.path)} (needed for {name!r})")
    value = flat[entry.path].get_value()
    if entry.layer is not None:
      value = value[entry.layer]
    yield name, np.ascontiguousarray(entry.to_hf(np.asarray(value)))


# ----------------------------------------------------------------------------- safetensors


def _read_header(path: Path) -> tuple[dict[str, Any], int]:
  with open(path, "rb") as f:
    raw = f.read(8)
    if len(raw) != 8:
      raise ValueError(f"{path}: not a safetensors file (too short)")
    n = int.from_bytes(raw, "little")
    try:
      header = json.loads(f.read(n))
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: corrupt safetensors header ({e})") from None
  header.pop("__metadata__", None)
  return header, 8 + n


def iter_safetensors(path: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
  """(name, array) per tensor of one safetensors file, memory-mapped (no full read)."""
  path = Path(path)
  header, data_start = _read_header(path)
  mm = np.memmap(path, dtype=np.uint8, mode="r")
  for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
    if info["dtype"] not in _ST_DTYPES:
      raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
    start, end = info["data_offsets"]
    dt = np.dtype(_ST_DTYPES[info["dtype"]])
    yield name, mm[data_start + start:data_start + end].view(dt).reshape(info["shape"])
  del mm


def _checkpoint_files(path: Path) -> list[Path]:
  index = path / "model.safetensors.index.json"
  if index.exists():
    weight_map = json.loads(index.read_text()).get("weight_map")
    if not weight_map:
      raise ValueError(f"{index} has no weight_map")
    files = sorted(set(weight_map.values()))
    for f in files:
      if not (path / f).exists():
        raise ValueError(f"{index} names shard {f!r}, which does not exist in {path}")
    return [path / f for f in files]
  if (path / "model.safetensors").exists():
    return [path / "model.safetensors"]
  files = sorted(path.glob("*.safetensors"))
  if not files:
    raise ValueError(f"{path} holds no *.safetensors checkpoint (pytorch .bin is not supported)")
  return files


def from_pretrained(path: str | os.PathLike, dtype: Any = jnp.float32,
                    shardings: nnx.State | None = None) -> tuple[ModelConfig, nnx.State]:
  """(config, params) from a local HF directory; params and compute in `dtype`.

  Streams tensors one at a time (see `params_from_hf_tensors`, also for `shardings`).
  """
  path = Path(path)
  cfg_file = path / "config.json"
  if not cfg_file.exists():
    raise ValueError(f"{path} has no config.json")
  name = _DTYPE_NAMES[_np_dtype(dtype)]
  config = config_from_hf(json.loads(cfg_file.read_text())).replace(param_dtype=name, dtype=name)

  def tensors():
    for f in _checkpoint_files(path):
      yield from iter_safetensors(f)

  return config, params_from_hf_tensors(config, tensors(), shardings=shardings)


def _write_shard(path: Path, entries: list[tuple[str, tuple[int, ...], np.dtype]],
                 tensors: Iterator[tuple[str, np.ndarray]]) -> None:
  """Writes one safetensors file whose header is known up front, streaming tensor data."""
  header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
  offset = 0
  for name, shape, dt in entries:
    n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    header[name] = {"dtype": _NP_TO_ST[dt], "shape": list(shape),
                    "data_offsets": [offset, offset + n]}
    offset += n
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)
  with open(path, "wb") as f:
    f.write(len(blob).to_bytes(8, "little"))
    f.write(blob)
    for name, shape, dt in entries:
      got, array = next(tensors)
      assert got == name and array.shape == shape and array.dtype == dt, (got, name)
      f.write(array.tobytes())


def save_pretrained(config: ModelConfig, params: nnx.State, path: str | os.PathLike,
                    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> Path:
  """Writes config.json, generation_config.json and safetensors that transformers loads.

  Above `max_shard_bytes` the weights are split into `model-0000i-of-0000n.safetensors` with a
  `model.safetensors.index.json`, as transformers does. Tensors are written one at a time.
  """
  path = Path(path)
  path.mkdir(parents=True, exist_ok=True)
  flat = dict(nnx.to_flat_state(params))
  plan: list[list[tuple[str, tuple[int, ...], np.dtype]]] = [[]]
  size = 0
  total = 0
  for name, entry in _layout(config).items():
    if entry.path not in flat:
      raise ValueError(f"params have no {'/'.join(entry.path)} (needed for {name!r})")
    dt = np.dtype(flat[entry.path].get_value().dtype)
    nbytes = math.prod(entry.hf_shape) * dt.itemsize
    if plan[-1] and size + nbytes > max_shard_bytes:
      plan.append([])
      size = 0
    plan[-1].append((name, entry.hf_shape, dt))
    size += nbytes
    total += nbytes
  tensors = params_to_hf_tensors(config, params)
  if len(plan) == 1:
    _write_shard(path / "model.safetensors", plan[0], tensors)
  else:
    weight_map = {}
    for i, entries in enumerate(plan):
      fname = f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors"
      _write_shard(path / fname, entries, tensors)
      weight_map.update({name: fname for name, _, _ in entries})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
  hf = config_to_hf(config)
  (path / "config.json").write_text(json.dumps(hf, indent=2))
  gen = {"bos_token_id": hf["bos_token_id"], "eos_token_id": hf["eos_token_id"]}
  (path / "generation_config.json").write_text(json.dumps(gen, indent=2))
  return path
