"""LoRA adapters: start at the base model, train only themselves, round-trip through a file."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from atommem_jax.models import config as model_config
from atommem_jax.models import transformer
from atommem_jax.models import lora

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


# --- LoRA in training: the train step, the run directory, loading the trained policy ------

def test_lora_train_step_trains_only_the_adapters(base):
  """A LoRA train step updates the adapters (its state's params) and leaves the frozen base
  untouched; its loss equals the full model's loss at the merged weights."""
  import optax

  from atommem_jax.training import step as step_lib

  cfg = lora.LoraConfig(rank=4, targets=("q_proj", "v_proj", "down_proj"))
  ad = lora.init(cfg, base, seed=0)
  tx = optax.sgd(0.5)
  loss = step_lib.LossConfig(kind="sft", chunk_size=8)
  tokens = np.asarray(np.random.default_rng(1).integers(1, 128, (2, 16)), np.int32)
  batch = dict(tokens=tokens, positions=np.tile(np.arange(16, dtype=np.int32), (2, 1)),
               segment_ids=np.ones((2, 16), np.int32), loss_mask=np.ones((2, 16), np.int32))
  frozen_before = jax.tree.map(np.asarray, base)
  ts = step_lib.TrainStep(CFG, loss, tx, lora=cfg, frozen=base)
  state = step_lib.init_state(ad, tx)
  losses = []
  for _ in range(4):
    state, m = ts(state, batch)
    losses.append(float(m["loss"]))
  assert losses[-1] < losses[0], losses
  assert set(state.params) == {"q_proj", "v_proj", "down_proj"}
  assert float(jnp.abs(state.params["q_proj"]["b"]).sum()) > 0  # B moved off zero
  for a, b in zip(jax.tree.leaves(frozen_before), jax.tree.leaves(base)):
    np.testing.assert_array_equal(a, np.asarray(b))
  # The step's loss is the full model's at the merged weights.
  full = step_lib.loss_fn(lora.merge(base, state.params, cfg), batch, model_config=CFG, loss=loss)
  _, m = step_lib.TrainStep(CFG, loss, optax.sgd(0.0), lora=cfg, frozen=base)(
      step_lib.init_state(state.params, optax.sgd(0.0)), batch)
  np.testing.assert_allclose(float(m["loss"]), float(full[0]), rtol=1e-6)
  with pytest.raises(ValueError, match="LoRA needs both"):
    step_lib.TrainStep(CFG, loss, tx, lora=cfg)


def test_lora_run_ships_an_adapter_that_loads_as_the_trained_policy(tmp_path):
  """A LoRA SFT run writes lora.safetensors (adapters only, small); `lora:<file>`,
  `orbax:<run>` and the merged `hf:<run>/hf` export all give the same policy."""
  from atommem_jax.agent import build
  from atommem_jax.training import sft
  from configs import common
  from tests.test_training import _micro_config

  run = tmp_path / "run"
  c = _micro_config("tiny_cpu_sft", run, steps=3, checkpoint_every=3,
                    **{"lora.rank": 4, "lora.targets": "q_proj,v_proj,o_proj",
                       "optim.learning_rate": 3e-2})
  summary = sft.train(c, echo=lambda s: None)
  assert summary["step"] == 3
  adapter = run / "lora.safetensors"
  cfg, ad = lora.load(adapter)
  assert cfg.rank == 4 and cfg.targets == ("q_proj", "v_proj", "o_proj")
  assert lora.base_of(adapter)["source"] == "tiny"
  assert adapter.stat().st_size < 200_000
  e = common.base()
  models = {}
  relative = os.path.relpath(run)  # as users type it: orbax itself wants absolute paths
  for src in (f"lora:{adapter}", f"orbax:{relative}", f"hf:{run / 'hf'}"):
    e.model.source = src
    build.check_agent_config(e, ("atommem",))
    models[src.split(":")[0]] = build.load_model(e, tmp_path / src.split(":")[0])
  base_model = build.load_model(_micro_config("tiny_cpu_sft", run), tmp_path / "base")
  ids = IDS % 200
  outs = {k: np.asarray(transformer.forward(m.config, m.params, ids)) for k, m in models.items()}
  np.testing.assert_allclose(outs["lora"], outs["orbax"], atol=1e-5)
  np.testing.assert_allclose(outs["lora"], outs["hf"], atol=1e-5)
  assert not np.allclose(outs["lora"], np.asarray(
      transformer.forward(base_model.config, base_model.params, ids)), atol=1e-4)


def test_lora_config_errors_name_the_key(tmp_path):
  from atommem_jax.agent.build import ConfigError
  from atommem_jax.training import config as cfg_lib
  from tests.test_training import _micro_config

  for over, key in (({"lora.rank": -1}, "lora.rank"),
                    ({"lora.rank": 4, "lora.targets": "q_proj,bogus"}, "lora.targets"),
                    ({"lora.rank": 4, "lora.alpha": 0.0}, "lora.alpha")):
    with pytest.raises(ConfigError, match=key):
      cfg_lib.validate(_micro_config("tiny_cpu_sft", tmp_path, **over))
  for name, over, key in (
      ("tiny_cpu_sft", {"init_from": str(tmp_path / "nowhere")},
       "init_from: .* is not a training run"),
      ("tiny_cpu_grpo", {"init_from": str(tmp_path / "nowhere"), "warm_start.sft_steps": 0},
       "init_from: .* is not a training run"),
      ("tiny_cpu_grpo", {"init_from": str(tmp_path)}, "init_from and warm_start")):
    with pytest.raises(ConfigError, match=key):
      cfg_lib.validate(_micro_config(name, tmp_path, **over))
  from configs import common

  e = common.base()
  e.model.source = f"lora:{tmp_path / 'missing.safetensors'}"
  with pytest.raises(ConfigError, match="model.source"):
    build_check(e)


def build_check(e):
  from atommem_jax.agent import build

  build.check_agent_config(e, ("atommem",))


def test_eval_resume_fingerprint_covers_the_adapter_contents(tmp_path, base):
  """Retraining into the same adapter path must not reuse the old policy's episodes."""
  from atommem_jax.eval import resume
  from configs import common

  cfg = lora.LoraConfig(rank=2)
  path = tmp_path / "a.safetensors"
  lora.save(lora.init(cfg, base, seed=0), cfg, path, base={"source": "tiny"})
  e = common.base()
  e.model.source = f"lora:{path}"
  before = resume.fingerprint(e)
  lora.save(jax.tree.map(lambda x: x + 1, lora.init(cfg, base, seed=0)), cfg, path,
            base={"source": "tiny"})
  assert resume.fingerprint_diff(before, resume.fingerprint(e)), "adapter change not seen"


def test_grpo_with_lora_continues_sft_adapters(tmp_path):
  """GRPO with LoRA: rollouts, old / reference log-probs and the update all use the merged
  policy; `init_from` an SFT LoRA run starts from its adapters (the reference policy), and
  the run ends with an adapter file over the same base."""
  from atommem_jax.training import grpo, sft
  from tests.test_training import _micro_config

  lo = {"lora.rank": 2, "lora.targets": "q_proj,v_proj"}
  sft_dir, grpo_dir = tmp_path / "sft", tmp_path / "grpo"
  sft.train(_micro_config("tiny_cpu_sft", sft_dir, steps=2, checkpoint_every=2,
                          **{"optim.learning_rate": 3e-2, **lo}), echo=lambda s: None)
  c = _micro_config("tiny_cpu_grpo", grpo_dir, steps=2, checkpoint_every=2,
                    **{"warm_start.sft_steps": 0, "init_from": str(sft_dir),
                       "grpo.questions_per_step": 1, "grpo.group_size": 2,
                       "sampling.max_new_tokens": 8, "sampling.max_answer_tokens": 4,
                       "env.max_calls": 2, "batch.rows": 8, "batch.seq_len": 256,
                       "optim.learning_rate": 3e-2, **lo})
  messages: list[str] = []
  summary = grpo.train(c, echo=messages.append,
                       reward_fn=lambda t: (float(t.sample), {"answer": float(t.sample),
                                                              "untagged_answer_frac": 0.0}))
  assert summary["step"] == 2 and any(m.startswith("[init]") for m in messages)
  start = lora.load(sft_dir / "lora.safetensors")[1]
  end = lora.load(grpo_dir / "lora.safetensors")[1]
  assert lora.base_of(grpo_dir / "lora.safetensors")["source"] == "tiny"
  moved = [not np.allclose(np.asarray(start[t][k]), np.asarray(end[t][k]))
           for t in start for k in ("a", "b")]
  assert any(moved)  # the update moved the SFT adapters
