"""Multi-turn GRPO of Qwen3-8B (from its SFT run) on a TPU pod, with the paper's settings.

  python -m atommem_jax.training --config=configs/qwen3_8b_grpo.py \
      --config.model.source=orbax:gs://.../qwen3_8b_sft --config.output_dir=gs://.../qwen3_8b_grpo

Paper settings: G=8 rollouts per question, temperature 1.0, top-p 0.99, lr 1e-6, asymmetric
clipping 0.2 / 0.28, k3 KL 0.001 to the SFT policy, no std normalisation of advantages,
exact-match reward; 4,000-token sections, prompts up to 8K tokens, responses up to 2K.
8 questions per iteration (the paper's) as the default. On a pod every host samples whole
questions (training/grpo.py), so questions_per_step must divide by the number of hosts: the
paper's 8 works on up to 8 hosts (v5p:2x4x4 = 32 chips); 64-chip slices (v5p:4x4x4, v6e:8x8)
have 16 hosts and need --config.grpo.questions_per_step=16 (as the checks below use).

Training rows hold one turn each (an 8K prompt + a 2K response in 10,240 tokens), 64 rows
per optimizer step (one per chip on 64 chips), every layer rematerialised. Checked ahead of
time (launch/aot.py; numbers in launch/README.md "Ahead-of-time checks"):

  python launch/aot.py --config=configs/qwen3_8b_grpo.py --topology=v5p:4x4x4 \
      --config.grpo.questions_per_step=16

compiles the train step, the reference policy's log-prob pass and one host's sampler
(prefill + decode). With the splash attention kernel (model.attention=splash, from the SFT
config): on 64 v5p chips every phase fits (at most 24.0 GB of 95 GB per chip), the train
step's est. MFU is 76.4% and decoding makes 129 tokens/s per chip; on v5p-64
(--topology=v5p:2x4x4 --config.batch.micro_batches=2, the paper's 8 questions) 76.3%, at
most 26.0 GB; on 64 v6e chips (--topology=v6e:8x8) at most 24.0 GB of 32 GB, est. MFU
75.9%, 70 tokens/s per chip decoding. With XLA attention (--config.model.attention=xla):
69.9%, 43.1% and 20.0%.
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
  c.grpo.questions_per_step = 8  # paper; must divide by the hosts (see the docstring)
  c.grpo.group_size = 8
  c.grpo.normalize_std = False
  c.loss.clip_low, c.loss.clip_high, c.loss.kl_coef = 0.2, 0.28, 0.001
  c.sampling.temperature = 1.0
  c.sampling.top_p = 0.99
  c.batch.seq_len = 10240  # one turn per row: an 8K prompt + a 2K response
  c.batch.rows = 64
  c.batch.micro_batches = 1
  return c
