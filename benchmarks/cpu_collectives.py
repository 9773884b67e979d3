"""Does XLA:CPU deadlock a sharded train step on fake CPU devices? With and without the flag.

  python benchmarks/cpu_collectives.py                  # 2 settings x 300 s, 2 busy-loop neighbours
  python benchmarks/cpu_collectives.py --seconds 120 --load 0

Why: test runs on 8 fake CPU devices (tests/conftest.py) aborted now and then with "Fatal
Python error: Aborted" in a sharded train step; XLA's log showed the devices of one step
waiting in *different* collectives (some at an all-reduce, their partners at an earlier
all-gather), a deadlock that only the rendezvous timeout ends. It depends on thread timing,
so this script provokes it: a worker process runs the sharded SFT and GRPO steps of
tests/test_train_step.py (tiny Qwen3, meshes (2, 4, 1) and (2, 2, 2), fresh compiles each
round) in a loop while `--load` busy loops compete for the cores, with XLA's rendezvous set
to abort after 20 s. Each setting gets the same time; the report says how many steps each
finished and whether it deadlocked. The settings: XLA's default scheduler, and
`--xla_cpu_enable_concurrency_optimized_scheduler=false` (what the tests set).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

SETTINGS = {
    "default scheduler": "",
    "concurrency_optimized_scheduler=false": "--xla_cpu_enable_concurrency_optimized_scheduler=false",
}
ABORT = ("--xla_cpu_collective_call_warn_stuck_timeout_seconds=10 "
         "--xla_cpu_collective_call_terminate_timeout_seconds=20")


def worker() -> None:
  """Sharded train steps until killed; prints one line per finished step."""
  import numpy as np
  import optax

  import jax
  from atommem_jax.models import config as model_config
  from atommem_jax.models.transformer import init_params
  from atommem_jax.training import packing, sharding
  from atommem_jax.training import step as step_lib

  cfg = model_config.tiny("qwen3", vocab_size=256, hidden_size=32, intermediate_size=64,
                          num_heads=4, num_kv_heads=2, head_dim=8)
  seq, rows = 64, 8

  def batch(seed: int, grpo: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    turns = [(rng.integers(3, 256, rng.integers(4, 20)).tolist(),
              rng.integers(3, 256, rng.integers(2, 12)).tolist()) for _ in range(rows * 2)]
    b = packing.pack(turns, seq, max_rows=rows).arrays()
    out = {k: b[k] for k in step_lib.SFT_FIELDS}
    if grpo:
      for k in ("old_logprobs", "ref_logprobs"):
        out[k] = (-rng.uniform(4, 7, (rows, seq)) * b["loss_mask"]).astype(np.float32)
      out["advantages"] = (rng.normal(0, 1, (rows, seq)) * b["loss_mask"]).astype(np.float32)
    return out

  done = 0
  while True:
    for kind in ("sft", "grpo"):
      for mesh_shape in ((2, 4, 1), (2, 2, 2)):
        tx = optax.sgd(0.5)
        params = init_params(cfg, seed=0)
        mesh = sharding.make_mesh(*mesh_shape)
        p_sh = sharding.param_shardings(cfg, mesh)
        st_sh = step_lib.TrainState(step=sharding.replicated(mesh), params=p_sh,
                                    opt_state=sharding.opt_state_shardings(tx, params, p_sh))
        train = step_lib.TrainStep(
            cfg, step_lib.LossConfig(kind=kind, max_segments=8, chunk_size=16), tx,
            state_shardings=st_sh, batch_sharding=sharding.batch_sharding(mesh), mesh=mesh,
            rules=sharding.get_rules(sharding.DEFAULT_RULES))
        state = step_lib.init_state(jax.device_put(params, p_sh), tx)
        for i in range(3):
          state, metrics = train(state, batch(i, kind == "grpo"))
          float(metrics["loss"])
          done += 1
          print(f"step {done}", flush=True)


def run_setting(flag: str, seconds: float, load: int) -> tuple[int, bool, float]:
  """(steps finished, deadlocked?, seconds) for one setting."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count=8 {ABORT} {flag}".strip())
  hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(load)]
  start = time.time()
  proc = subprocess.Popen([sys.executable, __file__, "--worker"], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    out, err = proc.communicate(timeout=seconds)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, err = proc.communicate()
  finally:
    for h in hogs:
      h.kill()
  elapsed = time.time() - start
  steps = sum(line.startswith("step ") for line in out.splitlines())
  deadlocked = "may be stuck" in err or proc.returncode not in (0, -9)
  if proc.returncode not in (0, -9) and "may be stuck" not in err:
    print(err[-2000:], file=sys.stderr)
  return steps, deadlocked, elapsed


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--seconds", type=float, default=300, help="time per setting")
  p.add_argument("--load", type=int, default=2, help="busy-loop processes beside the worker")
  p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  a = p.parse_args()
  if a.worker:
    worker()
    return
  print(f"{'setting':40s} {'steps':>6s} {'seconds':>8s}  deadlocked")
  for name, flag in SETTINGS.items():
    steps, dead, secs = run_setting(flag, a.seconds, a.load)
    print(f"{name:40s} {steps:6d} {secs:8.0f}  {'yes' if dead else 'no'}", flush=True)


if __name__ == "__main__":
  main()
