"""SFT then GRPO of a tiny random policy on synthetic CRUD tasks (CPU, minutes).

  python -m atommem_jax.training --config=configs/tiny_cpu_grpo.py --config.output_dir=outputs/tiny_grpo

One command, two runs: a warm-start SFT on the scripted oracle's trajectories (exactly
configs/tiny_cpu_sft.py's, in output_dir/sft), then GRPO from its parameters: per
iteration 4 synthetic questions x 4 rollouts (temperature 1.0, top-p 0.99) through the
rollout engine, exact-match reward with a small penalty for parse errors, one advantage per
episode shared by its turns, asymmetric clipping 0.2/0.28, k3 KL 0.001 to the SFT policy.
Expected: metrics.jsonl gains reward/accuracy/ops_per_turn per step; training.png and
ops.png plot them; rerunning the command resumes (the SFT part is then already finished).
"""
from configs import common
from configs import tiny_cpu_sft


def get_config():
  c = tiny_cpu_sft.get_config()
  g = common.train_base()
  c.grpo = g.grpo
  c.warm_start = g.warm_start
  c.output_dir = "outputs/tiny_cpu_grpo"
  c.algorithm = "grpo"
  c.steps = 40  # GRPO optimizer steps (about 6-8 per iteration here)
  c.checkpoint_every = 10
  c.warm_start.sft_steps = 200
  c.warm_start.learning_rate = 3e-3
  c.optim.learning_rate = 2e-4
  c.optim.warmup_steps = 0
  c.grpo.questions_per_step = 4
  c.grpo.group_size = 4
  c.grpo.reward.parse_error_penalty = 0.1
  c.sampling.temperature = 1.0
  c.sampling.top_p = 0.99
  c.batch.rows = 8
  return c
