"""The jitted train step: SFT and GRPO losses, accumulation, no recompiles, sharded = single."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from atommem_jax.models import config as model_config
from atommem_jax.models.transformer import init_params
from atommem_jax.training import packing, sharding
from atommem_jax.training import step as step_lib

CFG = model_config.tiny("qwen3", vocab_size=256, hidden_size=32, intermediate_size=64,
                        num_heads=4, num_kv_heads=2, head_dim=8)
SEQ = 64


def _batch(seed: int, rows: int = 8, grpo: bool = False) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  turns = [(rng.integers(3, 256, rng.integers(4, 20)).tolist(),
            rng.integers(3, 256, rng.integers(2, 12)).tolist()) for _ in range(rows * 2)]
  b = packing.pack(turns, SEQ, max_rows=rows).arrays()
  out = {k: b[k] for k in step_lib.SFT_FIELDS}
  if grpo:
    out["old_logprobs"] = (-rng.uniform(4, 7, (rows, SEQ)) * b["loss_mask"]).astype(np.float32)
    out["ref_logprobs"] = (-rng.uniform(4, 7, (rows, SEQ)) * b["loss_mask"]).astype(np.float32)
    out["advantages"] = (rng.normal(0, 1, (rows, SEQ)) * b["loss_mask"]).astype(np.float32)
  return out


def _loss(kind):
  return step_lib.LossConfig(kind=kind, max_segments=8, chunk_size=16)


def _run(kind: str, mesh_shape=None, micro_batches=1, steps=2, adam=False):
  # Equality checks use SGD: Adam's m / sqrt(v) turns float-rounding-sized gradient
  # differences on near-zero gradients into lr-sized update differences.
  tx = (step_lib.make_optimizer(step_lib.OptimConfig(learning_rate=1e-2, decay_steps=10))
        if adam else optax.sgd(0.5))
  params = init_params(CFG, seed=0)
  kw = {}
  if mesh_shape is not None:
    mesh = sharding.make_mesh(*mesh_shape)
    p_sh = sharding.param_shardings(CFG, mesh)
    st_sh = step_lib.TrainState(step=sharding.replicated(mesh), params=p_sh,
                                opt_state=sharding.opt_state_shardings(tx, params, p_sh))
    kw = dict(state_shardings=st_sh, batch_sharding=sharding.batch_sharding(mesh), mesh=mesh,
              rules=sharding.get_rules(sharding.DEFAULT_RULES))
    params = jax.device_put(params, p_sh)
  state = step_lib.init_state(params, tx)
  train = step_lib.TrainStep(CFG, _loss(kind), tx, micro_batches=micro_batches, **kw)
  history = []
  for i in range(steps):
    state, metrics = train(state, _batch(i, grpo=kind == "grpo"))
    history.append({k: float(v) for k, v in metrics.items()})
  return state, history, train


@pytest.mark.parametrize("kind", ["sft", "grpo"])
def test_step_runs_once_compiled_and_learns(kind):
  state, hist, train = _run(kind, steps=3, adam=True)
  assert int(state.step) == 3 and train.compiles == 1  # same shapes: one compile
  assert all(np.isfinite(h["loss"]) and h["grad_norm"] > 0 for h in hist)
  if kind == "sft":  # the same batch twice: the second sees a lower loss
    tx = step_lib.make_optimizer(step_lib.OptimConfig(learning_rate=1e-2, decay_steps=10))
    st = step_lib.init_state(init_params(CFG, seed=0), tx)
    tr = step_lib.TrainStep(CFG, _loss("sft"), tx)
    b = _batch(0)
    st, m0 = tr(st, b)
    st, m1 = tr(st, b)
    assert float(m1["loss"]) < float(m0["loss"])


@pytest.mark.parametrize("kind", ["sft", "grpo"])
def test_micro_batches_equal_one_batch(kind):
  one, h1, _ = _run(kind, micro_batches=1)
  four, h4, _ = _run(kind, micro_batches=4)
  np.testing.assert_allclose(h1[0]["loss"], h4[0]["loss"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


@pytest.mark.parametrize("kind", ["sft", "grpo"])
@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (2, 4, 1), (2, 2, 2)])
def test_sharded_step_equals_single_device(kind, mesh_shape):
  ref, href, _ = _run(kind)
  got, hgot, _ = _run(kind, mesh_shape)
  for a, b in zip(href, hgot):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-4)
  for a, b in zip(jax.tree.leaves(ref.params), jax.tree.leaves(got.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_bad_settings_are_named():
  with pytest.raises(ValueError, match="known"):
    step_lib.LossConfig(kind="ppo-ish")
  with pytest.raises(ValueError, match="learning_rate"):
    step_lib.OptimConfig(learning_rate=0)
  tx = step_lib.make_optimizer(step_lib.OptimConfig())
  train = step_lib.TrainStep(CFG, _loss("grpo"), tx)
  state = step_lib.init_state(init_params(CFG, seed=0), tx)
  with pytest.raises(ValueError, match="lacks"):
    train(state, _batch(0))  # an SFT batch for a GRPO step


def test_bfloat16_compute_keeps_float32_master_weights():
  tx = optax.sgd(0.5)
  bf16 = CFG.replace(dtype="bfloat16")
  state = step_lib.init_state(init_params(CFG, seed=0), tx)
  f32_state = step_lib.init_state(init_params(CFG, seed=0), tx)
  batch = _batch(0)
  state, m16 = step_lib.TrainStep(bf16, _loss("sft"), tx)(state, batch)
  f32_state, m32 = step_lib.TrainStep(CFG, _loss("sft"), tx)(f32_state, batch)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
  np.testing.assert_allclose(float(m16["loss"]), float(m32["loss"]), rtol=2e-2)
  # The update moved the float32 master weights by more than bf16 rounding would allow.
  moved = [np.abs(np.asarray(a) - np.asarray(b)).max()
           for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(init_params(CFG, seed=0)))]
  assert max(moved) > 0


def test_prompt_weight_adds_the_prompt_tokens_nll():
  """loss.prompt_weight w: loss = (sum of response NLL + w * sum of prompt NLL) / (responses +
  w * prompts), over scored tokens only (no padding, no segment's first token); w = 0 is the
  responses-only loss; response_nll stays the responses' own."""
  from atommem_jax.models import scoring

  params = init_params(CFG, seed=0)
  b = _batch(3)
  lp = np.asarray(scoring.token_logprobs(CFG, params, b["tokens"], b["positions"],
                                         b["segment_ids"], chunk_size=16))
  scored = np.asarray(scoring.scored_mask(b["segment_ids"]))
  resp = b["loss_mask"] * scored
  prompt = (1.0 - b["loss_mask"]) * scored
  assert prompt.sum() > resp.sum() > 0
  for w in (0.0, 0.25, 1.0):
    loss = dataclasses.replace(_loss("sft"), prompt_weight=w)
    value, m = step_lib.loss_fn(params, b, model_config=CFG, loss=loss)
    want = -(lp * (resp + w * prompt)).sum() / (resp + w * prompt).sum()
    np.testing.assert_allclose(float(value), want, rtol=1e-5)
    if w:
      np.testing.assert_allclose(float(m["response_nll"]), -(lp * resp).sum() / resp.sum(),
                                 rtol=1e-5)
    else:
      assert "response_nll" not in m


def test_prompt_weight_is_an_sft_option_in_range():
  with pytest.raises(ValueError, match=r"prompt_weight must be in \[0, 1\]"):
    step_lib.LossConfig(kind="sft", prompt_weight=1.5)
  with pytest.raises(ValueError, match="SFT option"):
    step_lib.LossConfig(kind="grpo", prompt_weight=0.1)
