"""GGUF (llama.cpp) checkpoints -> our params, streamed through the HF loader.

A GGUF file is memory-mapped by `gguf.GGUFReader`; each tensor is dequantized on its own
(`gguf.quants.dequantize`, any ggml type to float32), renamed from llama.cpp's scheme to the
Hugging Face one, and handed to `hf_io.params_from_hf_tensors` as a generator, so host memory
holds the mapped file plus one float32 tensor (and the stacked parameter being filled) at a
time -- never a second copy of the model.

llama.cpp's HF->GGUF converter permutes the rows of the q/k projections of *Llama* models
(`LlamaModel.permute`: within each head, the rotate-half layout [x0..x(d/2-1), y0..] becomes
the interleaved [x0, y0, x1, y1, ...] its RoPE kernel wants). We apply its exact inverse,
`unpermute_qk`, so the weights are transformers' again. Qwen2/Qwen3 GGUFs are not permuted
(llama.cpp uses NEOX-style RoPE for them).

The model config comes from the `{arch}.*` metadata keys; the tokenizer from the same file is
built by `tokenizer.load_tokenizer(path)`.
"""
from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import jax.numpy as jnp
import numpy as np

from atommem_jax.models import hf_io
from atommem_jax.models.config import ModelConfig

_FAMILIES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
_PERMUTED_QK = {"llama"}  # architectures whose converter permutes q/k rows for RoPE

# llama.cpp tensor name -> HF name ("{}" = layer index).
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.bias": "self_attn.o_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(.+)")
# Tensors llama.cpp may store that transformers recomputes (RoPE tables).
_IGNORED = re.compile(r"rope_freqs\.weight|blk\.\d+\.rope_freqs\.weight")


def permute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
  """llama.cpp's q/k row permutation (HF rotate-half -> interleaved), for tests and writers.

  w: `[n_heads * Dh, ...]` (a weight `[n_heads * Dh, D]` or a bias `[n_heads * Dh]`).
  """
  rows = w.shape[0]
  if rows % (2 * n_heads):
    raise ValueError(f"q/k tensor has {rows} rows, not a multiple of 2 * n_heads={2 * n_heads}")
  return (w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:])  # [H, 2, Dh/2, ...]
          .swapaxes(1, 2).reshape(w.shape))  # [H, Dh/2, 2, ...] -> rows


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Exact inverse of `permute_qk`: interleaved rows back to HF's rotate-half order."""
  rows = w.shape[0]
  if rows % (2 * n_heads):
    raise ValueError(f"q/k tensor has {rows} rows, not a multiple of 2 * n_heads={2 * n_heads}")
  return (w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:])  # [H, Dh/2, 2, ...]
          .swapaxes(1, 2).reshape(w.shape))  # [H, 2, Dh/2, ...] -> rows


def _reader_class() -> type:
  import gguf

  class PlainArrayGGUFReader(gguf.GGUFReader):
    """GGUFReader over a plain-ndarray view of its memory map (same bytes, same parse).

    GGUFReader slices its `np.memmap` once per metadata item; every slice of a memmap pays
    `memmap.__array_finalize__`, which for SmolLM2's 98k vocab/merge strings is ~75% of an
    8 s parse. Slices of an ndarray view of the same mapping skip that: ~4x faster, no copy.
    """

    @property
    def data(self) -> np.ndarray:
      return self._plain_data

    @data.setter
    def data(self, value: np.ndarray) -> None:
      self._plain_data = value.view(np.ndarray) if isinstance(value, np.memmap) else value

  return PlainArrayGGUFReader


def open_gguf(path: str | os.PathLike) -> Any:
  """A `gguf.GGUFReader` for `path` (fast variant); ValueError naming the file if unreadable."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"GGUF file {path} does not exist")
  try:
    return _reader_class()(path)
  except Exception as e:  # gguf raises ValueError/KeyError/IndexError... on a bad file
    raise ValueError(f"{path} is not a readable GGUF file: {e}") from e


def _field(reader: Any, key: str, default: Any = None, *, required: bool = False) -> Any:
  f = reader.fields.get(key)
  if f is None:
    if required:
      raise ValueError(f"GGUF metadata has no {key!r}")
    return default
  return f.contents()


def _dtype_name(dtype: Any) -> str:
  name = jnp.dtype(dtype).name
  if name not in ("float32", "bfloat16", "float16"):
    raise ValueError(f"dtype must be float32, bfloat16 or float16, got {name}")
  return name


def config_from_gguf_reader(reader: Any) -> ModelConfig:
  """ModelConfig from the GGUF metadata (architecture keys + tensor list + tokenizer ids)."""
  arch = _field(reader, "general.architecture", required=True)
  if arch not in _FAMILIES:
    raise ValueError(f"GGUF general.architecture {arch!r} is not supported; "
                     f"expected one of {sorted(_FAMILIES)}")
  get = lambda key, **kw: _field(reader, f"{arch}.{key}", **kw)  # noqa: E731
  scaling = get("rope.scaling.type")
  if scaling not in (None, "none"):
    raise ValueError(f"GGUF {arch}.rope.scaling.type={scaling!r} is not supported")
  hidden = int(get("embedding_length", required=True))
  heads = int(get("attention.head_count", required=True))
  kv_heads = int(get("attention.head_count_kv", default=heads))
  head_dim = int(get("attention.key_length", default=hidden // heads))
  rot_dim = get("rope.dimension_count")
  if rot_dim is not None and int(rot_dim) != head_dim:
    raise ValueError(f"GGUF {arch}.rope.dimension_count={rot_dim} != head_dim={head_dim}: "
                     "partial rotary embeddings are not supported")
  names = {t.name for t in reader.tensors}
  embd = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
  if embd is None:
    raise ValueError("GGUF file has no token_embd.weight tensor")
  vocab = get("vocab_size")
  if vocab is None:
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab = len(tokens.data) if tokens is not None else int(embd.shape[-1])  # ggml ne: [D, V]
  eos = _field(reader, "tokenizer.ggml.eos_token_id")
  bos = _field(reader, "tokenizer.ggml.bos_token_id")
  return ModelConfig(
      family=_FAMILIES[arch], vocab_size=int(vocab), hidden_size=hidden,
      intermediate_size=int(get("feed_forward_length", required=True)),
      num_layers=int(get("block_count", required=True)), num_heads=heads,
      num_kv_heads=kv_heads, head_dim=head_dim,
      rope_theta=float(get("rope.freq_base", default=10_000.0)),
      # GGUF stores eps as float32: round to the float64 it came from (9.9999997e-06 -> 1e-05).
      rms_norm_eps=float(np.format_float_positional(
          np.float32(get("attention.layer_norm_rms_epsilon", default=1e-6)), unique=True)),
      tie_word_embeddings="output.weight" not in names,
      max_position_embeddings=int(get("context_length", default=2048)),
      attention_bias="blk.0.attn_q.bias" in names,
      bos_token_id=None if bos is None else int(bos),
      eos_token_id=None if eos is None else int(eos))


def hf_name(gguf_name: str) -> str | None:
  """HF tensor name for a llama.cpp tensor name; None for tensors we do not load."""
  if gguf_name in _GLOBAL_NAMES:
    return _GLOBAL_NAMES[gguf_name]
  m = _LAYER_RE.fullmatch(gguf_name)
  if m and m.group(2) in _LAYER_NAMES:
    return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}"
  if _IGNORED.fullmatch(gguf_name):
    return None
  raise ValueError(f"GGUF tensor {gguf_name!r} has no Hugging Face counterpart we know")


def iter_hf_tensors(reader: Any, config: ModelConfig) -> Iterator[tuple[str, np.ndarray]]:
  """HF-named float32 tensors from a GGUF reader, dequantized one at a time."""
  from gguf.quants import dequantize

  unpermute = config.family in _PERMUTED_QK
  for t in reader.tensors:
    name = hf_name(t.name)
    if name is None:
      continue
    # dequantize returns numpy (row-major) order, i.e. ggml's ne reversed: HF's [out, in].
    array = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
    array = array.reshape(tuple(int(n) for n in reversed(t.shape)))
    if unpermute and name.endswith(("q_proj.weight", "q_proj.bias")):
      array = unpermute_qk(array, config.num_heads)
    elif unpermute and name.endswith(("k_proj.weight", "k_proj.bias")):
      array = unpermute_qk(array, config.num_kv_heads)
    yield name, array


def from_gguf(path: str | os.PathLike, dtype: Any = jnp.float32) -> tuple[ModelConfig, Any]:
  """(config, params) from a llama.cpp GGUF file; params and compute in `dtype`.

  Quantized tensors are dequantized to float32 and then cast: the weights are exactly the
  file's (quantization error included), as transformers' own GGUF loader sees them.
  """
  reader = open_gguf(path)
  name = _dtype_name(dtype)
  config = config_from_gguf_reader(reader).replace(param_dtype=name, dtype=name)
  params = hf_io.params_from_hf_tensors(config, iter_hf_tensors(reader, config))
  return config, params


def export_gguf_to_hf(path: str | os.PathLike, out_dir: str | os.PathLike,
                      dtype: Any = jnp.float32) -> Path:
  """Writes a GGUF as a HF directory (config.json, safetensors, tokenizer files).

  The result loads with `hf_io.from_pretrained` and with transformers.
  """
  from atommem_jax.models import tokenizer as tok_lib

  out = Path(out_dir)
  config, params = from_gguf(path, dtype=dtype)
  hf_io.save_pretrained(config, params, out)
  tok_lib.load_tokenizer(path).save_pretrained(out)
  return out


# --- the context window from the header alone (config checks: no weights, no tokenizer) ----

GGUF_DEFAULT_CONTEXT = 2048  # the context length a GGUF without one gets


_GGUF_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                10: "<Q", 11: "<q", 12: "<d"}  # GGUF value types; 8 = string, 9 = array
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def _read(f: BinaryIO, fmt: str):
  size = struct.calcsize(fmt)
  data = f.read(size)
  if len(data) != size:
    raise ValueError("unexpected end of file in the GGUF header")
  return struct.unpack(fmt, data)[0]


def _gguf_value(f: BinaryIO, vtype: int, keep: bool):
  """Reads (keep) or skips one metadata value of type `vtype` at the file position."""
  if vtype in _GGUF_SCALAR:
    if keep:
      return _read(f, _GGUF_SCALAR[vtype])
    f.seek(struct.calcsize(_GGUF_SCALAR[vtype]), 1)
    return None
  if vtype == _GGUF_STRING:
    n = _read(f, "<Q")
    if keep:
      return f.read(n).decode("utf-8")
    f.seek(n, 1)
    return None
  if vtype == _GGUF_ARRAY:
    etype, count = _read(f, "<I"), _read(f, "<Q")
    if etype in _GGUF_SCALAR:  # a vocabulary's scores: one seek, not 49k reads
      f.seek(count * struct.calcsize(_GGUF_SCALAR[etype]), 1)
    else:
      for _ in range(count):
        _gguf_value(f, etype, keep=False)
    return None
  raise ValueError(f"unknown GGUF metadata value type {vtype}")


def gguf_context_length(path: str | os.PathLike) -> int:
  """`{arch}.context_length` from a GGUF file's header, read up to that key (milliseconds;
  `gguf.GGUFReader` parses every tokenizer string first, about a second for SmolLM2).
  Absent: GGUF_DEFAULT_CONTEXT, the value `from_gguf` gives the model."""
  with open(path, "rb") as f:
    if f.read(4) != b"GGUF":
      raise ValueError(f"{path} is not a GGUF file (bad magic)")
    version = _read(f, "<I")
    if version < 2:
      raise ValueError(f"{path}: GGUF version {version} is not supported (need >= 2)")
    _read(f, "<Q")  # tensor count
    arch = None
    for _ in range(_read(f, "<Q")):
      key = f.read(_read(f, "<Q")).decode("utf-8")
      vtype = _read(f, "<I")
      wanted = key == "general.architecture" or (arch is not None
                                                  and key == f"{arch}.context_length")
      value = _gguf_value(f, vtype, keep=wanted)
      if key == "general.architecture":
        arch = value
      elif wanted:
        return int(value)
  return GGUF_DEFAULT_CONTEXT
