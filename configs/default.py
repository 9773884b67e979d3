"""The README's main job: prompted SmolLM2-135M-Instruct as an AtomMem agent vs baselines.

Runs on 2 CPU cores in a few minutes: 4 real HotpotQA dev questions, MemAgent-style
documents of 50 Wikipedia paragraphs (~7K tokens) read in 1,024-token sections.

  python -m atommem_jax.eval --config=configs/default.py
Scale up with overrides, e.g. `--config.max_examples=50 --config.data.num_docs=50,200`,
or `--config.env.chunk_size=4000 --config.model.source=hf:/ckpt/AtomMem-8B` on a pod.
The untrained 135M model mostly fails the protocol; these numbers are the starting point
that SFT/GRPO must beat.
"""
from configs import common


def get_config():
  c = common.base()
  c.output_dir = "outputs/default"
  c.max_examples = 4
  c.methods = "atommem,memagent,rag"
  c.data.dataset = "hotpotqa"
  c.data.num_docs = "50"
  c.env.chunk_size = 1024
  c.env.max_calls = 16
  c.sampling.max_new_tokens = 160
  c.sampling.max_answer_tokens = 32
  c.sampling.max_prompt_tokens = 3072
  c.max_memory_chars = 400
  c.verbose = True
  return c
