"""Replays synthetic trajectories through the real protocol parser, chunk stream and MemoryState.

`replay(example, responses)` feeds (chunk, response) turns through `protocol.parse`,
`memory.encode_ops` and the pure `memory.state.apply`, then derives the answer from the entries
the final prompt would display (`synthetic.answer_from_memory`, which never sees the gold).
For the oracle it also drives `agent.environment.step` and checks that every turn is shown the
chunk the oracle wrote it for (so the trajectory is valid SFT data under the official advance
rule).

Baselines (same relevance signal as the oracle: the example's key events):
* `scratchpad_only_responses`: keeps relevant facts only in the scratchpad, which holds at most
  `capacity` facts (oldest dropped first); applies corrections/retractions to facts still there.
* `create_all_responses`: creates one entry per relevant fact (a correction becomes a new
  entry), never updates or deletes, reads once at the end.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import jax
import numpy as np

from atommem_jax import protocol
from atommem_jax.agent import environment
from atommem_jax.data import synthetic
from atommem_jax.memory import encode as encode_lib
from atommem_jax.memory import state as state_lib
from atommem_jax.memory.text_table import TextTable

EmbedFn = Callable[[list[str]], np.ndarray]
MAX_OPS = 8


@dataclasses.dataclass(frozen=True)
class ReplayResult:
  derived_answer: str | None  # from the memory contents alone
  written_answer: str | None  # the <final_answer> of the trajectory, if any
  displayed: tuple[str, ...]  # entries shown as Memory 1..k in the final prompt
  scratchpad: str
  counters: dict[str, int]
  op_errors: int  # ops with a non-OK status
  parse_errors: int

  def correct(self, gold: str) -> bool:
    return self.derived_answer == gold


def to_episode(example: synthetic.SyntheticExample) -> environment.Episode:
  """The example as an environment episode with its designed sections."""
  return environment.Episode(episode_id=example.id, questions=(example.question,),
                             golds=((example.answer,),), document=example.document,
                             sections=example.chunks)


@functools.lru_cache(maxsize=8)
def _jitted_apply(config: state_lib.MemoryConfig):
  return jax.jit(functools.partial(state_lib.apply, config=config))


def _displayed(state: state_lib.MemoryState, table: TextTable) -> list[str]:
  ids = np.asarray(state.shown_ids)
  entry_id, alive, text = (np.asarray(state.entry_id), np.asarray(state.alive),
                           np.asarray(state.text))
  out = []
  for i in ids:
    if i < 0:
      continue
    slot = np.nonzero((entry_id == i) & alive)[0]
    if slot.size and text[slot[0]] >= 0:
      out.append(table.get(int(text[slot[0]])))
  return out


def replay(example: synthetic.SyntheticExample, turns: Sequence[tuple[int, str]],
           embed_fn: EmbedFn, config: state_lib.MemoryConfig | None = None,
           check_stream: bool = False) -> ReplayResult:
  """Applies (chunk, response) turns to a fresh memory; see the module docstring."""
  config = config or state_lib.MemoryConfig(capacity=32, dim=_dim(embed_fn), top_k=6)
  apply = _jitted_apply(config)
  state = state_lib.init_state(config)
  table = TextTable()
  cursor = environment.new_cursor(len(example.chunks), 1, environment.EnvConfig(max_calls=0))
  written, op_errors, parse_errors = None, 0, 0
  for t, (chunk, response) in enumerate(turns):
    if check_stream:
      shown = cursor.chunk if cursor.phase == environment.READING else -1
      if shown != chunk:
        raise ValueError(f"replay {example.id}: turn {t} was written for chunk {chunk} but the "
                         f"stream shows {shown} ({cursor.phase})")
    parsed = protocol.parse(response)
    parse_errors += len(parsed.errors)
    ops = encode_lib.encode_ops([parsed], table, embed_fn, MAX_OPS, config.dim)
    ops = jax.tree.map(lambda x: x[0], ops)
    state, status = apply(state, ops)
    op_errors += int(np.sum(np.asarray(status)[np.asarray(ops.valid)] != state_lib.OK))
    if parsed.answer is not None and written is None:
      written = parsed.answer
    if check_stream:
      cursor, _ = environment.step(cursor, parsed)
  if check_stream and not cursor.done:
    raise ValueError(f"replay {example.id}: the episode did not finish (phase {cursor.phase})")
  displayed = _displayed(state, table)
  pad = table.get(int(state.scratchpad)) if int(state.scratchpad) >= 0 else ""
  sources = displayed + _sentences(pad)
  return ReplayResult(
      derived_answer=synthetic.answer_from_memory(example.kind, example.spec, sources),
      written_answer=written, displayed=tuple(displayed), scratchpad=pad,
      counters={k: int(v) for k, v in state_lib.counters(state).items()},
      op_errors=op_errors, parse_errors=parse_errors)


def _sentences(text: str) -> list[str]:
  return [s for s in (p.strip() for p in text.split("\n")) if s]


def _dim(embed_fn: EmbedFn) -> int:
  return int(np.asarray(embed_fn(["probe"])).shape[-1])


def oracle_turns(example: synthetic.SyntheticExample) -> list[tuple[int, str]]:
  return [(s.chunk, s.response) for s in example.oracle]


def scratchpad_only_responses(example: synthetic.SyntheticExample, capacity: int = 2
                              ) -> list[tuple[int, str]]:
  """One turn per chunk; the facts live in a scratchpad of at most `capacity` facts."""
  if capacity <= 0:
    raise ValueError(f"scratchpad capacity must be positive, got {capacity}")
  events = {}
  for c, kind, text in example.events:
    events.setdefault(c, []).append((kind, text))
  pad: list[str] = []
  turns = []
  for c in range(len(example.chunks)):
    for kind, text in events.get(c, []):
      if kind == "create":
        pad.append(text)
      elif kind == "update":
        key = _fact_key(text)
        idx = [i for i, p in enumerate(pad) if _fact_key(p) == key]
        if idx:
          pad[idx[0]] = text
        else:
          pad.append(text)
      elif text in pad:
        pad.remove(text)
      pad = pad[-capacity:]
    body = "\n".join(pad) if pad else "Nothing yet."
    turns.append((c, protocol.render_response([protocol.Op(protocol.SCRATCHPAD, body)])))
  turns.append((-1, protocol.render_response(answer="unknown")))
  return turns


def create_all_responses(example: synthetic.SyntheticExample) -> list[tuple[int, str]]:
  """One turn per chunk creating every relevant fact; one read (the question) at the end."""
  events = {}
  for c, kind, text in example.events:
    if kind in ("create", "update"):
      events.setdefault(c, []).append(text)
  turns = []
  for c in range(len(example.chunks)):
    texts = events.get(c, [])
    if texts:
      ops = [protocol.Op(protocol.CREATE, t) for t in texts]
      turns.append((c, protocol.render_response(ops)))
    else:
      turns.append((c, synthetic.NOTHING_RELEVANT))
  turns.append((-1, protocol.render_response([protocol.Op(protocol.READ, example.question)])))
  return turns


def _fact_key(text: str) -> str:
  """The subject part of a fact ("The home city of A is" / "A joined the C club")."""
  return text.rsplit(" is ", 1)[0] if " is " in text else text


POLICIES = {
    "oracle": oracle_turns,
    "scratchpad_only": scratchpad_only_responses,
    "create_all_read_once": create_all_responses,
}


def accuracy(examples: Sequence[synthetic.SyntheticExample], policy: str, embed_fn: EmbedFn,
             scratch_capacity: int = 2) -> float:
  """Fraction of examples whose memory (after the policy's turns) yields the gold answer."""
  if policy not in POLICIES:
    raise ValueError(f"policy must be one of {sorted(POLICIES)}, got {policy!r}")
  if not examples:
    raise ValueError("accuracy: no examples")
  hits = 0
  for ex in examples:
    turns = (scratchpad_only_responses(ex, scratch_capacity) if policy == "scratchpad_only"
             else POLICIES[policy](ex))
    res = replay(ex, turns, embed_fn, check_stream=(policy == "oracle"))
    hits += res.correct(ex.answer)
  return hits / len(examples)


def _hashing_embed_fn(dim: int = 384) -> EmbedFn:
  try:
    from atommem_jax.memory.embedder import HashingEmbedder  # the memory engineer's
    return HashingEmbedder(dim=dim)
  except ImportError:  # pragma: no cover - fallback while embedder.py is not committed
    import zlib

    def embed(texts):
      out = np.zeros((len(texts), dim), np.float32)
      for r, t in enumerate(texts):
        for w in t.lower().split():
          h = zlib.crc32(w.encode())
          out[r, h % dim] += 1.0 if h >> 31 else -1.0
      return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return embed


def main(argv: Sequence[str] | None = None) -> None:
  """Accuracy of the oracle and the baselines per task family (the acceptance numbers)."""
  import argparse
  p = argparse.ArgumentParser(description="Replay synthetic tasks through MemoryState.")
  p.add_argument("--n", type=int, default=50, help="examples per setting")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--scratch_capacity", type=int, default=2, help="facts the scratchpad holds")
  args = p.parse_args(argv)
  embed_fn = _hashing_embed_fn()
  settings = {
      "chain, no corrections": synthetic.SyntheticConfig(task="chain", corrections=0),
      "chain, 1 correction": synthetic.SyntheticConfig(task="chain", corrections=1),
      "chain, 2 corrections": synthetic.SyntheticConfig(task="chain", corrections=2),
      "count, no retractions": synthetic.SyntheticConfig(task="count", retractions=0),
      "count, 1 retraction": synthetic.SyntheticConfig(task="count", retractions=1),
      "count, 2 retractions": synthetic.SyntheticConfig(task="count", retractions=2),
  }
  print(f"{'setting':<24}" + "".join(f"{name:>22}" for name in POLICIES))
  for label, cfg in settings.items():
    exs = list(synthetic.generate_many(cfg, args.seed, args.n))
    accs = [accuracy(exs, name, embed_fn, args.scratch_capacity) for name in POLICIES]
    print(f"{label:<24}" + "".join(f"{a:>22.2f}" for a in accs))


if __name__ == "__main__":
  main()
