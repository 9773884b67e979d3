"""The rollout engine: B x G episodes stepped together, a pure memory state threaded through.

Each step, for all unfinished episodes at once:
  render prompts from (cursor, MemoryState)  ->  one batched policy call  ->  parse (host)
  ->  encode ops (one embedding call)  ->  jitted vmapped `memory.apply`  ->  advance cursors.
Finished episodes stay in the batch as no-ops, so the memory update never recompiles as
episodes end; the policy only sees the unfinished ones (the sampler pads its batch to a
few bucketed sizes). Everything a prompt shows is a function of the state and the section,
so prompts stay bounded however long the document is.

This is the one episode loop: evaluation, SFT data generation (scripted teachers) and GRPO
rollouts all run through `RolloutEngine.run`. The model parameters are an argument of each
run (GRPO samples with the parameters of the current training step). The memory state is
the engine's: the jitted apply donates it, and only the small fields prompts need (handles,
ids, flags; never the embeddings) are copied to the host each step.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Protocol, Sequence

import jax
import numpy as np

from atommem_jax.agent import environment as env_lib
from atommem_jax import protocol
from atommem_jax.agent.trajectory import StepRecord, Trajectory
from atommem_jax.memory import state as mem_lib
from atommem_jax.memory.encode import encode_ops
from atommem_jax.memory.text_table import TextTable

@dataclasses.dataclass(frozen=True)
class RolloutConfig:
  env: env_lib.EnvConfig = env_lib.EnvConfig()
  memory: mem_lib.MemoryConfig = mem_lib.MemoryConfig()
  max_ops: int = 16  # ops applied per response; more are counted as err_too_many_ops
  max_op_chars: int | None = 4096  # longest tag content accepted (policies may override)
  allowed_ops: tuple[str, ...] = protocol.OP_KINDS  # others are dropped and counted

  def __post_init__(self):
    if self.max_ops <= 0:
      raise ValueError(f"RolloutConfig.max_ops must be positive, got {self.max_ops}")
    if bad := set(self.allowed_ops) - set(protocol.OP_KINDS):
      raise ValueError(f"RolloutConfig.allowed_ops has unknown kinds {sorted(bad)}")


@dataclasses.dataclass(frozen=True)
class Observation:
  """What the policy sees at one step (everything a prompt may show)."""

  episode: env_lib.Episode
  sample: int
  phase: str  # "reading" | "answering"
  chunk_index: int
  num_chunks: int
  chunk: str  # the section ("" when answering)
  question_index: int
  scratchpad: str
  query: str | None
  memories: tuple[str, ...]  # texts shown as Memory 1..k
  query_times: int
  max_query_times: int


@dataclasses.dataclass
class Action:
  """A policy's response.

  `text` is what the policy wrote; when token ids are present (sampled responses, and
  scripted ones rendered for a model) `text == tokenizer.decode(response_ids,
  skip_special_tokens=True)`. `applied` is the protocol text the environment applies
  instead, for static workflows that turn a model's free text into fixed ops (None = the
  text itself); it never replaces `text`, so a trajectory's text and tokens agree.
  """

  text: str
  prompt_text: str = ""
  prompt_ids: list[int] = dataclasses.field(default_factory=list)
  response_ids: list[int] = dataclasses.field(default_factory=list)
  logprobs: list[float] = dataclasses.field(default_factory=list)
  scripted: bool = False
  applied: str | None = None


class Policy(Protocol):
  name: str
  advance_rule: str  # see EnvConfig.advance

  def act(self, observations: Sequence[Observation], params=None) -> list[Action]:
    """One action per observation; `params` are the model parameters to sample with."""
    ...


@dataclasses.dataclass
class RolloutOutput:
  """What one `RolloutEngine.run` produced, rows in (episode, sample) order."""

  trajectories: list[Trajectory]
  final_state: mem_lib.MemoryState  # batched [B*G, ...], on device
  texts: TextTable  # resolves the state's text handles


ScoreFn = Callable[[str | None, Sequence[str]], dict[str, float]]


@functools.lru_cache(maxsize=None)
def _apply_fn(config: mem_lib.MemoryConfig):
  return jax.jit(jax.vmap(functools.partial(mem_lib.apply, config=config)), donate_argnums=0)


# The state fields prompts and records read on the host: handles, ids and flags (a few
# int32 per entry); the embeddings [B, C, D] stay on the device.
_HOST_FIELDS = ("scratchpad", "text", "alive", "entry_id", "next_id", "query", "shown_ids")


def _to_host(state: mem_lib.MemoryState) -> dict[str, np.ndarray]:
  """One device-to-host copy of the small fields of the batched state, by field name."""
  fields = jax.device_get({name: getattr(state, name) for name in _HOST_FIELDS})
  return {k: np.asarray(v) for k, v in fields.items()}


def _live_entries(state: dict, b: int) -> list[tuple[int, int]]:
  """(stable id, text handle) of row b's live entries, by id."""
  alive = state["alive"][b]
  ids, texts = state["entry_id"][b][alive], state["text"][b][alive]
  order = np.argsort(ids, kind="stable")
  return [(int(ids[i]), int(texts[i])) for i in order]


def shown_texts(state: dict, b: int, table: TextTable) -> list[str]:
  """Texts of the entries displayed as Memory 1..k for row b (from `shown_ids`)."""
  by_id = dict(_live_entries(state, b))
  return [table.get(by_id[int(i)]) for i in state["shown_ids"][b] if int(i) in by_id]


class RolloutEngine:
  """Runs policies on episodes. `embed_fn` maps texts to unit vectors [N, D]."""

  def __init__(self, config: RolloutConfig, tokenizer, embed_fn: Callable[[list[str]], np.ndarray],
               score_fn: ScoreFn | None = None):
    self.config = config
    self.tokenizer = tokenizer
    self.embed_fn = embed_fn
    self.score_fn = score_fn
    self._apply = _apply_fn(config.memory)

  def sections(self, episode: env_lib.Episode) -> list[str]:
    if episode.sections:
      return list(episode.sections)
    if self.tokenizer is None:
      raise ValueError(f"episode {episode.episode_id!r} has no pre-cut sections and the engine "
                       "has no tokenizer to cut its document")
    ids = self.tokenizer(episode.document, add_special_tokens=False)["input_ids"]
    return env_lib.split_document(ids, self.tokenizer, self.config.env)

  def _filter(self, parsed: protocol.ParsedStep) -> tuple[protocol.ParsedStep, list[str]]:
    allowed = self.config.allowed_ops
    kept = tuple(op for op in parsed.ops if op.kind in allowed)
    dropped = [f"op_not_allowed <{protocol.TAG_OF_KIND[op.kind]}>"
               for op in parsed.ops if op.kind not in allowed]
    return dataclasses.replace(parsed, ops=kept), dropped

  def run(self, episodes: Sequence[env_lib.Episode], policy: Policy, group_size: int = 1,
          progress: Callable[[int, int], None] | None = None, params=None) -> RolloutOutput:
    """Runs every episode `group_size` times (the GRPO group), sampling with `params`."""
    if group_size <= 0:
      raise ValueError(f"group_size must be positive, got {group_size}")
    cfg = self.config
    rows = [(e, g) for e in episodes for g in range(group_size)]
    b = len(rows)
    if not b:
      return RolloutOutput([], mem_lib.init_batch(cfg.memory, 0), TextTable())
    sections = {e.episode_id: self.sections(e) for e in episodes}
    cursors = [env_lib.new_cursor(len(sections[e.episode_id]), len(e.questions), cfg.env)
               for e, _ in rows]
    records: list[list[StepRecord]] = [[] for _ in range(b)]
    table = TextTable()
    state = mem_lib.init_batch(cfg.memory, b)
    idle = protocol.ParsedStep()
    max_chars = getattr(policy, "max_op_chars", cfg.max_op_chars)
    host = _to_host(state)
    steps_done = 0
    while True:
      active = [i for i in range(b) if not cursors[i].done]
      if not active:
        break
      obs = [self._observe(rows[i], cursors[i], sections[rows[i][0].episode_id], host, i, table)
             for i in active]
      actions = policy.act(obs, params)
      if len(actions) != len(obs):
        raise ValueError(f"policy {policy.name!r} returned {len(actions)} actions for "
                         f"{len(obs)} observations")
      parsed_all = [idle] * b
      extra_errors: dict[int, list[str]] = {}
      for i, a in zip(active, actions):
        text = a.text if a.applied is None else a.applied
        parsed_all[i], extra_errors[i] = self._filter(protocol.parse(text, max_chars))
      ops = encode_ops(parsed_all, table, self.embed_fn, cfg.max_ops, cfg.memory.dim)
      state, status = self._apply(state, ops)
      status = np.asarray(status)
      host = _to_host(state)
      for i, a, o in zip(active, actions, obs):
        before = cursors[i]
        cursors[i], ev = env_lib.step(before, parsed_all[i], cfg.env.max_query_times,
                                      policy.advance_rule)
        records[i].append(self._record(len(records[i]), o, a, parsed_all[i], extra_errors[i],
                                       status[i], ev, host, i, table))
      steps_done += 1
      if progress:
        progress(steps_done, len(active))
    counts = mem_lib.counters(state)
    out = []
    for i, (e, g) in enumerate(rows):
      answers = list(cursors[i].final_answers())
      parse_errs = sum(len(r.parse_errors) for r in records[i])
      counters = {k: int(v[i]) for k, v in counts.items()}
      untagged = sum(bool(r.events.get("untagged_answer")) for r in records[i])
      op_counts = dict(counters, parse_errors=parse_errs, steps=len(records[i]),
                       untagged_answers=untagged,
                       unread_sections=cursors[i].unread_sections)  # > 0: the budget cut reading
      scores = self._score(e, answers)
      q = int(host["query"][i])
      final_memory = {
          "entries": [{"id": eid, "text": table.get(h)} for eid, h in _live_entries(host, i)],
          "scratchpad": table.get(int(host["scratchpad"][i])),
          "query": table.get(q) if q >= 0 else None,
          "next_id": int(host["next_id"][i]),
          "counters": counters}
      out.append(Trajectory(episode_id=e.episode_id, method=policy.name, questions=list(e.questions),
                            golds=[list(x) for x in e.golds], answers=answers, steps=records[i],
                            scores=scores, op_counts=op_counts, meta=dict(e.meta), sample=g,
                            final_memory=final_memory))
    return RolloutOutput(out, state, table)

  def _score(self, e: env_lib.Episode, answers: list[str | None]) -> dict[str, float]:
    if self.score_fn is None:
      return {}
    per_q = [self.score_fn(a or "", golds) for a, golds in zip(answers, e.golds)]
    return {k: float(np.mean([s[k] for s in per_q])) for k in per_q[0]}

  def _observe(self, row, cursor: env_lib.Cursor, sections: list[str], host: dict, i: int,
               table: TextTable) -> Observation:
    e, g = row
    phase = cursor.phase
    q = int(host["query"][i])
    return Observation(
        episode=e, sample=g, phase=phase, chunk_index=min(cursor.chunk, cursor.num_chunks),
        num_chunks=cursor.num_chunks,
        chunk=sections[cursor.chunk] if phase == env_lib.READING else "",
        question_index=cursor.question, scratchpad=table.get(int(host["scratchpad"][i])),
        query=table.get(q) if q >= 0 else None,
        memories=tuple(shown_texts(host, i, table)),
        query_times=cursor.query_times, max_query_times=self.config.env.max_query_times)

  def _record(self, index: int, o: Observation, a: Action, parsed: protocol.ParsedStep,
              extra_errors: list[str], status: np.ndarray, ev: env_lib.StepEvents, host: dict,
              i: int, table: TextTable) -> StepRecord:
    op_errors = [f"{op.kind}: {mem_lib.STATUS_NAMES[int(s)]}"
                 for op, s in zip(parsed.ops, status) if int(s) != mem_lib.OK]
    ev_dict = {k: v for k, v in dataclasses.asdict(ev).items() if k != "phase"}
    ev_dict["scripted"] = a.scripted
    return StepRecord(
        index=index, phase=o.phase, chunk=o.chunk_index, question=o.question_index,
        prompt_text=a.prompt_text, response_text=a.text, applied_text=a.applied or "",
        section=o.chunk, prompt_ids=list(a.prompt_ids),
        response_ids=list(a.response_ids), response_logprobs=[float(x) for x in a.logprobs],
        ops=[{"kind": op.kind, "text": op.text, "id": op.id} for op in parsed.ops],
        op_errors=op_errors, parse_errors=[str(e) for e in parsed.errors] + extra_errors,
        answer=env_lib.answer_of(parsed)[0] if o.phase == env_lib.ANSWERING else parsed.answer,
        shown_memories=list(o.memories),
        memory_after=[table.get(h) for _, h in _live_entries(host, i)],
        scratchpad_after=table.get(int(host["scratchpad"][i])), events=ev_dict)
