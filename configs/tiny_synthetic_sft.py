"""SFT of a small policy trained from scratch on varied synthetic CRUD tasks (CPU): does the
memory policy become learnable without a pretrained model, at CPU cost?

  python -m atommem_jax.training --config=configs/tiny_synthetic_sft.py
  python -m atommem_jax.eval --config=configs/eval_tiny_synthetic.py   # held-out tasks

A 3.4M-parameter Qwen3-style model (4 layers, width 256) with the 480-token test tokenizer,
on the scripted oracle's trajectories of 1,024 seeded tasks whose difficulty is drawn at or
below the knobs (`data.synthetic_vary`: 4-7 sections, 1-2 hops, at most one correction or
retraction): 10,547 turns, 5.1M prompt + 0.41M response tokens, one turn per row of 768,
answering turns packed twice, compact AtomMem prompts, hashing embedder.

Measured on 2 CPU cores (2026-12-01; docs/results.md, "A policy trained from scratch"; the
run stopped at 1,173, then resumed with `--config.loss.prompt_weight=0.1 --config.steps=2500`,
which also restarted the cosine schedule at a higher learning rate):
2.0-2.2 s a step of 8 rows (~2,000 tokens/s), so 1,319 steps an epoch take ~45 min. Response
cross-entropy 4.49 (steps 1-25) -> 0.78 (200) -> 0.46 (800) -> 0.42 (1,100); 1,173 steps
responses-only, then steps 1,174-1,810 with `loss.prompt_weight=0.1` (response NLL 0.36 at
1,810). On 32 held-out tasks (8 sections, 2 corrections, 2 retractions) the step-1,810
policy writes valid protocol (0.02 parse errors a step) with the oracle's mix of operations,
but copies names wrongly: EM 0.031, against 0.562 for scratchpad_only. Rerunning the command
with more `--config.steps` continues the run.
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
