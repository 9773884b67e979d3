"""An experiment config's agent part, checked and built: model, embedder, policies, engine.

Evaluation (`eval/`) and training (`training/`) read the same config keys for everything
below them (`model.*`, `embedder`, `sampling.*`, `env.*`, `memory.*`, `prompts.*`,
`max_memory_chars`); this module is the one place that checks those keys before any compute
(`check_agent_config`: every ConfigError message starts with the dotted key name; cheapest
checks first, then files, then the model's context window read from metadata, last the
reading prompt's length counted with the tokenizer; never a model load) and the one place
that builds the objects they describe.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import tempfile
from typing import Callable, Sequence

import ml_collections
import numpy as np

from atommem_jax import protocol
from atommem_jax.agent import environment as env_lib
from atommem_jax.agent import policies as pol
from atommem_jax.agent.prompts import PromptSet, load_template
from atommem_jax.agent.rollout import RolloutConfig
from atommem_jax.memory import state as mem_lib
from atommem_jax.models import gguf_io

LLM_METHODS = ("atommem", "memagent", "rag", "static_summary", "full_context")
SCRIPTED_METHODS = ("oracle", "scratchpad_only", "create_all_read_once")  # synthetic tasks only
REAL_SCRIPTED_METHODS = ("teacher",)  # real datasets only: reads the supporting labels
EMBEDDERS = ("minilm", "hashing", "policy")
OVERFLOW_MODES = ("error", "evict_oldest")  # as memory.state.MemoryConfig accepts
DELETE_MODES = ("remove", "blank")
# Template config keys (`prompts.<key>`) and the kind each must be (agent/prompts.py _SPEC).
PROMPT_TEMPLATES: dict[str, str] = {
    "system": "system", "step": "step", "final": "final", "answer": "answer",
    "memagent_system": "system", "memagent_step": "step", "summary": "summary"}
TINY_CONTEXT_WINDOW = 8192  # the random tiny model's max_position_embeddings (build_model)


class ConfigError(ValueError):
  """A config value that cannot work; the message starts with the key's dotted name."""


# --- the model's context window and tokenizer, from metadata only ---------------------------

def with_model(c: ml_collections.ConfigDict, source: str, tiny: dict | None = None,
               seed: int | None = None) -> ml_collections.ConfigDict:
  """A copy of `c` whose policy is another model: `model.source` (and, for a random tiny
  model, its shape and seed)."""
  b = ml_collections.ConfigDict(c.to_dict())
  b.model.source = str(source)
  if tiny is not None:
    b.model.tiny = dict(tiny)
  if seed is not None:
    b.seed = int(seed)
  return b


def _with_base(c: ml_collections.ConfigDict, base: dict) -> ml_collections.ConfigDict:
  """`c` with the model settings of a LoRA base (`models/lora.save(base=...)`)."""
  if str(base["source"]).startswith("lora:"):
    raise ConfigError(f"model.source: a LoRA base must be a model, got {base['source']!r}")
  return with_model(c, base["source"], base.get("tiny"), base.get("seed"))


def lora_base_config(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """For `model.source=lora:<adapter file>`: `c` with its base model's settings (from the
  file's metadata); `c` itself for any other source."""
  src = str(c.model.source)
  if not src.startswith("lora:"):
    return c
  from atommem_jax.models import lora

  try:
    return _with_base(c, lora.base_of(src[5:]))
  except (FileNotFoundError, ValueError, KeyError) as e:
    raise ConfigError(f"model.source: {e}") from None


def _lora_run(run_dir: pathlib.Path) -> dict | None:
  """The config of a LoRA training run directory (its checkpoints hold adapters), or None."""
  try:
    cfg = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
  except (OSError, json.JSONDecodeError):
    return None
  lo = cfg.get("lora") or {}
  return cfg if int(lo.get("rank", 0) or 0) > 0 else None


def _model_path(c: ml_collections.ConfigDict) -> pathlib.Path | None:
  """The checkpoint file or directory `model.source` names (None for tiny / none); for a
  LoRA adapter file, its base's."""
  c = lora_base_config(c)
  src = str(c.model.source)
  if src == "smollm2":
    from atommem_jax.models.tokenizer import smollm2_gguf_path

    try:
      return smollm2_gguf_path()
    except FileNotFoundError as e:
      raise ConfigError(f"model.source='smollm2': {e}") from None
  if src.startswith(("hf:", "gguf:")):
    return pathlib.Path(src.split(":", 1)[1])
  if src.startswith("orbax:"):  # a training run: its model/ dir has config.json + tokenizer
    return pathlib.Path(src.split(":", 1)[1])
  return None



def model_window(c: ml_collections.ConfigDict) -> int | None:
  """The policy's context window in tokens, without loading it (None: no model)."""
  c = lora_base_config(c)
  src = str(c.model.source)
  if src == "none":
    return None
  if src == "tiny":
    return TINY_CONTEXT_WINDOW
  path = _model_path(c)
  if src.startswith(("hf:", "orbax:")):
    cfg_file = (path if src.startswith("hf:") else path / "model") / "config.json"
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
    return gguf_io.gguf_context_length(path)
  except (OSError, ValueError, UnicodeDecodeError) as e:
    raise ConfigError(f"model.source: cannot read the GGUF metadata of {path} ({e})") from None


@functools.lru_cache(maxsize=4)
def _tokenizer(name: str):
  from atommem_jax.models import tokenizer as tok_lib

  if name == "<test tokenizer>":  # the tiny model's (build_model builds the same one)
    with tempfile.TemporaryDirectory() as d:
      return tok_lib.load_tokenizer(tok_lib.build_test_tokenizer(d))
  return tok_lib.load_tokenizer(name)


TASK_TOKENIZER_TASKS = 512  # synthetic tasks whose text trains a task tokenizer


def task_tokenizer_lines(c: ml_collections.ConfigDict) -> list[str]:
  """The text a tiny policy's task tokenizer (`model.tiny_tokenizer_vocab` > 0) is trained
  on: the configured prompt templates and TASK_TOKENIZER_TASKS tasks of the training stream
  (`data.seed`, the config's synthetic difficulty), never a held-out stream."""
  from atommem_jax.agent import oracle
  from atommem_jax.agent.prompts import resolve_template
  from atommem_jax.data import synthetic

  template = []
  for key in PROMPT_TEMPLATES:
    template += resolve_template(c.prompts[key]).read_text(encoding="utf-8").splitlines()
  template += [c.prompts.no_query_text, c.prompts.empty_memory_text]
  cfg = oracle.synthetic_config(c, c.data.synthetic_chunks)
  # Every prompt repeats its template: weighted so, its words become tokens too (once, the
  # system prompt stayed letters and took half of every prompt's tokens).
  return template * TASK_TOKENIZER_TASKS + synthetic.corpus(
      cfg, c.data.seed, TASK_TOKENIZER_TASKS, vary=bool(c.data.get("synthetic_vary", False)))


def build_task_tokenizer(c: ml_collections.ConfigDict, out_dir: pathlib.Path | str,
                         lines: Sequence[str] | None = None):
  """Trains the tiny policy's task tokenizer into `out_dir` (on `lines`, if the caller has
  already built `task_tokenizer_lines(c)`); returns it loaded."""
  from atommem_jax.models import tokenizer as tok_lib

  lines = task_tokenizer_lines(c) if lines is None else lines
  vocab = int(c.model.tiny_tokenizer_vocab)
  return tok_lib.load_tokenizer(tok_lib.build_bpe_tokenizer(out_dir, lines, vocab))


_TASK_TOKENIZERS: dict[str, object] = {}  # task_tokenizer_lines' text -> the tokenizer


def _task_tokenizer(c: ml_collections.ConfigDict):
  """The task tokenizer `c` describes, trained once per process (the model is not loaded)."""
  lines = task_tokenizer_lines(c)
  key = f"{c.model.tiny_tokenizer_vocab}\n" + "\n".join(lines)
  if key not in _TASK_TOKENIZERS:
    with tempfile.TemporaryDirectory() as d:
      _TASK_TOKENIZERS[key] = build_task_tokenizer(c, d, lines)
  return _TASK_TOKENIZERS[key]


def _tiny_task_vocab(c: ml_collections.ConfigDict) -> int:
  return int(c.model.get("tiny_tokenizer_vocab", 0) or 0)


def policy_tokenizer(c: ml_collections.ConfigDict):
  """The tokenizer the policy will use (loaded and cached; the model is not loaded)."""
  c = lora_base_config(c)
  if c.model.tokenizer:
    return _tokenizer(str(c.model.tokenizer))
  if str(c.model.source) == "tiny" and _tiny_task_vocab(c):
    return _task_tokenizer(c)
  path = _model_path(c)
  if path is not None and str(c.model.source).startswith("orbax:"):
    path = path / "model"
  return _tokenizer("<test tokenizer>" if path is None else str(path))


def _chat_tokens(tokenizer, messages: list[dict[str, str]]) -> int:
  """Tokens of a chat as the LM client encodes it (template + generation prompt)."""
  text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
  return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def reading_prompt_overhead(c: ml_collections.ConfigDict, tokenizer, methods: Sequence[str]
                            ) -> dict[str, int]:
  """Tokens of each configured method's reading prompt besides the section text: chat template,
  system message and step template, rendered as the first reading turn shows them (no
  questions, empty scratchpad, no query yet, no entries). A lower bound: questions, notes and
  retrieved entries only add to it."""
  from atommem_jax.agent.prompts import PromptSet, load_template

  p, ms, out = c.prompts, methods, {}
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


def _check_values(c: ml_collections.ConfigDict, methods: Sequence[str], group_size: int) -> None:
  src = str(c.model.source)
  if src not in ("smollm2", "tiny", "none") and not src.startswith(
      ("hf:", "gguf:", "orbax:", "lora:")):
    raise ConfigError("model.source must be smollm2, tiny, none, hf:<dir>, gguf:<file>, "
                      f"orbax:<training run dir> or lora:<adapter file>, got {src!r}")
  vocab = _tiny_task_vocab(c)
  from atommem_jax.models.tokenizer import MIN_BPE_VOCAB  # lazy: transformers is slow to import

  if vocab and (src != "tiny" or c.model.tokenizer or vocab < MIN_BPE_VOCAB):
    raise ConfigError(f"model.tiny_tokenizer_vocab={vocab}: a task tokenizer is trained for a "
                      "from-scratch policy only (model.source='tiny', no model.tokenizer), "
                      f"with at least {MIN_BPE_VOCAB} tokens (256 bytes + 3 special tokens)")
  if src == "none" and (any(m in LLM_METHODS for m in methods) or c.embedder == "policy"):
    raise ConfigError("model.source='none' but methods/embedder need a policy model")
  if c.model.dtype not in ("float32", "bfloat16"):
    raise ConfigError(f"model.dtype must be float32 or bfloat16, got {c.model.dtype!r}")
  from atommem_jax.models import config as model_config

  if c.model.get("attention", "xla") not in model_config.ATTENTION:
    raise ConfigError(f"model.attention must be one of {model_config.ATTENTION}, got "
                      f"{c.model.attention!r}")
  if c.embedder not in EMBEDDERS:
    raise ConfigError(f"embedder must be one of {EMBEDDERS}, got {c.embedder!r}")
  s = c.sampling
  if s.temperature < 0:
    raise ConfigError(f"sampling.temperature must be >= 0, got {s.temperature}")
  if not 0 < s.top_p <= 1:
    raise ConfigError(f"sampling.top_p must be in (0, 1], got {s.top_p}")
  if s.top_k < 0:
    raise ConfigError(f"sampling.top_k must be >= 0 (0 = off), got {s.top_k}")
  for k in ("max_new_tokens", "max_answer_tokens", "max_prompt_tokens"):
    if s[k] <= 0:
      raise ConfigError(f"sampling.{k} must be positive, got {s[k]}")
  if group_size > 1 and s.temperature == 0:
    raise ConfigError(f"group_size={group_size} with sampling.temperature=0 gives identical "
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


def _check_files(c: ml_collections.ConfigDict) -> None:
  c = lora_base_config(c)  # an adapter file that cannot be read fails here, naming the key
  src = str(c.model.source)
  if src.startswith(("hf:", "gguf:", "orbax:")) and not _model_path(c).exists():
    raise ConfigError(f"model.source: {_model_path(c)} does not exist")
  if c.model.tokenizer and not pathlib.Path(c.model.tokenizer).exists():
    raise ConfigError(f"model.tokenizer: {c.model.tokenizer} does not exist")
  for key, kind in PROMPT_TEMPLATES.items():
    try:
      load_template(c.prompts[key], kind)
    except (FileNotFoundError, ValueError) as e:
      raise ConfigError(f"prompts.{key}: {e}") from None


def _check_budgets(c: ml_collections.ConfigDict, methods: Sequence[str]) -> None:
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
    overheads = reading_prompt_overhead(c, policy_tokenizer(c), methods)
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




def check_agent_config(c: ml_collections.ConfigDict, methods: Sequence[str],
                       group_size: int = 1) -> None:
  """Raises ConfigError naming the first bad agent key (never loads a model)."""
  _check_values(c, methods, group_size)
  _check_files(c)
  _check_budgets(c, methods)


# --- building ---------------------------------------------------------------------------------

@dataclasses.dataclass
class Model:
  config: object  # ModelConfig
  params: object
  tokenizer: object


def load_model(c: ml_collections.ConfigDict, work_dir: pathlib.Path,
               dtype: str | None = None) -> Model | None:
  """Loads the policy named by `model.source` (None for "none"), in `dtype` (default
  `model.dtype`; training loads float32 master weights whatever it computes in)."""
  src = str(c.model.source)
  if src == "none":
    return None
  import jax.numpy as jnp

  from atommem_jax.models import config as model_config
  from atommem_jax.models import tokenizer as tok_lib

  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype or c.model.dtype]
  if src == "tiny":
    from atommem_jax.models.transformer import init_params

    if c.model.tokenizer:
      tok = tok_lib.load_tokenizer(c.model.tokenizer)
    elif _tiny_task_vocab(c):
      tok = build_task_tokenizer(c, work_dir / "tokenizer")
    else:
      tok = tok_lib.load_tokenizer(tok_lib.build_test_tokenizer(work_dir / "tokenizer"))
    mc = model_config.tiny("qwen3", vocab_size=max(512, len(tok)), eos_token_id=tok.eos_token_id,
                           max_position_embeddings=TINY_CONTEXT_WINDOW,
                           **dict(c.model.get("tiny", {}) or {}))
    return Model(mc, init_params(mc, seed=c.seed), tok)
  if src == "smollm2" or src.startswith("gguf:"):
    path = tok_lib.smollm2_gguf_path() if src == "smollm2" else pathlib.Path(src[5:])
    mc, params = gguf_io.from_gguf(path, dtype=dtype)
    return Model(mc, params, tok_lib.load_tokenizer(c.model.tokenizer or path))
  if src.startswith("lora:"):  # base model + adapters, merged into one policy
    from atommem_jax.models import lora

    base = load_model(lora_base_config(c), work_dir, dtype=jnp.dtype(dtype).name)
    cfg, adapters = lora.load(src[5:])
    return Model(base.config, lora.merge(base.params, adapters, cfg), base.tokenizer)
  if src.startswith("orbax:") and (run := _lora_run(pathlib.Path(src[6:]))) is not None:
    from atommem_jax.models import lora, orbax_io, transformer

    base = load_model(_with_base(c, run["model"] | {"seed": run["seed"]}), work_dir,
                      dtype=jnp.dtype(dtype).name)
    lo = run["lora"]
    cfg = lora.LoraConfig(rank=lo["rank"], alpha=lo["alpha"], targets=lo["targets"])
    abstract = transformer.abstract_params(base.config.replace(param_dtype="float32"))
    adapters = orbax_io.load_params(src[6:], lora.abstract(cfg, abstract))
    return Model(base.config, lora.merge(base.params, adapters, cfg), base.tokenizer)
  if src.startswith("orbax:"):
    from atommem_jax.models import orbax_io

    mc, params = orbax_io.load_run(pathlib.Path(src[6:]), dtype=dtype)
    return Model(mc, params, tok_lib.load_tokenizer(c.model.tokenizer or
                                                    pathlib.Path(src[6:]) / "model"))
  from atommem_jax.models.hf_io import from_pretrained

  path = pathlib.Path(src[3:])
  mc, params = from_pretrained(path, dtype=dtype)
  return Model(mc, params, tok_lib.load_tokenizer(c.model.tokenizer or path))


def build_embedder(c: ml_collections.ConfigDict, model: Model | None, params=None
                   ) -> tuple[Callable[[list[str]], np.ndarray], int]:
  """(embed_fn, dim) for memory entries and queries (policy embedder: with `params`, else
  the model's)."""
  from atommem_jax.memory import embedder as emb_lib

  if c.embedder == "hashing":
    e = emb_lib.HashingEmbedder()
  elif c.embedder == "minilm":
    e = emb_lib.MiniLMEmbedder()
  else:
    e = emb_lib.PolicyEmbedder(model.config, model.tokenizer)
    return functools.partial(e.embed, params=model.params if params is None else params), e.dim
  return e.embed, e.dim


def sampling_config(c: ml_collections.ConfigDict) -> pol.SamplingConfig:
  s = c.sampling
  return pol.SamplingConfig(temperature=s.temperature, top_k=s.top_k or None,
                            top_p=s.top_p if s.top_p < 1 else None,
                            max_new_tokens=s.max_new_tokens, max_answer_tokens=s.max_answer_tokens,
                            max_prompt_tokens=s.max_prompt_tokens)


def make_policy(method: str, model: Model | None, c: ml_collections.ConfigDict, seed: int):
  """The policy of `method` (an LMClient for full_context, which runs on the client)."""
  if method in SCRIPTED_METHODS:
    from atommem_jax.agent import oracle

    return oracle.make_scripted_policy(method)
  if method in REAL_SCRIPTED_METHODS:
    from atommem_jax.agent import teacher

    return teacher.make_teacher()
  lm = pol.LMClient(model.config, model.tokenizer, sampling_config(c), seed=seed)
  p = c.prompts
  if method == "atommem":
    prompts = PromptSet.load(system=p.system, step=p.step, final=p.final)
    return pol.AtomMemPolicy(lm, prompts, max_memory_chars=c.max_memory_chars,
                             no_query_text=p.no_query_text, empty_memory_text=p.empty_memory_text)
  if method == "memagent":
    return pol.MemAgentPolicy(lm, system=p.memagent_system, step=p.memagent_step,
                              answer_template=p.answer)
  if method == "rag":
    return pol.RAGPolicy(lm, answer_template=p.answer)
  if method == "static_summary":
    return pol.StaticSummaryPolicy(lm, answer_template=p.answer, summary_template=p.summary)
  if method == "full_context":
    return lm
  raise ValueError(f"unknown method {method!r}; known: "
                   f"{LLM_METHODS + SCRIPTED_METHODS + REAL_SCRIPTED_METHODS}")


def rollout_config(c: ml_collections.ConfigDict, method: str, dim: int) -> RolloutConfig:
  allowed = protocol.OP_KINDS
  if method in ("memagent", "scratchpad_only"):
    allowed = (protocol.SCRATCHPAD,)
  return RolloutConfig(
      env=env_lib.EnvConfig(chunk_size=c.env.chunk_size, overlap=c.env.overlap,
                            max_calls=c.env.max_calls, max_query_times=c.env.max_query_times,
                            answer_after_budget=c.env.answer_after_budget),
      memory=mem_lib.MemoryConfig(capacity=c.memory.capacity, dim=dim, top_k=c.memory.top_k,
                                  overflow=c.memory.overflow, delete_mode=c.memory.delete_mode),
      max_ops=c.memory.max_ops, allowed_ops=allowed)
