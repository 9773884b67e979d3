"""LoRA adapters: start at the base model, train only themselves, round-trip through a file."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from atommem_jax.models import config as model_config
from atommem_jax.models import transformer
from atommem_jax.training import lora

CFG = model_config.tiny("qwen3", vocab_size=128, hidden_size=32, intermediate_size=64,
                        num_heads=4, num_kv_heads=2, head_dim=8)
IDS = jnp.asarray(np.random.default_rng(0).integers(0, 128, (2, 12)), jnp.int32)


@pytest.fixture(scope="module")
def base():
  return transformer.init_params(CFG, seed=0)


def test_starts_at_the_base_and_moves_only_targets(base):
  cfg = lora.LoraConfig(rank=4, targets=("q_proj", "o_proj", "down_proj"))
  ad = lora.init(cfg, base, seed=1)
  assert ad["o_proj"]["a"].shape == (2, 4 * 8, 4) and ad["o_proj"]["b"].shape == (2, 4, 32)
  same = lora.merge(base, ad, cfg)
  np.testing.assert_array_equal(np.asarray(transformer.forward(CFG, same, IDS)),
                                np.asarray(transformer.forward(CFG, base, IDS)))
  ad = jax.tree.map(lambda x: x + 0.05, ad)  # B != 0 now
  moved = lora.merge(base, ad, cfg)
  for name in ("q_proj", "o_proj", "down_proj"):
    assert not np.allclose(moved["layers"][name][...], base["layers"][name][...])
  for name in ("k_proj", "v_proj", "up_proj"):
    np.testing.assert_array_equal(moved["layers"][name][...], base["layers"][name][...])
  np.testing.assert_array_equal(moved["embed"][...], base["embed"][...])


def test_gradient_reaches_the_adapters(base):
  cfg = lora.LoraConfig(rank=2)
  ad = lora.init(cfg, base, seed=0)

  pos = jnp.broadcast_to(jnp.arange(IDS.shape[1]), IDS.shape)

  def loss(ad):
    logits, _ = transformer.apply(CFG, lora.merge(base, ad, cfg), IDS, pos)
    return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])

  g = jax.jit(jax.grad(loss))(ad)
  assert float(jnp.abs(g["q_proj"]["b"]).sum()) > 0  # B gets a gradient at B = 0
  assert lora.num_params(ad) == sum(x.size for x in jax.tree.leaves(g))


def test_file_round_trip_and_errors(base, tmp_path):
  cfg = lora.LoraConfig(rank=3, alpha=6.0, targets=("v_proj", "up_proj"))
  ad = jax.tree.map(lambda x: x + 0.01, lora.init(cfg, base, seed=2))
  path = lora.save(ad, cfg, tmp_path / "a.safetensors")
  cfg2, ad2 = lora.load(path)
  assert cfg2 == cfg
  for x, y in zip(jax.tree.leaves(ad), jax.tree.leaves(ad2)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  with pytest.raises(ValueError, match="unknown"):
    lora.LoraConfig(targets=("lm_head",))
  with pytest.raises(FileNotFoundError):
    lora.load(tmp_path / "missing.safetensors")
