"""The README's main job (synthetic half): the shipped trained SmolLM2-135M AtomMem policy vs
the static memory workflows and the scripted oracle on held-out synthetic CRUD tasks.

  python -m atommem_jax.eval --config=configs/default_synthetic.py

configs/eval_trained_synthetic.py on fewer tasks (seed 0, never trained on; 8 sections with
2 corrections and 2 retractions, where training had 6 sections with one of each), so that
`launch/run_local.sh` finishes in minutes on 2 CPU cores. Scale up with
`--config.max_examples=32 --config.data.num_docs=8,12` (or run eval_trained_synthetic.py).
"""
from configs import eval_trained_synthetic


def get_config():
  c = eval_trained_synthetic.get_config()
  c.output_dir = "outputs/default_synthetic"
  c.max_examples = 8
  c.data.num_docs = "8"
  c.sampling.batch_size = 8
  c.methods = "atommem,scratchpad_only,create_all_read_once,oracle"
  return c
