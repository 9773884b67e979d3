"""Policy parameters from a training run's orbax checkpoint (`model.source=orbax:<run dir>`).

A training run directory holds `model/config.json` (the Hugging Face config of the policy)
and `checkpoints/<step>/state` (orbax: the train state, whose `params` subtree are the
model's parameters). Only the parameters are read (orbax partial restore): the optimizer
state, twice their size, is never loaded.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp

from atommem_jax.models import hf_io, transformer
from atommem_jax.models.config import ModelConfig

_COMMIT = "commit_success.txt"  # orbax writes it into every finished step directory


def checkpoint_steps(checkpoints: str | os.PathLike) -> list[int]:
  """Finished (committed) checkpoint steps under `checkpoints`, ascending."""
  root = pathlib.Path(checkpoints)
  if not root.is_dir():
    return []
  return sorted(int(p.name) for p in root.iterdir()
                if p.is_dir() and p.name.isdigit() and (p / _COMMIT).exists())


def load_run(run_dir: str | os.PathLike, dtype: Any = jnp.float32, step: int | None = None
             ) -> tuple[ModelConfig, Any]:
  """(config, params) of a training run: its latest finished checkpoint, or `step`."""
  import orbax.checkpoint as ocp

  run_dir = pathlib.Path(run_dir)
  cfg_file = run_dir / "model" / "config.json"
  if not cfg_file.is_file():
    raise FileNotFoundError(f"{run_dir} is not a training run directory: no {cfg_file}")
  name = jnp.dtype(dtype).name
  config = hf_io.config_from_hf(json.loads(cfg_file.read_text())).replace(param_dtype=name,
                                                                            dtype=name)
  steps = checkpoint_steps(run_dir / "checkpoints")
  if not steps:
    raise FileNotFoundError(f"{run_dir / 'checkpoints'} holds no finished checkpoint")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise FileNotFoundError(f"{run_dir / 'checkpoints'} has no finished step {step}; "
                            f"steps: {steps}")
  abstract = transformer.abstract_params(config.replace(param_dtype="float32"))
  target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, jnp.float32), abstract)
  path = run_dir / "checkpoints" / str(step) / "state"
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])  # the trainer reshards as it needs
  with ocp.PyTreeCheckpointer() as ckptr:
    restored = ckptr.restore(path, args=ocp.args.PyTreeRestore(
        item={"params": target}, partial_restore=True,
        restore_args=jax.tree.map(lambda _: ocp.ArrayRestoreArgs(dtype=jnp.float32, sharding=one),
                                  {"params": target})))
  params = jax.tree.map(lambda x: jnp.asarray(x, dtype), restored["params"])
  return config, params
