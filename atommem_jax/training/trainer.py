"""What SFT and GRPO runs share: setup (mesh, model, sharded state, checkpoints, restore),
the step loop's bookkeeping (metrics, progress, pre-emption) and the end (export, plots).

Run directory layout (`output_dir`):
  config.json         the config as run
  model/              config.json (Hugging Face) + tokenizer: what `model.source=orbax:<dir>`
                      needs besides the checkpoint
  checkpoints/<step>/ orbax: state (step, params, optimizer state) + meta (data position)
  metrics.jsonl       one record per optimizer step; tb/ TensorBoard scalars
  training.png, ops.png
  hf/                 the final params as a Hugging Face folder (`model.source=hf:<dir>/hf`)
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from atommem_jax.agent import build
from atommem_jax.training import checkpoint as ckpt_lib
from atommem_jax.training import config as cfg_lib
from atommem_jax.training import logs
from atommem_jax.training import sharding
from atommem_jax.training import step as step_lib


@dataclasses.dataclass
class Run:
  """Everything a training loop needs, set up and (when a checkpoint exists) restored."""

  c: ml_collections.ConfigDict
  out: pathlib.Path
  model: build.Model  # config (compute dtype) + initial params (float32) + tokenizer
  mesh: jax.sharding.Mesh
  rules: Any
  tx: Any
  state: step_lib.TrainState
  state_shardings: Any
  train_step: step_lib.TrainStep
  checkpointer: ckpt_lib.Checkpointer
  meta: dict  # the restored checkpoint's meta ({} on a fresh start)
  echo: Callable[[str], None]

  @property
  def step(self) -> int:
    return int(self.state.step)

  def shard_batch(self, batch: dict) -> dict:
    return sharding.shard_batch(batch, self.mesh, self.rules)

  def save(self, meta: dict, force: bool = False) -> bool:
    return self.checkpointer.save(self.step, self.state, meta, force=force)


def setup(c: ml_collections.ConfigDict, echo: Callable[[str], None] = print) -> Run:
  cfg_lib.validate(c)
  out = pathlib.Path(c.output_dir)
  out.mkdir(parents=True, exist_ok=True)
  shape = cfg_lib.mesh_shape(c, jax.device_count())
  ways = shape[0] * shape[1]
  if c.batch.rows % (ways * c.batch.micro_batches):
    raise cfg_lib.ConfigError(
        f"batch.rows={c.batch.rows} must be divisible by mesh data*fsdp ({ways}) times "
        f"batch.micro_batches ({c.batch.micro_batches})")
  (out / "config.json").write_text(c.to_json_best_effort(indent=2))
  t0 = time.perf_counter()
  model = build.load_model(c, out, dtype="float32")
  # Master weights in float32, compute in model.dtype (bfloat16 by config).
  mc = model.config.replace(param_dtype="float32", dtype=c.model.dtype)
  params = jax.tree.map(lambda p: p.astype(jnp.float32), model.params)
  model = build.Model(mc, params, model.tokenizer)
  _write_model_dir(out / "model", mc, model.tokenizer)
  mesh = sharding.make_mesh(*shape)
  rules = sharding.get_rules(c.sharding_rules)
  tx = step_lib.make_optimizer(cfg_lib.optim_config(c))
  p_sh = sharding.param_shardings(mc, mesh, rules)
  state_sh = step_lib.TrainState(step=sharding.replicated(mesh), params=p_sh,
                                 opt_state=sharding.opt_state_shardings(tx, params, p_sh))
  state = jax.jit(lambda p: step_lib.init_state(p, tx), out_shardings=state_sh)(
      jax.device_put(params, p_sh))
  checkpointer = ckpt_lib.Checkpointer(ckpt_lib.CheckpointConfig(
      directory=str(out / "checkpoints"), every=c.checkpoint_every, keep=c.keep_checkpoints))
  meta: dict = {}
  restored = checkpointer.restore(ckpt_lib.abstract_state(state, state_sh))
  if restored is not None:
    state, meta = restored.state, dict(restored.meta)
    echo(f"[resume] {out / 'checkpoints'}: step {restored.step}")
  train_step = step_lib.TrainStep(
      mc, cfg_lib.loss_config(c), tx, micro_batches=c.batch.micro_batches,
      state_shardings=state_sh, batch_sharding=sharding.batch_sharding(mesh, rules), mesh=mesh,
      rules=rules, lr_schedule=step_lib.schedule(cfg_lib.optim_config(c)))
  echo(f"[setup] {c.algorithm} {c.method}: model={c.model.source} ({mc.family}, "
       f"{sum(x.size for x in jax.tree.leaves(params)) / 1e6:.2f}M params, compute "
       f"{c.model.dtype}), mesh data/fsdp/tensor={shape} on {jax.device_count()} "
       f"{jax.devices()[0].platform} devices ({time.perf_counter() - t0:.1f}s)")
  return Run(c=c, out=out, model=model, mesh=mesh, rules=rules, tx=tx, state=state,
             state_shardings=state_sh, train_step=train_step, checkpointer=checkpointer,
             meta=meta, echo=echo)


def _write_model_dir(path: pathlib.Path, mc, tokenizer) -> None:
  """config.json + tokenizer: a checkpoint directory plus this is a loadable policy."""
  from atommem_jax.models import hf_io

  path.mkdir(parents=True, exist_ok=True)
  (path / "config.json").write_text(json.dumps(hf_io.config_to_hf(mc), indent=2))
  tokenizer.save_pretrained(path)


def finish(run: Run, writer: logs.MetricsWriter, meta: dict, stopped: bool) -> dict:
  """Final checkpoint, HF export, plots; returns a summary of the run."""
  run.save(meta, force=True)
  run.checkpointer.wait()
  writer.close()
  records = logs.read_metrics(writer.path)
  plots = logs.plot_training(records, run.out)
  exported = None
  if run.c.export_hf and not stopped:
    from atommem_jax.models import hf_io

    exported = run.out / "hf"
    params = jax.device_get(run.state.params)
    hf_io.save_pretrained(run.model.config.replace(param_dtype="float32"), params, exported)
    run.model.tokenizer.save_pretrained(exported)
  run.checkpointer.close()
  last = records[-1] if records else {}
  run.echo(f"[done] step {run.step}{' (stopped by signal; rerun to resume)' if stopped else ''}: "
           f"{run.out / 'metrics.jsonl'} {' '.join(str(p) for p in plots)}"
           f"{' ' + str(exported) if exported else ''}; train step compiled "
           f"{run.train_step.compiles}x")
  return {"step": run.step, "stopped": stopped, "last": last, "compiles": run.train_step.compiles}
