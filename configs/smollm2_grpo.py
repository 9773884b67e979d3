"""GRPO of SmolLM2-135M-Instruct from its SFT run (configs/smollm2_sft.py), on CPU.

  python -m atommem_jax.training --config=configs/smollm2_grpo.py --config.output_dir=outputs/smollm2_grpo

Starts from `orbax:outputs/smollm2_sft` (run that first, or point --config.model.source at
another run or an hf:<dir>), samples 4 questions x 8 rollouts per iteration (temperature 1.0,
top-p 0.99), rewards exact match minus 0.1 x the share of turns with parse errors, and keeps
a k3 KL of 0.001 to the SFT policy. The reward/accuracy curves and the per-turn CRUD
frequencies are in output_dir/training.png and ops.png.
"""
from configs import smollm2_sft


def get_config():
  c = smollm2_sft.get_config()
  c.output_dir = "outputs/smollm2_grpo"
  c.algorithm = "grpo"
  c.model.source = "orbax:outputs/smollm2_sft"
  c.steps = 100
  c.checkpoint_every = 10
  c.optim.learning_rate = 1e-6 * 5  # the paper's 1e-6 is for 8B; a 135M model moves slower
  c.optim.warmup_steps = 0
  c.grpo.questions_per_step = 4
  c.grpo.group_size = 8
  c.grpo.reward.parse_error_penalty = 0.1
  c.sampling.temperature = 1.0
  c.sampling.top_p = 0.99
  c.data.seed = 2000  # other tasks than the SFT data's
  return c
