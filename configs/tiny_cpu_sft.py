"""SFT of a tiny random policy on synthetic CRUD tasks (CPU, minutes).

  python -m atommem_jax.training --config=configs/tiny_cpu_sft.py --config.output_dir=outputs/tiny_sft

A ~1M-parameter Qwen3-style model with the test tokenizer learns the scripted oracle's
memory operations on 64 seeded synthetic tasks (6 sections, a 2-hop chain with a correction,
or a count with a retraction), rendered with the compact AtomMem prompts. Expected: the loss
(cross-entropy on the oracle's response tokens only) falls from ~6.3 (uniform over the vocab)
to well under 1 within the default steps; the run writes metrics.jsonl, tb/, training.png,
checkpoints/ and hf/ under output_dir, and rerunning the command resumes.
"""
from configs import common


def get_config():
  c = common.train_base()
  c.output_dir = "outputs/tiny_cpu_sft"
  c.algorithm = "sft"
  c.method = "atommem"
  c.steps = 200
  c.checkpoint_every = 50
  c.model.source = "tiny"
  c.model.tiny = dict(hidden_size=128, intermediate_size=256, num_layers=4, num_heads=4,
                      num_kv_heads=2, head_dim=32)
  c.embedder = "hashing"
  c.prompts.system = "compact_system.txt"
  c.prompts.step = "compact_step.txt"
  c.prompts.final = "compact_final.txt"
  c.env.chunk_size = 64
  c.env.overlap = 0
  c.env.max_calls = 0  # automatic: every section twice + every allowed query + answers
  c.memory.capacity = 32
  c.sampling.max_prompt_tokens = 1024
  c.sampling.max_new_tokens = 128  # the oracle's longest reading response: 103 test-tokenizer tokens
  c.sampling.max_answer_tokens = 64  # its answering-phase query: up to 46
  c.max_memory_chars = 200
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 20
  c.loss.chunk_size = 512
  c.batch.rows = 8
  c.batch.seq_len = 768
  c.data.num_examples = 64
  c.data.synthetic_chunks = 6
  return c
