"""Logical axis names -> mesh axes, and activation sharding constraints inside the model.

Every parameter dimension carries a logical name (`transformer.param_logical_axes`), and the
few activations whose layout matters carry one here (`ACT_BTD`, `ACT_BTV`). Which mesh axis a
name maps to is a *rule* the trainer chooses (the table lives in `training/sharding.py` and is
passed in), so models/ never depends on training/. This module only applies rules:

* `logical_to_spec(names, shape, mesh, rules)`: a `PartitionSpec`, refusing a dimension its
  mesh axes do not divide (XLA would pad it or the caller would silently replicate) and a mesh
  axis used twice in one spec.
* `with activation_rules(mesh, rules): ...` makes `constrain(x, names)` a
  `jax.lax.with_sharding_constraint`; outside it `constrain` returns `x` unchanged, so
  single-device code (sampling, tests) traces exactly as before.

The context also enters `jax.set_mesh(mesh)`: JAX keys its trace cache on the ambient mesh, so
a function jitted and traced outside the context is traced again inside it (and again under
another mesh) rather than silently reusing a trace without (or with stale) constraints. Rules
are read when a function is traced: changing the rules under the same mesh does not retrace an
already-traced function.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import types
from collections.abc import Iterator, Mapping, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Array = jax.Array
MeshAxes = str | tuple[str, ...] | None  # what one logical name maps to
Rules = Mapping[str, MeshAxes]

# Activation layouts the model constrains (logical names; the rules give their mesh axes).
ACT_BTD = ("batch", "sequence", "act_embed")  # residual stream [B, T, D]
ACT_BTV = ("batch", "sequence", "act_vocab")  # logits [B, T, V]
ACTIVATION_AXES = tuple(dict.fromkeys(ACT_BTD + ACT_BTV))  # every name `constrain` is given


def mesh_axes(axes: MeshAxes) -> tuple[str, ...]:
  """A rule's right-hand side as a tuple of mesh axis names (None -> ())."""
  if axes is None:
    return ()
  if isinstance(axes, str):
    return (axes,)
  if isinstance(axes, Sequence) and all(isinstance(a, str) for a in axes):
    return tuple(axes)
  raise ValueError(f"a rule must map to a mesh axis name, a tuple of them or None; got {axes!r}")


def check_rules(rules: Rules, mesh: Mesh) -> None:
  """Every mesh axis a rule names exists in `mesh` (a typo would otherwise shard nothing)."""
  for name, axes in rules.items():
    for axis in mesh_axes(axes):
      if axis not in mesh.shape:
        raise ValueError(f"rule {name!r} -> {axes!r}: mesh axis {axis!r} is not in the mesh "
                         f"(axes {tuple(mesh.axis_names)})")


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules,
                    *, what: str = "array") -> PartitionSpec:
  """The PartitionSpec of an array of `shape` whose dimensions are named `names`.

  A None name means "not sharded". Raises ValueError, naming `what`, the dimension, its size
  and the mesh axes, when a name has no rule, a dimension is not divisible by the product of
  its mesh axes' sizes, or one mesh axis would shard two dimensions.
  """
  if len(names) != len(shape):
    raise ValueError(f"{what}: {len(names)} logical names {tuple(names)} for a "
                     f"{len(shape)}-d shape {tuple(shape)}")
  used: dict[str, int] = {}
  spec: list[MeshAxes] = []
  for dim, (name, size) in enumerate(zip(names, shape)):
    if name is None:
      spec.append(None)
      continue
    if name not in rules:
      raise ValueError(f"{what}: logical axis {name!r} (dim {dim}) has no sharding rule; the "
                       f"rules cover {sorted(rules)}")
    axes = mesh_axes(rules[name])
    for axis in axes:
      if axis not in mesh.shape:
        raise ValueError(f"{what}: logical axis {name!r} maps to mesh axis {axis!r}, which is "
                         f"not in the mesh (axes {tuple(mesh.axis_names)})")
      if axis in used:
        raise ValueError(f"{what}: mesh axis {axis!r} would shard both dim {used[axis]} "
                         f"({names[used[axis]]!r}) and dim {dim} ({name!r})")
      used[axis] = dim
    ways = math.prod(mesh.shape[a] for a in axes)
    if size % ways:
      sizes = " x ".join(f"{a}={mesh.shape[a]}" for a in axes)
      raise ValueError(f"{what}: dim {dim} ({name!r}, size {size}) is not divisible by mesh "
                       f"axis {sizes} ({ways} shards); change the mesh or the rule for {name!r}")
    spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return PartitionSpec(*spec)


@dataclasses.dataclass(frozen=True)
class _Active:
  mesh: Mesh
  rules: Rules


_ACTIVE: contextvars.ContextVar[_Active | None] = contextvars.ContextVar(
    "atommem_activation_rules", default=None)


@contextlib.contextmanager
def activation_rules(mesh: Mesh, rules: Rules) -> Iterator[None]:
  """Within this block, `constrain` shards activations by `rules` over `mesh` (trace under it:
  see the module docstring)."""
  check_rules(rules, mesh)
  token = _ACTIVE.set(_Active(mesh, types.MappingProxyType(dict(rules))))
  try:
    with jax.set_mesh(mesh):
      yield
  finally:
    _ACTIVE.reset(token)


def active_rules() -> tuple[Mesh, Rules] | None:
  """(mesh, rules) of the innermost `activation_rules` block, or None outside any."""
  active = _ACTIVE.get()
  return None if active is None else (active.mesh, active.rules)


_PLATFORM: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "atommem_target_platform", default=None)


@contextlib.contextmanager
def target_platform(platform: str) -> Iterator[None]:
  """Trace for `platform` ("tpu", "gpu", "cpu") instead of the local default backend: the
  model picks a few layouts per platform at trace time, and launch/aot.py traces on a CPU
  host what a TPU will run."""
  token = _PLATFORM.set(platform)
  try:
    yield
  finally:
    _PLATFORM.reset(token)


def platform() -> str:
  """The platform being traced for: `target_platform`'s, else `jax.default_backend()`."""
  return _PLATFORM.get() or jax.default_backend()


def constrain(x: Array, names: Sequence[str | None]) -> Array:
  """`x` with a sharding constraint from the active rules; `x` itself when none are active."""
  active = _ACTIVE.get()
  if active is None:
    return x
  spec = logical_to_spec(names, x.shape, active.mesh, active.rules,
                         what=f"activation {tuple(names)}")
  return jax.lax.with_sharding_constraint(x, NamedSharding(active.mesh, spec))
