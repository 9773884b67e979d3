"""SFT of Qwen3-8B as an AtomMem policy on a TPU pod (the paper's base model).

  python -m atommem_jax.training --config=configs/qwen3_8b_sft.py \
      --config.model.source=hf:/ckpt/Qwen3-8B --config.data.source=jsonl \
      --config.data.jsonl=gs://.../teacher_trajectories.jsonl --config.output_dir=gs://.../qwen3_8b_sft

Settings: bfloat16 compute with float32 master weights, FSDP over every chip (weights,
gradients and Adam moments sharded on their embed dimension), layer rematerialisation,
the paper's 4,000-token sections, packed rows of 16,384 tokens (the paper's SFT length,
18,384, rounded to a multiple of 1,024 that packs its 8K-token turns two per row), lr 1e-5
with warmup and cosine decay. launch/aot.py checks that the step fits a topology.
"""
from configs import common


def get_config():
  c = common.train_base()
  c.output_dir = "outputs/qwen3_8b_sft"
  c.algorithm = "sft"
  c.method = "atommem"
  c.model.source = "hf:/ckpt/Qwen3-8B"
  c.model.dtype = "bfloat16"
  c.embedder = "minilm"
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
  c.sharding_rules = "fsdp_tp"
  c.env.chunk_size = 4000
  c.env.overlap = 100
  c.env.max_calls = 41
  c.sampling.max_prompt_tokens = 8192
  c.sampling.max_new_tokens = 2048
  c.sampling.max_answer_tokens = 256
  c.steps = 2000
  c.checkpoint_every = 200
  c.optim.learning_rate = 1e-5
  c.optim.warmup_steps = 50
  c.optim.weight_decay = 0.01
  c.batch.rows = 64
  c.batch.seq_len = 16384
  c.batch.micro_batches = 4
  c.loss.chunk_size = 512
  c.loss.max_segments = 16
  return c
