"""atommem-jax: a JAX/Flax reimplementation of AtomMem (arXiv 2601.08323).

Subpackages (one job each):
  models/    decoder-only policy transformer, KV cache, sampler, HF/GGUF checkpoint I/O
  memory/    pure-functional MemoryState with atomic CRUD, ScaNN long-term store, embedder
  agent/     the AtomMem tag protocol (parse/render), prompts, chunk-stream environment, rollouts
  data/      long-context multi-hop QA tfds builders, synthetic memory tasks, metrics
  training/  SFT and GRPO losses, train state, sharding rules, checkpointing
  eval/      evaluation runner, static-workflow baselines, reports
"""

__version__ = "0.1.0"
