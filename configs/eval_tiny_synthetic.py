"""The small from-scratch policy of configs/tiny_synthetic_sft.py on held-out synthetic CRUD
tasks, against the static memory workflows and the scripted oracle.

  python -m atommem_jax.eval --config=configs/eval_tiny_synthetic.py \
      [--config.model.source=orbax:outputs/tiny_synthetic_sft] [--config.data.num_docs=8]

The held-out tasks of configs/eval_trained_synthetic.py (seed 0; 8 and 12 sections, 2
corrections, 2 retractions: above every training knob), with the policy's training settings
(compact prompts, hashing embedder, memory capacity 32, sampling budgets 128 / 64 tokens;
prompts may be longer than training's 1,024 tokens, the longest seen was 689).
Measured (2026-12-01, 2 CPU cores, 8 sections, 32 tasks, ~1 min): the policy after 1,810
SFT steps EM 0.031, scratchpad_only 0.562, create_all_read_once 0.281, oracle 1.000.
"""
from configs import common
from configs import eval_trained_synthetic
from configs import tiny_synthetic_sft


def get_config():
  c = eval_trained_synthetic.get_config()
  c.output_dir = "outputs/eval_tiny_synthetic"
  c.model.source = "orbax:outputs/tiny_synthetic_bpe"
  c.method_models = ""
  c.methods = "atommem,scratchpad_only,create_all_read_once,oracle"
  common.take_policy_settings(c, tiny_synthetic_sft.get_config())
  c.sampling.max_prompt_tokens = 2048
  c.sampling.batch_size = 32
  return c
