"""SFT of a small policy trained from scratch on varied synthetic CRUD tasks (CPU): the memory
policy learned without a pretrained model, at CPU cost.

  python -m atommem_jax.training --config=configs/tiny_synthetic_sft.py
  python -m atommem_jax.eval --config=configs/eval_tiny_synthetic.py \
      --config.model.source=orbax:outputs/tiny_synthetic_bpe     # held-out tasks

A 3.67M-parameter Qwen3-style model (4 layers, width 256) on the scripted oracle's
trajectories of 1,024 seeded tasks whose difficulty is drawn at or below the knobs
(`data.synthetic_vary`: 4-7 sections, 1-2 hops, at most one correction or retraction; 10,547
turns, answering turns packed twice), plus 8,192 "repeat this section" copy turns
(`data.copy_examples`), with its own 1,024-token BPE trained on the task text
(`model.tiny_tokenizer_vocab`), compact AtomMem prompts, hashing embedder, and the prompt
tokens' loss at weight 0.1. In all: 3.55M prompt + 0.71M response tokens, 727 batches of
8 x 768 an epoch.

Measured on 2 CPU cores (2026-12-01; docs/results.md, "A from-scratch policy that copies"):
2.1-2.3 s a step, 2,400 steps in 96 min. Copying set in around step 450. On 32 held-out tasks (8
sections, 2 corrections, 2 retractions) EM rose from 0.125 (step 800) through 0.250 (1,200)
and 0.375 (1,600), and stayed at 0.375 at 2,400 (12 of 18 chain tasks, 0 of 14 count tasks;
the same at 12 sections), against 0.562 for scratchpad_only. The policy shipped
in atommem_jax/trained/tiny_synthetic_atommem/ is this run's final export. Rerunning the command
resumes.
"""
from configs import tiny_cpu_sft


def get_config():
  c = tiny_cpu_sft.get_config()
  c.output_dir = "outputs/tiny_synthetic_bpe"
  c.model.tiny_tokenizer_vocab = 1024  # a BPE of the task text: names in 2-3 tokens, not 6-12
  c.model.tiny = dict(hidden_size=256, intermediate_size=768, num_layers=4, num_heads=4,
                      num_kv_heads=2, head_dim=64)
  c.steps = 2400
  c.loss.prompt_weight = 0.1
  c.checkpoint_every = 100
  c.optim.learning_rate = 2e-3
  c.optim.warmup_steps = 50
  c.data.num_examples = 1024
  c.data.synthetic_chunks = 7
  c.data.synthetic_vary = True
  c.data.answer_repeats = 2
  c.data.copy_examples = 8192  # "repeat this section" turns: copying, learnt from scratch
  return c
