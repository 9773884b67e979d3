"""SFT of Qwen3-8B as an AtomMem policy on a TPU pod (the paper's base model).

  python -m atommem_jax.training --config=configs/qwen3_8b_sft.py \
      --config.model.source=hf:/ckpt/Qwen3-8B --config.data.source=jsonl \
      --config.data.jsonl=gs://.../teacher_trajectories.jsonl --config.output_dir=gs://.../qwen3_8b_sft

Settings: bfloat16 compute with float32 master weights, FSDP over every chip (weights,
gradients and Adam moments sharded on their embed dimension), every layer rematerialised
(only its input is kept for the backward pass), the layers scanned, the paper's 4,000-token
sections, lr 1e-5 with warmup and cosine decay. Packed rows of 18,432 tokens: the paper's SFT
length, 18,384, rounded up to a multiple of the 512-token attention query block (it holds two
8K-token turns). 64 rows per optimizer step, one row per chip per step on 64 chips.

Checked ahead of time (launch/aot.py, numbers in launch/README.md "Ahead-of-time checks"):

  python launch/aot.py --config=configs/qwen3_8b_sft.py --topology=v5p:4x4x4

fits 64 v5p chips at 50.8 GB of 95 GB per chip, est. MFU 53.0% (bound by the attention's
HBM traffic). On 64 v6e chips (32 GB each) 18,432-token rows do not fit (the attention's
temporaries: 49 GB per chip); --config.batch.seq_len=12288 does (26.8 GB, est. MFU 18.6%).
"""
from configs import common


def get_config():
  c = common.train_base()
  c.output_dir = "outputs/qwen3_8b_sft"
  c.algorithm = "sft"
  c.method = "atommem"
  c.model.source = "hf:/ckpt/Qwen3-8B"
  c.model.architecture = "qwen3_8b"  # the checkpoint's shape: launch/aot.py compiles without it
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
  c.batch.seq_len = 18432
  c.batch.micro_batches = 1
  c.loss.chunk_size = 512  # output-head positions per chunk: [rows/chip, 512, 151,936] float32 logits
  c.loss.remat = True
  c.loss.max_segments = 16
  return c
