"""Checks an eval config before any compute: a bad config fails in seconds, by name.

`validate` checks every key a run would otherwise trip over later (after loading a model, or
hours into a CPU evaluation), and every ConfigError message starts with the dotted key name.
The checks run cheapest first: plain values, then files (data, prompt templates), then the
model's context window (read from checkpoint metadata, never by loading weights), and last
the reading prompt's length, counted with the model's tokenizer (the tokenizer is loaded, the
model is not).
"""
from __future__ import annotations

import functools
import json
import pathlib
import struct
import tempfile
from typing import BinaryIO

import ml_collections

LLM_METHODS = ("atommem", "memagent", "rag", "static_summary", "full_context")
SCRIPTED_METHODS = ("oracle", "scratchpad_only", "create_all_read_once")  # synthetic tasks only
DATASETS = ("hotpotqa", "2wiki", "musique", "synthetic")
EMBEDDERS = ("minilm", "hashing", "policy")
OVERFLOW_MODES = ("error", "evict_oldest")  # as memory.state.MemoryConfig accepts
DELETE_MODES = ("remove", "blank")
# Template config keys (`prompts.<key>`) and the kind each must be (agent/prompts.py _SPEC).
PROMPT_TEMPLATES: dict[str, str] = {
    "system": "system", "step": "step", "final": "final", "answer": "answer",
    "memagent_system": "system", "memagent_step": "step", "summary": "summary"}
TINY_CONTEXT_WINDOW = 8192  # the random tiny model's max_position_embeddings (runner.build_model)
GGUF_DEFAULT_CONTEXT = 2048  # what models/gguf_io assumes when a GGUF has no context_length
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


class ConfigError(ValueError):
  """A config value that cannot work; the message starts with the key's dotted name."""


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


# --- the model's context window, from metadata only -------------------------------------------

_GGUF_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                10: "<Q", 11: "<q", 12: "<d"}  # GGUF value types; 8 = string, 9 = array
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def _read(f: BinaryIO, fmt: str):
  size = struct.calcsize(fmt)
  data = f.read(size)
  if len(data) != size:
    raise ValueError("unexpected end of file in the GGUF header")
  return struct.unpack(fmt, data)[0]


def _gguf_value(f: BinaryIO, vtype: int, keep: bool):
  """Reads (keep) or skips one metadata value of type `vtype` at the file position."""
  if vtype in _GGUF_SCALAR:
    if keep:
      return _read(f, _GGUF_SCALAR[vtype])
    f.seek(struct.calcsize(_GGUF_SCALAR[vtype]), 1)
    return None
  if vtype == _GGUF_STRING:
    n = _read(f, "<Q")
    if keep:
      return f.read(n).decode("utf-8")
    f.seek(n, 1)
    return None
  if vtype == _GGUF_ARRAY:
    etype, count = _read(f, "<I"), _read(f, "<Q")
    if etype in _GGUF_SCALAR:  # a vocabulary's scores: one seek, not 49k reads
      f.seek(count * struct.calcsize(_GGUF_SCALAR[etype]), 1)
    else:
      for _ in range(count):
        _gguf_value(f, etype, keep=False)
    return None
  raise ValueError(f"unknown GGUF metadata value type {vtype}")


def gguf_context_length(path: str | pathlib.Path) -> int:
  """`{arch}.context_length` from a GGUF file's header, read up to that key (milliseconds;
  `gguf.GGUFReader` parses every tokenizer string first, about a second for SmolLM2).
  Absent: GGUF_DEFAULT_CONTEXT, the value the loader (models/gguf_io) gives the model."""
  with open(path, "rb") as f:
    if f.read(4) != b"GGUF":
      raise ValueError(f"{path} is not a GGUF file (bad magic)")
    version = _read(f, "<I")
    if version < 2:
      raise ValueError(f"{path}: GGUF version {version} is not supported (need >= 2)")
    _read(f, "<Q")  # tensor count
    arch = None
    for _ in range(_read(f, "<Q")):
      key = f.read(_read(f, "<Q")).decode("utf-8")
      vtype = _read(f, "<I")
      wanted = key == "general.architecture" or (arch is not None
                                                  and key == f"{arch}.context_length")
      value = _gguf_value(f, vtype, keep=wanted)
      if key == "general.architecture":
        arch = value
      elif wanted:
        return int(value)
  return GGUF_DEFAULT_CONTEXT


def _model_path(c: ml_collections.ConfigDict) -> pathlib.Path | None:
  """The checkpoint file or directory `model.source` names (None for tiny / none)."""
  src = str(c.model.source)
  if src == "smollm2":
    from atommem_jax.models.tokenizer import smollm2_gguf_path

    try:
      return smollm2_gguf_path()
    except FileNotFoundError as e:
      raise ConfigError(f"model.source='smollm2': {e}") from None
  if src.startswith(("hf:", "gguf:")):
    return pathlib.Path(src.split(":", 1)[1])
  return None


def model_window(c: ml_collections.ConfigDict) -> int | None:
  """The policy's context window in tokens, without loading it (None: no model)."""
  src = str(c.model.source)
  if src == "none":
    return None
  if src == "tiny":
    return TINY_CONTEXT_WINDOW
  path = _model_path(c)
  if src.startswith("hf:"):
    cfg_file = path / "config.json"
    try:
      hf = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
      raise ConfigError(f"model.source: cannot read {cfg_file} ({e})") from None
    window = hf.get("max_position_embeddings", hf.get("text_config", {}).get(
        "max_position_embeddings"))
    if not isinstance(window, int):
      raise ConfigError(f"model.source: {cfg_file} has no integer max_position_embeddings")
    return window
  try:
    return gguf_context_length(path)
  except (OSError, ValueError, UnicodeDecodeError) as e:
    raise ConfigError(f"model.source: cannot read the GGUF metadata of {path} ({e})") from None


# --- the reading prompt's length -------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def _tokenizer(name: str):
  from atommem_jax.models import tokenizer as tok_lib

  if name == "<test tokenizer>":  # the tiny model's (runner.build_model builds the same one)
    with tempfile.TemporaryDirectory() as d:
      return tok_lib.load_tokenizer(tok_lib.build_test_tokenizer(d))
  return tok_lib.load_tokenizer(name)


def policy_tokenizer(c: ml_collections.ConfigDict):
  """The tokenizer the policy will use (loaded and cached; the model is not loaded)."""
  if c.model.tokenizer:
    return _tokenizer(str(c.model.tokenizer))
  path = _model_path(c)
  return _tokenizer("<test tokenizer>" if path is None else str(path))


def _chat_tokens(tokenizer, messages: list[dict[str, str]]) -> int:
  """Tokens of a chat as the LM client encodes it (template + generation prompt)."""
  text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
  return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def reading_prompt_overhead(c: ml_collections.ConfigDict, tokenizer) -> dict[str, int]:
  """Tokens of each configured method's reading prompt besides the section text: chat template,
  system message and step template, rendered as the first reading turn shows them (no
  questions, empty scratchpad, no query yet, no entries). A lower bound: questions, notes and
  retrieved entries only add to it."""
  from atommem_jax.agent.prompts import PromptSet, load_template

  p, ms, out = c.prompts, methods(c), {}
  if "atommem" in ms:
    ps = PromptSet.load(system=p.system, step=p.step, final=p.final)
    out["atommem"] = _chat_tokens(tokenizer, ps.messages("step", dict(
        questions="", scratchpad="", query=p.no_query_text, memories=p.empty_memory_text,
        chunk="", query_times=0)))
  if "memagent" in ms:
    system = load_template(p.memagent_system, "system").substitute()
    step = load_template(p.memagent_step, "step").substitute(questions="", scratchpad="",
                                                             chunk="")
    out["memagent"] = _chat_tokens(tokenizer, [{"role": "system", "content": system},
                                               {"role": "user", "content": step}])
  if "static_summary" in ms:
    user = load_template(p.summary, "summary").substitute(questions="", chunk="")
    out["static_summary"] = _chat_tokens(tokenizer, [{"role": "user", "content": user}])
  return out


# --- validate --------------------------------------------------------------------------------

def _check_methods_and_data(c: ml_collections.ConfigDict) -> None:
  ms = methods(c)
  if not ms:
    raise ConfigError("methods: empty; name at least one method")
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
    raise ConfigError(f"methods: {bad} are scripted for synthetic tasks only "
                      f"(data.dataset={c.data.dataset!r})")
  lengths(c)
  if c.max_examples < 0:
    raise ConfigError(f"max_examples must be >= 0, got {c.max_examples}")
  if c.group_size <= 0:
    raise ConfigError(f"group_size must be positive, got {c.group_size}")


def _check_values(c: ml_collections.ConfigDict) -> None:
  src = str(c.model.source)
  if src not in ("smollm2", "tiny", "none") and not src.startswith(("hf:", "gguf:")):
    raise ConfigError("model.source must be smollm2, tiny, none, hf:<dir> or gguf:<file>, "
                      f"got {src!r}")
  if src == "none" and (any(m in LLM_METHODS for m in methods(c)) or c.embedder == "policy"):
    raise ConfigError("model.source='none' but methods/embedder need a policy model")
  if c.model.dtype not in ("float32", "bfloat16"):
    raise ConfigError(f"model.dtype must be float32 or bfloat16, got {c.model.dtype!r}")
  if c.embedder not in EMBEDDERS:
    raise ConfigError(f"embedder must be one of {EMBEDDERS}, got {c.embedder!r}")
  s = c.sampling
  if s.temperature < 0:
    raise ConfigError(f"sampling.temperature must be >= 0, got {s.temperature}")
  if not 0 < s.top_p <= 1:
    raise ConfigError(f"sampling.top_p must be in (0, 1], got {s.top_p}")
  if s.top_k < 0:
    raise ConfigError(f"sampling.top_k must be >= 0 (0 = off), got {s.top_k}")
  for k in ("max_new_tokens", "max_answer_tokens", "max_prompt_tokens", "batch_size"):
    if s[k] <= 0:
      raise ConfigError(f"sampling.{k} must be positive, got {s[k]}")
  if c.group_size > 1 and s.temperature == 0:
    raise ConfigError(f"group_size={c.group_size} with sampling.temperature=0 gives identical "
                      "samples; set sampling.temperature > 0")
  e = c.env
  if e.chunk_size <= 0:
    raise ConfigError(f"env.chunk_size must be positive, got {e.chunk_size}")
  if not 0 <= e.overlap < e.chunk_size:
    raise ConfigError(f"env.overlap must be in [0, env.chunk_size={e.chunk_size}), got {e.overlap}")
  for k in ("max_calls", "max_query_times"):
    if e[k] < 0:
      raise ConfigError(f"env.{k} must be >= 0, got {e[k]}")
  if not isinstance(e.answer_after_budget, bool):
    raise ConfigError("env.answer_after_budget must be True or False, got "
                      f"{e.answer_after_budget!r}")
  m = c.memory
  for k in ("capacity", "top_k", "max_ops"):
    if m[k] <= 0:
      raise ConfigError(f"memory.{k} must be positive, got {m[k]}")
  if m.top_k > m.capacity:
    raise ConfigError(f"memory.top_k ({m.top_k}) exceeds memory.capacity ({m.capacity})")
  if m.overflow not in OVERFLOW_MODES:
    raise ConfigError(f"memory.overflow must be one of {OVERFLOW_MODES}, got {m.overflow!r}")
  if m.delete_mode not in DELETE_MODES:
    raise ConfigError(f"memory.delete_mode must be one of {DELETE_MODES}, got {m.delete_mode!r}")
  if c.max_memory_chars <= 0:
    raise ConfigError(f"max_memory_chars must be positive, got {c.max_memory_chars}")
  if c.viewer_episodes < 0:
    raise ConfigError(f"viewer_episodes must be >= 0, got {c.viewer_episodes}")


def _check_files(c: ml_collections.ConfigDict) -> None:
  from atommem_jax.data import raw

  src = str(c.model.source)
  if src.startswith(("hf:", "gguf:")) and not _model_path(c).exists():
    raise ConfigError(f"model.source: {_model_path(c)} does not exist")
  if c.model.tokenizer and not pathlib.Path(c.model.tokenizer).exists():
    raise ConfigError(f"model.tokenizer: {c.model.tokenizer} does not exist")
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
  from atommem_jax.agent.prompts import load_template

  for key, kind in PROMPT_TEMPLATES.items():
    try:
      load_template(c.prompts[key], kind)
    except (FileNotFoundError, ValueError) as e:
      raise ConfigError(f"prompts.{key}: {e}") from None


def _check_budgets(c: ml_collections.ConfigDict) -> None:
  """Prompt + generation within the model's window; a section within the prompt budget."""
  window = model_window(c)
  if window is None:
    return
  s = c.sampling
  new = max(s.max_new_tokens, s.max_answer_tokens)
  if s.max_prompt_tokens + new > window:
    raise ConfigError(
        f"sampling.max_prompt_tokens={s.max_prompt_tokens} + max(sampling.max_new_tokens, "
        f"sampling.max_answer_tokens)={new} exceeds the context window of model.source="
        f"{c.model.source!r} ({window} tokens); lower sampling.max_prompt_tokens to at most "
        f"{window - new}")
  section = c.env.chunk_size + 2 * c.env.overlap
  key = "model.tokenizer" if c.model.tokenizer else "model.source"
  try:
    overheads = reading_prompt_overhead(c, policy_tokenizer(c))
  except (OSError, ValueError) as e:  # no tokenizer files, no chat template, ...
    raise ConfigError(f"{key}: cannot render a reading prompt with its tokenizer ({e})") from None
  for method, overhead in overheads.items():
    if section + overhead > s.max_prompt_tokens:
      raise ConfigError(
          f"sampling.max_prompt_tokens={s.max_prompt_tokens} is shorter than a {method} reading "
          f"prompt: a section of env.chunk_size + 2*env.overlap = {section} tokens plus "
          f"{overhead} tokens of template, so every reading prompt would lose its middle; "
          f"raise sampling.max_prompt_tokens to at least {section + overhead} (plus room for "
          "questions, notes and retrieved entries) or lower env.chunk_size")


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first bad key (cheapest checks first; never loads a model)."""
  _check_methods_and_data(c)
  _check_values(c)
  _check_files(c)
  _check_budgets(c)
