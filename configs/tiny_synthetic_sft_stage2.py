"""Second SFT stage of the from-scratch policy (CPU): the same policy, continued on tasks with
up to two corrections and two retractions.

  python -m atommem_jax.training --config=configs/tiny_synthetic_sft.py         # stage 1
  python -m atommem_jax.training --config=configs/tiny_synthetic_sft_stage2.py  # this
  python -m atommem_jax.eval --config=configs/eval_tiny_synthetic.py \
      --config.model.source=orbax:outputs/tiny_synthetic_stage2     # held-out tasks

Why a second stage: stage 1's tasks hold at most one retraction, so a deletion note in the
scratchpad was always followed by the tagless "moving on" turn of the same section. On
held-out tasks with a second retraction the stage-1 policy answered it with "moving on"
too, never deleted the second entry and missed every count (0 of 14). Here a deletion note
meets a later retraction (and an update note a later correction) in training, so the policy
has to read which entry the section retracts. It starts from stage 1's latest parameters
(`init_from`) with stage 1's tokenizer, a fresh optimizer and schedule, on 1,024 new tasks
(data.seed=3000; 4-7 sections, 1-2 hops, at most two corrections or retractions) plus 2,048
copy turns so copying is kept. Rerunning the command resumes.

Measured on 2 CPU cores (2026-12-01; docs/results.md, "A second SFT stage"): 900 steps in
32 min (2.0 s a step; 13,741 turns, 691 batches of 8 x 768 an epoch). It did NOT fix the
counts: on 32 held-out tasks (seed 0; 3 corrections, 5 members, 3 retractions:
`configs/eval_tiny_synthetic.py --config.data.synthetic_corrections=3
--config.data.synthetic_retractions=3 --config.data.synthetic_members=5`) EM 0.312 at 8
sections and 0.344 at 12, the same as stage 1; it still answers a second retraction with
"moving on" (1 of 28 count episodes right).
"""
from configs import tiny_synthetic_sft

STAGE1_RUN = "outputs/tiny_synthetic_bpe"


def get_config():
  c = tiny_synthetic_sft.get_config()
  c.output_dir = "outputs/tiny_synthetic_stage2"
  c.init_from = STAGE1_RUN
  c.model.tokenizer = f"{STAGE1_RUN}/model"  # stage 1's task tokenizer, not a new one
  c.model.tiny_tokenizer_vocab = 0
  c.data.seed = 3000  # other tasks than stage 1's (1000), GRPO's (2000) and evaluation's (0)
  c.data.synthetic_corrections = 2
  c.data.synthetic_retractions = 2
  c.data.copy_examples = 2048
  c.steps = 900
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 30
  return c
