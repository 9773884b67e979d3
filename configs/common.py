"""Shared pieces of the eval/train configs: every config is `base()` plus a few overrides.

Each field is documented where it is defined; `atommem_jax.eval.config.validate` checks a
config before any compute runs.
"""
from __future__ import annotations

import ml_collections


def base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.output_dir = "outputs/eval"
  c.max_examples = 8  # questions (or contexts) per dataset and length; 0 = all
  # Comma-separated methods: atommem, memagent, rag, static_summary, full_context, and on
  # synthetic tasks oracle, scratchpad_only, create_all_read_once.
  c.methods = "atommem,memagent,rag,static_summary,full_context"
  c.group_size = 1  # rollouts per question (G); >1 samples (needs temperature > 0)

  # Policy model. source: "smollm2" (shipped GGUF), "tiny" (random, for smoke tests),
  # "hf:<dir>" (Hugging Face checkpoint dir), "gguf:<file>".
  c.model = ml_collections.ConfigDict()
  c.model.source = "smollm2"
  c.model.dtype = "float32"
  c.model.tokenizer = ""  # "" = the tokenizer that comes with the source

  # Embedder for memory entries and queries: "minilm" (all-MiniLM-L6-v2, shipped),
  # "hashing" (hashed bag of words, no model), "policy" (mean-pooled policy hidden states).
  c.embedder = "minilm"

  # Data. dataset: hotpotqa | 2wiki | musique (comma-separated for several) | synthetic. num_docs: MemAgent-style
  # documents per context length (50 docs ~ 7K tokens, 200 ~ 28K, 800 ~ 112K ...).
  c.data = ml_collections.ConfigDict()
  c.data.dataset = "hotpotqa"
  c.data.data_dir = ""  # "" = ../shared/data beside the repo
  c.data.num_docs = "50"  # comma-separated list of lengths to evaluate
  c.data.multi_question = False  # AtomMem mode: 1..10 questions share a context
  c.data.synthetic_chunks = 8  # synthetic tasks: sections per document
  c.data.synthetic_hops = 2
  c.data.synthetic_corrections = 1
  c.data.synthetic_retractions = 1

  # Prompt templates: a file name shipped in atommem_jax/prompts/ ("step.txt"), or any path
  # (string.Template `${name}` fields, checked on load; their contents are part of the resume
  # fingerprint). Point these at other files to reproduce a published prompt.
  c.prompts = ml_collections.ConfigDict()
  c.prompts.system = "system.txt"  # AtomMem system message (the protocol)
  c.prompts.step = "step.txt"  # AtomMem reading turn
  c.prompts.final = "final.txt"  # AtomMem answering turn
  c.prompts.answer = "answer.txt"  # baselines' answering turn
  c.prompts.memagent_system = "memagent_system.txt"
  c.prompts.memagent_step = "memagent_step.txt"
  c.prompts.summary = "summary.txt"  # static_summary's reading turn
  c.prompts.no_query_text = "No query set yet."  # shown before the first <update_query>
  c.prompts.empty_memory_text = "No memory entries."  # shown when a query retrieves nothing

  # Environment (official AtomMem semantics; see atommem_jax/agent/environment.py).
  c.env = ml_collections.ConfigDict()
  c.env.chunk_size = 4000  # tokens per section (paper: 4,000)
  c.env.overlap = 100
  c.env.max_calls = 41  # model calls per episode (paper: 41); 0 = automatic
  c.env.max_query_times = 3
  # Budget spent while reading: True = stop reading and answer; False = end unanswered (official).
  c.env.answer_after_budget = True

  # Memory state.
  c.memory = ml_collections.ConfigDict()
  c.memory.capacity = 256
  c.memory.top_k = 6
  c.memory.overflow = "evict_oldest"  # or "error"
  c.memory.delete_mode = "remove"  # or "blank" (official)
  c.memory.max_ops = 16

  # Sampling.
  c.sampling = ml_collections.ConfigDict()
  c.sampling.temperature = 0.0
  c.sampling.top_k = 0  # 0 = off
  c.sampling.top_p = 1.0
  c.sampling.max_new_tokens = 512
  c.sampling.max_answer_tokens = 64
  # Longer prompts keep their head and tail and lose the middle (counted and warned about).
  # max_prompt_tokens + max(max_new_tokens, max_answer_tokens) must fit the model's window
  # (SmolLM2: 8,192 = 7,680 + 512), and a reading prompt must fit a whole section
  # (env.chunk_size + 2 * env.overlap) plus its template: `validate` checks both.
  c.sampling.max_prompt_tokens = 7680
  c.sampling.batch_size = 16  # episodes stepped together
  c.max_memory_chars = 1000  # longest entry / scratchpad shown in an AtomMem prompt
  c.viewer_episodes = 20  # episodes written to the HTML viewer
  c.verbose = False  # print each step's operations as episodes run
  # Reuse the episodes a previous run of the same config finished in output_dir/episodes
  # (a killed evaluation continues where it stopped); False discards them.
  c.resume = True
  return c
