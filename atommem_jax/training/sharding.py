"""The device mesh and the one sharding-rule table: logical axis names -> mesh axes.

Mesh axes are exactly `data`, `fsdp` and `tensor` (any may be 1):
* `data`: pure data parallelism (weights replicated across it);
* `fsdp`: data parallelism with weights, gradients and optimizer moments sharded on their
  `embed` dimension (ZeRO-3 style: XLA gathers each layer's weights when it runs);
* `tensor`: Megatron-style tensor parallelism over heads, kv heads, MLP and vocabulary.
The batch is split over `data` and `fsdp` together; tensor-parallel replicas see the same rows.

Parameters carry logical names on every dimension (`transformer.param_logical_axes`) and the
model constrains its residual stream and logits by the names in `models.partitioning`; a rule
set maps each name to mesh axes. `RULE_SETS` is the registry configs pick from by name.
A dimension its mesh axes do not divide is an error naming the parameter, never a silent
replication (see `partitioning.logical_to_spec`).

Typical use (the train step's `jax.jit(..., in_shardings=..., out_shardings=...)`):

  mesh = make_mesh(data=2, fsdp=-1, tensor=1)
  params = sharded_init(config, mesh, seed=0)      # or load_sharded(hf_dir, mesh)
  p_sh = param_shardings(config, mesh)
  o_sh = opt_state_shardings(tx, transformer.abstract_params(config), p_sh)
  with activation_rules(mesh):
    step = jax.jit(train_step, in_shardings=(p_sh, o_sh, batch_sharding(mesh)), ...)
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import types
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from atommem_jax.models import hf_io, partitioning, transformer
from atommem_jax.models.config import ModelConfig
from atommem_jax.models.partitioning import Rules, check_rules, logical_to_spec, mesh_axes

__all__ = [
    "MESH_AXES", "DEFAULT_RULES", "FSDP_RULES", "RULE_SETS", "get_rules", "make_mesh",
    "activation_rules",
    "logical_to_spec", "param_shardings", "opt_state_shardings", "batch_sharding",
    "replicated", "shard_batch", "sharded_init", "load_sharded",
]

MESH_AXES = ("data", "fsdp", "tensor")

# FSDP on every weight's embed dimension + tensor parallelism on heads / MLP / vocabulary.
DEFAULT_RULES: Rules = types.MappingProxyType({
    # parameters
    "vocab": "tensor",
    "embed": "fsdp",
    "mlp": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "layers": None,  # the scan axis: every device holds its slice of every layer
    # activations (models/partitioning.py ACT_*)
    "batch": ("data", "fsdp"),
    "sequence": None,
    "act_embed": None,  # the residual stream is split by rows, never by features
    "act_vocab": "tensor",
})

# No tensor parallelism: for models whose head counts the tensor axis would not divide
# (SmolLM2-135M's 9 heads / 3 kv heads); use it with tensor=1.
FSDP_RULES: Rules = types.MappingProxyType({
    **DEFAULT_RULES, "vocab": None, "mlp": None, "heads": None, "kv_heads": None,
    "act_vocab": None,
})

RULE_SETS: dict[str, Rules] = {"fsdp_tp": DEFAULT_RULES, "fsdp": FSDP_RULES}


def activation_rules(mesh: Mesh, rules: str | Rules = DEFAULT_RULES
                     ) -> contextlib.AbstractContextManager[None]:
  """`models.partitioning.activation_rules` taking a rule-set name too: trace the model
  under it so its residual stream and logits are constrained by the same table as the params."""
  return partitioning.activation_rules(mesh, _validate(mesh, get_rules(rules)))


def get_rules(rules: str | Rules) -> Rules:
  """A rule set by registry name (configs say `mesh.rules='fsdp_tp'`), or `rules` itself."""
  if isinstance(rules, str):
    if rules not in RULE_SETS:
      raise ValueError(f"unknown sharding rule set {rules!r}; known: {sorted(RULE_SETS)}")
    return RULE_SETS[rules]
  return rules


def _validate(mesh: Mesh, rules: Rules) -> Rules:
  """The rules' mesh axes exist, and every mesh axis of size > 1 is used by some rule (an
  unused one would silently replicate all work across it)."""
  if tuple(mesh.axis_names) != MESH_AXES:
    raise ValueError(f"mesh axes must be {MESH_AXES} (use make_mesh), got {mesh.axis_names}")
  check_rules(rules, mesh)
  used = {a for axes in rules.values() for a in mesh_axes(axes)}
  idle = [f"{a}={mesh.shape[a]}" for a in MESH_AXES if mesh.shape[a] > 1 and a not in used]
  if idle:
    raise ValueError(f"mesh axes {', '.join(idle)} are used by no sharding rule: every device "
                     "along them would repeat the same work; set them to 1 or change the rules")
  return rules


# ----------------------------------------------------------------------------- mesh


def make_mesh(data: int, fsdp: int, tensor: int, devices: list[jax.Device] | None = None
              ) -> Mesh:
  """A `Mesh` with axes (`data`, `fsdp`, `tensor`) over all `devices` (default: all).

  One size may be -1: the devices left over by the other two. The product must equal the
  device count. The device order comes from `jax.make_mesh` (topology-aware on TPU), and the
  axes are `Auto`: the train step states shardings at its jit boundary and lets XLA propagate
  them, rather than JAX's default explicit-sharding mode for `make_mesh`.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  sizes = [data, fsdp, tensor]
  if any(s == 0 or s < -1 for s in sizes) or sizes.count(-1) > 1:
    raise ValueError(f"mesh sizes must be positive, with at most one -1; got data={data}, "
                     f"fsdp={fsdp}, tensor={tensor}")
  if -1 in sizes:
    rest = math.prod(s for s in sizes if s != -1)
    if n % rest:
      raise ValueError(f"mesh data={data}, fsdp={fsdp}, tensor={tensor}: the known sizes "
                       f"({rest}) do not divide the {n} devices")
    sizes[sizes.index(-1)] = n // rest
  if math.prod(sizes) != n:
    raise ValueError(f"mesh data={data}, fsdp={fsdp}, tensor={tensor} has "
                     f"{math.prod(sizes)} devices, but there are {n}")
  return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3,
                       devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array (scalars, step counters, RNG keys)."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, rules: str | Rules = DEFAULT_RULES) -> NamedSharding:
  """Rows over the `batch` rule's axes (data x fsdp by default), other dims replicated: for
  `[B]`, `[B, T]`, `[B, T, ...]` arrays alike. Rows must divide the axes (`shard_batch`
  checks)."""
  rules = _validate(mesh, get_rules(rules))
  axes = mesh_axes(rules["batch"])
  return NamedSharding(mesh, PartitionSpec(axes if axes else None))


def shard_batch(batch: Any, mesh: Mesh, rules: str | Rules = DEFAULT_RULES) -> Any:
  """A pytree of host arrays (this process's rows) as global arrays split by `batch_sharding`.

  Works single- and multi-process (each process passes its own rows). Raises ValueError
  naming the leaf whose global row count the batch axes do not divide.
  """
  sharding = batch_sharding(mesh, rules)
  ways = math.prod(mesh.shape[a] for a in mesh_axes(get_rules(rules)["batch"]))

  def put(path, x):
    x = np.asarray(x)
    rows = x.shape[0] * jax.process_count() if x.ndim else 0
    if x.ndim == 0 or rows % ways:
      raise ValueError(f"batch leaf {jax.tree_util.keystr(path)} with shape {x.shape}: "
                       f"{rows} global rows are not divisible by the {ways} batch shards")
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree_util.tree_map_with_path(put, batch)


# ----------------------------------------------------------------------------- params


def param_shardings(model_config: ModelConfig, mesh: Mesh, rules: str | Rules = DEFAULT_RULES
                    ) -> nnx.State:
  """`NamedSharding` per parameter, as an `nnx.State` with the structure of
  `transformer.init_params(model_config)` (usable as jit in/out_shardings directly)."""
  rules = _validate(mesh, get_rules(rules))
  flat = []
  for path, var in nnx.to_flat_state(transformer.abstract_params(model_config)):
    names = tuple(var.get_metadata().get("out_sharding") or ())
    spec = logical_to_spec(names, var.get_value().shape, mesh, rules,
                           what=f"param {'/'.join(str(p) for p in path)}")
    flat.append((path, var.replace(NamedSharding(mesh, spec))))
  return nnx.from_flat_state(flat)


def opt_state_shardings(tx: optax.GradientTransformation, abstract_params: Any,
                        param_shardings: Any) -> Any:
  """Shardings for `tx.init(params)`: every params-shaped subtree (Adam moments, accumulated
  gradients) sharded like the params, everything else (counts, scalars) replicated.

  abstract_params: the params or their `jax.ShapeDtypeStruct`s (nothing is allocated).
  """
  mesh = _mesh_of(param_shardings)
  state = jax.eval_shape(tx.init, abstract_params)
  out = optax.tree_map_params(tx, lambda _, s: s, state, param_shardings,
                              transform_non_params=lambda _: replicated(mesh))
  # A transformation that reshapes its per-param state (factored moments, masked subtrees)
  # would pair a leaf with the wrong sharding: fail here rather than at the jit boundary.
  leaves, shardings = jax.tree.leaves(state), jax.tree.leaves(out)
  if len(leaves) != len(shardings):
    raise ValueError(f"optimizer state has {len(leaves)} leaves, the shardings {len(shardings)}")
  for (path, leaf), sharding in zip(jax.tree_util.tree_leaves_with_path(state), shardings):
    try:
      sharding.shard_shape(leaf.shape)
    except ValueError as e:
      raise ValueError(f"optimizer state {jax.tree_util.keystr(path)} {leaf.shape}: sharding "
                       f"{sharding.spec} does not fit ({e})") from None
  return out


def like(tree: Any, shardings: Any) -> Any:
  """`shardings` (e.g. `param_shardings`) in `tree`'s pytree structure (nnx.State nesting
  differs between a loaded model and `param_shardings`; jit's out_shardings must match its
  output's structure exactly). The leaves must correspond path by path."""
  paths = [jax.tree_util.keystr(p, simple=True, separator="/")
           for p, _ in jax.tree_util.tree_leaves_with_path(tree)]
  by_path = {jax.tree_util.keystr(p, simple=True, separator="/"): s
             for p, s in jax.tree_util.tree_leaves_with_path(shardings)}
  missing = [p for p in paths if p not in by_path]
  if missing or len(paths) != len(by_path):
    raise ValueError(f"shardings do not match the tree: missing {missing[:3]}, "
                     f"{len(paths)} leaves vs {len(by_path)} shardings")
  return jax.tree.unflatten(jax.tree.structure(tree), [by_path[p] for p in paths])


def _mesh_of(shardings: Any) -> Mesh:
  meshes = {s.mesh for s in jax.tree.leaves(shardings) if isinstance(s, NamedSharding)}
  if len(meshes) != 1:
    raise ValueError(f"param_shardings must be NamedShardings over one mesh, got {len(meshes)}")
  return meshes.pop()


def sharded_init(config: ModelConfig, mesh: Mesh, seed: int = 0,
                 rules: str | Rules = DEFAULT_RULES) -> nnx.State:
  """`transformer.init_params(config, seed)`, bit for bit, created directly in its shards:
  one jit whose outputs are laid out by `param_shardings`, so no device ever holds a whole
  parameter (with JAX's partitionable threefry the random bits do not depend on layout)."""
  shardings = param_shardings(config, mesh, rules)
  return jax.jit(lambda: transformer.init_params(config, seed), out_shardings=shardings)()


def load_sharded(path: str | os.PathLike, mesh: Mesh, dtype: Any = jnp.float32,
                 rules: str | Rules = DEFAULT_RULES) -> tuple[ModelConfig, nnx.State]:
  """(config, params) from a Hugging Face directory, each parameter placed in its shards as
  soon as its tensors are read (`hf_io.from_pretrained`: at most one checkpoint on the host,
  never a whole parameter on one device)."""
  cfg_file = Path(path) / "config.json"
  if not cfg_file.exists():
    raise ValueError(f"{path} has no config.json")
  config = hf_io.config_from_hf(json.loads(cfg_file.read_text()))
  return hf_io.from_pretrained(path, dtype=dtype,
                               shardings=param_shardings(config, mesh, rules))
