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


def latest_step(run_dir: str | os.PathLike, step: int | None = None) -> int:
  """`step` if `run_dir` has it finished, else (step None) its latest finished step."""
  run_dir = pathlib.Path(run_dir)
  steps = checkpoint_steps(run_dir / "checkpoints")
  if not steps:
    raise FileNotFoundError(f"{run_dir / 'checkpoints'} holds no finished checkpoint")
  if step is None:
    return steps[-1]
  if step not in steps:
    raise FileNotFoundError(f"{run_dir / 'checkpoints'} has no finished step {step}; "
                            f"steps: {steps}")
  return step


def load_params(run_dir: str | os.PathLike, target: Any, step: int | None = None) -> Any:
  """The `params` subtree of a run's train state (float32, on one device), restored onto
  `target` (its `jax.ShapeDtypeStruct`s: the model's, or a LoRA run's adapters')."""
  import orbax.checkpoint as ocp

  run_dir = pathlib.Path(run_dir).resolve()  # orbax refuses relative checkpoint paths
  path = run_dir / "checkpoints" / str(latest_step(run_dir, step)) / "state"
  target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, jnp.float32), target)
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])  # the trainer reshards as it needs
  with ocp.PyTreeCheckpointer() as ckptr:
    restored = ckptr.restore(path, args=ocp.args.PyTreeRestore(
        item={"params": target}, partial_restore=True,
        restore_args=jax.tree.map(lambda _: ocp.ArrayRestoreArgs(dtype=jnp.float32, sharding=one),
                                  {"params": target})))
  return restored["params"]


def model_config(run_dir: str | os.PathLike, dtype: Any = jnp.float32) -> ModelConfig:
  """The policy's config from a run's `model/config.json`."""
  cfg_file = pathlib.Path(run_dir) / "model" / "config.json"
  if not cfg_file.is_file():
    raise FileNotFoundError(f"{run_dir} is not a training run directory: no {cfg_file}")
  name = jnp.dtype(dtype).name
  return hf_io.config_from_hf(json.loads(cfg_file.read_text())).replace(param_dtype=name,
                                                                         dtype=name)


def load_run(run_dir: str | os.PathLike, dtype: Any = jnp.float32, step: int | None = None
             ) -> tuple[ModelConfig, Any]:
  """(config, params) of a training run that trained every weight: its latest finished
  checkpoint, or `step`. (A LoRA run's checkpoints hold adapters: `agent/build.load_model`
  merges them into the run's base model.)"""
  config = model_config(run_dir, dtype)
  abstract = transformer.abstract_params(config.replace(param_dtype="float32"))
  params = load_params(run_dir, abstract, step)
  return config, jax.tree.map(lambda x: jnp.asarray(x, dtype), params)
