"""GRPO of the from-scratch policy of configs/tiny_synthetic_sft.py on synthetic CRUD tasks
(CPU): the RL half of the CPU-sized learning experiment.

  python -m atommem_jax.training --config=configs/tiny_synthetic_sft.py    # first
  python -m atommem_jax.training --config=configs/tiny_synthetic_grpo.py
  python -m atommem_jax.eval --config=configs/eval_tiny_synthetic.py \
      --config.model.source=orbax:outputs/tiny_synthetic_grpo --config.data.num_docs=8

Starts from the SFT run's latest parameters (`init_from`) with its tokenizer (saved in its
model/). Each iteration samples 4 tasks of another stream than the SFT data's (data.seed=2000,
the same varied difficulty) x 8 rollouts (temperature 1.0, top-p 0.99), rewards exact match
minus 0.1 x the share of turns with parse errors, and keeps a k3 KL of 0.001 to the SFT
policy. The reward curve and per-turn CRUD frequencies are in output_dir/training.png and
ops.png; rerunning the command resumes.

Measured on 2 CPU cores (2026-12-01; docs/results.md, "GRPO from the SFT policy"): 14
iterations (56 steps) in 15 min before a SIGTERM. The rollout reward was noisy (4 tasks an
iteration, 0.19-1.00) with no trend. Held-out EM was 0.375 at 8 sections and 0.281 at 12;
the SFT policy scores 0.375 at both.
"""
from configs import tiny_synthetic_sft

SFT_RUN = "outputs/tiny_synthetic_bpe"


def get_config():
  c = tiny_synthetic_sft.get_config()
  c.algorithm = "grpo"
  c.output_dir = "outputs/tiny_synthetic_grpo"
  c.init_from = SFT_RUN
  c.model.tokenizer = f"{SFT_RUN}/model"  # the SFT run's task tokenizer, not a new one
  c.model.tiny_tokenizer_vocab = 0
  c.steps = 80  # optimizer steps; ~6 an iteration (32 rollouts' turns in rows of 32 x 768)
  c.checkpoint_every = 6
  c.optim.learning_rate = 1e-4
  c.optim.warmup_steps = 0
  c.loss.prompt_weight = 0.0  # GRPO's loss is on the policy's own tokens
  c.grpo.questions_per_step = 4
  c.grpo.group_size = 8
  c.grpo.reward.parse_error_penalty = 0.1
  c.sampling.temperature = 1.0
  c.sampling.top_p = 0.99
  c.sampling.batch_size = 32
  c.data.seed = 2000  # other tasks than the SFT data's
  c.data.answer_repeats = 1  # SFT packing options; GRPO trains on its own rollouts
  c.data.copy_examples = 0
  c.batch.rows = 32
  return c
