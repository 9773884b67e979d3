"""Smoke config: a random tiny model and the test tokenizer run the whole pipeline on CPU.

  python -m atommem_jax.eval --config=configs/tiny_test.py
Answers are nonsense; the machinery (rollouts, baselines, reports, viewer) is exercised.
"""
from configs import common


def get_config():
  c = common.base()
  c.output_dir = "outputs/tiny_test"
  c.max_examples = 2
  c.methods = "atommem,memagent,rag,static_summary,full_context"
  c.model.source = "tiny"
  c.embedder = "hashing"
  c.data.dataset = "synthetic"
  c.data.num_docs = "6"
  c.env.chunk_size = 48
  c.env.overlap = 8
  c.env.max_calls = 12
  c.sampling.max_new_tokens = 24
  c.sampling.max_answer_tokens = 12
  # The test tokenizer's small vocabulary spends ~1,000 tokens on the AtomMem template alone.
  c.sampling.max_prompt_tokens = 1536
  c.max_memory_chars = 200
  return c
