"""SFT of SmolLM2-135M-Instruct (the shipped GGUF) on the scripted oracle's synthetic CRUD
trajectories, with LoRA: the SFT half of the synthetic learning experiment.

  python -m atommem_jax.training --config=configs/smollm2_synthetic_sft.py

Made for one accelerator (launch/accelerator_synthetic.sh runs it, then GRPO from it, then
the held-out evaluation); on 2 CPU cores one step of 16 rows takes minutes. Data: 256 tasks
of the seeded synthetic stream (data.seed=1000), each with its own difficulty drawn at or
below the knobs (`data.synthetic_vary`: 4-7 sections, a 1- or 2-hop chain with 0 or 1
correction, or a count of 2-4 members with 0 or 1 retraction), rendered with the compact
AtomMem prompts through the rollout engine, every answering turn packed twice. The memory's embedder is the hashing one (no
MiniLM weights to carry to the accelerator); evaluate with the same:
`--config.embedder=hashing`. Held-out tasks (seed 0, 8+ sections, 2 corrections and 2
retractions) are in configs/eval_trained_synthetic.py.

Measured on one H200 (2026-11-30; docs/results.md, "Synthetic learning on one GPU"), with
the then fixed difficulty (6 sections, a 2-hop chain with one correction or a count of 4 with
one retraction, no `synthetic_vary`) and the old oracle notes: 2,936 turns -> 665 rows of 1,536; stopped at step 160 (3.8 epochs) by a 120 s cap, 0.31 s a step
(73K tokens/s); loss 1.43 -> 0.01. Held-out EM 0.062 (32 tasks, 8 sections) against 0.562
for scratchpad_only: the policy learned the training difficulty (53% on GRPO's 6-section
tasks) but not more events. That run's oracle notes counted the key facts ("Progress: k of
3"), which the student copied; the notes are fixed, and the varied difficulty removes the
other constants (always one correction, always 6 sections) a student could learn instead
of the rule. The run is to be repeated with both.
"""
from configs import smollm2_sft


def get_config():
  c = smollm2_sft.get_config()
  c.output_dir = "outputs/smollm2_synthetic_sft"
  c.embedder = "hashing"
  c.data.source = "synthetic"
  c.data.seed = 1000
  c.data.num_examples = 256
  c.data.synthetic_examples = 0
  c.data.synthetic_chunks = 7  # at most; held out: 8 and 12
  c.data.synthetic_vary = True
  c.data.answer_repeats = 2
  c.data.overlong = "error"  # the oracle's turns fit 160 / 96 (longest 67 / 29 tokens)
  c.batch.rows = 16
  c.steps = 200
  c.checkpoint_every = 25
  c.optim.learning_rate = 5e-4
  c.optim.warmup_steps = 10
  return c
