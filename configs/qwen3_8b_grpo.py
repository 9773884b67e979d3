"""Multi-turn GRPO of Qwen3-8B (from its SFT run) on a TPU pod, with the paper's settings.

  python -m atommem_jax.training --config=configs/qwen3_8b_grpo.py \
      --config.model.source=orbax:gs://.../qwen3_8b_sft --config.output_dir=gs://.../qwen3_8b_grpo

Paper settings: G=8 rollouts for each of 8 questions per batch, temperature 1.0, top-p 0.99,
lr 1e-6, asymmetric clipping 0.2 / 0.28, k3 KL 0.001 to the SFT policy, no std
normalisation of advantages, exact-match reward; 4,000-token sections, prompts up to 8K
tokens, responses up to 2K.
"""
from configs import qwen3_8b_sft


def get_config():
  c = qwen3_8b_sft.get_config()
  c.output_dir = "outputs/qwen3_8b_grpo"
  c.algorithm = "grpo"
  c.model.source = "orbax:outputs/qwen3_8b_sft"
  c.steps = 500
  c.checkpoint_every = 20
  c.optim.learning_rate = 1e-6
  c.optim.warmup_steps = 0
  c.optim.weight_decay = 0.0
  c.grpo.questions_per_step = 8
  c.grpo.group_size = 8
  c.grpo.normalize_std = False
  c.loss.clip_low, c.loss.clip_high, c.loss.kl_coef = 0.2, 0.28, 0.001
  c.sampling.temperature = 1.0
  c.sampling.top_p = 0.99
  c.batch.seq_len = 10240  # one turn per row: an 8K prompt + a 2K response
  c.batch.rows = 64
  c.batch.micro_batches = 4
  return c
