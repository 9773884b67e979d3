"""Does XLA:CPU deadlock a sharded train step on fake CPU devices? With and without the flag.

  python benchmarks/cpu_collectives.py                  # 2 settings x 300 s, 2 busy-loop neighbours
  python benchmarks/cpu_collectives.py --seconds 120 --load 0

Why: test runs on 8 fake CPU devices (tests/conftest.py) aborted now and then with "Fatal
Python error: Aborted" in a sharded train step; XLA's log showed the devices of one step
waiting in *different* collectives (some at an all-reduce, their partners at an earlier
all-gather), a deadlock that only the rendezvous timeout ends. It depends on thread timing,
so this script provokes it: a worker process runs the sharded SFT and GRPO steps of
tests/test_train_step.py (its `_run`: tiny Qwen3, meshes (2, 4, 1) and (2, 2, 2), three steps
per fresh compile) in a loop while `--load` busy loops compete for the cores, with XLA's
rendezvous set to abort after 20 s. Each setting gets the same time; the report says how many steps each
finished and whether it deadlocked. The settings: XLA's default scheduler, and
`--xla_cpu_enable_concurrency_optimized_scheduler=false` (what the tests set).
"""
from __future__ import annotations

import argparse
import os
import pathlib
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
  """test_train_step's sharded steps until killed (its own `_run`, so the benchmark provokes
  exactly the program the test runs); one line per finished step."""
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
  import test_train_step  # not conftest.py: XLA_FLAGS stay as run_setting set them

  done = 0
  while True:
    for kind in ("sft", "grpo"):
      for mesh_shape in ((2, 4, 1), (2, 2, 2)):
        _, history, _ = test_train_step._run(kind, mesh_shape, steps=3)  # floats: finished
        for _ in history:
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
