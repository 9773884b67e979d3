"""SFT of Qwen3-8B as an AtomMem policy on a TPU pod (the paper's base model).

  python -m atommem_jax.training --config=configs/qwen3_8b_sft.py \
      --config.model.source=hf:/ckpt/Qwen3-8B --config.data.source=jsonl \
      --config.data.jsonl=gs://.../teacher_trajectories.jsonl --config.output_dir=gs://.../qwen3_8b_sft

Settings: bfloat16 compute with float32 master weights, FSDP over every chip (weights,
gradients and Adam moments sharded on their embed dimension), every layer rematerialised
(only its input is kept for the backward pass), the layers scanned, attention by the Pallas
splash kernel (model.attention=splash, models/splash.py: no [H, T, T] scores in HBM), the
paper's 4,000-token sections, lr 1e-5 with warmup and cosine decay. Packed rows of 18,432
tokens: the paper's SFT length, 18,384, rounded up to a multiple of the kernel's 512-token
block (it holds two 8K-token turns). 64 rows per optimizer step, one row per chip per step on
64 chips.

Checked ahead of time (launch/aot.py, numbers in launch/README.md "Ahead-of-time checks"):

  python launch/aot.py --config=configs/qwen3_8b_sft.py --topology=v5p:2x4x4 --config.batch.micro_batches=2

fits v5p-64 (32 chips) at 29.6 GB of 95 GB per chip, est. MFU 75.1% (compute-bound; the
same on v5p:4x4x4, 23.4 GB, and v6e:8x8, 23.3 of 32 GB). With --config.model.attention=xla
the step is bound by the attention's HBM traffic: 37.4% on v5p-64, 53.0% on v5p:4x4x4, and
18,432-token rows do not fit v6e:8x8 (49 GB per chip).
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
  c.model.attention = "splash"  # TPU: the Pallas kernel (CPU tests run it interpreted)
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
