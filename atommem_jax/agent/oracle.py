"""Scripted policies for synthetic CRUD tasks, run through the real rollout engine.

`oracle` replays the example's oracle trajectory (the ideal ops for each section) and, in
the answering phase, queries the question and answers from what the memory then SHOWS
(`synthetic.answer_from_memory` over the displayed entries and the scratchpad): the gold
answer is never read, so 100% EM means the engine's parse -> encode -> apply -> read path
kept every create, update and delete right. The static workflows `scratchpad_only` and
`create_all_read_once` (data/synthetic_replay.py) get the same relevance signal and
answer the same way, so they differ from the oracle only in which memory ops they use.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import ml_collections

from atommem_jax.agent import environment as env_lib
from atommem_jax import protocol
from atommem_jax.agent.rollout import Action, Observation
from atommem_jax.data import synthetic
from atommem_jax.data import synthetic_replay

POLICIES = tuple(synthetic_replay.POLICIES)


def synthetic_config(c: ml_collections.ConfigDict, num_chunks: int) -> synthetic.SyntheticConfig:
  return synthetic.SyntheticConfig(num_chunks=num_chunks, hops=c.data.synthetic_hops,
                                   corrections=c.data.synthetic_corrections,
                                   retractions=c.data.synthetic_retractions)


def synthetic_episodes(c: ml_collections.ConfigDict, num_chunks: int) -> list[env_lib.Episode]:
  """`max_examples` synthetic tasks with `num_chunks` sections each (seeded by c.seed)."""
  cfg = synthetic_config(c, num_chunks)
  n = c.max_examples or 20
  out = []
  for i, ex in enumerate(synthetic.generate_many(cfg, seed=c.seed, n=n)):
    ep = synthetic_replay.to_episode(ex)
    out.append(dataclasses.replace(ep, meta={"dataset": "synthetic", "kind": ex.kind, "seed": c.seed,
                                             "index": i, "config": dataclasses.asdict(cfg),
                                             "uses": list(ex.uses)}))
  return out


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
    if method not in synthetic_replay.POLICIES:
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
      turns = synthetic_replay.POLICIES[self.name](ex)
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

  def act(self, observations: Sequence[Observation]) -> list[Action]:
    return [Action(text=self._act(o), scripted=True) for o in observations]


def make_scripted_policy(method: str) -> ScriptedPolicy:
  return ScriptedPolicy(method)
