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
  lora.safetensors    LoRA runs: the final adapters and how to load their base
                      (`model.source=lora:<dir>/lora.safetensors`); checkpoints hold only
                      the adapters and their optimizer state

Several processes (`training/distributed.py`): every process builds the same mesh over all
devices, loads its rows of each batch and takes part in every checkpoint save and restore
(orbax writes each array's shards from the process that holds them); only process 0 writes
the other files above and prints. An `output_dir` on an object store (`gs://...`): orbax
writes checkpoints/ there directly, and process 0 writes the other files into a local
directory (`local_dir`) and uploads what changed after each checkpoint and at the end.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import tempfile
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from atommem_jax.agent import build
from atommem_jax.models import lora as lora_lib
from atommem_jax.training import checkpoint as ckpt_lib
from atommem_jax.training import config as cfg_lib
from atommem_jax.training import distributed
from atommem_jax.training import logs
from atommem_jax.training import sharding
from atommem_jax.training import step as step_lib


@dataclasses.dataclass
class Run:
  """Everything a training loop needs, set up and (when a checkpoint exists) restored."""

  c: ml_collections.ConfigDict
  out: pathlib.Path  # where process 0 writes the run's files (output_dir unless remote)
  remote: str | None  # output_dir when it is an object store (gs://...): files go there too
  model: build.Model  # config (compute dtype) + tokenizer; params None (they are in state)
  mesh: jax.sharding.Mesh
  rules: Any
  tx: Any
  state: step_lib.TrainState
  state_shardings: Any
  train_step: step_lib.TrainStep
  checkpointer: ckpt_lib.Checkpointer
  meta: dict  # the restored checkpoint's meta ({} on a fresh start)
  echo: Callable[[str], None]
  writer: logs.MetricsWriter | None  # process 0 only
  param_shardings: Any = None  # the model's parameters' shardings (the policy, not the adapters)
  initial_params: Any = None  # the starting trainable params (global arrays), kept on request
  last_record: dict = dataclasses.field(default_factory=dict)
  _uploaded: dict = dataclasses.field(default_factory=dict)
  _merge: Any = None  # jitted LoRA merge (adapters, base) -> policy params

  @property
  def step(self) -> int:
    return int(self.state.step)

  def shard_batch(self, batch: dict) -> dict:
    """This process's rows (numpy) -> global arrays split over the mesh's batch axes."""
    return sharding.shard_batch(batch, self.mesh, self.rules)

  def policy_params(self, trainable: Any = None) -> Any:
    """The policy's parameters for `trainable` (default: the current state's): the state's
    params themselves, or under LoRA the frozen base merged with those adapters."""
    trainable = self.state.params if trainable is None else trainable
    if self.train_step.lora is None:
      return trainable
    if self._merge is None:
      self._merge = jax.jit(self.train_step.policy_params, out_shardings=self.policy_shardings)
    return self._merge(trainable, self.train_step.frozen)

  @property
  def policy_shardings(self) -> Any:
    """The shardings of `policy_params()`, in its pytree structure (jit in/out_shardings of
    functions of the policy, e.g. GRPO's log-prob pass)."""
    if self.train_step.lora is None:
      return self.state_shardings.params
    merged = jax.eval_shape(self.train_step.policy_params, self.state.params,
                            self.train_step.frozen)
    return sharding.like(merged, self.param_shardings)

  def local_params(self, params: Any) -> Any:
    """`params` (global) copied onto this process's devices alone, for work each process
    does on its own (rollouts, teacher episodes); `params` itself on one process."""
    return distributed.local_replica(
        params, lambda mesh: sharding.param_shardings(self.model.config, mesh, self.rules))

  def log(self, record: dict) -> None:
    """One metrics record (every process computes it; process 0 writes it)."""
    self.last_record = dict(record)
    if self.writer is not None:
      self.writer.write(record)

  def save(self, meta: dict, force: bool = False) -> bool:
    """A checkpoint (every process must call it); then process 0 uploads changed files."""
    saved = self.checkpointer.save(self.step, self.state, meta, force=force)
    if saved:
      self.sync_files()
    return saved

  def sync_files(self) -> None:
    """Uploads process 0's new or changed files to a remote output_dir (no-op otherwise)."""
    if self.remote is not None and self.writer is not None:
      self.writer.tb.flush()
      upload(self.out, self.remote, self._uploaded)


def _quiet(_: str) -> None:
  """The echo of processes other than 0 (process 0 reports for the run)."""


def is_remote(path: str) -> bool:
  return "://" in str(path)


def local_dir(remote: str) -> pathlib.Path:
  """Where process 0 keeps a remote run's files (stable, so a restart on the same host
  finds them; a new host downloads metrics.jsonl)."""
  return pathlib.Path(tempfile.gettempdir()) / "atommem_jax_runs" / re.sub(
      r"[^A-Za-z0-9._-]+", "_", remote)


def upload(local: pathlib.Path, remote: str, done: dict) -> int:
  """Copies the files under `local` that are new or changed since `done` (path -> (size,
  mtime), updated) to the same paths under `remote` (any etils.epath path: gs:// needs
  gcsfs without TensorFlow); returns how many were copied."""
  from etils import epath

  copied = 0
  for f in sorted(local.rglob("*")):
    if not f.is_file():
      continue
    st = f.stat()
    rel = f.relative_to(local).as_posix()
    if done.get(rel) == (st.st_size, st.st_mtime_ns):
      continue
    dst = epath.Path(remote) / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(f.read_bytes())
    done[rel] = (st.st_size, st.st_mtime_ns)
    copied += 1
  return copied


def _download_metrics(remote: str, out: pathlib.Path) -> None:
  """A remote run resumed on a host without its local files continues its metrics.jsonl."""
  from etils import epath

  src, dst = epath.Path(remote) / "metrics.jsonl", out / "metrics.jsonl"
  if not dst.exists() and src.exists():
    dst.write_bytes(src.read_bytes())


def join(base: str, name: str) -> str:
  """`base/name` for local paths and URLs alike (pathlib would turn gs:// into gs:/)."""
  return f"{str(base).rstrip('/')}/{name}"


def setup(c: ml_collections.ConfigDict, echo: Callable[[str], None] = print,
          init_from: str | None = None, keep_initial: bool = False) -> Run:
  """Mesh, model, sharded train state and checkpoints; restores the latest checkpoint.

  init_from: another run's output_dir whose latest checkpoint's params start this run (GRPO
  after its SFT, or an SFT stage after an earlier one; fresh optimizer state). keep_initial:
  keep a copy of the starting params as `initial_params` (GRPO's frozen reference policy)."""
  cfg_lib.validate(c)
  distributed.initialize(distributed.from_config(c))  # before anything touches a device
  main = distributed.is_main()
  echo = echo if main else _quiet
  remote = str(c.output_dir) if is_remote(c.output_dir) else None
  out = local_dir(remote) if remote else pathlib.Path(c.output_dir)
  shape = cfg_lib.mesh_shape(c, jax.device_count())
  ways = shape[0] * shape[1]
  if c.batch.rows % (ways * c.batch.micro_batches):
    raise cfg_lib.ConfigError(
        f"batch.rows={c.batch.rows} must be divisible by mesh data*fsdp ({ways}) times "
        f"batch.micro_batches ({c.batch.micro_batches})")
  if c.batch.rows % jax.process_count():
    raise cfg_lib.ConfigError(f"batch.rows={c.batch.rows} must be divisible by the "
                              f"{jax.process_count()} processes (each loads its rows)")
  if main:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(c.to_json_best_effort(indent=2))
    if remote:
      _download_metrics(remote, out)
  t0 = time.perf_counter()
  # Every process loads the model (the same host values); only process 0 keeps files.
  work = out if main else pathlib.Path(tempfile.mkdtemp(
      prefix=f"atommem_process{jax.process_index()}_"))
  model = build.load_model(c, work, dtype="float32")
  # Master weights in float32, compute in model.dtype (bfloat16 by config).
  mc = model.config.replace(param_dtype="float32", dtype=c.model.dtype,
                            attention=c.model.get("attention", "xla"))
  params = jax.tree.map(lambda p: p.astype(jnp.float32), model.params)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  if main:
    _write_model_dir(out / "model", mc, model.tokenizer)
  mesh = sharding.make_mesh(*shape)
  rules = sharding.get_rules(c.sharding_rules)
  tx = step_lib.make_optimizer(cfg_lib.optim_config(c))
  p_sh = sharding.param_shardings(mc, mesh, rules)
  lora_cfg = cfg_lib.lora_config(c)
  frozen = None
  if lora_cfg is None:
    trainable, t_sh = params, p_sh
  else:
    # The base stays frozen in the compute dtype; the (small) adapters are the trainable
    # params, replicated on every device.
    frozen = distributed.put_global(
        jax.tree.map(lambda p: p.astype(jnp.dtype(c.model.dtype)), params), p_sh)
    trainable = lora_lib.init(lora_cfg, params, seed=c.seed)
    t_sh = jax.tree.map(lambda _: sharding.replicated(mesh), trainable)
  state_sh = step_lib.TrainState(step=sharding.replicated(mesh), params=t_sh,
                                 opt_state=sharding.opt_state_shardings(tx, trainable, t_sh))
  make_state = jax.jit(lambda p: step_lib.init_state(p, tx), out_shardings=state_sh)
  initial = distributed.put_global(trainable, t_sh)
  del params, trainable  # the host copies: the state holds the params from here on
  model.params = None
  state = make_state(initial)
  if init_from is not None:
    initial = _restore_params(init_from, ckpt_lib.abstract_state(state, state_sh))
    state = make_state(initial)
    echo(f"[init] params from {join(init_from, 'checkpoints')}")
  # A copy: the state may share the initial buffers, which the train step donates.
  initial_params = jax.tree.map(lambda x: x.copy(), initial) if keep_initial else None
  del initial
  checkpointer = ckpt_lib.Checkpointer(ckpt_lib.CheckpointConfig(
      directory=join(c.output_dir, "checkpoints"), every=c.checkpoint_every,
      keep=c.keep_checkpoints))
  meta: dict = {}
  restored = checkpointer.restore(ckpt_lib.abstract_state(state, state_sh))
  if restored is not None:
    state, meta = restored.state, dict(restored.meta)
    echo(f"[resume] {join(c.output_dir, 'checkpoints')}: step {restored.step}")
  train_step = step_lib.TrainStep(
      mc, cfg_lib.loss_config(c), tx, micro_batches=c.batch.micro_batches,
      state_shardings=state_sh, batch_sharding=sharding.batch_sharding(mesh, rules), mesh=mesh,
      rules=rules, lr_schedule=step_lib.schedule(cfg_lib.optim_config(c)), lora=lora_cfg,
      frozen=frozen, frozen_shardings=p_sh if lora_cfg else None)
  writer = logs.MetricsWriter(out, int(state.step)) if main else None
  trained = ("all of them" if lora_cfg is None else f"LoRA rank {lora_cfg.rank} on "
             f"{','.join(lora_cfg.targets)}: {lora_lib.num_params(state.params) / 1e6:.3f}M trained")
  echo(f"[setup] {c.algorithm} {c.method}: model={c.model.source} ({mc.family}, "
       f"{n_params / 1e6:.2f}M params, {trained}, compute {c.model.dtype}"
       f"{_attention_note(mc)}), mesh data/fsdp/tensor={shape} "
       f"on {jax.device_count()} {jax.devices()[0].platform} devices in "
       f"{jax.process_count()} process(es){f', files in {out}' if remote else ''} "
       f"({time.perf_counter() - t0:.1f}s)")
  return Run(c=c, out=out, remote=remote, model=build.Model(mc, None, model.tokenizer),
             mesh=mesh, rules=rules, tx=tx, state=state, state_shardings=state_sh,
             train_step=train_step, checkpointer=checkpointer, meta=meta, echo=echo,
             writer=writer, param_shardings=p_sh, initial_params=initial_params)


def _restore_params(run_dir: str, target: step_lib.TrainState) -> Any:
  """The params of `run_dir`'s latest checkpoint, restored onto `target`'s shardings."""
  with ckpt_lib.Checkpointer(ckpt_lib.CheckpointConfig(
      directory=join(run_dir, "checkpoints"))) as ckpt:
    restored = ckpt.restore(target)
  if restored is None:
    raise FileNotFoundError(f"{join(run_dir, 'checkpoints')} holds no usable checkpoint to "
                            "start from")
  return restored.state.params


def _write_model_dir(path: pathlib.Path, mc, tokenizer) -> None:
  """config.json + tokenizer: a checkpoint directory plus this is a loadable policy."""
  from atommem_jax.models import hf_io

  path.mkdir(parents=True, exist_ok=True)
  (path / "config.json").write_text(json.dumps(hf_io.config_to_hf(mc), indent=2))
  tokenizer.save_pretrained(path)


def lora_base(c: ml_collections.ConfigDict) -> dict:
  """How to load the base model a LoRA run adapts (stored with its adapters)."""
  base = {"source": str(c.model.source), "seed": int(c.seed)}
  if c.model.source == "tiny":
    base["tiny"] = dict(c.model.get("tiny", {}) or {})
  return base


def _attention_note(mc: Any) -> str:
  """What runs the attention, when it is not XLA's: the splash kernel, or on a CPU the Pallas
  interpreter running it (exact, and orders of magnitude slower: for tests)."""
  if mc.attention != "splash":
    return ""
  return (", attention: splash kernel" if jax.default_backend() == "tpu" else
          ", attention: splash kernel in the Pallas interpreter (not a TPU: slow, for tests)")


def finish(run: Run, meta: dict, stopped: bool) -> dict:
  """Final checkpoint, HF export, plots; returns a summary of the run (every process must
  call it: the save and the export's gathers are collective)."""
  run.save(meta, force=True)
  run.checkpointer.wait()
  records, plots = [], []
  if run.writer is not None:
    run.writer.close()
    records = logs.read_metrics(run.writer.path)
    plots = logs.plot_training(records, run.out)
  exported = None
  if run.train_step.lora is not None:
    adapters = distributed.fetch_global(run.state.params)  # every process takes part
    if distributed.is_main():
      lora_lib.save(adapters, run.train_step.lora, run.out / "lora.safetensors",
                    base=lora_base(run.c))
  if run.c.export_hf and not stopped:
    from atommem_jax.models import hf_io

    params = distributed.fetch_global(run.policy_params())  # every process takes part
    if distributed.is_main():
      exported = run.out / "hf"
      hf_io.save_pretrained(run.model.config.replace(param_dtype="float32"), params, exported)
      run.model.tokenizer.save_pretrained(exported)
  run.sync_files()
  run.checkpointer.close()
  last = records[-1] if records else run.last_record
  where = run.remote or run.out
  run.echo(f"[done] step {run.step}{' (stopped by signal; rerun to resume)' if stopped else ''}: "
           f"{join(where, 'metrics.jsonl')} {' '.join(join(where, p.name) for p in plots)}"
           f"{' ' + join(where, 'hf') if exported else ''}; train step compiled "
           f"{run.train_step.compiles}x")
  return {"step": run.step, "stopped": stopped, "last": last, "compiles": run.train_step.compiles}
