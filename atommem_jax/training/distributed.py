"""The multi-controller runtime: one process per host, one global mesh over every chip.

On a TPU pod slice JAX runs one Python process per host (TPU VM worker) and
`jax.distributed.initialize` connects them; from then on `jax.devices()` lists every chip
of the slice, `sharding.make_mesh` builds the one global mesh from them, and every jitted
computation over global arrays is one SPMD program that all processes must enter in the
same order with the same shapes. Nothing else goes between hosts: what the learners need
on top of that is here.

* `initialize(cfg)`: `distributed.mode` "off" (one process, the default), "auto" (Cloud TPU
  VMs, GKE / xpk, SLURM, Open MPI: JAX reads the coordinator and the process ids from the
  environment) or "explicit" (`coordinator` host:port, `num_processes`, `process_id` from
  the config: CPU tests, other clusters). Idempotent, so a GRPO run may set up its
  warm-start SFT run first.
* Per-host batches: `process_rows(rows)` is this process's block of a global batch;
  `sharding.shard_batch` assembles the global arrays from every process's block.
* `put_global(tree, shardings)`: global arrays from host values that every process holds
  (a loaded checkpoint): each process copies only the shards its own chips hold.
* Host results of every process: `allgather` (equal shapes), `allgather_ragged` (token id
  lists of different lengths), `any_process` (stop flags).
* `local_replica(tree, shardings_for)`: a copy of global parameters on this process's chips
  alone, for work each host does on its own. GRPO samples its share of the questions
  with it: sampling with the global parameters would make every prefill and decode step a
  pod-wide program that all hosts must enter with identical prompts and step counts.
* `fetch_global(tree)`: numpy copies of global arrays on every process (HF export).
* `is_main()`: process 0 writes the run's files; every process takes part in checkpoints.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from atommem_jax.agent.build import ConfigError

MODES = ("off", "auto", "explicit")
MESH_AXES = ("data", "fsdp", "tensor")  # training/sharding.py's mesh axes, in its order


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
  """How this process joins the others (config block `distributed`)."""

  mode: str = "off"
  coordinator: str = ""  # explicit: "host:port" of process 0
  num_processes: int = 0  # explicit: total processes
  process_id: int = -1  # explicit: this process, 0 .. num_processes - 1
  initialization_timeout: int = 300  # seconds to wait for every process to connect

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"distributed.mode must be one of {MODES}, got {self.mode!r}")
    if (not isinstance(self.initialization_timeout, int) or isinstance(
        self.initialization_timeout, bool) or self.initialization_timeout <= 0):
      raise ValueError("distributed.initialization_timeout must be a positive number of "
                       f"seconds, got {self.initialization_timeout!r}")
    if self.mode != "explicit":
      set_keys = [k for k, unset in (("coordinator", ""), ("num_processes", 0),
                                     ("process_id", -1)) if getattr(self, k) != unset]
      if set_keys:  # they would be ignored: say so instead
        raise ValueError(f"distributed.{set_keys[0]}={getattr(self, set_keys[0])!r} is only "
                         f"used with distributed.mode='explicit' (mode is {self.mode!r})")
      return
    host, sep, port = str(self.coordinator).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
      raise ValueError("distributed.coordinator must be 'host:port' (process 0's address), "
                       f"got {self.coordinator!r}")
    n, i = self.num_processes, self.process_id
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
      raise ValueError(f"distributed.num_processes must be a positive integer, got {n!r}")
    if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < n:
      raise ValueError(f"distributed.process_id must be in [0, {n}), got {i!r}")


def from_config(c: ml_collections.ConfigDict) -> DistributedConfig:
  """The `distributed` block of a training config (absent: one process). ConfigError names
  the bad key."""
  d = c.get("distributed")
  if d is None:
    return DistributedConfig()
  unknown = sorted(set(d.keys()) - {f.name for f in dataclasses.fields(DistributedConfig)})
  if unknown:
    raise ConfigError(f"distributed.{unknown[0]} is not a known key")
  try:
    return DistributedConfig(**d.to_dict())
  except ValueError as e:
    raise ConfigError(str(e)) from None  # the messages start with the key


def initialize(cfg: DistributedConfig) -> None:
  """Joins the other processes (no-op for mode "off" and when already joined).

  Must run before anything initialises a JAX backend (`jax.devices()`, any array)."""
  if cfg.mode == "off":
    return
  if jax.distributed.is_initialized():
    if cfg.mode == "explicit" and (jax.process_count(), jax.process_index()) != (
        cfg.num_processes, cfg.process_id):
      raise RuntimeError(
          f"JAX is already initialised as process {jax.process_index()} of "
          f"{jax.process_count()}, but distributed asks for process {cfg.process_id} of "
          f"{cfg.num_processes}")
    return
  kw: dict[str, Any] = dict(initialization_timeout=cfg.initialization_timeout)
  if cfg.mode == "explicit":  # no cluster detection: the config says everything
    kw.update(coordinator_address=cfg.coordinator, num_processes=cfg.num_processes,
              process_id=cfg.process_id, cluster_detection_method="deactivate")
  try:
    jax.distributed.initialize(**kw)
  except (RuntimeError, ValueError) as e:
    raise RuntimeError(f"distributed.mode={cfg.mode!r}: jax.distributed.initialize failed: "
                       f"{e}") from e


def is_main() -> bool:
  """Process 0: the one that writes metrics, plots, exports and run files."""
  return jax.process_index() == 0


def process_rows(rows: int) -> slice:
  """This process's rows of a global batch of `rows` rows (an equal block per process, in
  process order: what `sharding.shard_batch` expects from each process)."""
  n = jax.process_count()
  if rows % n:
    raise ValueError(f"a batch of {rows} rows does not split over {n} processes")
  k = rows // n
  return slice(jax.process_index() * k, (jax.process_index() + 1) * k)


def put_global(tree: Any, shardings: Any) -> Any:
  """`tree` (host or process-local arrays, equal on every process) as global arrays laid
  out by `shardings`; each process copies only the shards of its own devices.

  (`jax.device_put` onto a multi-process sharding first checks that every process holds
  the same value, which moves the whole array between hosts.)"""
  if jax.process_count() == 1:
    return jax.device_put(tree, shardings)

  def one(x, sharding):
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  return jax.tree.map(one, tree, shardings)


def fetch_global(tree: Any) -> Any:
  """numpy copies of (possibly multi-host) global arrays, on every process; every process
  must call it (one collective per leaf, so at most one whole leaf is replicated at once)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)),
                      tree)


def allgather(x: np.ndarray) -> np.ndarray:
  """Every process's `x` (equal shapes), stacked in process order: `[P, *x.shape]`."""
  x = np.asarray(x)
  if jax.process_count() == 1:
    return x[None]
  return np.asarray(multihost_utils.process_allgather(x, tiled=False))


def any_process(flag: bool) -> bool:
  """True on every process when `flag` is true on any (agreeing on when to stop: a process
  that stops alone would leave the others waiting in the next collective)."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(allgather(np.asarray(bool(flag), np.int32)).any())


def allgather_ragged(arrays: Sequence[np.ndarray], dtype: Any = np.int32) -> list[np.ndarray]:
  """Every process's list of 1-D arrays (any lengths, any count), concatenated in process
  order: the same list on every process."""
  arrays = [np.asarray(a, dtype).reshape(-1) for a in arrays]
  if jax.process_count() == 1:
    return arrays
  lengths = np.asarray([len(a) for a in arrays], np.int64)  # [n]
  flat = np.concatenate(arrays) if arrays else np.zeros(0, dtype)  # [t]
  sizes = allgather(np.asarray([len(arrays), len(flat)], np.int64))  # [P, 2]
  max_n, max_t = (max(int(v), 1) for v in sizes.max(axis=0))
  all_lengths = allgather(np.pad(lengths, (0, max_n - len(lengths))))  # [P, max_n]
  all_flat = allgather(np.pad(flat, (0, max_t - len(flat))))  # [P, max_t]
  out: list[np.ndarray] = []
  for p, (n, t) in enumerate(sizes):
    ends = np.cumsum(all_lengths[p, :n])
    out += np.split(all_flat[p, :t], ends[:-1]) if n else []
  return out


def _process_grid() -> np.ndarray:
  """Devices as `[process, local device]` (every process must have as many)."""
  counts = {p: 0 for p in range(jax.process_count())}
  for d in jax.devices():
    counts[d.process_index] += 1
  if len(set(counts.values())) != 1:
    raise ValueError(f"processes have different numbers of devices: {counts}")
  devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  return np.asarray(devices, dtype=object).reshape(jax.process_count(), -1)


def local_replica(tree: Any, shardings_for: Callable[[Mesh], Any]) -> Any:
  """A copy of global `tree` held by this process's devices alone, laid out by
  `shardings_for(mesh)` over a mesh of those devices with `sharding.make_mesh`'s axes,
  all on `fsdp` (e.g. `lambda m: sharding.param_shardings(config, m, rules)`).

  Every process must call it (one resharding program over all devices: each host
  receives the shards its copy needs). One process: `tree` itself."""
  if jax.process_count() == 1:
    return tree
  grid = _process_grid()
  local = Mesh(grid[jax.process_index()].reshape(1, -1, 1), MESH_AXES)
  local_shardings = shardings_for(local)
  # The same layout inside every process's block of devices, replicated across processes.
  stacked = Mesh(grid.reshape(grid.shape[0], 1, grid.shape[1], 1), ("process",) + MESH_AXES)
  target = jax.tree.map(lambda s: NamedSharding(stacked, s.spec), local_shardings)
  copies = jax.jit(lambda t: t, out_shardings=target)(tree)
  return jax.tree.map(
      lambda a, s: jax.make_array_from_single_device_arrays(
          a.shape, s, [shard.data for shard in a.addressable_shards]),
      copies, local_shardings)
