"""Sharding: the rule table against every parameter of real configs, the mesh, sharded init,
optimizer-state shardings, sharded HF loading, and sharded forward/backward passes equal to
one device's.

Runs on 8 fake CPU devices: tests/conftest.py sets
XLA_FLAGS=--xla_force_host_platform_device_count=8 before JAX initialises.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from atommem_jax.models import hf_io, partitioning
from atommem_jax.models import transformer as tr
from atommem_jax.models.config import qwen3_8b, smollm2_135m, tiny
from atommem_jax.training import sharding as sh

pytestmark = pytest.mark.skipif(
    jax.device_count() != 8,
    reason=f"needs 8 devices (XLA_FLAGS from tests/conftest.py), have {jax.device_count()}")

MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 8, 1)]
CONFIGS = {
    "tiny": tiny(),
    "tiny_qwen2": tiny("qwen2"),
    "tiny_llama_tied": tiny("llama", tie_word_embeddings=True),
    "smollm2_135m": smollm2_135m(),
    "qwen3_8b": qwen3_8b(),
}


def _flat(state: nnx.State) -> dict[str, object]:
  return {"/".join(map(str, path)): var.get_value() for path, var in nnx.to_flat_state(state)}


@pytest.fixture(scope="module")
def tiny_params():
  return tr.init_params(CONFIGS["tiny"], seed=3)


def _tokens(batch=8, seq=16, seed=0) -> np.ndarray:
  return np.random.RandomState(seed).randint(0, CONFIGS["tiny"].vocab_size,
                                             (batch, seq)).astype(np.int32)


# ----------------------------------------------------------------------------- rule table


@pytest.mark.parametrize("rules", sorted(sh.RULE_SETS))
def test_every_rule_set_names_every_model_axis(rules):
  names = {a for _, axes, _ in tr.param_logical_axes(CONFIGS["tiny_qwen2"]) for a in axes}
  names |= set(partitioning.ACTIVATION_AXES)
  missing = names - set(sh.RULE_SETS[rules])
  assert not missing, f"rule set {rules!r} has no rule for {sorted(missing)}"


@pytest.mark.parametrize("mesh_shape", MESHES, ids=str)
@pytest.mark.parametrize("name", CONFIGS)
def test_rules_shard_every_param_divisibly_and_use_each_mesh_axis_once(name, mesh_shape):
  config, mesh = CONFIGS[name], sh.make_mesh(*mesh_shape)
  if name == "smollm2_135m" and mesh_shape[2] > 1:  # 9 heads / 3 kv heads over tensor=2
    with pytest.raises(ValueError, match=r"param layers/k_proj: dim 2 \('kv_heads', size 3\) "
                                         r"is not divisible by mesh axis tensor=2"):
      sh.param_shardings(config, mesh)
    return
  shardings = _flat(sh.param_shardings(config, mesh))
  per_device = total = 0
  for path, axes, shape in tr.param_logical_axes(config):
    sharding = shardings[path]
    assert isinstance(sharding, NamedSharding) and sharding.mesh == mesh, path
    spec = tuple(sharding.spec) + (None,) * (len(shape) - len(sharding.spec))
    used = [a for entry in spec for a in partitioning.mesh_axes(entry)]
    assert len(used) == len(set(used)), f"{path}: a mesh axis used twice in {spec}"
    for dim, (logical, size, entry) in enumerate(zip(axes, shape, spec)):
      assert partitioning.mesh_axes(entry) == partitioning.mesh_axes(sh.DEFAULT_RULES[logical])
      ways = math.prod(mesh.shape[a] for a in partitioning.mesh_axes(entry))
      assert size % ways == 0, f"{path} dim {dim} ({logical}) size {size} over {ways}"
    per_device += math.prod(sharding.shard_shape(shape))
    total += math.prod(shape)
  if not name.startswith("tiny"):  # real sizes: FSDP x TP divides parameter memory (only
    split = mesh.shape["fsdp"] * mesh.shape["tensor"]  # small norms and biases stay whole)
    assert per_device <= total / split * 1.01, (per_device, total, split)


def test_smollm2_shards_over_fsdp_alone_with_the_fsdp_rules():
  mesh = sh.make_mesh(1, 8, 1)
  shardings = _flat(sh.param_shardings(smollm2_135m(), mesh, "fsdp"))
  assert shardings["layers/q_proj"].spec == PartitionSpec(None, "fsdp", None, None)
  assert shardings["embed"].spec == PartitionSpec(None, "fsdp")


def test_logical_to_spec_refuses_a_mesh_axis_twice_and_unknown_names():
  mesh = sh.make_mesh(2, 2, 2)
  rules = {"a": "fsdp", "b": ("data", "fsdp"), "c": "tensor"}
  assert sh.logical_to_spec(("b", "c", None), (4, 2, 3), mesh, rules) == PartitionSpec(
      ("data", "fsdp"), "tensor", None)
  with pytest.raises(ValueError, match=r"w: mesh axis 'fsdp' would shard both dim 0 \('a'\) "
                                       r"and dim 1 \('b'\)"):
    sh.logical_to_spec(("a", "b"), (4, 4), mesh, rules, what="w")
  with pytest.raises(ValueError, match=r"logical axis 'zzz' \(dim 1\) has no sharding rule"):
    sh.logical_to_spec(("a", "zzz"), (4, 4), mesh, rules)
  with pytest.raises(ValueError, match=r"dim 0 \('b', size 6\) is not divisible by mesh axis "
                                       r"data=2 x fsdp=2 \(4 shards\)"):
    sh.logical_to_spec(("b",), (6,), mesh, rules)
  with pytest.raises(ValueError, match="mesh axis 'model' is not in the mesh"):
    sh.param_shardings(tiny(), mesh, {**sh.DEFAULT_RULES, "mlp": "model"})


def test_rules_must_use_every_mesh_axis_larger_than_one():
  with pytest.raises(ValueError, match=r"mesh axes tensor=2 are used by no sharding rule"):
    sh.param_shardings(tiny(), sh.make_mesh(2, 2, 2), "fsdp")
  with pytest.raises(ValueError, match=r"unknown sharding rule set 'tp'; known: \['fsdp', "):
    sh.get_rules("tp")


# ----------------------------------------------------------------------------- mesh


def test_make_mesh_axes_sizes_and_the_rest():
  mesh = sh.make_mesh(2, -1, 2)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  assert sorted(d.id for d in mesh.devices.flat) == list(range(8))
  assert dict(sh.make_mesh(1, 1, 1, devices=jax.devices()[:1]).shape) == {
      "data": 1, "fsdp": 1, "tensor": 1}


@pytest.mark.parametrize("sizes, match", [
    ((2, 2, 3), r"mesh data=2, fsdp=2, tensor=3 has 12 devices, but there are 8"),
    ((2, 2, 1), r"mesh data=2, fsdp=2, tensor=1 has 4 devices, but there are 8"),
    ((3, -1, 1), r"the known sizes \(3\) do not divide the 8 devices"),
    ((-1, -1, 1), r"at most one -1; got data=-1, fsdp=-1, tensor=1"),
    ((0, 8, 1), r"must be positive"),
])
def test_make_mesh_rejects_sizes_that_do_not_match_the_devices(sizes, match):
  with pytest.raises(ValueError, match=match):
    sh.make_mesh(*sizes)


def test_shard_batch_splits_rows_over_data_and_fsdp():
  mesh = sh.make_mesh(2, 2, 2)
  batch = sh.shard_batch({"tokens": _tokens(), "reward": np.arange(8.0)}, mesh)
  assert batch["tokens"].sharding.spec == PartitionSpec(("data", "fsdp"))
  assert batch["tokens"].sharding.shard_shape((8, 16)) == (2, 16)
  np.testing.assert_array_equal(np.asarray(batch["tokens"]), _tokens())
  with pytest.raises(ValueError, match=r"batch leaf \['mask'\] with shape \(6, 4\): 6 global "
                                       r"rows are not divisible by the 4 batch shards"):
    sh.shard_batch({"mask": np.ones((6, 4))}, mesh)


# ----------------------------------------------------------------------------- params


def test_sharded_init_equals_unsharded_init_bit_for_bit(tiny_params):
  """Over all three axes at once (threefry's bits do not depend on the layout)."""
  config, mesh = CONFIGS["tiny"], sh.make_mesh(2, 2, 2)
  params = sh.sharded_init(config, mesh, seed=3)
  expected = _flat(sh.param_shardings(config, mesh))
  reference = _flat(tiny_params)
  for path, value in _flat(params).items():
    assert value.sharding.is_equivalent_to(expected[path], value.ndim), path
    np.testing.assert_array_equal(np.asarray(value), np.asarray(reference[path]), err_msg=path)


def test_opt_state_is_sharded_like_params_and_counts_are_replicated(tiny_params):
  config, mesh = CONFIGS["tiny"], sh.make_mesh(2, 2, 2)
  p_sh = sh.param_shardings(config, mesh)
  decay = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)  # noqa: E731
  inner = optax.chain(optax.clip_by_global_norm(1.0),
                      optax.adamw(optax.warmup_cosine_decay_schedule(0.0, 1e-3, 2, 10),
                                  weight_decay=0.1, mask=decay))
  tx = optax.MultiSteps(inner, every_k_schedule=2)  # gradient accumulation keeps acc_grads
  o_sh = sh.opt_state_shardings(tx, tr.abstract_params(config), p_sh)
  state = o_sh.inner_opt_state[1][0]
  params_flat = jax.tree.leaves(p_sh)
  for tree in (state.mu, state.nu, o_sh.acc_grads):
    assert jax.tree.structure(tree) == jax.tree.structure(p_sh)
    assert jax.tree.leaves(tree) == params_flat
  for count in (state.count, o_sh.mini_step, o_sh.gradient_step):
    assert count == sh.replicated(mesh)
  # The shardings are usable as jit out_shardings as they are.
  opt_state = jax.jit(tx.init, out_shardings=o_sh)(jax.device_put(tiny_params, p_sh))
  for leaf, sharding in zip(jax.tree.leaves(opt_state), jax.tree.leaves(o_sh)):
    assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim)


def test_load_sharded_places_every_param_in_its_shards(tmp_path, tiny_params):
  config = CONFIGS["tiny"]
  hf_io.save_pretrained(config, tiny_params, tmp_path)
  mesh = sh.make_mesh(2, 2, 2)
  loaded_config, params = sh.load_sharded(tmp_path, mesh)
  assert loaded_config.replace(bos_token_id=None, eos_token_id=None) == config
  expected, reference = _flat(sh.param_shardings(config, mesh)), _flat(tiny_params)
  for path, value in _flat(params).items():
    assert value.sharding.is_equivalent_to(expected[path], value.ndim), path
    np.testing.assert_array_equal(np.asarray(value), np.asarray(reference[path]), err_msg=path)
  with pytest.raises(ValueError, match=r"param layers/k_proj: dim 2 \('kv_heads', size 2\) is "
                                       r"not divisible by mesh axis tensor=8"):
    sh.load_sharded(tmp_path, sh.make_mesh(1, 1, 8))


# ----------------------------------------------------------------------------- activations


def test_constrain_is_the_identity_outside_activation_rules():
  x = jnp.ones((3, 5, 7))
  assert partitioning.constrain(x, partitioning.ACT_BTD) is x
  assert partitioning.active_rules() is None
  mesh = sh.make_mesh(2, 2, 2)
  with sh.activation_rules(mesh):
    assert partitioning.active_rules()[0] is mesh
  assert partitioning.active_rules() is None


@pytest.mark.parametrize("mesh_shape", MESHES, ids=str)
def test_sharded_forward_equals_single_device(mesh_shape, tiny_params):
  config, mesh = CONFIGS["tiny"], sh.make_mesh(*mesh_shape)
  tokens = _tokens()
  expected = np.asarray(tr.forward(config, tiny_params, tokens))  # traced without rules
  params = jax.device_put(tiny_params, sh.param_shardings(config, mesh))
  batch = sh.shard_batch(tokens, mesh)
  assert "sharding_constraint" not in tr._forward_jit.lower(config, params, batch).as_text()
  with sh.activation_rules(mesh):
    # the same jitted function is traced again under the rules: the constraints are in it
    lowered = tr._forward_jit.lower(config, params, batch).as_text()
    assert lowered.count("sharding_constraint") >= 4  # table, embeddings, residual, logits
    logits = tr.forward(config, params, batch)
  want = NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None, "tensor"))
  assert logits.sharding.is_equivalent_to(want, 3), logits.sharding
  np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-5, rtol=0)


def test_rows_the_batch_axes_do_not_divide_are_an_error_under_rules(tiny_params):
  mesh = sh.make_mesh(8, 1, 1)
  with sh.activation_rules(mesh):
    with pytest.raises(ValueError, match=r"activation \('batch', 'sequence', 'act_embed'\): "
                                         r"dim 0 \('batch', size 6\) is not divisible by mesh "
                                         r"axis data=8 x fsdp=1"):
      tr.forward(CONFIGS["tiny"], tiny_params, _tokens(batch=6))


def test_sharded_remat_loss_and_grads_equal_single_device(tiny_params):
  """The constraints inside the scanned, rematerialised layers survive differentiation."""
  config, mesh = CONFIGS["tiny"], sh.make_mesh(2, 2, 2)
  tokens = _tokens()

  def loss_fn(params, tokens):
    b, t = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    logits, _ = tr.apply(config, params, tokens, positions, remat=True)  # [B, T, V]
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))

  grad_fn = jax.value_and_grad(loss_fn)
  loss, grads = jax.jit(grad_fn)(tiny_params, tokens)
  p_sh = sh.param_shardings(config, mesh)
  with sh.activation_rules(mesh):
    step = jax.jit(grad_fn, in_shardings=(p_sh, sh.batch_sharding(mesh)),
                   out_shardings=(sh.replicated(mesh), p_sh))
    s_loss, s_grads = step(jax.device_put(tiny_params, p_sh), sh.shard_batch(tokens, mesh))
  np.testing.assert_allclose(float(s_loss), float(loss), rtol=1e-6)
  for (path, g), s in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(s_grads)):
    np.testing.assert_allclose(np.asarray(s), np.asarray(g), atol=1e-6, rtol=1e-5,
                               err_msg=jax.tree_util.keystr(path))
