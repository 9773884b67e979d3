"""GRPO of the count-focused SFT stage (configs/tiny_synthetic_sft_counts.py) on synthetic CRUD
tasks (CPU).

  python -m atommem_jax.training --config=configs/tiny_synthetic_sft_counts.py   # first
  python -m atommem_jax.training --config=configs/tiny_synthetic_grpo_counts.py
  python -m atommem_jax.eval --config=configs/eval_tiny_synthetic.py \
      --config.model.source=orbax:outputs/tiny_synthetic_grpo_counts     # held-out tasks

The settings of configs/tiny_synthetic_grpo.py (4 tasks x 8 rollouts an iteration at
temperature 1.0, exact-match reward minus 0.1 x the share of turns with parse errors, a k3
KL of 0.001 to the starting policy), started from the count stage's latest parameters with
its tokenizer, on tasks of that stage's difficulty from another stream (data.seed=2000).
Rerunning the command resumes.
"""
from configs import tiny_synthetic_grpo
from configs import tiny_synthetic_sft_counts

SFT_RUN = "outputs/tiny_synthetic_counts"


def get_config():
  c = tiny_synthetic_grpo.get_config()
  sft = tiny_synthetic_sft_counts.get_config()
  c.output_dir = "outputs/tiny_synthetic_grpo_counts"
  c.init_from = SFT_RUN
  c.model.tokenizer = f"{SFT_RUN}/model"
  for k in ("synthetic_count_share", "synthetic_corrections", "synthetic_retractions"):
    c.data[k] = sft.data[k]
  return c
