"""Eval configs: the shipped ones validate; bad values fail before any compute, by name."""
from __future__ import annotations

import importlib

import pytest

from atommem_jax.eval import config as cfg_lib


@pytest.fixture
def data_dir(tmp_path):
  """Dev files under their official names, so config checks never depend on ../shared/data."""
  from _data_fixtures import hotpot_records, musique_records, write_json

  write_json(tmp_path / "hotpot_dev_distractor_v1.json", hotpot_records(2))
  write_json(tmp_path / "dev.json", hotpot_records(2))
  write_json(tmp_path / "musique_ans_v1.0_dev.jsonl", musique_records(2), jsonl=True)
  return str(tmp_path)


def _default(data_dir):
  c = importlib.import_module("configs.default").get_config()
  c.data.data_dir = data_dir
  return c


@pytest.mark.parametrize("name", ["default", "eval_oracle_synthetic", "tiny_test",
                                  "eval_hotpotqa_smollm2"])
def test_shipped_configs_validate(name, data_dir):
  c = importlib.import_module(f"configs.{name}").get_config()
  c.data.data_dir = data_dir
  cfg_lib.validate(c)
  assert cfg_lib.methods(c) and cfg_lib.lengths(c)


@pytest.mark.parametrize("key,value,match", [
    ("methods", "atommem,telepathy", "unknown method 'telepathy'"),
    ("methods", "oracle", "synthetic tasks only"),
    ("data.dataset", "squad", "data.dataset"),
    ("data.dataset", "hotpotqa,synthetic", "cannot be mixed"),
    ("prompts.step", "no_such_template.txt", "prompts.step"),
    ("prompts.answer", "step.txt", "prompts.answer"),  # wrong placeholders for an answer turn
    ("env.max_calls", -1, "env.max_calls"),
    ("data.num_docs", "50,lots", "data.num_docs"),
    ("model.source", "hf:/does/not/exist", "does not exist"),
    ("model.source", "mystery", "model.source"),
    ("embedder", "tfidf", "embedder"),
    ("sampling.top_p", 0.0, "top_p"),
    ("sampling.max_new_tokens", 0, "max_new_tokens"),
    ("memory.top_k", 1000, "exceeds memory.capacity"),
    ("env.overlap", 5000, "env.overlap"),
    ("group_size", 4, "identical samples"),
])
def test_bad_values_are_named(key, value, match, data_dir):
  c = _default(data_dir)
  node, leaf = c, key
  if "." in key:
    head, leaf = key.split(".")
    node = c[head]
  node[leaf] = value
  with pytest.raises(cfg_lib.ConfigError, match=match):
    cfg_lib.validate(c)


def test_synthetic_task_that_cannot_fit_is_rejected():
  c = importlib.import_module("configs.eval_oracle_synthetic").get_config()
  c.data.num_docs = "2"
  with pytest.raises(cfg_lib.ConfigError, match="num_docs=2"):
    cfg_lib.validate(c)


def test_model_none_needs_scripted_methods_only():
  c = importlib.import_module("configs.eval_oracle_synthetic").get_config()
  c.methods = "oracle,atommem"
  with pytest.raises(cfg_lib.ConfigError, match="need a policy model"):
    cfg_lib.validate(c)


def test_missing_dataset_file_is_named(tmp_path):
  c = importlib.import_module("configs.default").get_config()
  c.data.data_dir = str(tmp_path)
  c.data.dataset = "musique"
  with pytest.raises(cfg_lib.ConfigError, match="musique.*musique_ans_v1.0_dev.jsonl"):
    cfg_lib.validate(c)
