"""SFT of SmolLM2-135M-Instruct (the shipped GGUF) as an AtomMem policy, on CPU.

  python -m atommem_jax.training --config=configs/smollm2_sft.py --config.output_dir=outputs/smollm2_sft

Teacher data: the scripted oracle's trajectories on seeded synthetic CRUD tasks, rendered
with the compact AtomMem prompts through the rollout engine (training/data.py). SmolLM2's
9 attention heads do not split over a tensor axis: the "fsdp" rules shard weights over
all devices instead. float32 master weights; set --config.model.dtype=bfloat16 to compute
in bfloat16 on accelerators. Evaluate the result with
`python -m atommem_jax.eval --config=configs/eval_oracle_synthetic.py
 --config.model.source=orbax:outputs/smollm2_sft --config.methods=atommem,oracle ...` (or
the exported `hf:outputs/smollm2_sft/hf`).
"""
from configs import common


def get_config():
  c = common.train_base()
  c.output_dir = "outputs/smollm2_sft"
  c.algorithm = "sft"
  c.method = "atommem"
  c.model.source = "smollm2"
  c.sharding_rules = "fsdp"
  c.embedder = "minilm"
  c.prompts.system = "compact_system.txt"
  c.prompts.step = "compact_step.txt"
  c.prompts.final = "compact_final.txt"
  c.env.chunk_size = 512
  c.env.overlap = 0
  c.env.max_calls = 0
  c.memory.capacity = 64
  c.sampling.max_prompt_tokens = 2048
  c.sampling.max_new_tokens = 160
  c.sampling.max_answer_tokens = 32
  c.max_memory_chars = 300
  c.steps = 300
  c.checkpoint_every = 25
  c.optim.learning_rate = 5e-5
  c.optim.warmup_steps = 20
  c.batch.rows = 8
  c.batch.seq_len = 1024
  c.loss.chunk_size = 128  # [rows, 128, 49,152] float32 logits per chunk: 200 MB
  c.data.num_examples = 96
  c.data.synthetic_chunks = 6
  return c
