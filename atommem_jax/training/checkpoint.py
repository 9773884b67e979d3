"""Train-state checkpoints: orbax `CheckpointManager` with fallback past corrupt steps.

A checkpoint is one step directory `<directory>/<step>/` with two orbax items:
`state` (the train-state pytree: step, params, optimizer state, RNG key data, saved
with `StandardSave`, sharded arrays written by every host) and `meta` (JSON: data
position, config, last metrics). Saves are asynchronous by default: `save` returns once
the arrays are copied off the device (so the caller may donate them to the next step)
and the files are written in a background thread; `wait()` blocks until they are
durable.

Resuming must survive a kill at any moment. An interrupted save leaves either a
`<step>.orbax-checkpoint-tmp-*` directory (orbax never lists it, and deletes it on the
next start) or, on object stores, a step directory without its `commit_success.txt`;
a disk problem can truncate or remove files of a finished one. `restore` tries the
newest step first; a step that is uncommitted or fails to read is reported (a warning
naming its directory and the error) and *quarantined*: renamed to
`<step>.corrupt-<ns>` (never deleted, so it can be inspected), which also lets the
resumed run save that step number again. Then the previous step is tried, down to none
(`None`: a fresh start). A target that does not match a readable checkpoint (another
model config) is a `CheckpointMismatchError`, not corruption: nothing is quarantined.

Pre-emption: `install_signal_handlers()` makes SIGTERM / SIGINT set `stop_requested`
instead of killing the process; the training loop polls `should_stop(step)`, then
saves synchronously and exits:

  with Checkpointer(CheckpointConfig(directory=out / "checkpoints", every=100)) as ckpt:
    ckpt.install_signal_handlers()
    restored = ckpt.restore(abstract_state(init_state, shardings))
    ...
    for step in range(start, steps):
      state, metrics = train_step(state, batch)
      ckpt.save(step + 1, state, meta)               # only every `every` steps
      if ckpt.should_stop(step + 1):
        ckpt.save(step + 1, state, meta, force=True)
        ckpt.wait()
        break

`should_stop` also asks orbax's `reached_preemption(step)`: on multi-host TPU pods
(after `jax.distributed.initialize`) JAX's preemption sync manager makes every host
agree on the step at which to stop, which a per-process signal flag cannot do (hosts
that save at different steps would deadlock in the save's barriers).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import signal
import threading
import time
import types
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

log = logging.getLogger(__name__)

STATE_ITEM = "state"
META_ITEM = "meta"
METRICS_ITEM = ocp.checkpoint_manager.METRIC_ITEM_NAME  # orbax's per-step metrics JSON
_STEP_NAME = re.compile(r"0|[1-9][0-9]*")  # orbax's default step directory names
_COMMIT_MARKER = "commit_success.txt"  # written by orbax into every finalised step dir
_TMP_MARKER = ".orbax-checkpoint-tmp"  # suffix of a save orbax has not finalised
_MAX_ERROR_CHARS = 400  # tensorstore errors embed whole specs; the head names the cause


class CheckpointMismatchError(ValueError):
  """A readable checkpoint does not fit the restore target (tree, shapes or dtypes)."""


class CorruptCheckpointError(RuntimeError):
  """A step directory is partial or unreadable."""


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """Where and how often to checkpoint, and which checkpoints to keep.

  `keep` latest checkpoints are always kept. With `best_metric`, the `keep_best` best
  checkpoints by that metric (`best_mode` "max" or "min") are kept as well, so the best
  model survives however long training runs.
  """
  directory: str
  every: int = 1  # save when step % every == 0 (force=True saves at any step)
  keep: int = 3
  async_save: bool = True
  best_metric: str | None = None
  best_mode: Literal["max", "min"] = "max"
  keep_best: int = 1

  def __post_init__(self):
    directory = str(self.directory)  # accept pathlib paths, store a string
    if not directory.strip():
      raise ValueError(f"CheckpointConfig.directory must be a path, got {self.directory!r}")
    object.__setattr__(self, "directory", directory)
    for name in ("every", "keep", "keep_best"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"CheckpointConfig.{name} must be an int >= 1, got {value!r}")
    if self.best_mode not in ("max", "min"):
      raise ValueError(f"CheckpointConfig.best_mode must be 'max' or 'min', got {self.best_mode!r}")
    if self.best_metric is not None and (not isinstance(self.best_metric, str)
                                         or not self.best_metric):
      raise ValueError(
          f"CheckpointConfig.best_metric must be a metric name or None, got {self.best_metric!r}")


class Restored(NamedTuple):
  """What `Checkpointer.restore` returns (unpacks as `step, state, meta`)."""
  step: int
  state: Any
  meta: dict


def _path_str(path: tuple) -> str:
  return jax.tree_util.keystr(path) or "<root>"


def abstract_state(tree: Any, shardings: Any = None) -> Any:
  """A restore target: every leaf as `jax.ShapeDtypeStruct(shape, dtype, sharding)`.

  `tree` holds arrays or ShapeDtypeStructs (e.g. from `jax.eval_shape`). `shardings` is
  one `Sharding` for every leaf or a tree of them matching `tree`; by default each leaf's
  own sharding is used, and a leaf without one is an error naming it (orbax would
  otherwise restore it with the sharding it was saved with, i.e. on the saving run's
  devices). Each sharding is checked against its leaf's shape here, before any read.
  """
  def one(path: tuple, leaf: Any, sharding: Any = shardings) -> jax.ShapeDtypeStruct:
    if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
      raise TypeError(f"state leaf {_path_str(path)} is {type(leaf).__name__}, not an array "
                      "or jax.ShapeDtypeStruct")
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      raise TypeError(f"state leaf {_path_str(path)} is a typed PRNG key; store "
                      "jax.random.key_data(key) and rebuild it with jax.random.wrap_key_data")
    sharding = sharding if sharding is not None else getattr(leaf, "sharding", None)
    if sharding is None:
      raise ValueError(f"state leaf {_path_str(path)} {tuple(leaf.shape)} has no sharding: "
                       "pass shardings= (e.g. a NamedSharding on the current mesh)")
    try:
      sharding.shard_shape(tuple(leaf.shape))
    except ValueError as e:
      raise ValueError(f"sharding {sharding} does not fit state leaf {_path_str(path)} "
                       f"{tuple(leaf.shape)}: {e}") from e
    return jax.ShapeDtypeStruct(tuple(leaf.shape), leaf.dtype, sharding=sharding)

  if shardings is None or isinstance(shardings, jax.sharding.Sharding):
    return jax.tree.map_with_path(one, tree)
  return jax.tree.map_with_path(one, tree, shardings)


def _check_saveable(state: Any) -> None:
  """Leaves orbax would reject or store lossily, named before any write starts."""
  def one(path: tuple, leaf: Any) -> None:
    dtype = getattr(leaf, "dtype", None)
    if dtype is None:
      raise TypeError(f"state leaf {_path_str(path)} is {type(leaf).__name__}, not an array "
                      "(wrap scalars, e.g. jnp.int32(step))")
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
      raise TypeError(f"state leaf {_path_str(path)} is a typed PRNG key; store "
                      "jax.random.key_data(key) instead")
  jax.tree.map_with_path(one, state)
  if not jax.tree.leaves(state):
    raise ValueError("state has no array leaves: nothing to checkpoint")


def _check_json(meta: Any) -> dict:
  if not isinstance(meta, Mapping):
    raise TypeError(f"meta must be a JSON object (dict), got {type(meta).__name__}")
  try:
    json.dumps(meta, allow_nan=False)
  except (TypeError, ValueError) as e:
    raise ValueError(f"meta is not JSON-serialisable ({e}); convert arrays with float()/"
                     ".tolist() first") from e
  return dict(meta)


def _scalar_metrics(metrics: Mapping[str, Any], best_metric: str) -> dict[str, float]:
  """Metrics as plain floats (they may be 0-d device arrays straight from a train step)."""
  out: dict[str, float] = {}
  for key, value in metrics.items():
    try:
      out[str(key)] = float(value)
    except (TypeError, ValueError) as e:
      raise ValueError(f"metric {key!r} must be a scalar number, got {value!r}") from e
  if best_metric not in out:
    raise ValueError(f"metrics lack the best metric {best_metric!r}: got {sorted(out)}")
  if not math.isfinite(out[best_metric]):
    raise ValueError(f"best metric {best_metric!r} is {out[best_metric]}: it cannot rank "
                     "checkpoints")
  return out


def _check_compatible(step_dir: epath.Path, stored: Any, target: Any) -> None:
  """The checkpoint's tree, shapes and dtypes equal the target's, or an error lists the
  first differences (orbax's own errors on a mismatch are hard to tell from corruption)."""
  saved = ocp.tree.to_flat_dict(stored, sep="/")
  want = ocp.tree.to_flat_dict(target, sep="/")
  problems = [f"missing in checkpoint: {k}" for k in sorted(set(want) - set(saved))]
  problems += [f"not in target: {k}" for k in sorted(set(saved) - set(want))]
  for k in sorted(set(saved) & set(want)):
    s, w = saved[k], want[k]
    if tuple(s.shape) != tuple(w.shape) or np.dtype(s.dtype) != np.dtype(w.dtype):
      problems.append(f"{k}: checkpoint {s.dtype}{list(s.shape)} vs target "
                      f"{w.dtype}{list(w.shape)}")
  if problems:
    shown = "; ".join(problems[:6]) + ("; ..." if len(problems) > 6 else "")
    raise CheckpointMismatchError(
        f"checkpoint {step_dir} does not match the restore target ({len(problems)} "
        f"differences: {shown}); restore into a target of the config it was saved with")


def _short(e: BaseException) -> str:
  text = f"{type(e).__name__}: {e}"
  return text if len(text) <= _MAX_ERROR_CHARS else text[:_MAX_ERROR_CHARS] + " ..."


class Checkpointer:
  """Saves and restores the train state in `config.directory` (one job: checkpoints).

  Also a context manager: `close()` on exit waits for pending saves and restores the
  signal handlers it replaced.
  """

  def __init__(self, config: CheckpointConfig):
    self.config = config
    self.directory = epath.Path(config.directory)
    if "://" not in config.directory:
      self.directory = epath.Path(self.directory.expanduser().resolve())
    if self.directory.exists() and not self.directory.is_dir():
      raise NotADirectoryError(f"checkpoint directory {self.directory} is a file")
    self.stop_requested = False
    self.stop_signal: int | None = None
    self._previous_handlers: dict[int, Any] = {}
    self._closed = False
    self._barriers = 0
    self._report_unfinished_saves()
    self._quarantine_unreadable_metrics()
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=self._manager_options(config),
        item_names=(STATE_ITEM, META_ITEM),
        item_handlers={STATE_ITEM: ocp.StandardCheckpointHandler(),
                       META_ITEM: ocp.JsonCheckpointHandler()})

  @staticmethod
  def _manager_options(c: CheckpointConfig) -> ocp.CheckpointManagerOptions:
    policies = ocp.checkpoint_managers
    keep: list[Any] = [policies.LatestN(n=c.keep)]
    best_fn = None
    if c.best_metric is not None:
      name = c.best_metric
      best_fn = lambda metrics: float(metrics[name])  # noqa: E731
      # BestN keeps the last n after an ascending sort: reverse for "min".
      keep.append(policies.BestN(get_metric_fn=best_fn, reverse=(c.best_mode == "min"),
                                 n=c.keep_best, keep_checkpoints_without_metrics=False))
    return ocp.CheckpointManagerOptions(
        # Exactly every `c.every` steps (orbax's default also saves the first step of a
        # fresh run), plus the pod-wide preemption point.
        save_decision_policy=policies.AnySavePolicy([
            policies.FixedIntervalPolicy(c.every),
            policies.PreemptionCheckpointingPolicy()]),
        preservation_policy=policies.AnyPreservationPolicy(keep),
        best_fn=best_fn,  # also what makes orbax write the metrics next to each step
        best_mode=c.best_mode,
        enable_async_checkpointing=c.async_save,
        cleanup_tmp_directories=True,
        create=True)

  def _report_unfinished_saves(self) -> None:
    if not self.directory.exists():
      return
    for path in sorted(self.directory.glob(f"*{_TMP_MARKER}*")):
      log.warning("ignoring unfinished checkpoint save %s (the process stopped before it "
                  "was committed); orbax removes it", path)

  # ------------------------------------------------------------------------- queries

  def latest_step(self) -> int | None:
    """The newest step on disk (`restore` may still find it corrupt and fall back)."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def best_step(self) -> int | None:
    """The best step by `best_metric` (the latest one without a best_metric)."""
    return self._manager.best_step()

  def step_dir(self, step: int) -> epath.Path:
    return self.directory / str(step)

  # ------------------------------------------------------------------------- save

  def save(self, step: int, state: Any, meta: Mapping[str, Any],
           metrics: Mapping[str, Any] | None = None, force: bool = False) -> bool:
    """Checkpoints `state` and `meta` as `step` when `step % every == 0` (or `force`).

    Returns whether a save started. A save of an existing step (e.g. a pre-emption save
    right after a periodic one) returns False. `metrics` rank checkpoints for
    `best_metric` and require it: without one they would be dropped, so that is an
    error (keep other numbers in `meta`). Asynchronous unless `async_save=False`.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
      raise ValueError(f"step must be an int >= 0, got {step!r}")
    if self._closed:
      raise RuntimeError(f"Checkpointer for {self.directory} is closed")
    _check_saveable(state)
    meta = _check_json(meta)
    if metrics is not None:
      if self.config.best_metric is None:
        raise ValueError("metrics are only used to rank checkpoints and best_metric is not "
                         "set; pass metrics=None and keep them in meta")
      metrics = _scalar_metrics(metrics, self.config.best_metric)
    latest = self._manager.latest_step()
    if force and latest is not None:
      if step == latest:
        log.info("checkpoint of step %d already exists in %s; not saving it again", step,
                 self.directory)
        return False
      if step < latest:
        raise ValueError(f"cannot save step {step}: {self.step_dir(latest)} is newer, and "
                         "restore would pick it instead")
    args = ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardSave(state),
                                 META_ITEM: ocp.args.JsonSave(meta)})
    return bool(self._manager.save(step, args=args, metrics=metrics, force=force))

  def wait(self) -> None:
    """Blocks until every started save is committed (and old steps are pruned)."""
    self._manager.wait_until_finished()

  # ------------------------------------------------------------------------- restore

  def restore(self, target: Any) -> Restored | None:
    """The newest usable checkpoint, restored onto `target`, or None (fresh start).

    `target` is the state's tree of arrays or ShapeDtypeStructs; leaves land with their
    shardings (see `abstract_state`), whatever mesh the checkpoint was saved from.
    Corrupt or partial steps are reported, quarantined and skipped (module docstring).
    """
    abstract = abstract_state(target)
    self.wait()  # a save of this process still in flight is not on disk yet
    self._manager.reload()
    for step in sorted(self._manager.all_steps(), reverse=True):
      step_dir = self.step_dir(step)
      try:
        stored = self._stored_state_metadata(step)
      except Exception as e:  # noqa: BLE001 - any read failure means "not usable"
        self._quarantine(step, e)
        continue
      _check_compatible(step_dir, stored, abstract)
      try:
        out = self._manager.restore(step, args=ocp.args.Composite(**{
            STATE_ITEM: ocp.args.StandardRestore(abstract),
            META_ITEM: ocp.args.JsonRestore()}))
        meta = out[META_ITEM]
        if not isinstance(meta, dict):
          raise CorruptCheckpointError(f"meta is {type(meta).__name__}, not a JSON object")
      except Exception as e:  # noqa: BLE001
        self._quarantine(step, e)
        continue
      log.info("restored checkpoint %s", step_dir)
      return Restored(step=step, state=out[STATE_ITEM], meta=meta)
    return None

  def _stored_state_metadata(self, step: int) -> Any:
    step_dir = self.step_dir(step)
    if not (step_dir / _COMMIT_MARKER).exists():
      raise CorruptCheckpointError(f"no {_COMMIT_MARKER}: the save was not committed")
    stored = self._manager.item_metadata(step)[STATE_ITEM]
    if stored is None:
      raise CorruptCheckpointError(f"the {STATE_ITEM!r} item has no readable metadata")
    return stored

  def _quarantine(self, step: int, error: BaseException, reload: bool = True) -> None:
    """Moves an unusable step aside (renamed, not deleted) and says so; `reload` tells
    the manager (False before it exists)."""
    step_dir = self.step_dir(step)
    where = "process 0 moves it aside"
    if jax.process_index() == 0:
      moved = self.directory / f"{step}.corrupt-{time.time_ns()}"
      step_dir.rename(moved)
      where = f"moved it to {moved}"
    if jax.process_count() > 1:
      self._barriers += 1
      ocp.multihost.sync_global_processes(f"atommem_quarantine_{step}_{self._barriers}")
    if reload:
      self._manager.reload()
    log.warning("checkpoint %s is corrupt or partial (%s); %s and trying the previous "
                "checkpoint", step_dir, _short(error), where)

  def _quarantine_unreadable_metrics(self) -> None:
    """orbax reads every step's metrics file when it starts and fails on a broken one, so
    such steps are moved aside first. A step ranked by another metric is an error: a new
    `best_metric` cannot rank old checkpoints."""
    if not self.directory.exists():
      return
    for step_dir in sorted(self.directory.iterdir()):
      if not _STEP_NAME.fullmatch(step_dir.name):
        continue
      path = step_dir / METRICS_ITEM / METRICS_ITEM
      if not path.exists():
        continue
      try:
        metrics = json.loads(path.read_text())
        if not isinstance(metrics, dict):
          raise CorruptCheckpointError(f"{path} holds {type(metrics).__name__}, not an object")
      except (OSError, ValueError, CorruptCheckpointError) as e:
        self._quarantine(int(step_dir.name), e, reload=False)
        continue
      best = self.config.best_metric
      if best is not None and best not in metrics:
        raise ValueError(f"checkpoint {step_dir} has metrics {sorted(metrics)} without "
                         f"best_metric {best!r}: use the metric it was saved with or "
                         "another directory")

  # ------------------------------------------------------------------------- pre-emption

  def install_signal_handlers(self) -> None:
    """SIGTERM and SIGINT set `stop_requested` (the loop saves and exits); a second
    SIGINT raises KeyboardInterrupt at once, so Ctrl-C twice still force-quits. Call
    from the main thread; `close()` puts the previous handlers back."""
    if threading.current_thread() is not threading.main_thread():
      raise RuntimeError("install_signal_handlers must run in the main thread "
                         f"(called from {threading.current_thread().name})")
    for sig in (signal.SIGTERM, signal.SIGINT):
      if sig not in self._previous_handlers:
        self._previous_handlers[sig] = signal.getsignal(sig)
      signal.signal(sig, self._on_signal)

  def _on_signal(self, signum: int, frame: types.FrameType | None) -> None:
    if signum == signal.SIGINT and self.stop_signal == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.default_int_handler)
      raise KeyboardInterrupt
    self.stop_requested = True
    if self.stop_signal is None:
      self.stop_signal = signum
    log.warning("received %s: stopping after this step with a checkpoint%s",
                signal.Signals(signum).name,
                " (Ctrl-C again to quit now)" if signum == signal.SIGINT else "")

  def should_stop(self, step: int) -> bool:
    """True once a stop signal arrived or the pod reached a preemption sync point."""
    return self.stop_requested or bool(self._manager.reached_preemption(step))

  def restore_signal_handlers(self) -> None:
    for sig, handler in self._previous_handlers.items():
      signal.signal(sig, handler)
    self._previous_handlers.clear()

  # ------------------------------------------------------------------------- lifecycle

  def close(self) -> None:
    """Waits for pending saves, releases orbax's threads, restores signal handlers."""
    if self._closed:
      return
    self._closed = True
    try:
      self._manager.wait_until_finished()
      self._manager.close()
    finally:
      if self._previous_handlers and threading.current_thread() is threading.main_thread():
        self.restore_signal_handlers()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.close()
