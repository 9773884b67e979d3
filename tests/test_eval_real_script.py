"""launch/eval_real.sh: which evaluation each stage runs, where, with which flags.

A stub PYTHON records the commands instead of running them, and each recorded command's
flags are loaded into the config it names and validated, so a stage that would fail on a
bad key fails here in a second, not hours into an evaluation."""
from __future__ import annotations

import os
import pathlib
import shlex
import subprocess

REPO = pathlib.Path(__file__).resolve().parents[1]


def _commands(tmp_path, **env) -> list[list[str]]:
  log = tmp_path / "calls"
  stub = tmp_path / "python"
  stub.write_text(f'#!/usr/bin/env bash\nprintf "%q " "$@" >> {log}\necho >> {log}\n')
  stub.chmod(0o755)
  proc = subprocess.run(["bash", "launch/eval_real.sh"], cwd=REPO, capture_output=True,
                        text=True, timeout=60,
                        env={**os.environ, "PYTHON": str(stub), "RUNS": str(tmp_path / "r"),
                             **env})
  assert proc.returncode == 0, proc.stderr
  return [shlex.split(line) for line in log.read_text().splitlines()]


def _flags(cmd: list[str]) -> dict[str, str]:
  return dict(a[len("--config."):].split("=", 1) for a in cmd if a.startswith("--config."))


def test_stages_dirs_and_flags(tmp_path):
  cmds = _commands(tmp_path, MEMAGENT_POLICY="lora:/m.safetensors")
  flags = [_flags(c) for c in cmds]
  import hashlib

  shipped = REPO / "atommem_jax" / "trained" / "smollm2_atommem.safetensors"
  tag = hashlib.sha256(shipped.read_bytes()).hexdigest()[:8] + "-lora__m.safetensors"
  assert [pathlib.Path(f["output_dir"]).name for f in flags] == [
      "base_hotpotqa_50", "base_2wiki_musique_50", f"trained_{tag}_hotpotqa_50",
      f"trained_{tag}_2wiki_musique_50", "base_hotpotqa_200", "base_2wiki_musique_200",
      f"trained_{tag}_hotpotqa_200", f"trained_{tag}_2wiki_musique_200"]
  assert [f["max_examples"] for f in flags] == ["100", "30", "100", "30", "20", "10", "20", "10"]
  for f in flags[:2] + flags[4:6]:
    assert f["model.source"] == "smollm2" and f["method_models"] == ""
    assert f["methods"] == "full_context,rag,static_summary,memagent,atommem"
  for f in flags[2:4] + flags[6:]:
    assert f["model.source"].startswith("lora:") and f["methods"] == "atommem,memagent@memagent_sft"
    assert f["method_models"] == "memagent_sft=lora:/m.safetensors"
    assert f["sampling.max_new_tokens"] == "320" and f["max_memory_chars"] == "1000"
  assert all("env.max_calls" not in f for f in flags[:4])
  (tmp_path / "solo").mkdir()
  no_memagent = [_flags(c) for c in _commands(tmp_path / "solo", STAGES="trained50")]
  assert len(no_memagent) == 2
  assert all("sampling.max_new_tokens" not in f for f in no_memagent)
  assert all(f["env.max_calls"] == "0" for f in flags[4:])


def test_tag_data_dir_and_extra_flags(tmp_path):
  """TAG names the trained dirs; DATA_DIR and EVAL_FLAGS reach every stage, EVAL_FLAGS last."""
  cmds = _commands(tmp_path, STAGES="base50 trained50", TAG="v2", DATA_DIR="/data dir",
                   EVAL_FLAGS="--config.sampling.batch_size=4")
  names = [pathlib.Path(_flags(c)["output_dir"]).name for c in cmds]
  assert names == ["base_hotpotqa_50", "base_2wiki_musique_50", "trained_v2_hotpotqa_50",
                   "trained_v2_2wiki_musique_50"]
  for c in cmds:
    assert _flags(c)["data.data_dir"] == "/data dir"
    assert c[-1] == "--config.sampling.batch_size=4"


def test_every_command_is_a_valid_config(tmp_path):
  """The recorded flags, applied to configs/eval_trained_smollm2.py as the CLI would (each
  value cast to its key's type), pass the eval CLI's validation."""
  import importlib

  from atommem_jax.eval import config as cfg_lib

  for cmd in _commands(tmp_path, STAGES="base50 trained200"):
    assert cmd[:3] == ["-m", "atommem_jax.eval", "--config=configs/eval_trained_smollm2.py"]
    c = importlib.import_module("configs.eval_trained_smollm2").get_config()
    for key, value in _flags(cmd).items():
      *path, last = key.split(".")
      node = c
      for part in path:
        node = node[part]
      assert last in node, key  # a key the config has
      old = node[last]
      node[last] = (value in ("True", "true", "1")) if isinstance(old, bool) else type(old)(value)
    c.output_dir = str(tmp_path / "unused")
    cfg_lib.validate(c)


def test_unknown_stage_fails(tmp_path):
  proc = subprocess.run(["bash", "launch/eval_real.sh"], cwd=REPO, capture_output=True, text=True,
                        timeout=60, env={**os.environ, "STAGES": "bogus", "PYTHON": "false"})
  assert proc.returncode == 2 and "unknown stage bogus" in proc.stderr
