"""End to end: the eval CLI's runner on synthetic tasks (scripted) and with a tiny random LLM."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

from atommem_jax.agent import environment as env_lib
from atommem_jax.agent import policies as pol
from atommem_jax.agent.rollout import RolloutConfig, RolloutEngine
from atommem_jax.agent.trajectory import read_jsonl
from atommem_jax.eval import config as cfg_lib
from atommem_jax.eval import runner
from atommem_jax.memory import state as mem_lib
from atommem_jax.memory.embedder import HashingEmbedder


def _config(name, tmp_path, **overrides):
  c = importlib.import_module(f"configs.{name}").get_config()
  c.output_dir = str(tmp_path / name)
  for k, v in overrides.items():
    node = c
    *heads, leaf = k.split(".")
    for h in heads:
      node = node[h]
    node[leaf] = v
  return c


def test_oracle_config_writes_results_json(tmp_path):
  c = _config("eval_oracle_synthetic", tmp_path, max_examples=4, **{"data.num_docs": "8"})
  res = runner.evaluate(c, echo=lambda s: None)
  out = json.loads((tmp_path / "eval_oracle_synthetic" / "results.json").read_text())
  assert out == json.loads(json.dumps(res))
  assert set(out) == {"oracle", "scratchpad_only", "create_all_read_once"}
  for m in out.values():
    assert {"exact_match", "f1", "sub_em", "n", "ops", "by_length"} <= set(m)
    assert m["n"] == 4 and set(m["by_length"]) == {"8"}
  assert out["oracle"]["exact_match"] == 1.0
  for f in ("summary.md", "scores.png", "ops.png", "trajectories.jsonl", "trajectories.html"):
    assert (tmp_path / "eval_oracle_synthetic" / f).stat().st_size > 0


def test_tiny_random_model_runs_every_method_end_to_end(tmp_path):
  c = _config("tiny_test", tmp_path)
  res = runner.evaluate(c, echo=lambda s: None)
  assert set(res) == set(cfg_lib.methods(c))
  trajs = list(read_jsonl(tmp_path / "tiny_test" / "trajectories.jsonl"))
  assert {t.method for t in trajs} == set(res)
  llm_steps = [s for t in trajs for s in t.steps if not s.events.get("scripted")]
  assert llm_steps and all(len(s.response_ids) == len(s.response_logprobs) > 0 for s in llm_steps)
  assert all(len(s.loss_mask) == len(s.prompt_ids) + len(s.response_ids) for s in llm_steps)
  assert all(s.prompt_ids for s in llm_steps)
  assert 0 < res["atommem"]["longest_prompt_tokens"] <= c.sampling.max_prompt_tokens
  # Run again: every episode is resumed, nothing is sampled, and the report still knows
  # the longest prompt from the stored trajectories.
  messages: list[str] = []
  again = runner.evaluate(c, echo=messages.append)
  assert again["atommem"]["longest_prompt_tokens"] == res["atommem"]["longest_prompt_tokens"]
  assert again["atommem"]["model_calls"] == 0
  assert any(m.startswith("[prompts] atommem:") and "every episode was resumed" in m
             for m in messages)


def test_batched_llm_rollouts_equal_one_at_a_time(test_tokenizer):
  from atommem_jax.models import config as model_config
  from atommem_jax.models.transformer import init_params

  tok = test_tokenizer
  mc = model_config.tiny("qwen3", vocab_size=max(512, len(tok)), eos_token_id=tok.eos_token_id)
  params = init_params(mc, seed=1)
  emb = HashingEmbedder(dim=64)
  cfg = RolloutConfig(env=env_lib.EnvConfig(chunk_size=40, overlap=4, max_calls=5),
                      memory=mem_lib.MemoryConfig(capacity=16, dim=64, top_k=3))
  eng = RolloutEngine(cfg, tok, emb.embed)
  sampling = pol.SamplingConfig(max_new_tokens=16, max_answer_tokens=8, max_prompt_tokens=1024)
  docs = ["The museum was founded by Ann Lee in 1901. " * k for k in (3, 6, 9)]
  eps = [env_lib.Episode(f"e{i}", ("Who founded the museum?",), (("Ann Lee",),), d)
         for i, d in enumerate(docs)]
  policy = lambda: pol.AtomMemPolicy(pol.LMClient(mc, tok, sampling), max_memory_chars=200)
  batched = eng.run(eps, policy(), params=params).trajectories
  single = [eng.run([e], policy(), params=params).trajectories[0] for e in eps]
  for b, s in zip(batched, single):
    assert [x.response_ids for x in b.steps] == [x.response_ids for x in s.steps]
    assert [x.prompt_ids for x in b.steps] == [x.prompt_ids for x in s.steps]
    assert b.answers == s.answers


def test_cli_rejects_a_bad_config_before_compute(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "atommem_jax.eval", "--config=configs/default.py",
       "--config.methods=atommem,telepathy", f"--config.output_dir={tmp_path}/x"],
      capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "unknown method 'telepathy'" in proc.stderr
  assert not (tmp_path / "x").exists()


def test_real_dataset_files_and_an_hf_checkpoint_through_the_cli_runner(tmp_path, test_tokenizer):
  """The real-data path (official file names, three datasets, two lengths) with a tiny random
  model loaded from a Hugging Face directory (`model.source=hf:<dir>`)."""
  from _data_fixtures import hotpot_records, musique_records, write_json

  from atommem_jax.models import config as model_config
  from atommem_jax.models.hf_io import save_pretrained
  from atommem_jax.models.transformer import init_params

  data = tmp_path / "data"
  data.mkdir()
  write_json(data / "hotpot_dev_distractor_v1.json", hotpot_records(12))
  write_json(data / "dev.json", [dict(r, _id=f"w{i}", evidences=[]) for i, r in
                                 enumerate(hotpot_records(12))])
  write_json(data / "musique_ans_v1.0_dev.jsonl", musique_records(12), jsonl=True)
  ckpt = tmp_path / "ckpt"
  mc = model_config.tiny("llama", vocab_size=max(512, len(test_tokenizer)),
                         eos_token_id=test_tokenizer.eos_token_id, max_position_embeddings=4096)
  save_pretrained(mc, init_params(mc, seed=3), ckpt)
  test_tokenizer.save_pretrained(ckpt)
  c = _config("tiny_test", tmp_path, max_examples=2, methods="atommem,rag,full_context",
              **{"model.source": f"hf:{ckpt}", "data.dataset": "hotpotqa,2wiki,musique",
                 "data.data_dir": str(data), "data.num_docs": "4,8", "env.chunk_size": 96})
  cfg_lib.validate(c)
  res = runner.evaluate(c, echo=lambda s: None)
  for m in ("atommem", "rag", "full_context"):
    assert res[m]["n"] == 3 * 2 * 2  # datasets x lengths x questions
    assert set(res[m]["by_dataset"]) == {"hotpotqa", "2wiki", "musique"}
    assert set(res[m]["by_dataset"]["musique"]["by_length"]) == {"4", "8"}
  assert res["atommem"]["longest_prompt_tokens_before_cut"] >= res["atommem"]["longest_prompt_tokens"]
  summary = (tmp_path / "tiny_test" / "summary.md").read_text()
  assert "| atommem | 2wiki | 8 | 2 |" in summary
  trajs = list(read_jsonl(tmp_path / "tiny_test" / "trajectories.jsonl"))
  assert {t.meta["dataset"] for t in trajs} == {"hotpotqa", "2wiki", "musique"}
  assert {t.episode_id.rsplit("-", 1)[1] for t in trajs} == {"4", "8"}


def test_methods_on_labelled_models_share_one_run_and_table(tmp_path):
  """`method_models` + `method@label`: one run evaluates a method on several models (a
  trained policy and its base, say). A labelled model equal to model.source gives the same
  trajectories as the unlabelled method; rows, store files and trajectories carry the label."""
  c = _config("tiny_test", tmp_path, methods="atommem,atommem@same,rag@same",
              method_models="same=tiny", max_examples=1)
  res = runner.evaluate(c, echo=lambda s: None)
  assert set(res) == {"atommem", "atommem@same", "rag@same"}
  out = tmp_path / "tiny_test"
  assert (out / "episodes" / "atommem@same@synthetic@6.jsonl").exists()
  trajs = {t.method: t for t in read_jsonl(out / "trajectories.jsonl")}
  assert set(trajs) == set(res)
  assert ([s.response_ids for s in trajs["atommem"].steps]
          == [s.response_ids for s in trajs["atommem@same"].steps])
  assert res["atommem@same"]["seconds"] > 0 and res["atommem"]["seconds"] > 0


@pytest.mark.parametrize("over,match", [
    ({"methods": "atommem@nope"}, r"^methods: 'atommem@nope' names model label 'nope'"),
    ({"methods": "atommem,oracle@x", "method_models": "x=tiny", "data.dataset": "synthetic"},
     r"^methods: 'oracle@x': oracle is scripted"),
    ({"methods": "atommem@x", "method_models": "x"}, r"^method_models: expected"),
    ({"methods": "atommem@x", "method_models": "x=bogus"}, r"^method_models \(x\): model.source"),
    ({"methods": "atommem,atommem"}, r"^methods: .* twice"),
])
def test_labelled_model_errors_name_the_key(tmp_path, over, match):
  c = _config("tiny_test", tmp_path, **over)
  with pytest.raises(cfg_lib.ConfigError, match=match):
    cfg_lib.validate(c)
