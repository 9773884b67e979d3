"""The trained SmolLM2-135M AtomMem policy on held-out synthetic CRUD tasks, against the
static memory workflows and the scripted oracle.

  python -m atommem_jax.eval --config=configs/eval_trained_synthetic.py \
      [--config.model.source=lora:outputs/smollm2_sft/lora.safetensors]

Held out from training (configs/smollm2_sft.py: data.seed=1000, 6 sections, 1 correction, 1
retraction; configs/smollm2_synthetic_sft.py: 4-7 sections, at most 1 of each): tasks from
seed 0 (another stream), 8 and 12 sections per document, 2 corrections and 2 retractions. `atommem` is the trained policy with the compact prompts it
was trained on, `atommem@base` the prompted base model with the same prompts; `scratchpad_only` (facts kept in a scratchpad of 2) and
`create_all_read_once` (every fact created, never updated or deleted) are static workflows
given the same relevance signal, and `oracle` is the scripted teacher (an upper bound: it
knows the task's events). Exact match is the metric (answers are names or counts, so a
one-letter reply never scores).
"""
from configs import eval_trained_smollm2


def get_config():
  c = eval_trained_smollm2.get_config()
  c.output_dir = "outputs/eval_trained_synthetic"
  c.max_examples = 32
  c.methods = "atommem,atommem@base,scratchpad_only,create_all_read_once,oracle"
  c.data.dataset = "synthetic"
  c.data.num_docs = "8,12"  # sections per document (training: at most 7)
  c.data.synthetic_task = "mixed"
  c.data.synthetic_corrections = 2  # training: at most 1
  c.data.synthetic_retractions = 2  # training: at most 1
  c.env.max_calls = 0  # automatic: every section twice + every allowed query + answers
  return c
