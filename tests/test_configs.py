"""Every config in configs/ passes its CLI's validation (model paths stood in for locally)."""
from __future__ import annotations

import importlib
import json
import pathlib
import shutil

import pytest

from atommem_jax.models import config as model_config
from atommem_jax.models.hf_io import config_to_hf

from atommem_jax.eval import config as eval_cfg
from atommem_jax.training import config as train_cfg

CONFIGS = sorted(p.stem for p in (pathlib.Path(__file__).parents[1] / "configs").glob("*.py")
                 if p.stem not in ("__init__", "common"))


@pytest.fixture(scope="module")
def qwen3_8b_dir(tmp_path_factory, test_tokenizer_dir):
  """A stand-in for /ckpt/Qwen3-8B: the real config.json (no weights) and a tokenizer."""
  import shutil

  from atommem_jax.models import config as model_config
  from atommem_jax.models.hf_io import config_to_hf

  d = tmp_path_factory.mktemp("qwen3_8b")
  (d / "config.json").write_text(json.dumps(config_to_hf(model_config.qwen3_8b())))
  for f in pathlib.Path(test_tokenizer_dir).iterdir():
    shutil.copy(f, d / f.name)
  return d


@pytest.mark.parametrize("name", CONFIGS)
def test_config_validates(name, qwen3_8b_dir, test_tokenizer_dir, tmp_path):
  c = importlib.import_module(f"configs.{name}").get_config()
  if "algorithm" in c:  # a training config
    if "qwen3_8b" in name:
      c.model.source = f"hf:{qwen3_8b_dir}"  # the docstring's /ckpt/Qwen3-8B
    elif str(c.model.source).startswith("orbax:"):
      c.model.source = "smollm2"  # the SFT run it starts from does not exist here
    if c.get("init_from"):  # likewise the run GRPO continues: a run directory stands in
      (tmp_path / "checkpoints").mkdir()
      if str(c.model.tokenizer).startswith(str(c.init_from)):  # that run's own tokenizer
        c.model.tokenizer = str(test_tokenizer_dir)
      c.init_from = str(tmp_path)
    train_cfg.validate(c)
  else:
    if str(c.model.source).startswith("orbax:"):  # a training run made on this machine
      run = tmp_path / "run"
      (run / "model").mkdir(parents=True)
      (run / "model" / "config.json").write_text(json.dumps(config_to_hf(model_config.tiny(
          max_position_embeddings=8192))))
      for f in pathlib.Path(test_tokenizer_dir).iterdir():
        shutil.copy(f, run / "model" / f.name)
      c.model.source = f"orbax:{run}"
    eval_cfg.validate(c)


def test_training_configs_state_their_command():
  for name in CONFIGS:
    mod = importlib.import_module(f"configs.{name}")
    assert "python -m atommem_jax." in (mod.__doc__ or ""), name
