"""Policies render prompts without sampling; a teacher's trajectory is exact SFT data."""
from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from atommem_jax.agent import environment as env_lib
from atommem_jax.agent import oracle
from atommem_jax.agent import policies as pol
from atommem_jax.agent.rollout import RolloutConfig, RolloutEngine
from atommem_jax.data.metrics import score_all
from atommem_jax.memory import state as mem_lib
from atommem_jax.memory.embedder import HashingEmbedder


def _synthetic(n: int):
  c = ml_collections.ConfigDict(dict(seed=5, max_examples=n, data=dict(
      synthetic_hops=2, synthetic_corrections=1, synthetic_retractions=1)))
  return oracle.synthetic_episodes(c, num_chunks=6)


def _engine(tokenizer=None):
  cfg = RolloutConfig(env=env_lib.EnvConfig(max_calls=0),
                      memory=mem_lib.MemoryConfig(capacity=32, dim=128, top_k=6))
  return RolloutEngine(cfg, tokenizer, HashingEmbedder(dim=128).embed, score_all)


def _student(tokenizer, max_prompt_tokens=4096):
  from atommem_jax.models import config as model_config

  mc = model_config.tiny("qwen3", vocab_size=max(512, len(tokenizer)),
                         eos_token_id=tokenizer.eos_token_id)
  lm = pol.LMClient(mc, tokenizer, pol.SamplingConfig(max_prompt_tokens=max_prompt_tokens))
  return pol.AtomMemPolicy(lm), mc


def test_oracle_episode_as_sft_view_decodes_exactly(test_tokenizer):
  """Every step of an oracle episode, rendered for the AtomMem student: prompt ids decode to
  the prompt text, response ids decode to the oracle's response, and the trajectory is the
  same episode the bare oracle plays (same ops, same answers)."""
  eps = _synthetic(3)
  student, _ = _student(test_tokenizer)
  teacher = pol.RenderedTeacher(oracle.make_scripted_policy("oracle"), student)
  rendered = _engine().run(eps, teacher).trajectories
  bare = _engine().run(eps, oracle.make_scripted_policy("oracle")).trajectories
  for ep, r, b in zip(eps, rendered, bare):
    assert r.answers == b.answers and r.scores["exact_match"] == 1.0
    assert [s.ops for s in r.steps] == [s.ops for s in b.steps]
    for s, sb in zip(r.steps, b.steps):
      assert s.prompt_ids and s.response_ids
      assert test_tokenizer.decode(s.prompt_ids, skip_special_tokens=False) == s.prompt_text
      assert test_tokenizer.decode(s.response_ids, skip_special_tokens=True) == s.response_text
      assert s.response_text == sb.response_text and s.applied_text == ""
      assert s.response_ids[-1] == test_tokenizer.convert_tokens_to_ids("<|im_end|>")
      assert s.loss_mask == [0] * len(s.prompt_ids) + [1] * len(s.response_ids)
    # The prompts are the student's: its system message and the section being read.
    assert r.steps[0].prompt_text.startswith("<|im_start|>system\n")
    assert ep.sections[0] in r.steps[0].prompt_text


def test_render_is_the_sampling_prompt(test_tokenizer):
  """`render(o)` gives the ids `act` samples from (no model call needed to get them)."""
  from atommem_jax.models.transformer import init_params

  student, mc = _student(test_tokenizer)
  params = init_params(mc, seed=0)
  ep = env_lib.Episode("e", ("Who founded the museum?",), (("Ann Lee",),),
                       "The museum was founded by Ann Lee in 1901. " * 4)
  seen = []

  class Spy(pol.AtomMemPolicy):
    def render(self, o):
      p = super().render(o)
      seen.append((o, p))
      return p

  spy = Spy(student.lm)
  cfg = RolloutConfig(env=env_lib.EnvConfig(chunk_size=40, overlap=4, max_calls=2),
                      memory=mem_lib.MemoryConfig(capacity=8, dim=64, top_k=3))
  eng = RolloutEngine(cfg, test_tokenizer, HashingEmbedder(dim=64).embed)
  [t] = eng.run([ep], spy, params=params).trajectories
  for (o, p), s in zip(seen, t.steps):
    assert p.ids == s.prompt_ids == student.render(o).ids
    # A sampled action's text is its decoded response ids.
    assert s.response_text == test_tokenizer.decode(s.response_ids, skip_special_tokens=True)


def test_lm_client_takes_params_per_call(test_tokenizer):
  from atommem_jax.models.transformer import init_params

  student, mc = _student(test_tokenizer)
  prompt = student.lm.encoder.encode([{"role": "user", "content": "Name a city."}])
  p = pol.Prompt(prompt[0], prompt[1], env_lib.ANSWERING)
  a0 = student.lm.complete(init_params(mc, seed=0), [p], 6)[0]
  a1 = student.lm.complete(init_params(mc, seed=1), [p], 6)[0]
  assert a0.response_ids != a1.response_ids  # other weights, other greedy tokens
  with pytest.raises(ValueError, match="params is None"):
    student.lm.complete(None, [p], 6)


def test_prompt_cut_is_head_and_tail_and_counted(test_tokenizer):
  student, _ = _student(test_tokenizer, max_prompt_tokens=64)
  text, ids = student.lm.encoder.encode([{"role": "user", "content": "word " * 200}])
  full = test_tokenizer(text, add_special_tokens=False)["input_ids"]
  assert len(ids) == 64 and ids[:32] == full[:32] and ids[32:] == full[-32:]
  assert student.lm.truncated_prompts == 1 and student.lm.max_raw_prompt_len == len(full)
  assert np.all(np.asarray(ids) >= 0)
