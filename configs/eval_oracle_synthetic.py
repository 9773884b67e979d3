"""Scripted oracle and static memory workflows on synthetic CRUD tasks (no model needed).

  python -m atommem_jax.eval --config=configs/eval_oracle_synthetic.py --config.max_examples=20
Expected: the oracle answers 100% (it issues every CRUD op the task needs); the
scratchpad-only and create-everything/read-once workflows score lower on tasks with
corrections and retractions.
"""
from configs import common


def get_config():
  c = common.base()
  c.output_dir = "outputs/eval_oracle_synthetic"
  c.max_examples = 20
  c.methods = "oracle,scratchpad_only,create_all_read_once"
  c.model.source = "none"
  c.embedder = "hashing"
  c.data.dataset = "synthetic"
  c.data.num_docs = "8,16"  # synthetic: sections per document
  c.env.chunk_size = 64
  c.env.overlap = 0
  c.env.max_calls = 0  # automatic budget
  return c
