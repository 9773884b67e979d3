"""Prompted SmolLM2-135M-Instruct as AtomMem vs every baseline on 50 real HotpotQA questions.

The untrained starting point that SFT / GRPO must beat:
  python -m atommem_jax.eval --config=configs/eval_hotpotqa_smollm2.py
Cost on 2 CPU cores (measured 2026-11-25, results in docs/results.md), for the 50 questions:
full_context 19 min, rag 18 min, atommem 51 min (4 reading calls on ~2.7K-token prompts
per batch of 16, then the answering calls), static_summary 42 min, memagent about 60 min
(the last two partly shared the cores), so all five is about a 3 hour CPU run; it resumes
where it stops (output_dir/episodes), so it can run in pieces.
`--config.max_examples=8 --config.sampling.batch_size=8` gives a small table sooner.
MemAgent-style documents of 50 Wikipedia paragraphs (~7K tokens), read in 2,048-token
sections (4 per document). CPU budget choices, each a config key: at most 8 reading calls
per episode (then it answers), 128 new tokens per reading call, prompts cut to 4,096
tokens (head + tail; `full_context` and `rag` are the ones this cuts). Other datasets and
lengths: `--config.data.dataset=hotpotqa,2wiki,musique --config.data.num_docs=50,200`.
Questions come from the local sample ../shared/data/hotpotqa/hotpot.json unless
`data.data_dir` holds the official dev file; results.json and summary.md say which, and
that a local sample's numbers are not comparable with published ones.
"""
from configs import common


def get_config():
  c = common.base()
  c.output_dir = "outputs/hotpotqa_smollm2"
  c.max_examples = 50
  c.methods = "atommem,memagent,rag,full_context,static_summary"
  c.data.dataset = "hotpotqa"
  c.data.num_docs = "50"
  c.env.chunk_size = 2048
  c.env.max_calls = 8
  c.sampling.max_new_tokens = 128
  c.sampling.max_answer_tokens = 32
  c.sampling.max_prompt_tokens = 4096
  c.sampling.batch_size = 16
  c.max_memory_chars = 400
  return c
