"""Splash attention (models/splash.py): the Pallas kernel, run by the Pallas interpreter on CPU,
gives the XLA attention's log-probs and gradients on packed rows, alone and sharded."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from atommem_jax.models import config as model_config
from atommem_jax.models import partitioning, scoring, splash
from atommem_jax.models.transformer import init_params
from atommem_jax.training import packing, sharding
from atommem_jax.training import step as step_lib

CFG = model_config.tiny("qwen3", vocab_size=256, hidden_size=32, intermediate_size=64,
                        num_heads=4, num_kv_heads=2, head_dim=8, num_layers=2)
SEQ = 128  # the kernel's smallest block


def _batch(seed: int, rows: int = 4) -> dict[str, np.ndarray]:
  """Packed rows of several turns each, with padding at the ends."""
  rng = np.random.default_rng(seed)
  turns = [(rng.integers(3, 256, rng.integers(8, 40)).tolist(),
            rng.integers(3, 256, rng.integers(4, 20)).tolist()) for _ in range(rows * 3)]
  b = packing.pack(turns, SEQ, max_rows=rows).arrays()
  assert (b["segment_ids"] == 0).any() and b["segment_ids"].max() >= 2  # padding and packing
  return {k: b[k] for k in step_lib.SFT_FIELDS}


def test_logprobs_and_gradients_equal_xla_attention():
  params = init_params(CFG, seed=0)
  b = _batch(0)

  def loss(cfg, p):
    lp = scoring.token_logprobs(cfg, p, b["tokens"], b["positions"], b["segment_ids"],
                                remat=True, chunk_size=64)
    return jnp.sum(lp * b["loss_mask"]), lp

  (l_xla, lp_xla), g_xla = jax.value_and_grad(lambda p: loss(CFG, p), has_aux=True)(params)
  splash_cfg = CFG.replace(attention="splash")
  (l_sp, lp_sp), g_sp = jax.value_and_grad(lambda p: loss(splash_cfg, p), has_aux=True)(params)
  np.testing.assert_allclose(np.asarray(lp_sp), np.asarray(lp_xla), atol=1e-5)
  np.testing.assert_allclose(float(l_sp), float(l_xla), rtol=1e-6)
  for a, c in zip(jax.tree.leaves(g_sp), jax.tree.leaves(g_xla)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(c), atol=1e-5 * float(jnp.abs(c).max()) + 1e-7)


def _train(cfg, mesh_shape=None, steps=2):
  tx = optax.sgd(0.5)
  params = init_params(CFG, seed=0)
  kw = {}
  if mesh_shape is not None:
    mesh = sharding.make_mesh(*mesh_shape)
    p_sh = sharding.param_shardings(CFG, mesh)
    kw = dict(state_shardings=step_lib.TrainState(
        step=sharding.replicated(mesh), params=p_sh,
        opt_state=sharding.opt_state_shardings(tx, params, p_sh)),
        batch_sharding=sharding.batch_sharding(mesh), mesh=mesh,
        rules=sharding.get_rules(sharding.DEFAULT_RULES))
    params = jax.device_put(params, p_sh)
  state = step_lib.init_state(params, tx)
  train = step_lib.TrainStep(cfg, step_lib.LossConfig(kind="sft", max_segments=8, chunk_size=64),
                             tx, **kw)
  history = []
  for i in range(steps):
    state, metrics = train(state, _batch(i, rows=8))
    history.append({k: float(v) for k, v in metrics.items()})
  return state, history


def test_sharded_splash_step_equals_single_device_xla_step():
  """Batch over data x fsdp and heads over tensor: the kernel runs per device in a shard_map."""
  ref, href = _train(CFG)
  got, hgot = _train(CFG.replace(attention="splash"), mesh_shape=(2, 2, 2))
  for a, b in zip(href, hgot):
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-5)
    np.testing.assert_allclose(b["grad_norm"], a["grad_norm"], rtol=1e-4)
  for a, b in zip(jax.tree.leaves(ref.params), jax.tree.leaves(got.params)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6)


def test_bad_uses_are_refused_with_the_reason():
  with pytest.raises(ValueError, match="attention must be one of"):
    CFG.replace(attention="flash")
  q = jnp.zeros((1, 200, 4, 8))
  kv = jnp.zeros((1, 2, 200, 8))
  with pytest.raises(ValueError, match="multiple of 128 tokens.*got 200"):
    splash.splash_attention(q, kv, kv, None)
  q, kv = q[:, :128], kv[:, :, :128]
  with partitioning.target_platform("gpu"), pytest.raises(ValueError, match="TPU kernel"):
    splash.splash_attention(q, kv, kv, None)
  params = init_params(CFG, seed=0)
  tokens = jnp.zeros((1, SEQ), jnp.int32)
  from atommem_jax.models import transformer
  with pytest.raises(ValueError, match="not a dense attn_mask"):
    transformer.hidden_states(CFG.replace(attention="splash"), params, tokens,
                              jnp.arange(SEQ)[None], attn_mask=jnp.ones((1, SEQ, SEQ), bool))


def test_training_cli_path_uses_the_kernel_and_says_where_it_runs(tmp_path):
  """`model.attention=splash` reaches the trainer's step (the Pallas interpreter here, and
  the setup line says so): a short SFT run trains and matches the XLA run's losses."""
  import importlib

  from atommem_jax.training import sft

  losses = {}
  for attention in ("xla", "splash"):
    c = importlib.import_module("configs.tiny_cpu_sft").get_config()
    c.output_dir = str(tmp_path / attention)
    c.model.tiny.update(dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                             num_kv_heads=1, head_dim=16))
    c.data.num_examples, c.batch.rows, c.optim.warmup_steps = 2, 8, 0
    c.batch.seq_len, c.steps, c.export_hf = 512, 2, False
    c.model.attention = attention
    lines: list[str] = []
    summary = sft.train(c, echo=lines.append)
    assert summary["step"] == 2
    setup = next(line for line in lines if line.startswith("[setup]"))
    assert ("Pallas interpreter" in setup) == (attention == "splash"), setup
    import json
    losses[attention] = [json.loads(l)["loss"] for l in
                         (tmp_path / attention / "metrics.jsonl").read_text().splitlines()]
  np.testing.assert_allclose(losses["splash"], losses["xla"], rtol=1e-4)
