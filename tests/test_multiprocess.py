"""The multi-host runtime on CPU: several local processes joined by `jax.distributed`
(coordinator on localhost, gloo collectives between the CPU backends), each with fake
devices, run the real SFT and GRPO learners and agree with one process holding all the
devices; their checkpoints restore in one process on another mesh.

This file is also the worker: `python tests/test_multiprocess.py <sft|grpo> <out> <port>
<process_id> <num_processes>` runs one process of such a run.
"""
from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PROCESSES = 2
DEVICES_PER_PROCESS = 4  # 2 x 4 = the 8 devices conftest gives the single-process reference


def _config(kind: str, out: pathlib.Path, **over):
  """A micro SFT or GRPO run (the same for every process and for the reference)."""
  import importlib

  if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
  c = importlib.import_module(f"configs.tiny_cpu_{kind}").get_config()
  c.output_dir = str(out)
  c.model.tiny.update(dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                           num_kv_heads=1, head_dim=16))
  c.data.num_examples, c.batch.rows, c.optim.warmup_steps = 4, 8, 0
  c.batch.seq_len = 256
  c.steps, c.checkpoint_every = 2, 2
  if kind == "grpo":
    c.warm_start.sft_steps = 0
    c.grpo.questions_per_step, c.grpo.group_size = 2, 2  # one question per process
    c.sampling.max_new_tokens, c.sampling.max_answer_tokens, c.env.max_calls = 8, 6, 3
    c.batch.rows = 16  # every turn in one minibatch: the same rows as one process packs
    c.optim.learning_rate = 1e-2
    c.steps, c.checkpoint_every = 1, 1
  for k, v in over.items():
    node = c
    *path, last = k.split(".")
    for part in path:
      node = node[part]
    node[last] = v
  return c


def _reward(t):
  """A reward that differs between a random policy's rollouts (the share of response tokens
  with an id below 256), so advantages, and the policy gradient, are not zero."""
  ids = [i for s in t.steps for i in s.response_ids]
  share = sum(i < 256 for i in ids) / max(len(ids), 1)
  return share, {"answer": share, "untagged_answer_frac": 0.0}


# ----------------------------------------------------------------------------- worker


def _primitives(out: str, port: int, pid: int, n: int) -> None:
  """distributed.py's helpers across real processes; asserts, then writes what it saw."""
  import jax
  import numpy as np
  from jax.sharding import NamedSharding, PartitionSpec

  from atommem_jax.training import distributed, sharding

  distributed.initialize(distributed.DistributedConfig(
      mode="explicit", coordinator=f"localhost:{port}", num_processes=n, process_id=pid,
      initialization_timeout=120))
  assert (jax.process_count(), jax.process_index()) == (n, pid)
  assert distributed.is_main() == (pid == 0)
  # Ragged host results: process p sends p + 1 arrays (process 0's first is empty).
  mine = [np.arange(k + pid, dtype=np.int32) + 100 * pid for k in range(pid + 1)]
  got = distributed.allgather_ragged(mine)
  want = [np.arange(k + p, dtype=np.int32) + 100 * p for p in range(n) for k in range(p + 1)]
  assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))
  assert distributed.any_process(pid == n - 1) and not distributed.any_process(False)
  assert distributed.allgather(np.asarray([pid, 7])).tolist() == [[p, 7] for p in range(n)]
  # Host values every process holds -> one global array; back to numpy on every process.
  mesh = sharding.make_mesh(1, -1, 1)
  host = np.arange(8 * 6, dtype=np.float32).reshape(8, 6)
  glob = distributed.put_global(host, NamedSharding(mesh, PartitionSpec("fsdp")))
  assert not glob.is_fully_addressable and np.array_equal(distributed.fetch_global(glob), host)
  # A process-local copy of it, on this process's devices only.
  local = distributed.local_replica(glob, lambda m: NamedSharding(m, PartitionSpec("fsdp")))
  assert local.is_fully_addressable and {d.process_index for d in local.devices()} == {pid}
  assert len(local.devices()) == jax.local_device_count()
  assert np.array_equal(np.asarray(local), host) and float(jax.jit(lambda x: x.sum())(local)) \
      == float(host.sum())
  # Per-process rows of a batch -> the global batch, in process order.
  batch = np.arange(8 * 3, dtype=np.int32).reshape(8, 3)
  rows = distributed.process_rows(8)
  g = sharding.shard_batch({"x": batch[rows]}, mesh, sharding.FSDP_RULES)["x"]
  assert g.shape == (8, 3) and np.array_equal(distributed.fetch_global(g), batch)
  (pathlib.Path(out) / f"summary_{pid}.json").write_text(json.dumps(
      {"process_count": jax.process_count(), "device_count": jax.device_count(),
       "rows": [rows.start, rows.stop]}))


def _worker(kind: str, out: str, port: int, pid: int, n: int) -> None:
  if kind == "primitives":
    return _primitives(out, port, pid, n)
  from atommem_jax.agent.trajectory import write_jsonl
  from atommem_jax.training import grpo, sft

  c = _config(kind, pathlib.Path(out), **{
      "distributed.mode": "explicit", "distributed.coordinator": f"localhost:{port}",
      "distributed.num_processes": n, "distributed.process_id": pid,
      "distributed.initialization_timeout": 120})
  if kind == "sft":
    summary = sft.train(c, echo=lambda s: None)
  else:
    sampled = []

    def reward_fn(t):  # keeps this process's rollouts for the test
      sampled.append(t)
      return _reward(t)

    summary = grpo.train(c, echo=lambda s: None, reward_fn=reward_fn)
    write_jsonl(pathlib.Path(out) / f"rollouts_{pid}.jsonl", sampled)
  import jax

  info = dict(summary, process_count=jax.process_count(), device_count=jax.device_count(),
              local_devices=jax.local_device_count())
  (pathlib.Path(out) / f"summary_{pid}.json").write_text(json.dumps(info, default=str))


# ----------------------------------------------------------------------------- helpers


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(kind: str, out: pathlib.Path, n: int = PROCESSES, timeout: float = 600) -> list[dict]:
  """Runs `n` worker processes to completion; their summaries."""
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", TOKENIZERS_PARALLELISM="false",
             # Not conftest's scheduler flag: with it both workers died in gloo ("collective
             # mismatch") in 2 of 2 runs; without it this test passes.
             XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES_PER_PROCESS}",
             JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}")  # loopback only
  procs = [subprocess.Popen([sys.executable, __file__, kind, str(out), str(port), str(i), str(n)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i in range(n)]
  errors = []
  for i, p in enumerate(procs):
    try:
      _, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise AssertionError(f"process {i} of {n} did not finish in {timeout}s") from None
    if p.returncode:
      errors.append(f"process {i} exited {p.returncode}:\n{err[-3000:]}")
  assert not errors, "\n".join(errors)
  return [json.loads((out / f"summary_{i}.json").read_text()) for i in range(n)]


def _leaves(params):
  import jax
  import numpy as np

  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(params))]


def _assert_params_close(a, b, atol: float = 1e-5) -> None:
  """Equal up to float rounding as Adam amplifies it: its first updates are about
  lr * g / (|g| + eps), so a gradient element near eps turns a summation-order difference
  (gloo's cross-process reductions vs in-process ones) into a ~1e-6 parameter difference.
  A real error (wrong rows, wrong advantages) moves elements by ~lr (>= 3e-3 here)."""
  import numpy as np

  la, lb = _leaves(a), _leaves(b)
  assert len(la) == len(lb) and la
  for x, y in zip(la, lb):
    np.testing.assert_allclose(x, y, atol=atol, rtol=0)


# ----------------------------------------------------------------------------- tests


def test_importing_and_validating_leaves_jax_uninitialised():
  """`jax.distributed.initialize` must run before any JAX backend starts: importing the
  learners and checking a config must not start one (a module-level jnp array would)."""
  code = ("import sys, pathlib; sys.path[:0] = ['.', 'tests']; import test_multiprocess as t\n"
          "from atommem_jax.training import __main__, config, grpo, sft\n"
          "for k in ('sft', 'grpo'): config.validate(t._config(k, pathlib.Path('unused')))\n"
          "from jax._src import xla_bridge\n"
          "assert not xla_bridge.backends_are_initialized(), 'a JAX backend started'\n")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]


def test_distributed_config_names_the_bad_key():
  from atommem_jax.agent.build import ConfigError
  from atommem_jax.training import distributed

  c = _config("sft", pathlib.Path("unused"))
  assert distributed.from_config(c) == distributed.DistributedConfig()  # default: one process
  for over, key in (({"distributed.mode": "mpi"}, "distributed.mode"),
                    ({"distributed.mode": "explicit"}, "distributed.coordinator"),
                    ({"distributed.mode": "explicit", "distributed.coordinator": "localhost"},
                     "distributed.coordinator"),
                    ({"distributed.mode": "explicit", "distributed.coordinator": "h:1234",
                      "distributed.num_processes": 0}, "distributed.num_processes"),
                    ({"distributed.mode": "explicit", "distributed.coordinator": "h:1234",
                      "distributed.num_processes": 2, "distributed.process_id": 2},
                     "distributed.process_id"),
                    ({"distributed.num_processes": 4}, "distributed.num_processes"),  # ignored
                    ({"distributed.initialization_timeout": 0},
                     "distributed.initialization_timeout")):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
      distributed.from_config(_config("sft", pathlib.Path("unused"), **over))
  ok = _config("sft", pathlib.Path("unused"), **{
      "distributed.mode": "explicit", "distributed.coordinator": "10.0.0.1:8476",
      "distributed.num_processes": 4, "distributed.process_id": 3})
  assert distributed.from_config(ok).process_id == 3


def test_sft_batches_split_into_process_blocks_of_the_same_global_batch():
  import numpy as np

  from atommem_jax.training.data import SFTBatches

  rng = np.random.default_rng(0)
  turns = [(rng.integers(3, 200, rng.integers(5, 30)).tolist(),
            rng.integers(3, 200, rng.integers(2, 10)).tolist()) for _ in range(45)]
  b = SFTBatches(turns, rows=8, seq_len=48, seed=3, max_segments=8)
  assert b.num_rows % 8  # the epoch's last batch is partly empty rows
  for step in range(2 * b.batches_per_epoch):
    whole = b.batch(step)
    for parts in (2, 4):
      blocks = [b.batch(step, p, parts) for p in range(parts)]
      for k, v in whole.items():
        np.testing.assert_array_equal(np.concatenate([x[k] for x in blocks]), v)
    assert b.tokens(step) == int(np.sum(whole["segment_ids"] != 0))
  for part, parts in ((0, 3), (2, 2), (0, 0)):
    try:
      b.batch(0, part, parts)
    except ValueError as e:
      assert "part" in str(e)
    else:
      raise AssertionError(f"part {part} of {parts} accepted")


def test_remote_output_files_are_staged_locally_and_uploaded(tmp_path):
  from atommem_jax.training import trainer

  assert trainer.join("gs://bucket/run/", "sft") == "gs://bucket/run/sft"
  assert trainer.is_remote("gs://bucket/run") and not trainer.is_remote(str(tmp_path))
  staged = trainer.local_dir("gs://bucket/run")
  assert "://" not in str(staged) and staged == trainer.local_dir("gs://bucket/run")
  local, remote, done = tmp_path / "local", tmp_path / "remote", {}
  (local / "tb").mkdir(parents=True)
  (local / "metrics.jsonl").write_text('{"step": 1}\n')
  (local / "tb" / "events").write_bytes(b"\x00\x01")
  assert trainer.upload(local, str(remote), done) == 2
  assert trainer.upload(local, str(remote), done) == 0  # unchanged files are not copied again
  with (local / "metrics.jsonl").open("a") as f:
    f.write('{"step": 2}\n')
  assert trainer.upload(local, str(remote), done) == 1
  assert (remote / "metrics.jsonl").read_text().count("step") == 2
  assert (remote / "tb" / "events").read_bytes() == b"\x00\x01"


def test_two_processes_share_host_values_arrays_and_batches(tmp_path):
  """The runtime itself across 2 real processes (gloo collectives on CPU): gathering
  ragged host results, stop flags, global arrays from host values and back, process-local
  parameter copies, per-process batch rows."""
  infos = _launch("primitives", tmp_path, timeout=300)
  assert [i["rows"] for i in infos] == [[0, 4], [4, 8]]
  assert all(i["device_count"] == PROCESSES * DEVICES_PER_PROCESS for i in infos)


@pytest.mark.slow  # ~1.5 min on 2 busy cores: two processes and the reference each compile
def test_two_processes_sft_equals_one_process_and_restores_on_another_mesh(tmp_path):
  """2 processes x 4 CPU devices (each loading 4 of the 8 rows) = 1 process x 8 devices:
  same losses, same parameters; the 2-process checkpoint restores in one process, on a
  mesh of another shape, and resumes there."""
  import jax
  import numpy as np

  from atommem_jax.models import hf_io, orbax_io, transformer
  from atommem_jax.training import checkpoint as ckpt_lib
  from atommem_jax.training import config as cfg_lib
  from atommem_jax.training import logs, sharding, sft
  from atommem_jax.training import step as step_lib

  multi = tmp_path / "multi"
  infos = _launch("sft", multi)
  assert [(i["process_count"], i["device_count"], i["local_devices"]) for i in infos] == [
      (PROCESSES, PROCESSES * DEVICES_PER_PROCESS, DEVICES_PER_PROCESS)] * PROCESSES
  assert infos[0]["last"]["loss"] == infos[1]["last"]["loss"]  # every process: same metrics
  one = tmp_path / "one"
  sft.train(_config("sft", one), echo=lambda s: None)
  got, want = logs.read_metrics(multi / "metrics.jsonl"), logs.read_metrics(one / "metrics.jsonl")
  assert [r["step"] for r in got] == [r["step"] for r in want] == [1, 2]
  for a, b in zip(got, want):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-6)
    np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-5)
    assert a["loss_tokens"] == b["loss_tokens"] and a["tokens_per_second"] > 0
  # Only process 0 wrote run files; both exported the same HF model.
  assert sorted(p.name for p in multi.iterdir() if not p.name.startswith("summary")) == sorted(
      p.name for p in one.iterdir())
  _, hf_multi = hf_io.from_pretrained(multi / "hf")
  _, hf_one = hf_io.from_pretrained(one / "hf")
  _assert_params_close(hf_multi, hf_one)
  # The 2-process checkpoint, restored in this process on a (data=2, fsdp=4) mesh.
  mc, _ = orbax_io.load_run(one)
  mc = mc.replace(param_dtype="float32")
  c = _config("sft", one)
  tx = step_lib.make_optimizer(cfg_lib.optim_config(c))
  mesh = sharding.make_mesh(2, 4, 1)
  p_sh = sharding.param_shardings(mc, mesh, sharding.get_rules(c.sharding_rules))
  abstract = jax.eval_shape(lambda: step_lib.init_state(transformer.init_params(mc), tx))
  target = ckpt_lib.abstract_state(abstract, step_lib.TrainState(
      step=sharding.replicated(mesh), params=p_sh,
      opt_state=sharding.opt_state_shardings(tx, abstract.params, p_sh)))
  restored = {}
  for name, run_dir in (("multi", multi), ("one", one)):
    with ckpt_lib.Checkpointer(ckpt_lib.CheckpointConfig(
        directory=str(run_dir / "checkpoints"))) as ckpt:
      restored[name] = ckpt.restore(target)
  assert restored["multi"].step == 2 and restored["multi"].meta["data"] == {"epoch": 0,
                                                                            "batch": 2}
  leaf = jax.tree.leaves(restored["multi"].state.params)[0]
  assert leaf.sharding.mesh.shape == mesh.shape
  _assert_params_close(restored["multi"].state.params, restored["one"].state.params)
  _assert_params_close(restored["multi"].state.opt_state, restored["one"].state.opt_state)
  # And one process resumes the 2-process run on its own mesh (data=2, fsdp=4).
  summary = sft.train(_config("sft", multi, steps=3, **{"mesh.data": 2, "mesh.fsdp": 4}),
                      echo=lambda s: None)
  assert summary["step"] == 3 and [r["step"] for r in logs.read_metrics(
      multi / "metrics.jsonl")] == [1, 2, 3]


@pytest.mark.slow  # ~1.5 min on 2 busy cores (sampling compiles in every process)
def test_two_processes_grpo_equals_one_process_on_the_same_rollouts(tmp_path):
  """Each of 2 processes samples its own question with its own devices; rewards and turns
  are gathered, every process packs the same rows and takes its block; the update equals
  one process's GRPO update from the same rollouts (fed to it through `rollouts_fn`)."""
  import numpy as np

  from atommem_jax.agent.trajectory import read_jsonl
  from atommem_jax.models import orbax_io
  from atommem_jax.training import grpo, logs

  multi = tmp_path / "multi"
  _launch("grpo", multi)
  shares = [list(read_jsonl(multi / f"rollouts_{i}.jsonl")) for i in range(PROCESSES)]
  assert all(len(s) == 2 for s in shares)  # 1 question x G=2 each
  ids = [{t.episode_id for t in s} for s in shares]
  assert len(ids[0]) == len(ids[1]) == 1 and ids[0] != ids[1]  # each its own question
  rollouts = [t for s in shares for t in s]
  assert sum(len(t.steps) for t in rollouts) > 0

  def replay(iteration, episodes):
    assert iteration == 0 and [e.episode_id for e in episodes] == [
        t.episode_id for t in rollouts[::2]]
    return rollouts

  one = tmp_path / "one"
  grpo.train(_config("grpo", one), echo=lambda s: None, reward_fn=_reward, rollouts_fn=replay)
  got, want = logs.read_metrics(multi / "metrics.jsonl"), logs.read_metrics(one / "metrics.jsonl")
  assert [r["step"] for r in got] == [r["step"] for r in want] == [1]
  assert got[0]["advantage_abs"] > 0.01 and got[0]["grad_norm"] > 1e-3  # a real update
  for key in ("loss", "grad_norm", "kl", "reward", "accuracy", "turns_per_episode",
              "ops_per_turn/create", "rollout_rows", "loss_tokens"):
    np.testing.assert_allclose(got[0][key], want[0][key], rtol=1e-5, err_msg=key)
  _, p_multi = orbax_io.load_run(multi)
  _, p_one = orbax_io.load_run(one)
  _assert_params_close(p_multi, p_one)


# ----------------------------------------------------------------------------- launch/pod.py


def _pod():
  import importlib.util

  spec = importlib.util.spec_from_file_location("pod", REPO / "launch" / "pod.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _dry(capsys, *args: str) -> list[list[str]]:
  """The commands `pod.py <args> --dry-run` prints (--dry-run before any `--` extras)."""
  import shlex

  args = list(args)
  cut = args.index("--") if "--" in args else len(args)
  assert _pod().main(args[:cut] + ["--dry-run"] + args[cut:]) == 0
  return [shlex.split(line.split("  #")[0]) for line in capsys.readouterr().out.splitlines()]


def test_pod_launcher_dry_run_prints_the_gcloud_and_xpk_commands(capsys, monkeypatch, tmp_path):
  import shutil

  bash = shutil.which("bash")
  monkeypatch.setenv("PATH", str(tmp_path))  # no gcloud / xpk to run, whatever happens
  (qr, describe), = [_dry(capsys, "create", "--name=n", "--zone=us-east5-a",
                          "--accelerator-type=v5p-64", "--queued", "--spot")]
  assert qr[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "n-qr"]
  assert {"--node-id=n", "--accelerator-type=v5p-64", "--runtime-version=v2-alpha-tpuv5",
          "--zone=us-east5-a", "--spot"} <= set(qr)
  assert describe[4] == "describe" and "--format=value(state.state)" in describe
  (vm,) = _dry(capsys, "create", "--name=n", "--zone=z", "--accelerator-type=v6e-64",
               "--project=p")
  assert vm[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "n"] and {
      "--version=v2-alpha-tpuv6e", "--project=p"} <= set(vm)
  (train,) = _dry(capsys, "train", "--name=n", "--zone=z", "--config=configs/qwen3_8b_sft.py",
                  "--output-dir=gs://b/run", "--", "--config.steps=5")
  assert train[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"] and "--worker=all" in train
  remote = next(a for a in train if a.startswith("--command="))[len("--command="):]
  for part in ("-m atommem_jax.training", "--config=configs/qwen3_8b_sft.py",
               "--config.output_dir=gs://b/run", "--config.distributed.mode=auto",
               "--config.steps=5", "atommem-train.pid",
               "exec $HOME/atommem-venv/bin/python -m"):  # $HOME unquoted: the worker expands it
    assert part in remote, part
  installs = _dry(capsys, "install", "--name=n", "--zone=z")
  assert [c[4] for c in installs] == ["scp", "ssh", "ssh"] and "--worker=all" in installs[0]
  for cmd in (train, *installs[1:]):  # the remote shell parses what the workers receive
    remote = next(a for a in cmd if a.startswith("--command="))[len("--command="):]
    assert subprocess.run([bash, "-n", "-c", remote]).returncode == 0, remote
  (xpk,) = _dry(capsys, "xpk", "--cluster=c", "--workload=w", "--tpu-type=v5p-64",
                "--config=configs/qwen3_8b_grpo.py", "--output-dir=gs://b/g")
  assert xpk[:3] == ["xpk", "workload", "create"] and {
      "--cluster=c", "--workload=w", "--tpu-type=v5p-64", "--num-slices=1",
      "--base-docker-image=python:3.11"} <= set(xpk)
  assert "--config.distributed.mode=auto" in next(a for a in xpk if a.startswith("--command="))
  assert f"--script-dir={REPO}" not in xpk  # a copy of the checkout's files, not .venv etc.


def test_pod_launcher_refuses_what_cannot_work(capsys, monkeypatch, tmp_path):
  pod = _pod()
  for args, words in ((["create", "--name=n", "--zone=z", "--accelerator-type=tpu9-8",
                        "--dry-run"], "accelerator-type"),
                      (["train", "--name=n", "--zone=z", "--config=configs/nope.py",
                        "--output-dir=gs://b", "--dry-run"], "no such file"),
                      (["logs", "--name=n", "--zone=z", "--dry-run", "--", "x"], "takes none")):
    try:
      pod.main(args)
    except pod.LaunchError as e:
      assert words in str(e)
    else:
      raise AssertionError(f"{args} accepted")
  monkeypatch.setenv("PATH", str(tmp_path))  # no gcloud: an error, never a silent skip
  try:
    pod.main(["stop", "--name=n", "--zone=z"])
  except pod.LaunchError as e:
    assert "gcloud is not on PATH" in str(e) and "--dry-run" in str(e)
  else:
    raise AssertionError("ran without gcloud")


if __name__ == "__main__":
  kind, out, port, pid, n = sys.argv[1:]
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.path.insert(0, str(REPO))
  _worker(kind, out, int(port), int(pid), int(n))
