"""HF interop: logits parity with transformers (torch), round trips, sharding, bf16, errors.

Random tiny HF models are built offline with transformers + torch, given O(1) random weights
(the default 0.02 init makes logits tiny and a 1e-4 tolerance meaningless), saved with HF's
own `save_pretrained` and loaded with ours.
"""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from atommem_jax.models import hf_io  # noqa: E402
from atommem_jax.models import transformer as tr  # noqa: E402
from atommem_jax.models.config import tiny  # noqa: E402

_HF_CONFIGS = {"qwen3": "Qwen3Config", "qwen2": "Qwen2Config", "llama": "LlamaConfig"}
VOCAB = 256


def make_hf_model(family, *, heads=4, kv_heads=2, head_dim=None, tied=False, layers=2,
                  hidden=64, seed=0):
  """A random tiny transformers causal LM with well-scaled weights."""
  kw = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
            num_key_value_heads=kv_heads, intermediate_size=96, vocab_size=VOCAB,
            tie_word_embeddings=tied, rope_theta=10_000.0 if family != "llama" else 5_000.0,
            max_position_embeddings=128)
  if head_dim is not None:
    kw["head_dim"] = head_dim
  elif family == "qwen3":
    kw["head_dim"] = hidden // heads  # Qwen3Config would default to 128
  config = getattr(transformers, _HF_CONFIGS[family])(**kw)
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:
        p.copy_(1.0 + 0.3 * torch.randn_like(p))
      elif name.endswith("bias"):
        p.copy_(0.3 * torch.randn_like(p))
      else:
        p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
  return model


def torch_logits(model, ids):
  with torch.no_grad():
    return model(torch.as_tensor(np.asarray(ids), dtype=torch.long)).logits.float().numpy()


def _ids(shape, seed=0):
  return np.random.RandomState(seed).randint(0, VOCAB, shape).astype(np.int32)


CASES = {
    "qwen3-gqa1-hd24": dict(family="qwen3", heads=4, kv_heads=4, head_dim=24),
    "qwen3-gqa2-tied": dict(family="qwen3", heads=4, kv_heads=2, tied=True),
    "qwen3-gqa4-hd8": dict(family="qwen3", heads=8, kv_heads=2, head_dim=8),
    "qwen2-gqa2": dict(family="qwen2", heads=4, kv_heads=2),
    "qwen2-gqa4-tied-hd32": dict(family="qwen2", heads=4, kv_heads=1, head_dim=32, tied=True),
    "llama-gqa1-tied": dict(family="llama", heads=4, kv_heads=4, tied=True),
    "llama-gqa2-hd32": dict(family="llama", heads=4, kv_heads=2, head_dim=32),
    "llama-gqa4": dict(family="llama", heads=8, kv_heads=2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers_and_round_trip(case, tmp_path):
  kw = CASES[case]
  model = make_hf_model(**kw)
  model.save_pretrained(tmp_path / "hf")
  config, params = hf_io.from_pretrained(tmp_path / "hf")
  assert config.family == kw["family"] and config.tie_word_embeddings == kw.get("tied", False)
  assert config.num_kv_heads == kw["kv_heads"]
  ids = _ids((2, 13))
  ref = torch_logits(model, ids)
  ours = np.asarray(tr.forward(config, params, ids))
  assert np.max(np.abs(ours - ref)) <= 1e-4, np.max(np.abs(ours - ref))
  assert np.max(np.abs(ref)) > 1.0  # the comparison is not between near-zero logits

  # Our export loads in transformers and reproduces the same logits and tensors.
  hf_io.save_pretrained(config, params, tmp_path / "ours")
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
  assert np.max(np.abs(torch_logits(reloaded, ids) - ours)) <= 1e-4
  ours_sd = reloaded.state_dict()
  for name, value in model.state_dict().items():
    np.testing.assert_array_equal(ours_sd[name].numpy(), value.numpy(), err_msg=name)


def test_sharded_checkpoint_load_and_save(tmp_path):
  model = make_hf_model("qwen3", layers=3)
  model.save_pretrained(tmp_path / "hf", max_shard_size="40KB")
  index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
  assert len(set(index["weight_map"].values())) > 1
  config, params = hf_io.from_pretrained(tmp_path / "hf")
  ids = _ids((1, 9))
  ours = np.asarray(tr.forward(config, params, ids))
  assert np.max(np.abs(ours - torch_logits(model, ids))) <= 1e-4

  hf_io.save_pretrained(config, params, tmp_path / "ours", max_shard_bytes=30_000)
  ours_index = json.loads((tmp_path / "ours" / "model.safetensors.index.json").read_text())
  shards = set(ours_index["weight_map"].values())
  assert len(shards) > 2 and all((tmp_path / "ours" / s).exists() for s in shards)
  _, again = hf_io.from_pretrained(tmp_path / "ours")
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bfloat16_checkpoint(tmp_path):
  model = make_hf_model("llama", tied=True).to(torch.bfloat16)
  model.save_pretrained(tmp_path / "hf")
  config16, params16 = hf_io.from_pretrained(tmp_path / "hf", dtype=jnp.bfloat16)
  assert config16.param_dtype == "bfloat16" and config16.dtype == "bfloat16"
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params16))
  # The same bf16 bits load into float32 exactly.
  config32, params32 = hf_io.from_pretrained(tmp_path / "hf", dtype=jnp.float32)
  embed = model.state_dict()["model.embed_tokens.weight"].float().numpy()
  np.testing.assert_array_equal(np.asarray(params32["embed"].get_value()), embed)
  ids = _ids((1, 8))
  l16 = np.asarray(tr.forward(config16, params16, ids))
  l32 = np.asarray(tr.forward(config32, params32, ids))
  assert l16.dtype == np.float32 and np.all(np.isfinite(l16))
  assert np.max(np.abs(l16 - l32)) < 0.1 * np.max(np.abs(l32))
  # bf16 export keeps bf16 on disk and transformers reads it.
  hf_io.save_pretrained(config16, params16, tmp_path / "ours")
  header, _ = hf_io._read_header(  # pylint: disable=protected-access
      tmp_path / "ours" / "model.safetensors")
  assert {v["dtype"] for v in header.values()} == {"BF16"}
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours")
  assert reloaded.model.embed_tokens.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("family", ["qwen3", "qwen2", "llama"])
def test_config_round_trips_through_transformers(family, tmp_path):
  config = tiny(family, num_kv_heads=1, head_dim=8, tie_word_embeddings=True, bos_token_id=1,
                eos_token_id=(2, 3))
  hf_cfg = transformers.AutoConfig.for_model(**{k: v for k, v in hf_io.config_to_hf(config).items()
                                               if k != "architectures"})
  hf_cfg.architectures = hf_io.config_to_hf(config)["architectures"]
  back = hf_io.config_from_hf(hf_cfg.to_dict())
  assert back == config


def test_config_from_hf_defaults_and_rope_forms():
  base = dict(architectures=["LlamaForCausalLM"], vocab_size=100, hidden_size=64,
              intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
  c = hf_io.config_from_hf({**base, "rope_theta": 500.0})
  assert c.head_dim == 16 and c.num_kv_heads == 4 and c.rope_theta == 500.0
  c = hf_io.config_from_hf({**base, "rope_parameters": {"rope_type": "default", "rope_theta": 7.0}})
  assert c.rope_theta == 7.0
  c = hf_io.config_from_hf({**base, "architectures": ["Qwen2ForCausalLM"], "rope_theta": 1.0})
  assert c.family == "qwen2" and c.attention_bias


@pytest.mark.parametrize("change,match", [
    ({"architectures": ["GPT2LMHeadModel"]}, "architectures"),
    ({"architectures": None, "model_type": "gpt2"}, "model_type"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1.0}}, "rope_parameters"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"num_hidden_layers": None}, "num_hidden_layers"),
    ({"rope_theta": None}, "rope_theta"),
])
def test_config_from_hf_rejects_unsupported(change, match):
  hf = dict(architectures=["LlamaForCausalLM"], vocab_size=100, hidden_size=64,
            intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, rope_theta=1.0)
  hf.update(change)
  hf = {k: v for k, v in hf.items() if v is not None}
  with pytest.raises(ValueError, match=match):
    hf_io.config_from_hf(hf)


def _tensors(config):
  return list(hf_io.params_to_hf_tensors(config, tr.init_params(config)))


@pytest.mark.parametrize("mutate,match", [
    (lambda ts: [t for t in ts if t[0] != "model.layers.1.mlp.up_proj.weight"],
     r"missing tensors: model\.layers\.1\.mlp\.up_proj\.weight"),
    (lambda ts: [(n, a[:-1] if n == "model.norm.weight" else a) for n, a in ts],
     r"'model\.norm\.weight' has shape \(63,\), expected \(64,\)"),
    (lambda ts: ts + [("model.layers.2.mlp.up_proj.weight", ts[0][1])], "unexpected tensor"),
    (lambda ts: ts + [ts[0]], "appears twice"),
])
def test_params_from_hf_tensors_errors(mutate, match):
  config = tiny("qwen3")
  with pytest.raises(ValueError, match=match):
    hf_io.params_from_hf_tensors(config, mutate(_tensors(config)))


def test_params_from_hf_tensors_streams_a_generator():
  config = tiny("qwen2", tie_word_embeddings=True)
  params = tr.init_params(config, seed=5)
  consumed = []

  def gen():
    for name, array in hf_io.params_to_hf_tensors(config, params):
      consumed.append(name)
      yield name, array

  back = hf_io.params_from_hf_tensors(config, gen())
  # embed + final norm (tied: no lm_head) + 12 per layer, each pulled exactly once
  assert len(consumed) == len(set(consumed)) == 2 + config.num_layers * 12
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_from_pretrained_errors(tmp_path):
  with pytest.raises(ValueError, match="config.json"):
    hf_io.from_pretrained(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps(hf_io.config_to_hf(tiny("llama"))))
  with pytest.raises(ValueError, match="safetensors"):
    hf_io.from_pretrained(tmp_path)
  (tmp_path / "model.safetensors").write_bytes(b"\x05")
  with pytest.raises(ValueError, match="not a safetensors file"):
    hf_io.from_pretrained(tmp_path)


def test_iter_safetensors_reads_bf16_bits(tmp_path):
  from safetensors.torch import save_file
  x = torch.randn(3, 5).to(torch.bfloat16)
  save_file({"x": x, "y": torch.arange(4, dtype=torch.int32)}, tmp_path / "t.safetensors")
  got = dict(hf_io.iter_safetensors(tmp_path / "t.safetensors"))
  assert got["x"].dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(got["x"].astype(np.float32), x.float().numpy())
  np.testing.assert_array_equal(got["y"], np.arange(4))


def test_load_places_each_param_with_its_sharding(tmp_path):
  """Logical axes -> mesh axes by a small rule table; every loaded param lands sharded."""
  from flax import nnx
  from jax.sharding import NamedSharding, PartitionSpec

  config = tiny("qwen3", vocab_size=VOCAB, num_heads=4, num_kv_heads=2)
  params = tr.init_params(config, seed=2)
  hf_io.save_pretrained(config, params, tmp_path)
  mesh = jax.make_mesh((2, 4), ("fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  rules = {"vocab": "tensor", "embed": "fsdp", "mlp": "tensor", "heads": "tensor",
           "kv_heads": None, "head_dim": None, "layers": None}
  specs = nnx.get_partition_spec(tr.abstract_params(config))
  to_sharding = lambda spec: NamedSharding(mesh, PartitionSpec(*(rules[a] for a in spec)))  # noqa
  shardings = jax.tree.map(to_sharding, specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
  _, loaded = hf_io.from_pretrained(tmp_path, shardings=shardings)
  q = loaded["layers"]["q_proj"].get_value()
  assert q.sharding.spec == PartitionSpec(None, "fsdp", "tensor", None)
  assert loaded["embed"].get_value().sharding.spec == PartitionSpec("tensor", "fsdp")
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  ids = _ids((2, 5))
  np.testing.assert_allclose(tr.forward(config, loaded, ids), tr.forward(config, params, ids),
                             atol=1e-5)
  with pytest.raises(ValueError, match="shardings have no entry"):
    hf_io.params_from_hf_tensors(config, hf_io.params_to_hf_tensors(config, params),
                                 shardings=nnx.State({"embed": shardings["embed"]}))
