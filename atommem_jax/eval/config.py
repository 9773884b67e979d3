"""Checks an eval config before any compute: a bad config fails in seconds, by name.

`validate` checks every key a run would otherwise trip over later (after loading a model, or
hours into a CPU evaluation), and every ConfigError message starts with the dotted key name.
The checks run cheapest first: plain values, then files (data, prompt templates), then the
model's context window (read from checkpoint metadata, never by loading weights), and last
the reading prompt's length, counted with the model's tokenizer (the tokenizer is loaded, the
model is not).
"""
from __future__ import annotations

import pathlib

import ml_collections

from atommem_jax.agent.build import (LLM_METHODS, REAL_SCRIPTED_METHODS, SCRIPTED_METHODS,
                                     ConfigError, check_agent_config, with_model)

DATASETS = ("hotpotqa", "2wiki", "musique", "synthetic")
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def methods(c: ml_collections.ConfigDict) -> list[str]:
  """The configured method names, as written (`atommem`, `atommem@base`, ...)."""
  return [m.strip() for m in str(c.methods).split(",") if m.strip()]


def split_method(name: str) -> tuple[str, str | None]:
  """`"memagent@base"` -> ("memagent", "base"); `"rag"` -> ("rag", None): the method, and
  the label of the model it runs on (None: `model.source`)."""
  method, _, label = name.partition("@")
  return method.strip(), (label.strip() or None) if _ else None


def model_labels(c: ml_collections.ConfigDict) -> dict[str, str]:
  """`method_models = "base=smollm2,sft=lora:<file>"` as {label: model source}."""
  out: dict[str, str] = {}
  for item in str(c.get("method_models", "") or "").split(","):
    if not item.strip():
      continue
    label, eq, source = item.partition("=")
    label, source = label.strip(), source.strip()
    if not eq or not label or not source or not label.replace("_", "").isalnum():
      raise ConfigError(f"method_models: expected comma-separated label=source pairs with "
                        f"alphanumeric labels, got {item.strip()!r}")
    if label in out:
      raise ConfigError(f"method_models: label {label!r} given twice")
    out[label] = source
  return out


def labelled_config(c: ml_collections.ConfigDict, label: str | None) -> ml_collections.ConfigDict:
  """`c` with `model.source` set to the model `label` names (`c` itself for None)."""
  return c if label is None else with_model(c, model_labels(c)[label])


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


# --- validate --------------------------------------------------------------------------------

def _check_methods_and_data(c: ml_collections.ConfigDict) -> None:
  ms = methods(c)
  if not ms:
    raise ConfigError("methods: empty; name at least one method")
  known = LLM_METHODS + SCRIPTED_METHODS + REAL_SCRIPTED_METHODS
  labels = model_labels(c)
  if len(set(ms)) != len(ms):
    raise ConfigError(f"methods: {c.methods!r} names a method twice")
  for name in ms:
    m, label = split_method(name)
    if m not in known:
      raise ConfigError(f"methods: unknown method {m!r}; known: {known}")
    if label is not None and label not in labels:
      raise ConfigError(f"methods: {name!r} names model label {label!r}, which method_models "
                        f"does not define (labels: {sorted(labels)})")
    if label is not None and m not in LLM_METHODS:
      raise ConfigError(f"methods: {name!r}: {m} is scripted and runs no model; drop '@{label}'")
  if labels and c.embedder == "policy":
    raise ConfigError("embedder: 'policy' embeds with model.source's model; with method_models "
                      "several models run, so use 'minilm' or 'hashing'")
  ms = [split_method(n)[0] for n in ms]
  ds = datasets(c)
  if not ds or any(d not in DATASETS for d in ds):
    raise ConfigError(f"data.dataset must list datasets from {DATASETS}, got {c.data.dataset!r}")
  if "synthetic" in ds and len(ds) > 1:
    raise ConfigError("data.dataset: synthetic tasks cannot be mixed with real datasets "
                      f"(num_docs means sections there), got {c.data.dataset!r}")
  synthetic = ds == ["synthetic"]
  if not synthetic and (bad := [m for m in ms if m in SCRIPTED_METHODS]):
    raise ConfigError(f"methods: {bad} are scripted for synthetic tasks only "
                      f"(data.dataset={c.data.dataset!r})")
  if synthetic and (bad := [m for m in ms if m in REAL_SCRIPTED_METHODS]):
    raise ConfigError(f"methods: {bad} read real datasets' supporting labels; not for "
                      f"data.dataset={c.data.dataset!r}")
  if not synthetic and str(c.model.source) == "none" and not c.model.tokenizer:
    raise ConfigError("model.tokenizer: model.source='none' on real data needs a tokenizer to "
                      "cut documents into sections (e.g. the SmolLM2 GGUF's)")
  lengths(c)
  if c.max_examples < 0:
    raise ConfigError(f"max_examples must be >= 0, got {c.max_examples}")
  if c.group_size <= 0:
    raise ConfigError(f"group_size must be positive, got {c.group_size}")


def _check_data_files(c: ml_collections.ConfigDict) -> None:
  from atommem_jax.data import raw

  ds = datasets(c)
  if ds == ["synthetic"]:
    from atommem_jax.agent.oracle import synthetic_config

    for n in lengths(c):
      try:
        synthetic_config(c, n)
      except ValueError as e:
        raise ConfigError(f"data.num_docs={n} (sections per synthetic task): {e}") from None
  else:
    if not data_dir(c).is_dir():
      raise ConfigError(f"data.data_dir: {data_dir(c)} is not a directory")
    for d in ds:
      try:
        raw.find_dev_file(d, data_dir(c))
      except FileNotFoundError as e:
        raise ConfigError(f"data.dataset={d!r}: {e}") from None


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first bad key (cheapest checks first; never loads a model).

  The agent keys (model, embedder, sampling, env, memory, prompts) are checked by
  `agent.build.check_agent_config`, shared with the training CLI."""
  _check_methods_and_data(c)
  if c.viewer_episodes < 0:
    raise ConfigError(f"viewer_episodes must be >= 0, got {c.viewer_episodes}")
  if c.sampling.batch_size <= 0:
    raise ConfigError(f"sampling.batch_size must be positive, got {c.sampling.batch_size}")
  _check_data_files(c)
  by_label: dict[str | None, list[str]] = {}
  for name in methods(c):
    m, label = split_method(name)
    by_label.setdefault(label, []).append(m)
  check_agent_config(c, by_label.get(None, []), c.group_size)
  for label, ms in by_label.items():
    if label is not None:
      try:
        check_agent_config(labelled_config(c, label), ms, c.group_size)
      except ConfigError as e:
        raise ConfigError(f"method_models ({label}): {e}") from None
