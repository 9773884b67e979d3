"""The small from-scratch policy of configs/tiny_synthetic_sft.py on held-out synthetic CRUD
tasks, against the static memory workflows and the scripted oracle.

  python -m atommem_jax.eval --config=configs/eval_tiny_synthetic.py \
      [--config.model.source=orbax:outputs/tiny_synthetic_bpe] [--config.data.num_docs=8]

The policy is the one shipped in the package (atommem_jax/trained/tiny_synthetic_atommem/, a
Hugging Face folder with its task tokenizer: the SFT run of configs/tiny_synthetic_sft.py);
`--config.model.source=orbax:<run dir>` evaluates your own run. The held-out tasks of
configs/eval_trained_synthetic.py (seed 0; 8 and 12 sections, 2 corrections, 2 retractions:
above every training knob), with the policy's training settings (compact prompts, hashing
embedder, memory capacity 32, sampling budgets 128 / 64 tokens). Results: docs/results.md,
"A from-scratch policy that copies"; ~1 min per length on 2 CPU cores.
"""
import pathlib

import atommem_jax
from configs import common
from configs import eval_trained_synthetic
from configs import tiny_synthetic_sft

SHIPPED = pathlib.Path(atommem_jax.__file__).parent / "trained" / "tiny_synthetic_atommem"


def get_config():
  c = eval_trained_synthetic.get_config()
  c.output_dir = "outputs/eval_tiny_synthetic"
  c.model.source = f"hf:{SHIPPED}"
  c.method_models = ""
  c.methods = "atommem,scratchpad_only,create_all_read_once,oracle"
  common.take_policy_settings(c, tiny_synthetic_sft.get_config())
  c.sampling.max_prompt_tokens = 2048
  c.sampling.batch_size = 32
  return c
