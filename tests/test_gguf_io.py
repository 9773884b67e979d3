"""GGUF loading: metadata -> config, q/k un-permutation, synthetic files, SmolLM2 parity."""
from __future__ import annotations

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from gguf.quants import dequantize, quantize

from atommem_jax.models import config as config_lib
from atommem_jax.models import gguf_io, hf_io, transformer
from atommem_jax.models import tokenizer as tok_lib

_HF_TO_GGUF_LAYER = {v: k for k, v in gguf_io._LAYER_NAMES.items()}  # pylint: disable=protected-access
_HF_TO_GGUF_GLOBAL = {v: k for k, v in gguf_io._GLOBAL_NAMES.items()}  # pylint: disable=protected-access


def _gguf_name(hf: str) -> str:
  if hf in _HF_TO_GGUF_GLOBAL:
    return _HF_TO_GGUF_GLOBAL[hf]
  _, _, layer, rest = hf.split(".", 3)
  return f"blk.{layer}.{_HF_TO_GGUF_LAYER[rest]}"


def _write_gguf(path, config: config_lib.ModelConfig, hf_tensors: dict[str, np.ndarray], *,
                embed_q8: bool = False, extra: dict[str, np.ndarray] | None = None) -> None:
  """A GGUF as llama.cpp's converter writes it: llama.cpp names, q/k permuted for llama."""
  w = gguf.GGUFWriter(str(path), config.family)
  w.add_block_count(config.num_layers)
  w.add_context_length(config.max_position_embeddings)
  w.add_embedding_length(config.hidden_size)
  w.add_feed_forward_length(config.intermediate_size)
  w.add_head_count(config.num_heads)
  w.add_head_count_kv(config.num_kv_heads)
  w.add_key_length(config.head_dim)
  w.add_value_length(config.head_dim)
  w.add_rope_dimension_count(config.head_dim)
  w.add_rope_freq_base(config.rope_theta)
  w.add_layer_norm_rms_eps(config.rms_norm_eps)
  w.add_vocab_size(config.vocab_size)
  w.add_eos_token_id(2)
  for hf, array in hf_tensors.items():
    array = np.asarray(array, np.float32)
    if config.family == "llama" and "q_proj" in hf:
      array = gguf_io.permute_qk(array, config.num_heads)
    elif config.family == "llama" and "k_proj" in hf:
      array = gguf_io.permute_qk(array, config.num_kv_heads)
    if embed_q8 and hf == "model.embed_tokens.weight":
      w.add_tensor(_gguf_name(hf), quantize(array, gguf.GGMLQuantizationType.Q8_0),
                   raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:
      w.add_tensor(_gguf_name(hf), array)
  for name, array in (extra or {}).items():
    w.add_tensor(name, array)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


def _random_hf(config: config_lib.ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
  params = transformer.init_params(config, seed=seed)
  rng = np.random.default_rng(seed)
  out = {}
  for name, t in hf_io.params_to_hf_tensors(config, params):
    # norms start at 1.0; randomise them so a wrong mapping cannot hide behind equal values
    out[name] = t + 0.1 * rng.standard_normal(t.shape).astype(np.float32) if "norm" in name else t
  return out


def _assert_params_equal(a, b) -> None:
  fa, fb = dict(nnx.to_flat_state(a)), dict(nnx.to_flat_state(b))
  assert fa.keys() == fb.keys()
  for k in fa:
    np.testing.assert_array_equal(np.asarray(fa[k].get_value()), np.asarray(fb[k].get_value()),
                                  err_msg="/".join(map(str, k)))


def test_unpermute_inverts_llama_cpp_permutation_exactly():
  rng = np.random.default_rng(0)
  for heads, dh, cols in [(9, 64, 576), (3, 64, 576), (4, 16, 7), (1, 2, 1)]:
    w = rng.standard_normal((heads * dh, cols)).astype(np.float32)
    np.testing.assert_array_equal(gguf_io.unpermute_qk(gguf_io.permute_qk(w, heads), heads), w)
    np.testing.assert_array_equal(gguf_io.permute_qk(gguf_io.unpermute_qk(w, heads), heads), w)
    b = w[:, 0]  # biases take the same row permutation
    np.testing.assert_array_equal(gguf_io.unpermute_qk(gguf_io.permute_qk(b, heads), heads), b)
  # rotate-half rows [x0 x1 y0 y1 | ...] per head become interleaved [x0 y0 x1 y1 | ...]
  rows = np.arange(8)
  np.testing.assert_array_equal(gguf_io.permute_qk(rows, 2), [0, 2, 1, 3, 4, 6, 5, 7])
  with pytest.raises(ValueError, match="multiple of 2 \\* n_heads"):
    gguf_io.unpermute_qk(np.zeros((6, 2)), 2)


def test_config_from_real_smollm2_metadata_matches_preset():
  reader = gguf_io.open_gguf(tok_lib.smollm2_gguf_path())
  assert gguf_io.config_from_gguf_reader(reader) == config_lib.smollm2_135m()


def test_fast_reader_parses_like_gguf_reader(tmp_path):
  config = config_lib.tiny("llama", max_position_embeddings=256)
  _write_gguf(tmp_path / "t.gguf", config, _random_hf(config), embed_q8=True)
  fast, ref = gguf_io.open_gguf(tmp_path / "t.gguf"), gguf.GGUFReader(tmp_path / "t.gguf")
  assert isinstance(fast, gguf.GGUFReader)
  assert {k: f.contents() for k, f in fast.fields.items()} == {
      k: f.contents() for k, f in ref.fields.items()}
  assert [t.name for t in fast.tensors] == [t.name for t in ref.tensors]
  for a, b in zip(fast.tensors, ref.tensors):
    assert a.tensor_type == b.tensor_type and list(a.shape) == list(b.shape)
    np.testing.assert_array_equal(np.asarray(a.data), np.asarray(b.data))


@pytest.mark.parametrize("family,tied,embed_q8", [("llama", False, False), ("llama", True, True),
                                                  ("qwen3", False, False), ("qwen2", True, False)])
def test_synthetic_gguf_loads_to_the_original_params(tmp_path, family, tied, embed_q8):
  config = config_lib.tiny(family, tie_word_embeddings=tied, head_dim=32,  # != hidden / heads
                           eos_token_id=2, max_position_embeddings=256)
  hf = _random_hf(config)
  path = tmp_path / "tiny.gguf"
  _write_gguf(path, config, hf, embed_q8=embed_q8)
  loaded_config, params = gguf_io.from_gguf(path)
  assert loaded_config == config
  if embed_q8:  # the loader sees exactly the quantized file's values
    q = quantize(hf["model.embed_tokens.weight"], gguf.GGMLQuantizationType.Q8_0)
    hf["model.embed_tokens.weight"] = dequantize(q, gguf.GGMLQuantizationType.Q8_0)
  _assert_params_equal(params, hf_io.params_from_hf_tensors(config, hf.items()))
  bf16_config, bf16 = gguf_io.from_gguf(path, dtype=jnp.bfloat16)
  assert bf16_config.param_dtype == bf16_config.dtype == "bfloat16"
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(bf16))


def test_synthetic_llama_matches_transformers_gguf_loader(tmp_path):
  torch = pytest.importorskip("torch")
  from transformers import AutoModelForCausalLM

  config = config_lib.tiny("llama", eos_token_id=2, max_position_embeddings=256)
  _write_gguf(tmp_path / "tiny.gguf", config, _random_hf(config, seed=1))
  _, params = gguf_io.from_gguf(tmp_path / "tiny.gguf")
  ref = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf",
                                             dtype=torch.float32).eval()
  ids = np.random.default_rng(0).integers(0, config.vocab_size, (2, 11)).astype(np.int32)
  ours = np.asarray(transformer.forward(config, params, ids))
  with torch.no_grad():
    theirs = ref(torch.from_numpy(ids).long()).logits.numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_bad_files_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    gguf_io.from_gguf(tmp_path / "missing.gguf")
  (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
  with pytest.raises(ValueError, match="not a readable GGUF"):
    gguf_io.from_gguf(tmp_path / "junk.gguf")
  config = config_lib.tiny("llama", max_position_embeddings=256)
  _write_gguf(tmp_path / "extra.gguf", config, _random_hf(config),
              extra={"blk.0.mystery.weight": np.zeros(4, np.float32)})
  with pytest.raises(ValueError, match="blk.0.mystery.weight"):
    gguf_io.from_gguf(tmp_path / "extra.gguf")
  hf = _random_hf(config)
  del hf["model.layers.1.mlp.up_proj.weight"]
  _write_gguf(tmp_path / "short.gguf", config, hf)
  with pytest.raises(ValueError, match="model.layers.1.mlp.up_proj.weight"):
    gguf_io.from_gguf(tmp_path / "short.gguf")
  with pytest.raises(ValueError, match="dtype"):
    gguf_io.from_gguf(tmp_path / "short.gguf", dtype=jnp.int32)


def test_smollm2_gguf_matches_transformers_logits_and_greedy_generation():
  torch = pytest.importorskip("torch")
  from transformers import AutoModelForCausalLM

  from atommem_jax.models.sampler import generate

  path = tok_lib.smollm2_gguf_path()
  config, params = gguf_io.from_gguf(path)
  tok = tok_lib.load_tokenizer(path)
  ref = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                             dtype=torch.float32).eval()
  prompt = tok.apply_chat_template(
      [{"role": "user", "content": "Write two sentences about the Eiffel Tower in Paris."}],
      add_generation_prompt=True, tokenize=False)
  ids = np.asarray([tok(prompt)["input_ids"]], np.int32)
  ours = np.asarray(transformer.forward(config, params, ids))
  with torch.no_grad():
    theirs = ref(torch.from_numpy(ids).long()).logits.numpy()
  assert np.abs(ours - theirs).max() <= 1e-3
  n = 40  # both stop after emitting eos (<|im_end|>), which each includes in its output
  out = generate(config, params, [ids[0].tolist()], max_new_tokens=n)
  with torch.no_grad():
    ref_ids = ref.generate(torch.from_numpy(ids).long(), max_new_tokens=n, do_sample=False,
                           eos_token_id=config.eos_token_id,
                           pad_token_id=config.eos_token_id)[0, ids.shape[1]:].tolist()
  assert len(ref_ids) >= 16  # a real continuation, not an immediate stop
  assert out.to_lists()[0] == ref_ids


@pytest.mark.slow  # writes SmolLM2-135M as fp32 safetensors (~0.5 GB) and reads it back
def test_export_smollm2_gguf_to_hf_dir_round_trips(tmp_path):
  from atommem_jax.models.tokenizer import load_tokenizer, smollm2_gguf_path

  path = smollm2_gguf_path()
  out = gguf_io.export_gguf_to_hf(path, tmp_path / "smollm2_hf")
  config, params = gguf_io.from_gguf(path)
  hf_config, hf_params = hf_io.from_pretrained(out)
  assert hf_config == config
  _assert_params_equal(hf_params, params)
  text = "<|im_start|>user\nWhere is Paris?<|im_end|>"
  assert load_tokenizer(out)(text)["input_ids"] == load_tokenizer(path)(text)["input_ids"]
