"""Checks an eval config before any compute: a bad config fails in milliseconds, by name."""
from __future__ import annotations

import pathlib

import ml_collections

LLM_METHODS = ("atommem", "memagent", "rag", "static_summary", "full_context")
SCRIPTED_METHODS = ("oracle", "scratchpad_only", "create_all_read_once")  # synthetic tasks only
DATASETS = ("hotpotqa", "2wiki", "musique", "synthetic")
EMBEDDERS = ("minilm", "hashing", "policy")
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key."""


def methods(c: ml_collections.ConfigDict) -> list[str]:
  return [m.strip() for m in str(c.methods).split(",") if m.strip()]


def datasets(c: ml_collections.ConfigDict) -> list[str]:
  """`data.dataset` may list several datasets, comma-separated (e.g. "hotpotqa,2wiki,musique")."""
  return [d.strip() for d in str(c.data.dataset).split(",") if d.strip()]


def lengths(c: ml_collections.ConfigDict) -> list[int]:
  try:
    out = [int(x) for x in str(c.data.num_docs).split(",") if x.strip()]
  except ValueError:
    raise ConfigError(f"data.num_docs must be comma-separated integers, got {c.data.num_docs!r}") from None
  if not out or min(out) <= 0:
    raise ConfigError(f"data.num_docs must list positive integers, got {c.data.num_docs!r}")
  return out


def data_dir(c: ml_collections.ConfigDict) -> pathlib.Path:
  return pathlib.Path(c.data.data_dir) if c.data.data_dir else REPO_ROOT.parent / "shared" / "data"


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first bad key."""
  ms = methods(c)
  if not ms:
    raise ConfigError("methods is empty")
  for m in ms:
    if m not in LLM_METHODS + SCRIPTED_METHODS:
      raise ConfigError(f"methods: unknown method {m!r}; known: {LLM_METHODS + SCRIPTED_METHODS}")
  ds = datasets(c)
  if not ds or any(d not in DATASETS for d in ds):
    raise ConfigError(f"data.dataset must list datasets from {DATASETS}, got {c.data.dataset!r}")
  if "synthetic" in ds and len(ds) > 1:
    raise ConfigError("data.dataset: synthetic tasks cannot be mixed with real datasets "
                      f"(num_docs means sections there), got {c.data.dataset!r}")
  synthetic = ds == ["synthetic"]
  if not synthetic and (bad := [m for m in ms if m in SCRIPTED_METHODS]):
    raise ConfigError(f"methods {bad} are scripted for synthetic tasks only "
                      f"(data.dataset={c.data.dataset!r})")
  if synthetic:
    from atommem_jax.agent.oracle import synthetic_config

    for n in lengths(c):
      try:
        synthetic_config(c, n)
      except ValueError as e:
        raise ConfigError(f"data.num_docs={n} (sections per synthetic task): {e}") from None
  else:
    lengths(c)
  src = str(c.model.source)
  needs_model = any(m in LLM_METHODS for m in ms) or c.embedder == "policy"
  if src == "none":
    if needs_model:
      raise ConfigError("model.source='none' but methods/embedder need a policy model")
  elif src in ("smollm2", "tiny"):
    pass
  elif src.startswith(("hf:", "gguf:")):
    path = pathlib.Path(src.split(":", 1)[1])
    if not path.exists():
      raise ConfigError(f"model.source: {path} does not exist")
  else:
    raise ConfigError(f"model.source must be smollm2, tiny, none, hf:<dir> or gguf:<file>, got {src!r}")
  if c.model.dtype not in ("float32", "bfloat16"):
    raise ConfigError(f"model.dtype must be float32 or bfloat16, got {c.model.dtype!r}")
  if c.embedder not in EMBEDDERS:
    raise ConfigError(f"embedder must be one of {EMBEDDERS}, got {c.embedder!r}")
  if not synthetic:
    if not data_dir(c).is_dir():
      raise ConfigError(f"data.data_dir: {data_dir(c)} is not a directory")
    from atommem_jax.eval.episodes import dev_file

    for d in ds:
      try:
        dev_file(d, data_dir(c))
      except FileNotFoundError as e:
        raise ConfigError(f"data.dataset={d!r}: {e}") from None
  s = c.sampling
  if s.temperature < 0:
    raise ConfigError(f"sampling.temperature must be >= 0, got {s.temperature}")
  if not 0 < s.top_p <= 1:
    raise ConfigError(f"sampling.top_p must be in (0, 1], got {s.top_p}")
  for k in ("max_new_tokens", "max_answer_tokens", "max_prompt_tokens", "batch_size"):
    if s[k] <= 0:
      raise ConfigError(f"sampling.{k} must be positive, got {s[k]}")
  if c.group_size <= 0:
    raise ConfigError(f"group_size must be positive, got {c.group_size}")
  if c.group_size > 1 and s.temperature == 0:
    raise ConfigError("group_size > 1 with sampling.temperature=0 gives identical samples")
  if c.max_examples < 0:
    raise ConfigError(f"max_examples must be >= 0, got {c.max_examples}")
  if c.memory.top_k > c.memory.capacity:
    raise ConfigError(f"memory.top_k ({c.memory.top_k}) exceeds memory.capacity ({c.memory.capacity})")
  from atommem_jax.agent.prompts import load_template

  for key, kind in (("system", "system"), ("step", "step"), ("final", "final"),
                    ("answer", "answer"), ("memagent_system", "system"),
                    ("memagent_step", "step"), ("summary", "summary")):
    try:
      load_template(c.prompts[key], kind)
    except (FileNotFoundError, ValueError) as e:
      raise ConfigError(f"prompts.{key}: {e}") from None
  if c.env.max_calls < 0 or c.env.max_query_times < 0:
    raise ConfigError(f"env.max_calls and env.max_query_times must be >= 0, got "
                      f"{c.env.max_calls}, {c.env.max_query_times}")
  if c.env.chunk_size <= 0 or not 0 <= c.env.overlap < c.env.chunk_size:
    raise ConfigError(f"env.chunk_size must be positive and env.overlap in [0, chunk_size); got "
                      f"{c.env.chunk_size}, {c.env.overlap}")
