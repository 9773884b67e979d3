"""GRPO of SmolLM2-135M-Instruct from its SFT run (configs/smollm2_sft.py), on CPU, with LoRA.

  python -m atommem_jax.training --config=configs/smollm2_grpo.py --config.output_dir=outputs/smollm2_grpo

Starts from the final adapters of `init_from=outputs/smollm2_sft` (run that first) on the
same base (SmolLM2-135M-Instruct), so the result is again one adapter file over the shipped
GGUF (output_dir/lora.safetensors). Each iteration samples 4 train questions (the train
splits, own paragraphs; other questions than the SFT data's first ones: data.seed) x 8
rollouts (temperature 1.0, top-p 0.99), rewards exact match minus 0.1 x the share of turns
with parse errors, and keeps a k3 KL of 0.001 to the SFT policy. The reward / accuracy
curves and the per-turn CRUD frequencies are in output_dir/training.png and ops.png.

Measured on 2 CPU cores (2026-11-30; docs/results.md, "GRPO on the train questions"): one
iteration takes 47 minutes (sampling 749 s, old + reference log-probs 614 s, 11 update steps
1,450 s); rollout accuracy 1 of 32, parse errors in 36% of turns; after that one iteration
the held-out EM is unchanged (0.000). Tens of iterations need an accelerator.
"""
from configs import smollm2_sft


def lora_grpo(c, init_from: str):
  """The LoRA GRPO recipe on top of an SFT config `c`, continuing the adapters of the SFT run
  `init_from` (shared with configs/smollm2_synthetic_grpo.py)."""
  c.algorithm = "grpo"
  c.init_from = init_from
  c.optim.learning_rate = 5e-5  # LoRA adapters: larger steps than full fine-tuning's 1e-6
  c.optim.warmup_steps = 0
  c.grpo.group_size = 8
  c.grpo.reward.parse_error_penalty = 0.1
  c.sampling.temperature = 1.0
  c.sampling.top_p = 0.99
  c.data.seed = 2000  # other questions (or tasks) than the SFT data's
  c.data.synthetic_examples = 0
  c.data.answer_repeats = 1  # an SFT packing option; GRPO trains on its own rollouts
  return c


def get_config():
  c = lora_grpo(smollm2_sft.get_config(), "outputs/smollm2_sft")
  c.output_dir = "outputs/smollm2_grpo"
  c.steps = 40
  c.checkpoint_every = 2
  c.grpo.questions_per_step = 4
  c.batch.rows = 8
  return c
