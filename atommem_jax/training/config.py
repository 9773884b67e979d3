"""Checks a training config before any compute, and turns it into the step's dataclasses.

`validate` raises `ConfigError` (its message starts with the dotted key) for every key a run
would otherwise trip over later: minutes into loading a model, or hours into training. The
agent keys (model, embedder, prompts, env, memory, sampling) are checked by the same code
as evaluation's (`agent.build.check_agent_config`).
"""
from __future__ import annotations

import math
import pathlib

import ml_collections

from atommem_jax.agent.build import ConfigError, check_agent_config
from atommem_jax.training import losses
from atommem_jax.training import step as step_lib

ALGORITHMS = ("sft", "grpo")
TRAINED_METHODS = ("atommem", "memagent")
DATA_SOURCES = ("synthetic", "real", "jsonl")


def is_remote_path(path: str) -> bool:
  return "://" in path


def _positive(c: ml_collections.ConfigDict, key: str) -> None:
  """`key` (dotted) holds a positive int."""
  node = c
  for part in key.split("."):
    node = node[part]
  if not isinstance(node, int) or isinstance(node, bool) or node <= 0:
    raise ConfigError(f"{key} must be a positive integer, got {node!r}")


def optim_config(c: ml_collections.ConfigDict) -> step_lib.OptimConfig:
  o = c.optim
  try:
    return step_lib.OptimConfig(
        learning_rate=o.learning_rate, warmup_steps=o.warmup_steps,
        decay_steps=o.decay_steps or c.steps, end_lr_ratio=o.end_lr_ratio,
        weight_decay=o.weight_decay, clip_norm=o.clip_norm)
  except ValueError as e:
    raise ConfigError(str(e)) from None  # OptimConfig's messages start with the key


def loss_config(c: ml_collections.ConfigDict) -> step_lib.LossConfig:
  lo = c.loss
  kind = "sft" if c.algorithm == "sft" else c.grpo.policy_loss
  try:
    return step_lib.LossConfig(kind=kind, aggregation=lo.aggregation, max_segments=lo.max_segments,
                               clip_low=lo.clip_low, clip_high=lo.clip_high, kl_coef=lo.kl_coef,
                               chunk_size=lo.chunk_size, remat=lo.remat,
                               prompt_weight=float(lo.get("prompt_weight", 0.0)) if kind == "sft" else 0.0)
  except ValueError as e:
    key = "grpo.policy_loss" if "policy loss" in str(e) else "loss"
    raise ConfigError(f"{key}: {e}") from None


def reward_config(c: ml_collections.ConfigDict):
  from atommem_jax.training import rewards

  r = c.grpo.reward
  try:
    return rewards.RewardConfig(answer_metric=r.answer_metric,
                                parse_error_penalty=r.parse_error_penalty,
                                missing_answer_penalty=r.missing_answer_penalty,
                                untagged_answer_penalty=r.untagged_answer_penalty)
  except ValueError as e:
    raise ConfigError(f"grpo.reward: {e}") from None


def lora_config(c: ml_collections.ConfigDict):
  """The LoRA adapters' config, or None (`lora.rank=0`: every weight is trained)."""
  from atommem_jax.models import lora

  lo = c.get("lora")
  if lo is None or lo.rank == 0:
    return None
  if not isinstance(lo.rank, int) or isinstance(lo.rank, bool) or lo.rank < 0:
    raise ConfigError(f"lora.rank must be an integer >= 0 (0 = no LoRA), got {lo.rank!r}")
  try:
    return lora.LoraConfig(rank=lo.rank, alpha=float(lo.alpha), targets=str(lo.targets))
  except ValueError as e:
    raise ConfigError(str(e)) from None  # LoraConfig's messages start with the key


def mesh_shape(c: ml_collections.ConfigDict, num_devices: int) -> tuple[int, int, int]:
  """(data, fsdp, tensor) with a -1 resolved; ConfigError when it does not fit the devices."""
  dims = [c.mesh.data, c.mesh.fsdp, c.mesh.tensor]
  for name, d in zip(("data", "fsdp", "tensor"), dims):
    if not isinstance(d, int) or (d <= 0 and d != -1):
      raise ConfigError(f"mesh.{name} must be a positive integer or -1, got {d!r}")
  if dims.count(-1) > 1:
    raise ConfigError(f"mesh: at most one of data/fsdp/tensor may be -1, got {dims}")
  known = math.prod(d for d in dims if d != -1)
  if -1 in dims:
    if num_devices % known:
      raise ConfigError(f"mesh: {num_devices} devices do not split into {dims}")
    dims[dims.index(-1)] = num_devices // known
  if math.prod(dims) != num_devices:
    raise ConfigError(f"mesh: data*fsdp*tensor = {math.prod(dims)} but there are "
                      f"{num_devices} devices")
  return tuple(dims)  # type: ignore[return-value]


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first bad key (never loads a model)."""
  if c.algorithm not in ALGORITHMS:
    raise ConfigError(f"algorithm must be one of {ALGORITHMS}, got {c.algorithm!r}")
  if c.method not in TRAINED_METHODS:
    raise ConfigError(f"method must be one of {TRAINED_METHODS}, got {c.method!r}")
  if not str(c.output_dir):
    raise ConfigError("output_dir is empty")
  for key in ("steps", "checkpoint_every", "keep_checkpoints", "log_every", "batch.rows",
              "batch.seq_len", "batch.micro_batches"):
    _positive(c, key)
  if c.batch.rows % c.batch.micro_batches:
    raise ConfigError(f"batch.rows={c.batch.rows} must be divisible by "
                      f"batch.micro_batches={c.batch.micro_batches}")
  if c.batch.truncate not in ("", "prompt_head"):
    raise ConfigError(f"batch.truncate must be '' or 'prompt_head', got {c.batch.truncate!r}")
  if c.sharding_rules not in ("fsdp_tp", "fsdp"):
    raise ConfigError(f"sharding_rules must be 'fsdp_tp' or 'fsdp', got {c.sharding_rules!r}")
  mesh_shape(c, abs(c.mesh.data * c.mesh.fsdp * c.mesh.tensor))  # values; devices checked at run
  optim_config(c)
  loss_config(c)
  lora_config(c)
  prompt_weight = float(c.loss.get("prompt_weight", 0.0))
  if not 0.0 <= prompt_weight <= 1.0:  # (SFT: LossConfig says so first; GRPO's warm start too)
    raise ConfigError(f"loss.prompt_weight must be in [0, 1], got {prompt_weight}")
  if c.algorithm == "grpo" and prompt_weight and not c.warm_start.sft_steps:
    raise ConfigError("loss.prompt_weight weights prompt tokens in SFT (and GRPO's warm-start "
                      "SFT); this GRPO run has no warm start, so it would be ignored: set it to 0")
  if c.loss.chunk_size <= 0:
    raise ConfigError(f"loss.chunk_size must be positive, got {c.loss.chunk_size}")
  d = c.data
  if d.get("overlong", "error") not in ("error", "drop"):
    raise ConfigError(f"data.overlong must be 'error' or 'drop', got {d.overlong!r}")
  a = d.get("answer_repeats", 1)
  if not isinstance(a, int) or isinstance(a, bool) or a < 1:
    raise ConfigError(f"data.answer_repeats must be an integer >= 1, got {a!r}")
  n = d.get("copy_examples", 0)
  if not isinstance(n, int) or isinstance(n, bool) or n < 0:
    raise ConfigError(f"data.copy_examples must be an integer >= 0, got {n!r}")
  if n and c.algorithm != "sft":
    raise ConfigError("data.copy_examples: copy turns are SFT data (GRPO trains on its "
                      "rollouts; a warm start takes them from its own SFT config)")
  if not isinstance(d.get("synthetic_vary", False), bool):
    raise ConfigError(f"data.synthetic_vary must be True or False, got {d.synthetic_vary!r}")
  if d.source not in DATA_SOURCES:
    raise ConfigError(f"data.source must be one of {DATA_SOURCES}, got {d.source!r}")
  if d.source == "jsonl":
    if c.algorithm != "sft":
      raise ConfigError("data.source='jsonl' is SFT data; GRPO samples its own rollouts "
                        "(data.source='synthetic')")
    paths = [p.strip() for p in str(d.jsonl).split(",") if p.strip()]
    if not paths:
      raise ConfigError("data.jsonl: name at least one trajectories file")
    for p in paths:
      if not pathlib.Path(p).is_file():
        raise ConfigError(f"data.jsonl: {p} is not a file")
  elif d.source == "real":
    from atommem_jax.data import raw
    from atommem_jax.training import data as data_lib

    if c.method not in ("atommem", "memagent"):
      raise ConfigError(f"data.source='real': method {c.method!r} has no real-data teacher")
    if c.method == "memagent" and not 27 <= c.max_memory_chars <= 4096:
      raise ConfigError("max_memory_chars: the MemAgent teacher's scratchpad budget must be in "
                        f"[27, 4096] (the parser's tag limit), got {c.max_memory_chars}")
    names = data_lib.datasets(c)
    if not names or any(n not in data_lib.REAL_DATASETS for n in names):
      raise ConfigError(f"data.datasets must list datasets from {data_lib.REAL_DATASETS}, got "
                        f"{d.datasets!r}")
    if d.num_docs < 0 or d.max_records < 0 or d.num_examples < 0 or d.synthetic_examples < 0:
      raise ConfigError("data.num_docs, data.max_records, data.num_examples and "
                        "data.synthetic_examples must be >= 0")
    if d.synthetic_examples:
      from atommem_jax.agent import oracle

      try:
        oracle.synthetic_config(c, d.synthetic_chunks)
      except ValueError as e:
        raise ConfigError(f"data.synthetic_*: {e}") from None
    for n in names:
      try:
        path = raw.find_train_file(n, data_lib.data_dir(c))
      except FileNotFoundError as e:
        raise ConfigError(f"data.datasets={n!r}: {e}") from None
      if raw.is_dev_file(path):
        raise ConfigError(f"data.datasets={n!r}: {path} is a dev file (kept for evaluation)")
  else:
    from atommem_jax.agent import oracle

    _positive(c, "data.num_examples")
    try:
      oracle.synthetic_config(c, d.synthetic_chunks)
    except ValueError as e:
      raise ConfigError(f"data.synthetic_*: {e}") from None
  if c.get("init_from"):
    if c.algorithm == "grpo" and c.warm_start.sft_steps:
      raise ConfigError("init_from and warm_start.sft_steps both name a starting policy; set one")
    if not is_remote_path(str(c.init_from)) and not (
        pathlib.Path(c.init_from) / "checkpoints").is_dir():
      raise ConfigError(f"init_from: {c.init_from} is not a training run directory (no "
                        "checkpoints/)")
    _check_init_tokenizer(c)
  if c.algorithm == "grpo":
    g = c.grpo
    for key in ("grpo.questions_per_step", "grpo.group_size", "grpo.epochs"):
      _positive(c, key)
    try:
      losses.get_advantage_estimator(g.advantage)
    except ValueError as e:
      raise ConfigError(f"grpo.advantage: {e}") from None
    reward_config(c)
    if c.warm_start.sft_steps < 0 or c.warm_start.learning_rate < 0:
      raise ConfigError("warm_start.sft_steps and warm_start.learning_rate must be >= 0, got "
                        f"{c.warm_start.sft_steps}, {c.warm_start.learning_rate}")
    if c.sampling.temperature <= 0:
      raise ConfigError(f"sampling.temperature must be > 0 for GRPO (G samples of one "
                        f"question), got {c.sampling.temperature}")
  check_agent_config(c, (c.method,), c.grpo.group_size if c.algorithm == "grpo" else 1)


def _check_init_tokenizer(c: ml_collections.ConfigDict) -> None:
  """The run `init_from` names trained with some tokenizer (saved in its model/); a policy
  that would tokenize differently (another model, another task tokenizer's corpus) would
  train its parameters on wrong ids, so it fails here."""
  from atommem_jax.agent import build

  saved = pathlib.Path(c.init_from) / "model" / "tokenizer.json"
  if is_remote_path(str(c.init_from)) or not saved.is_file():
    return
  from atommem_jax.models import tokenizer as tok_lib

  theirs = tok_lib.load_tokenizer(saved.parent).get_vocab()
  if build.policy_tokenizer(c).get_vocab() != theirs:
    raise ConfigError(f"init_from: {c.init_from} was trained with another tokenizer than this "
                      f"config's policy; set model.tokenizer={saved.parent} (and "
                      "model.tiny_tokenizer_vocab=0)")

