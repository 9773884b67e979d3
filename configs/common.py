"""Shared pieces of the eval/train configs: every config is `base()` (evaluation) or
`train_base()` (training) plus a few overrides.

Each field is documented where it is defined. The agent keys both share (model, embedder,
prompts, env, memory, sampling) are checked by `atommem_jax.agent.build.check_agent_config`;
`atommem_jax.eval.config.validate` and `atommem_jax.training.config.validate` check the rest,
all before any compute runs.
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
  # Other models for some methods, in one run and one table: label=source pairs (sources as
  # model.source), used as `method@label` in `methods`, e.g. method_models="base=smollm2"
  # with methods="atommem,atommem@base,memagent@base" compares a trained policy (model.source)
  # with the prompted base model. Sections are cut with model.source's tokenizer.
  c.method_models = ""

  # Policy model. source: "smollm2" (shipped GGUF), "tiny" (random, for smoke tests),
  # "hf:<dir>" (Hugging Face checkpoint dir), "gguf:<file>".
  c.model = ml_collections.ConfigDict()
  c.model.source = "smollm2"
  c.model.dtype = "float32"
  # Attention of the training forward: "xla" (any platform) or "splash" (the Pallas splash
  # kernel; TPU only, models/splash.py; rows must be a multiple of 128 tokens, of 512 above).
  c.model.attention = "xla"
  c.model.tokenizer = ""  # "" = the tokenizer that comes with the source
  # model.source="tiny" only: 0 = the 480-token test tokenizer; N = a byte-level BPE of N
  # tokens trained on the training stream's synthetic tasks and the prompt templates
  # (agent/build.py task_tokenizer_lines), saved with the run like any tokenizer.
  c.model.tiny_tokenizer_vocab = 0

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
  c.data.synthetic_task = "mixed"  # chain (Update) | count (Delete) | mixed
  c.data.synthetic_hops = 2
  c.data.synthetic_corrections = 1
  c.data.synthetic_retractions = 1
  c.data.synthetic_members = 4  # count tasks: people who join (retractions <= members)
  c.data.synthetic_count_share = 0.5  # "mixed": probability that a task is a count task

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


# What a trained policy saw in training (its prompts, sections, memory and response budgets).
# An evaluation of it takes them from its training config, so the two cannot drift apart.
POLICY_KEYS = ("embedder", "prompts.system", "prompts.step", "prompts.final", "env.chunk_size",
               "env.overlap", "memory.capacity", "max_memory_chars", "sampling.max_new_tokens",
               "sampling.max_answer_tokens")


def take_policy_settings(c: ml_collections.ConfigDict, trained: ml_collections.ConfigDict
                         ) -> ml_collections.ConfigDict:
  """`c` with the POLICY_KEYS of the training config `trained`."""
  for key in POLICY_KEYS:
    *path, last = key.split(".")
    src, dst = trained, c
    for part in path:
      src, dst = src[part], dst[part]
    dst[last] = src[last]
  return c


def train_base() -> ml_collections.ConfigDict:
  """Training (`python -m atommem_jax.training`): the agent keys of `base()` plus these."""
  c = base()
  for key in ("max_examples", "methods", "method_models", "group_size", "viewer_episodes",
              "verbose", "resume"):
    del c[key]
  c.data = ml_collections.ConfigDict()
  c.output_dir = "outputs/train"
  c.algorithm = "sft"  # "sft" or "grpo"
  c.method = "atommem"  # the policy trained: atommem | memagent (scratchpad-only overwrite memory)
  c.steps = 100  # total optimizer steps
  c.checkpoint_every = 50  # optimizer steps between checkpoints (and at the end / on SIGTERM)
  c.keep_checkpoints = 3
  c.log_every = 1  # optimizer steps between metrics.jsonl / TensorBoard records
  c.export_hf = True  # write the final params as a Hugging Face folder (output_dir/hf)

  # Device mesh (axes data, fsdp, tensor; -1 = the rest of the devices) and sharding rules
  # (atommem_jax/training/sharding.py: "fsdp_tp" or "fsdp").
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
  c.sharding_rules = "fsdp_tp"
  # Processes (atommem_jax/training/distributed.py): mode "off" (one process), "auto" (TPU VMs,
  # GKE/xpk: JAX finds the other hosts; what launch/ passes) or "explicit" (coordinator
  # "host:port" of process 0, num_processes, process_id: CPU tests, other clusters).
  c.distributed = ml_collections.ConfigDict(dict(mode="off", coordinator="", num_processes=0,
                                                 process_id=-1, initialization_timeout=300))

  # LoRA (atommem_jax/models/lora.py): rank > 0 trains low-rank adapters on `targets`
  # (comma-separated: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj) and keeps the
  # base weights frozen; the run also writes output_dir/lora.safetensors, loadable with
  # model.source=lora:<file>. 0 = train every weight.
  c.lora = ml_collections.ConfigDict(dict(rank=0, alpha=16.0, targets="q_proj,v_proj"))

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 1e-5
  c.optim.warmup_steps = 0
  c.optim.decay_steps = 0  # 0 = steps
  c.optim.end_lr_ratio = 0.1
  c.optim.weight_decay = 0.0
  c.optim.clip_norm = 1.0

  # Loss (atommem_jax/training/losses.py, by name).
  c.loss = ml_collections.ConfigDict()
  c.loss.aggregation = "token-mean"  # token-mean | seq-mean-token-mean | seq-mean-token-sum
  c.loss.max_segments = 32  # turns per packed row (static bound)
  c.loss.clip_low = 0.2
  c.loss.clip_high = 0.28
  c.loss.kl_coef = 0.001  # k3 KL to the frozen initial policy (GRPO); 0 = no reference
  c.loss.chunk_size = 256  # sequence positions per output-head chunk
  c.loss.remat = True
  # SFT (and GRPO's warm-start SFT): weight of the prompt tokens' next-token loss; 0 = the
  # responses only. For policies trained from scratch (configs/tiny_synthetic_sft.py).
  c.loss.prompt_weight = 0.0

  # Packed batches: `rows` rows of `seq_len` tokens per optimizer step, split into
  # `micro_batches` accumulated slices. A turn longer than seq_len loses the head of its
  # prompt (truncate="prompt_head"; counted) or is an error (truncate="").
  c.batch = ml_collections.ConfigDict(dict(rows=8, seq_len=2048, micro_batches=1,
                                           truncate="prompt_head"))

  # Training data. source: "synthetic" (generated CRUD tasks, seeded), "real" (the train
  # splits of `datasets` in `data_dir`, never the dev files; SFT targets from the privileged
  # teacher, agent/teacher.py) or "jsonl" (SFT only: trajectories, e.g. a teacher's or logged
  # rollouts, in `jsonl`, comma-separated paths).
  c.data.source = "synthetic"
  c.data.datasets = "hotpotqa,2wiki,musique"  # real: comma-separated
  c.data.data_dir = ""  # real: "" = ../shared/data beside the repo
  c.data.num_docs = 0  # real: documents per context (0 = each question's own paragraphs)
  c.data.max_records = 0  # real: first records of each train file (0 = all)
  c.data.jsonl = ""
  c.data.answer_repeats = 1  # SFT: copies of each answering-phase turn (weights answering)
  # SFT: a teacher response longer than its phase's sampling budget (max_new_tokens /
  # max_answer_tokens) is one the policy could never finish: "error" stops before training,
  # "drop" leaves those turns out (counted in the [data] line).
  c.data.overlong = "error"
  # SFT: auxiliary copy turns ("repeat this section" -> the section; training/data.py
  # copy_turns) from the training stream's synthetic tasks; for policies trained from scratch,
  # which must learn to copy names before they can store or query them. 0 = none.
  c.data.copy_examples = 0
  c.data.min_score = -1.0  # jsonl: keep episodes whose exact_match >= min_score (rejection sampling)
  c.data.num_examples = 64  # SFT: teacher episodes (synthetic: generated; real: first of the
  # train episodes, 0 = all)
  c.data.synthetic_examples = 0  # real SFT: synthetic tasks (scripted oracle) mixed in
  c.data.seed = 1000  # synthetic tasks' seed (held-out evaluation uses other seeds)
  c.data.synthetic_chunks = 6
  c.data.synthetic_task = "mixed"  # chain (Update) | count (Delete) | mixed
  c.data.synthetic_hops = 2
  c.data.synthetic_corrections = 1
  c.data.synthetic_retractions = 1
  c.data.synthetic_members = 4  # count tasks: people who join (retractions <= members)
  c.data.synthetic_count_share = 0.5  # "mixed": probability that a task is a count task
  # True: each synthetic task draws its sections, hops, corrections, members and retractions
  # at or below the knobs above (data/synthetic.py `varied_config`), so no count is constant.
  c.data.synthetic_vary = False

  # GRPO (paper: G=8, 8 questions per batch, temperature 1.0, top-p 0.99, no std normalisation).
  c.grpo = ml_collections.ConfigDict()
  c.grpo.questions_per_step = 8
  c.grpo.group_size = 8
  c.grpo.epochs = 1  # optimisation passes over each rollout batch
  c.grpo.normalize_std = False
  c.grpo.advantage = "grpo"
  c.grpo.policy_loss = "grpo"
  c.grpo.reward = ml_collections.ConfigDict(dict(
      answer_metric="exact_match",  # exact_match | f1 | contains (never sub_em)
      parse_error_penalty=0.0, missing_answer_penalty=0.0, untagged_answer_penalty=0.0))
  c.sampling.temperature = 1.0
  c.sampling.top_p = 0.99
  # GRPO only: SFT first, then GRPO from its result (one command). The SFT run lives in
  # output_dir/sft (resumable like any run) and trains `sft_steps` steps on the `data` teacher
  # trajectories at `learning_rate` (0 = optim.learning_rate); GRPO starts from, and is
  # KL-regularised towards, its final parameters.
  c.warm_start = ml_collections.ConfigDict(dict(sft_steps=0, learning_rate=0.0))
  # Start from another run's final parameters instead (its output_dir): GRPO from an SFT run
  # of the same model and LoRA settings (it continues its adapters and KL-regularises towards
  # them), or an SFT stage from an earlier one (a curriculum; fresh optimizer and schedule).
  # The run's tokenizer must be this config's (model.tokenizer=<run>/model). "" = model.source.
  c.init_from = ""
  return c
