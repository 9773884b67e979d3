"""Kill -9 a training run, resume it, and check its final parameters equal an uninterrupted run's.

  python launch/resume_check.py --config=configs/tiny_cpu_sft.py [--steps=12 --every=4]
  python launch/resume_check.py --config=configs/tiny_cpu_grpo.py --steps=8 --every=2

Runs the training CLI three times into temporary directories: once to the end; once killed
with SIGKILL as soon as its first checkpoint exists (mid-run, possibly during an async save);
and that killed run again, which resumes from its latest good checkpoint. Prints the largest
parameter difference between the resumed and the uninterrupted run and exits non-zero unless
the two are bit-identical. Extra `--config.key=value` arguments are passed to every run.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


def _cli(config: str, out: pathlib.Path, steps: int, every: int, extra: list[str]) -> list[str]:
  return [sys.executable, "-m", "atommem_jax.training", f"--config={config}",
          f"--config.output_dir={out}", f"--config.steps={steps}",
          f"--config.checkpoint_every={every}", *extra]


def _run(cmd: list[str]) -> None:
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
  if proc.returncode:
    raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def _killed_run(cmd: list[str], checkpoints: pathlib.Path, timeout: float) -> int:
  """Starts the run and SIGKILLs it once a first checkpoint is committed; the step killed at."""
  from atommem_jax.models.orbax_io import checkpoint_steps

  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  start = time.time()
  while proc.poll() is None and time.time() - start < timeout:
    if checkpoint_steps(checkpoints):
      time.sleep(0.3)  # let it get into the next steps (and maybe the next async save)
      os.kill(proc.pid, signal.SIGKILL)
      proc.wait()
      return max(checkpoint_steps(checkpoints) or [0])
    time.sleep(0.05)
  proc.kill()
  raise SystemExit("the run finished or timed out before its first checkpoint; "
                   "use more --steps or a smaller --every")


def final_params(run_dir: pathlib.Path):
  from atommem_jax.models.orbax_io import load_run

  return load_run(run_dir)[1]


def check(config: str, steps: int, every: int, extra: list[str], timeout: float = 1800
          ) -> float:
  """The largest |difference| between resumed and uninterrupted final parameters."""
  import jax
  import numpy as np

  with tempfile.TemporaryDirectory() as tmp:
    full, killed = pathlib.Path(tmp) / "full", pathlib.Path(tmp) / "killed"
    _run(_cli(config, full, steps, every, extra))
    at = _killed_run(_cli(config, killed, steps, every, extra), killed / "checkpoints", timeout)
    print(f"killed (SIGKILL) with checkpoint step {at} of {steps} on disk; resuming")
    _run(_cli(config, killed, steps, every, extra))
    a, b = final_params(full), final_params(killed)
    diffs = [float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
    return max(diffs)


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", required=True)
  p.add_argument("--steps", type=int, default=12)
  p.add_argument("--every", type=int, default=4)
  args, extra = p.parse_known_args(argv)
  diff = check(args.config, args.steps, args.every, extra)
  print(f"max |resumed - uninterrupted| over all parameters: {diff:.3g}")
  print("bit-identical" if diff == 0 else "DIFFERENT")
  return 0 if diff == 0 else 1


if __name__ == "__main__":
  sys.path.insert(0, str(REPO))
  raise SystemExit(main())
