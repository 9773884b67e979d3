"""Prompted (untrained) SmolLM2-135M-Instruct as an AtomMem agent vs baselines, quickly.

(The README's main job before a trained policy shipped; configs/default.py is now the
trained policy.)

Runs on 2 CPU cores in about 11 minutes (measured: AtomMem 5.5, MemAgent 3.8, RAG 1.5;
the rest is loading): 3 real HotpotQA dev questions, MemAgent-style
documents of 50 Wikipedia paragraphs (~7K tokens) read in 2,048-token sections, at most 6
reading calls per episode (then it answers), 128 new tokens per call.

  python -m atommem_jax.eval --config=configs/eval_prompted_smollm2_quick.py
Scale up with overrides, e.g. `--config.max_examples=50 --config.data.num_docs=50,200`
(or configs/eval_hotpotqa_smollm2.py for every method on 50 questions), or
`--config.env.chunk_size=4000 --config.env.max_calls=41 --config.sampling.max_prompt_tokens=8192
--config.model.source=hf:/ckpt/AtomMem-8B` on an accelerator (a 4,000-token section needs a
prompt budget above 4,096: `validate` refuses a budget that would cut every reading prompt).
The untrained 135M model mostly fails the protocol; these numbers are the starting point
that SFT/GRPO must beat.
"""
from configs import common


def get_config():
  c = common.base()
  c.output_dir = "outputs/eval_prompted_smollm2_quick"
  c.max_examples = 3
  c.methods = "atommem,memagent,rag"
  c.data.dataset = "hotpotqa"
  c.data.num_docs = "50"
  c.env.chunk_size = 2048
  c.env.max_calls = 6
  c.sampling.max_new_tokens = 128
  c.sampling.max_answer_tokens = 32
  c.sampling.max_prompt_tokens = 4096
  c.max_memory_chars = 400
  c.verbose = True
  return c
