"""A count-focused SFT stage of the shipped from-scratch policy (CPU): the policy that reads
which entry a second retraction names.

  python -m atommem_jax.training --config=configs/tiny_synthetic_sft_counts.py
  python -m atommem_jax.eval --config=configs/eval_tiny_synthetic.py \
      --config.model.source=orbax:outputs/tiny_synthetic_counts     # held-out tasks

Why: the shipped policy (configs/tiny_synthetic_sft.py, stage 1) misses every held-out count
task with two retractions. After a deletion the official protocol shows the same section
once more, and the oracle moves on with a tagless turn; the next section's prompt differs
from that turn only in which person the section retracts, so a second retraction right
after the first must be told apart by name (docs/results.md, "Why the counts fail").
Stage 1 held at most one retraction, so "a deletion note means move on" was always right;
configs/tiny_synthetic_sft_stage2.py added two-retraction tasks at the mixed stream's rate
and did not fix it. Here three tasks in four are count tasks
(`data.synthetic_count_share`) with up to three retractions, so half of them hold a
retraction right after a deletion, and answering turns are weighted 4x (held-out chain
tasks fail on copying the final city, not on the memory). It starts from the shipped
policy's weights and tokenizer (`model.source=hf:...`), with a fresh optimizer, on new
tasks (data.seed=3000). Rerunning the command resumes.
"""
from configs import eval_tiny_synthetic
from configs import tiny_synthetic_sft


def get_config():
  c = tiny_synthetic_sft.get_config()
  c.output_dir = "outputs/tiny_synthetic_counts"
  c.model.source = f"hf:{eval_tiny_synthetic.SHIPPED}"  # its own tokenizer comes with it
  c.model.tiny_tokenizer_vocab = 0
  c.data.seed = 3000  # other tasks than stage 1's (1000), GRPO's (2000) and evaluation's (0)
  c.data.num_examples = 1536
  c.data.synthetic_count_share = 0.75
  c.data.synthetic_corrections = 1  # as stage 1: held-out tasks have 2 (more than training)
  c.data.synthetic_retractions = 3  # 0-3 drawn: a deletion followed by another retraction
  c.data.answer_repeats = 4
  c.data.copy_examples = 1024
  c.steps = 900
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 30
  return c
