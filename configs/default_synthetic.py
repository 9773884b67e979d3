"""The README's main job (synthetic half): the shipped from-scratch AtomMem policy (3.67M
parameters, trained on CPU by configs/tiny_synthetic_sft.py) vs the static memory workflows
and the scripted oracle on held-out synthetic CRUD tasks.

  python -m atommem_jax.eval --config=configs/default_synthetic.py

configs/eval_tiny_synthetic.py at 8 sections: 32 tasks of seed 0, never trained on, with 2
corrections and 2 retractions where training had at most one of each (~1 min on 2 CPU
cores). Scale up with `--config.data.num_docs=8,12` or `--config.max_examples=64`.
"""
from configs import eval_tiny_synthetic


def get_config():
  c = eval_tiny_synthetic.get_config()
  c.output_dir = "outputs/default_synthetic"
  c.max_examples = 32
  c.data.num_docs = "8"
  return c
