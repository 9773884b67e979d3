"""Scripted policies for synthetic CRUD tasks, run through the real rollout engine.

`oracle` replays the example's oracle trajectory (the ideal ops for each section) and, in
the answering phase, queries the question and answers from what the memory then SHOWS
(`synthetic.answer_from_memory` over the displayed entries and the scratchpad): the gold
answer is never read, so 100% EM means the engine's parse -> encode -> apply -> read path
kept every create, update and delete right. The static workflows `scratchpad_only` (facts
kept in a scratchpad of at most 2 facts) and `create_all_read_once` (every relevant fact
created, never updated or deleted, one read at the end) get the same relevance signal (the
example's key events) and answer the same way, so they differ from the oracle only in
which memory ops they use. All of them run through `RolloutEngine`, the one episode loop.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import ml_collections

from atommem_jax.agent import environment as env_lib
from atommem_jax import protocol
from atommem_jax.agent.rollout import Action, Observation
from atommem_jax.data import synthetic


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
    turns.append((c, protocol.render([protocol.Op(protocol.SCRATCHPAD, body)])))
  turns.append((-1, protocol.render(answer="unknown")))
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
      turns.append((c, protocol.render(ops)))
    else:
      turns.append((c, synthetic.NOTHING_RELEVANT))
  turns.append((-1, protocol.render([protocol.Op(protocol.READ, example.question)])))
  return turns


def _fact_key(text: str) -> str:
  """The subject part of a fact ("The home city of A is" / "A joined the C club")."""
  return text.rsplit(" is ", 1)[0] if " is " in text else text


POLICIES = {
    "oracle": oracle_turns,
    "scratchpad_only": scratchpad_only_responses,
    "create_all_read_once": create_all_responses,
}



_TURNS = {
    "oracle": oracle_turns,
    "scratchpad_only": scratchpad_only_responses,
    "create_all_read_once": create_all_responses,
}
POLICIES = tuple(_TURNS)


def to_episode(example: synthetic.SyntheticExample) -> env_lib.Episode:
  """The example as an environment episode with its designed sections."""
  return env_lib.Episode(episode_id=example.id, questions=(example.question,),
                         golds=((example.answer,),), document=example.document,
                         sections=example.chunks)


def synthetic_config(c: ml_collections.ConfigDict, num_chunks: int) -> synthetic.SyntheticConfig:
  return synthetic.SyntheticConfig(task=c.data.get("synthetic_task", "mixed"),
                                   num_chunks=num_chunks, hops=c.data.synthetic_hops,
                                   corrections=c.data.synthetic_corrections,
                                   retractions=c.data.synthetic_retractions,
                                   members=c.data.get("synthetic_members",
                                                      synthetic.SyntheticConfig.members),
                                   count_share=c.data.get("synthetic_count_share",
                                                          synthetic.SyntheticConfig.count_share))


def episodes_of(cfg: synthetic.SyntheticConfig, seed: int, n: int, start: int = 0,
                vary: bool = False) -> list[env_lib.Episode]:
  """Synthetic tasks `start .. start + n - 1` of a seeded stream, as episodes whose metadata
  regenerates them (`example_of`). `vary`: each task draws its own difficulty at or below
  `cfg` (`synthetic.varied_config`); its metadata holds the drawn config."""
  out = []
  for i in range(start, start + n):
    task_cfg = synthetic.varied_config(cfg, seed, i) if vary else cfg
    ex = synthetic.generate(task_cfg, seed, i)
    out.append(dataclasses.replace(to_episode(ex), meta={
        "dataset": "synthetic", "kind": ex.kind, "seed": seed, "index": i,
        "config": dataclasses.asdict(task_cfg), "uses": list(ex.uses)}))
  return out


def synthetic_episodes(c: ml_collections.ConfigDict, num_chunks: int) -> list[env_lib.Episode]:
  """`max_examples` synthetic tasks with `num_chunks` sections each (seeded by c.seed)."""
  return episodes_of(synthetic_config(c, num_chunks), c.seed, c.max_examples or 20)


def example_of(episode: env_lib.Episode) -> synthetic.SyntheticExample:
  """Regenerates an episode's synthetic example from its metadata (a pure function)."""
  m = episode.meta
  try:
    return synthetic.generate(synthetic.SyntheticConfig(**m["config"]), m["seed"], m["index"])
  except KeyError as e:
    raise ValueError(f"episode {episode.episode_id!r} is not a synthetic task (meta lacks {e})") from None


def _sentences(text: str) -> list[str]:
  return [s.strip() for s in text.split("\n") if s.strip()]


class ScriptedPolicy:
  """Replays a synthetic policy's reading turns; answers from the displayed memory."""

  def __init__(self, method: str):
    if method not in _TURNS:
      raise ValueError(f"unknown scripted policy {method!r}; expected one of {POLICIES}")
    self.name = method
    # The oracle speaks the official protocol (a query re-presents the section); the static
    # workflows write exactly one turn per section.
    self.advance_rule = "atommem" if method == "oracle" else "every_step"
    self.queries = method != "scratchpad_only"
    self._turns: dict[tuple[str, int], list[tuple[int, str]]] = {}
    self._examples: dict[str, synthetic.SyntheticExample] = {}

  def _reading_turns(self, o: Observation) -> list[tuple[int, str]]:
    key = (o.episode.episode_id, o.sample)
    if key not in self._turns:
      ex = self._examples.setdefault(o.episode.episode_id, example_of(o.episode))
      turns = _TURNS[self.name](ex)
      self._turns[key] = [t for t in turns if t[0] >= 0]
    return self._turns[key]

  def _act(self, o: Observation) -> str:
    if o.phase == env_lib.READING:
      turns = self._reading_turns(o)
      if not turns:
        raise ValueError(f"{self.name}: no scripted turn left for {o.episode.episode_id} "
                         f"section {o.chunk_index}")
      chunk, response = turns.pop(0)
      if chunk != o.chunk_index:
        raise ValueError(f"{self.name}: turn written for section {chunk} but the environment "
                         f"shows section {o.chunk_index} of {o.episode.episode_id}")
      return response
    question = o.episode.questions[o.question_index]
    if self.queries and o.query != question:
      return protocol.render([protocol.Op(protocol.READ, question)])
    ex = self._examples.get(o.episode.episode_id) or example_of(o.episode)
    answer = synthetic.answer_from_memory(ex.kind, ex.spec,
                                          list(o.memories) + _sentences(o.scratchpad))
    return protocol.render(answer=answer if answer else "unknown")

  def act(self, observations: Sequence[Observation], params=None) -> list[Action]:
    return [Action(text=self._act(o), scripted=True) for o in observations]


def make_scripted_policy(method: str) -> ScriptedPolicy:
  return ScriptedPolicy(method)
