"""Checkpoints: exact resume, retention, corrupt/partial fallback, sharded restore, signals."""
from __future__ import annotations

import functools
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from atommem_jax.models import config as model_config
from atommem_jax.models import transformer
from atommem_jax.training.checkpoint import (
    CheckpointConfig,
    Checkpointer,
    CheckpointMismatchError,
    abstract_state,
)

LOGGER = "atommem_jax.training.checkpoint"
# A read that fails on deleted array files can leave a tensorstore callback aimed at
# orbax's closed event loop; Python reports it as "unraisable" during whichever test is
# running when it fires (harmless and orbax-internal: this module has no callbacks).
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in:pytest.PytestUnraisableExceptionWarning")
TINY = model_config.tiny(num_layers=1, vocab_size=64, hidden_size=16, intermediate_size=32,
                         num_heads=2, num_kv_heads=1, head_dim=8)


def _optimizer() -> optax.GradientTransformation:
  return optax.MultiSteps(optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2)),
                          every_k_schedule=2)


@functools.lru_cache(maxsize=None)
def _abstract_train_state(config: model_config.ModelConfig, dtype) -> dict:
  """The train state's tree (real nnx params, the AdamW + MultiSteps state), unallocated."""
  params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, dtype),
                        transformer.abstract_params(config))
  return {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": params,
          "opt_state": jax.eval_shape(_optimizer().init, params),
          "rng": jax.ShapeDtypeStruct((2,), jnp.uint32)}


def _train_state(step: int, dtype=jnp.float32, config=TINY) -> dict:
  """A train state whose every leaf (moments and counters too) holds distinct values, so a
  restore that mixed up, zeroed or rounded any leaf is caught. Filled from numpy: no XLA
  compile, which keeps the file fast on a loaded CPU."""
  rng = np.random.default_rng(step)

  def fill(s: jax.ShapeDtypeStruct) -> jax.Array:
    if jnp.issubdtype(s.dtype, jnp.integer):
      return jnp.asarray(rng.integers(0, 2**31 - 1, s.shape), s.dtype)
    return jnp.asarray(rng.standard_normal(s.shape), s.dtype)

  state = jax.tree.map(fill, _abstract_train_state(config, dtype))
  state["step"] = jnp.int32(step)
  return state


def _assert_bit_identical(got, want) -> None:
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for (path, a), b in zip(jax.tree.leaves_with_path(got), jax.tree.leaves(want)):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, jax.tree_util.keystr(path)
    assert a.tobytes() == b.tobytes(), f"{jax.tree_util.keystr(path)} differs"


def _ckpt(tmp_path: pathlib.Path, **kw) -> Checkpointer:
  kw.setdefault("async_save", False)
  return Checkpointer(CheckpointConfig(directory=str(tmp_path / "ckpt"), **kw))


def test_config_validates_itself(tmp_path):
  for bad, needle in [(dict(every=0), "every"), (dict(keep=0), "keep"),
                      (dict(keep_best=-1), "keep_best"), (dict(best_mode="best"), "best_mode"),
                      (dict(best_metric=""), "best_metric"), (dict(every=True), "every")]:
    with pytest.raises(ValueError, match=needle):
      CheckpointConfig(directory=str(tmp_path), **bad)
  with pytest.raises(ValueError, match="directory"):
    CheckpointConfig(directory=" ")
  assert CheckpointConfig(directory=tmp_path).directory == str(tmp_path)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_roundtrip_is_bit_identical(tmp_path, dtype):
  state = _train_state(3, dtype)
  meta = {"epoch": 1, "index": 17, "rollout_batches": 4, "config": {"lr": 1e-3, "mesh": [1, 1]},
          "metrics": {"loss": 2.5}}
  with _ckpt(tmp_path, every=3) as ckpt:
    assert ckpt.save(3, state, meta)
  # A new Checkpointer on the same directory, as a resumed process would build it.
  with _ckpt(tmp_path, every=3) as ckpt:
    assert ckpt.latest_step() == 3
    step, restored, got_meta = ckpt.restore(abstract_state(state))
  assert step == 3 and got_meta == meta
  assert type(restored["params"]) is type(state["params"])
  _assert_bit_identical(restored, state)


def test_no_checkpoint_is_a_fresh_start(tmp_path):
  with _ckpt(tmp_path) as ckpt:
    assert ckpt.latest_step() is None
    assert ckpt.restore(_train_state(0)) is None


def test_every_force_and_duplicate_steps(tmp_path):
  state = _train_state(0)
  with _ckpt(tmp_path, every=2) as ckpt:
    assert [ckpt.save(s, state, {}) for s in (1, 2, 3)] == [False, True, False]
    assert ckpt.save(3, state, {}, force=True)  # e.g. a pre-emption between intervals
    assert not ckpt.save(3, state, {}, force=True)  # already on disk: nothing to do
    with pytest.raises(ValueError, match="is newer"):
      ckpt.save(2, state, {}, force=True)
    assert ckpt.all_steps() == [2, 3]
  with pytest.raises(RuntimeError, match="closed"):
    ckpt.save(4, state, {})


def test_keep_prunes_old_steps(tmp_path):
  state = _train_state(0)
  with _ckpt(tmp_path, keep=2, async_save=True) as ckpt:
    for s in range(1, 5):
      assert ckpt.save(s, state, {"s": s})
    ckpt.wait()
    assert ckpt.all_steps() == [3, 4]
  assert sorted(p.name for p in (tmp_path / "ckpt").iterdir() if p.name.isdigit()) == ["3", "4"]


@pytest.mark.parametrize("mode,values,kept", [
    ("max", [0.1, 0.9, 0.3, 0.2, 0.4], [2, 5]),
    ("min", [0.5, 0.4, 0.1, 0.3, 0.6], [3, 5]),
])
def test_best_metric_keeps_best_and_latest(tmp_path, mode, values, kept):
  state = _train_state(0)
  with _ckpt(tmp_path, keep=1, best_metric="reward", best_mode=mode) as ckpt:
    for s, v in enumerate(values, start=1):
      ckpt.save(s, state, {}, metrics={"reward": jnp.float32(v), "loss": 1.0})
    ckpt.wait()
    assert ckpt.all_steps() == kept
    assert ckpt.best_step() == kept[0]
    with pytest.raises(ValueError, match="reward"):
      ckpt.save(6, state, {}, metrics={"loss": 1.0})
  # After a restart the best step is still known (orbax re-reads the metrics files).
  worst = min(values) if mode == "max" else max(values)
  with _ckpt(tmp_path, keep=1, best_metric="reward", best_mode=mode) as ckpt:
    ckpt.save(6, state, {}, metrics={"reward": worst})
    assert ckpt.all_steps() == [kept[0], 6]
  with pytest.raises(ValueError, match="without best_metric 'accuracy'"):
    _ckpt(tmp_path, best_metric="accuracy")
  with _ckpt(tmp_path / "other") as ckpt, pytest.raises(ValueError, match="best_metric"):
    ckpt.save(1, state, {}, metrics={"loss": 1.0})


def _data_files(step_dir: pathlib.Path) -> list[pathlib.Path]:
  """The array data files of a step's state item (tensorstore OCDBT `d/` files)."""
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
  assert files, f"no array data files under {step_dir}"
  return sorted(files, key=lambda p: p.stat().st_size)


def _truncate_largest(step_dir):
  f = _data_files(step_dir)[-1]
  os.truncate(f, f.stat().st_size // 2)


def _delete_data(step_dir):
  for f in _data_files(step_dir):
    f.unlink()


CORRUPTIONS = {
    "truncated_array_file": _truncate_largest,
    "deleted_array_files": _delete_data,
    "no_commit_marker": lambda d: (d / "commit_success.txt").unlink(),
    "unreadable_meta": lambda d: (d / "meta" / "metadata").write_text("{not json"),
    "missing_tree_metadata": lambda d: (d / "state" / "_METADATA").unlink(),
}


@pytest.mark.parametrize("how", sorted(CORRUPTIONS))
def test_corrupt_latest_falls_back_to_previous(tmp_path, caplog, how):
  s1, s2 = _train_state(1), _train_state(2)
  with _ckpt(tmp_path) as ckpt:
    ckpt.save(1, s1, {"index": 1})
    ckpt.save(2, s2, {"index": 2})
    bad_dir = ckpt.step_dir(2)
  CORRUPTIONS[how](pathlib.Path(bad_dir))
  with _ckpt(tmp_path) as ckpt, caplog.at_level(logging.WARNING, logger=LOGGER):
    step, state, meta = ckpt.restore(abstract_state(s1))
    assert (step, meta) == (1, {"index": 1})
    _assert_bit_identical(state, s1)
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert any(str(bad_dir) in m and "corrupt" in m for m in messages), messages
    # Quarantined (kept for inspection), so the resumed run can save step 2 again.
    assert not pathlib.Path(bad_dir).exists()
    assert len(list((tmp_path / "ckpt").glob("2.corrupt-*"))) == 1
    assert ckpt.latest_step() == 1
    assert ckpt.save(2, s2, {"index": 2}, force=True)


def test_unreadable_metrics_file_falls_back(tmp_path, caplog):
  """orbax reads every metrics file when it starts: a broken one must not stop the run."""
  s1, s2 = _train_state(1), _train_state(2)
  with _ckpt(tmp_path, best_metric="reward") as ckpt:
    ckpt.save(1, s1, {"index": 1}, metrics={"reward": 1.0})
    ckpt.save(2, s2, {"index": 2}, metrics={"reward": 2.0})
  bad_dir = tmp_path / "ckpt" / "2"
  (bad_dir / "metrics" / "metrics").write_text('{"reward": ')
  with caplog.at_level(logging.WARNING, logger=LOGGER):
    with _ckpt(tmp_path, best_metric="reward") as ckpt:
      step, state, _ = ckpt.restore(s1)
  assert step == 1
  _assert_bit_identical(state, s1)
  assert any(str(bad_dir) in r.getMessage() for r in caplog.records if r.name == LOGGER)


def test_all_corrupt_is_a_fresh_start(tmp_path, caplog):
  state = _train_state(0)
  with _ckpt(tmp_path) as ckpt:
    ckpt.save(1, state, {})
    ckpt.save(2, state, {})
  for s in (1, 2):
    _delete_data(tmp_path / "ckpt" / str(s))
  with _ckpt(tmp_path) as ckpt, caplog.at_level(logging.WARNING, logger=LOGGER):
    assert ckpt.restore(state) is None
    assert ckpt.latest_step() is None
  named = " ".join(r.getMessage() for r in caplog.records if r.name == LOGGER)
  assert str(tmp_path / "ckpt" / "1") in named and str(tmp_path / "ckpt" / "2") in named


def test_unfinished_save_is_ignored_and_reported(tmp_path, caplog):
  state = _train_state(0)
  with _ckpt(tmp_path) as ckpt:
    ckpt.save(2, state, {"index": 2})
  tmp = tmp_path / "ckpt" / "3.orbax-checkpoint-tmp-1700000000"  # a save killed midway
  (tmp / "state").mkdir(parents=True)
  (tmp / "state" / "_METADATA").write_text("{trunc")
  with caplog.at_level(logging.WARNING, logger=LOGGER), _ckpt(tmp_path) as ckpt:
    assert ckpt.latest_step() == 2
    assert ckpt.restore(state).step == 2
  assert any(str(tmp) in r.getMessage() for r in caplog.records if r.name == LOGGER)


def test_mismatched_target_is_an_error_not_corruption(tmp_path):
  state = _train_state(0)
  with _ckpt(tmp_path) as ckpt:
    ckpt.save(1, state, {})
  bigger = model_config.tiny(num_layers=1, vocab_size=128, hidden_size=16, intermediate_size=32,
                             num_heads=2, num_kv_heads=1, head_dim=8)
  with _ckpt(tmp_path) as ckpt:
    with pytest.raises(CheckpointMismatchError, match="embed"):
      ckpt.restore(_train_state(0, config=bigger))
    assert ckpt.all_steps() == [1]  # nothing was quarantined


def test_async_save_survives_donated_buffers(tmp_path):
  state = _train_state(2)
  want = jax.tree.map(np.array, state)  # host copies
  target = abstract_state(state)
  with _ckpt(tmp_path, async_save=True) as ckpt:
    assert ckpt.save(2, state, {"index": 5})
    for leaf in jax.tree.leaves(state):  # what donating the state to the next step does
      leaf.delete()
    ckpt.wait()
    step, restored, meta = ckpt.restore(target)
  assert (step, meta) == (2, {"index": 5})
  _assert_bit_identical(restored, want)


def test_restore_lands_on_target_shardings(tmp_path):
  assert jax.device_count() >= 8, ("needs XLA_FLAGS=--xla_force_host_platform_device_count=8 "
                                   "(tests/conftest.py sets it)")
  save_mesh = jax.make_mesh((8, 1, 1), ("data", "fsdp", "tensor"))
  load_mesh = jax.make_mesh((2, 4, 1), ("data", "fsdp", "tensor"))

  def spec(mesh, axis, size):
    return lambda x: NamedSharding(mesh, P(axis) if x.ndim and x.shape[0] % size == 0 else P())

  state = _train_state(1)
  saved = jax.device_put(state, jax.tree.map(spec(save_mesh, "data", 8), state))
  target_shardings = jax.tree.map(spec(load_mesh, "fsdp", 4), state)
  with _ckpt(tmp_path) as ckpt:
    ckpt.save(1, saved, {})
    _, restored, _ = ckpt.restore(abstract_state(state, target_shardings))
  _assert_bit_identical(restored, state)
  got = jax.tree.leaves(jax.tree.map(lambda x: x.sharding, restored))
  want = jax.tree.leaves(target_shardings)
  assert got == want
  assert any(s.spec == P("fsdp") for s in got)  # the check is not vacuous


def test_abstract_state_and_save_name_bad_leaves(tmp_path):
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with pytest.raises(ValueError, match=r"\['w'\].*no sharding"):
    abstract_state({"w": jax.ShapeDtypeStruct((4,), jnp.float32)})
  assert abstract_state({"w": jax.ShapeDtypeStruct((4,), jnp.float32)}, one)["w"].sharding == one
  mesh = jax.make_mesh((8,), ("data",))
  with pytest.raises(ValueError, match=r"\['w'\]"):
    abstract_state({"w": jnp.zeros((6,))}, NamedSharding(mesh, P("data")))
  with pytest.raises(TypeError, match="key_data"):
    abstract_state({"rng": jax.random.key(0)})
  with _ckpt(tmp_path) as ckpt:
    with pytest.raises(TypeError, match=r"\['step'\]"):
      ckpt.save(1, {"step": 3, "w": jnp.zeros(2)}, {})
    with pytest.raises(TypeError, match="key_data"):
      ckpt.save(1, {"rng": jax.random.key(0)}, {})
    with pytest.raises(ValueError, match="JSON"):
      ckpt.save(1, {"w": jnp.zeros(2)}, {"loss": np.zeros(2)})
    assert ckpt.all_steps() == []


def _wait_for(predicate, timeout=5.0) -> bool:
  end = time.monotonic() + timeout
  while not predicate() and time.monotonic() < end:
    time.sleep(0.01)
  return predicate()


def test_signals_set_the_stop_flag_and_are_restored(tmp_path):
  before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
  with _ckpt(tmp_path) as ckpt:
    ckpt.install_signal_handlers()
    assert not ckpt.should_stop(0)
    os.kill(os.getpid(), signal.SIGTERM)
    assert _wait_for(lambda: ckpt.stop_requested)
    assert ckpt.stop_signal == signal.SIGTERM and ckpt.should_stop(0)
  assert {s: signal.getsignal(s) for s in before} == before

  with _ckpt(tmp_path) as ckpt:
    ckpt.install_signal_handlers()
    os.kill(os.getpid(), signal.SIGINT)  # first Ctrl-C: stop cleanly
    assert _wait_for(lambda: ckpt.stop_requested)
    with pytest.raises(KeyboardInterrupt):  # second Ctrl-C: quit now
      os.kill(os.getpid(), signal.SIGINT)
      _wait_for(lambda: False, timeout=2.0)
  assert {s: signal.getsignal(s) for s in before} == before


_LOOP = textwrap.dedent("""
    import sys, time
    import jax.numpy as jnp
    from atommem_jax.training.checkpoint import CheckpointConfig, Checkpointer
    with Checkpointer(CheckpointConfig(directory=sys.argv[1], every=1000)) as ckpt:
      ckpt.install_signal_handlers()
      state = {"step": jnp.int32(0), "w": jnp.zeros(4)}
      for step in range(1, 10_000):
        state = {"step": jnp.int32(step), "w": state["w"] + 1.0}
        print("step", step, flush=True)
        if ckpt.should_stop(step):
          ckpt.save(step, state, {"stopped_at": step}, force=True)
          ckpt.wait()
          print("saved", step, flush=True)
          break
        time.sleep(0.02)
""")


def test_sigterm_mid_training_saves_and_exits_cleanly(tmp_path):
  directory = tmp_path / "ckpt"
  proc = subprocess.Popen([sys.executable, "-c", _LOOP, str(directory)], text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  try:
    for line in proc.stdout:
      if line.startswith("step 3"):
        proc.send_signal(signal.SIGTERM)
        break
    out, err = proc.communicate(timeout=60)
  finally:
    proc.kill()
  assert proc.returncode == 0, err[-2000:]
  saved = int(out.strip().splitlines()[-1].split()[1])
  assert saved >= 3
  with Checkpointer(CheckpointConfig(directory=str(directory))) as ckpt:
    step, state, meta = ckpt.restore({"step": jnp.int32(0), "w": jnp.zeros(4)})
  assert step == saved and meta == {"stopped_at": saved}
  assert int(state["step"]) == saved and np.array_equal(state["w"], np.full(4, float(saved)))
  assert json.loads((directory / str(saved) / "meta" / "metadata").read_text()) == meta
