"""GRPO of SmolLM2-135M-Instruct on synthetic CRUD tasks, from the synthetic SFT run, with
LoRA: the RL half of the synthetic learning experiment.

  python -m atommem_jax.training --config=configs/smollm2_synthetic_grpo.py

Starts from the final adapters of `init_from=outputs/smollm2_synthetic_sft`
(configs/smollm2_synthetic_sft.py; run that first). Each iteration samples 8 tasks of another
stream than the SFT data's (data.seed=2000; the same varied difficulty, 4-7 sections) x 8 rollouts
(temperature 1.0, top-p 0.99) in one batch of 64, rewards exact match minus 0.1 x the share
of turns with parse errors, and keeps a k3 KL of 0.001 to the SFT policy. Made for one
accelerator (launch/accelerator_synthetic.sh); the reward curve and per-turn CRUD frequencies
are in output_dir/training.png and ops.png.

Measured on one H200 (2026-11-30; docs/results.md, "Synthetic learning on one GPU"): one
iteration within a 170 s cap (157 s sampling with a cold compile cache, 6.7 s log-probs,
15.2 s for 9 optimizer steps); rollout reward 0.531; held-out EM 0.094 (SFT alone 0.062).
"""
from configs import smollm2_synthetic_sft
from configs.smollm2_grpo import lora_grpo


def get_config():
  c = lora_grpo(smollm2_synthetic_sft.get_config(), "outputs/smollm2_synthetic_sft")
  c.output_dir = "outputs/smollm2_synthetic_grpo"
  c.steps = 400
  c.checkpoint_every = 4
  c.grpo.questions_per_step = 8
  c.sampling.batch_size = 64
  c.batch.rows = 16
  return c
