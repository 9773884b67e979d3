"""Synthetic memory tasks, generated on the fly (seeded), each with an ORACLE TRAJECTORY.

Every task is built so the best memory policy genuinely needs each CRUD operation:
* "chain" (Create + Read): a multi-hop chain of facts ("The sibling of A is B.", "The mentor of
  B is C.", "The home city of C is X.") in different chunks, in hop order, among distractor facts
  about other people; question: "What is the home city of the mentor of the sibling of A?".
  With `corrections` > 0 the final fact is later corrected ("Correction: the home city of C is
  now Y.") -> Update.
* "count" (Create + Read, aggregation): people join a club in different chunks; with
  `retractions` > 0 some joins are later retracted -> Delete; question: "How many people are
  members of the Chess club?".

Oracle responses use the official step semantics (agent/environment.py): a response that adds
or modifies an entry (or has no tags) advances the chunk stream; a query change re-presents the
same chunk with fresh results, so an Update/Delete is "query the stored text, then modify /
delete `Memory 1`" (querying the exact stored text ranks that entry first for any embedder
whose identical texts embed identically); a delete is followed by a tagless turn to move on.
In the answering phase the oracle queries the question, then answers. Responses are written
with `protocol.render`, so they parse back exactly.

`events` lists the key events (chunk, op, canonical text): the relevance signal the scripted
baselines in `agent/oracle.py` get too, so they differ from the oracle only in memory use.
`answer_from_memory` derives the answer from memory texts alone (no access to the gold); the
scripted policies run through the rollout engine and answer with it.
"""
from __future__ import annotations

import dataclasses
import random
import re
from typing import Iterator, Literal, Sequence

from atommem_jax import protocol

TaskKind = Literal["chain", "count", "mixed"]
_SYLLABLES = ("al", "bra", "cor", "dun", "el", "fen", "gar", "hol", "is", "jor", "kel", "lun",
              "mar", "nor", "os", "pel", "quin", "ros", "sel", "tor", "ul", "vin", "wen", "yar")
_RELATIONS = ("sibling", "mentor", "neighbour", "manager", "partner", "cousin")
_ATTRIBUTE = "home city"
_CLUBS = ("Chess", "Rowing", "Astronomy", "Poetry", "Cycling", "Pottery", "Debate", "Birding")
NOTHING_RELEVANT = "Nothing in this section is relevant to the question."
DELETED_MOVE_ON = "The retracted entry is deleted; moving on."
_FACT_RE = re.compile(r"^The (.+?) of (.+?) is (.+?)\.$")
_JOIN_RE = re.compile(r"^(.+?) joined the (.+?) club\.$")


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """Difficulty knobs.

  task: "chain", "count" or "mixed" (each example picks one uniformly).
  num_chunks: chunks per document; must hold every key event in its own chunk.
  hops: facts in a chain (1 = just the attribute; up to 5 so the answer fits k=6 results).
  distractors_per_chunk: distractor sentences per chunk (density).
  corrections: successive corrections of the chain's final fact (Update).
  members / retractions: joins and later retractions in "count" tasks (Delete).
  count_share: in "mixed", the probability that a task is a count task. 0.5 draws the kind
  with the original coin, so every stream generated before this knob existed is unchanged.
  """

  task: TaskKind = "mixed"
  num_chunks: int = 8
  hops: int = 3
  distractors_per_chunk: int = 4
  corrections: int = 1
  members: int = 4
  retractions: int = 1
  count_share: float = 0.5

  def __post_init__(self):
    if self.task not in ("chain", "count", "mixed"):
      raise ValueError(f"SyntheticConfig.task must be chain/count/mixed, got {self.task!r}")
    if not 1 <= self.hops <= 5:
      raise ValueError(f"SyntheticConfig.hops must be in [1, 5], got {self.hops}")
    if self.distractors_per_chunk < 0 or self.corrections < 0 or self.retractions < 0:
      raise ValueError("SyntheticConfig.distractors_per_chunk, corrections and retractions must "
                       "be >= 0")
    if not 0.0 <= self.count_share <= 1.0:
      raise ValueError(f"SyntheticConfig.count_share must be in [0, 1], got {self.count_share}")
    if not 1 <= self.members <= 6:
      raise ValueError(f"SyntheticConfig.members must be in [1, 6], got {self.members}")
    if self.retractions > self.members:
      raise ValueError(f"SyntheticConfig.retractions ({self.retractions}) exceeds members "
                       f"({self.members})")
    need = max(self.hops + self.corrections if self.task != "count" else 0,
               self.members + self.retractions if self.task != "chain" else 0)
    if self.num_chunks < need:
      raise ValueError(f"SyntheticConfig.num_chunks ({self.num_chunks}) < {need} key events: "
                       "each key event needs its own chunk")


@dataclasses.dataclass(frozen=True)
class OracleStep:
  """One oracle turn: the chunk shown (-1 in the answering phase) and the ideal response."""

  chunk: int
  response: str


@dataclasses.dataclass(frozen=True)
class SyntheticExample:
  id: str
  kind: str  # "chain" | "count"
  chunks: tuple[str, ...]
  question: str
  answer: str
  spec: tuple[str, ...]  # chain: (start, rel_1, ..., rel_h); count: (club,)
  oracle: tuple[OracleStep, ...]
  key_chunks: tuple[int, ...]  # chunks holding a key event, in event order
  events: tuple[tuple[int, str, str], ...]  # (chunk, create|update|delete, canonical text)
  uses: tuple[str, ...]  # CRUD ops the oracle needs: subset of create/read/update/delete

  @property
  def document(self) -> str:
    return "\n\n".join(self.chunks)

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["oracle_chunks"] = [s.chunk for s in self.oracle]
    d["oracle_responses"] = [s.response for s in self.oracle]
    d["event_chunks"] = [e[0] for e in self.events]
    d["event_kinds"] = [e[1] for e in self.events]
    d["event_texts"] = [e[2] for e in self.events]
    del d["oracle"], d["events"]
    return d


def fact(rel: str, subject: str, value: str) -> str:
  return f"The {rel} of {subject} is {value}."


def join(person: str, club: str) -> str:
  return f"{person} joined the {club} club."


def chain_question(start: str, rels: Sequence[str]) -> str:
  """rels in hop order (rels[-1] is the attribute): "What is the home city of the mentor of A?"."""
  return "What is the " + " of the ".join(reversed(rels)) + f" of {start}?"


def count_question(club: str) -> str:
  return f"How many people are members of the {club} club?"


def answer_from_memory(kind: str, spec: Sequence[str], texts: Sequence[str]) -> str | None:
  """The answer derivable from memory texts (display order: earlier wins on conflicts)."""
  if kind == "chain":
    facts: dict[tuple[str, str], str] = {}
    for t in texts:
      m = _FACT_RE.match(t.strip())
      if m:
        facts.setdefault((m.group(1), m.group(2)), m.group(3))
    node = spec[0]
    for rel in spec[1:]:
      if (rel, node) not in facts:
        return None
      node = facts[(rel, node)]
    return node
  if kind == "count":
    members = set()
    for t in texts:
      m = _JOIN_RE.match(t.strip())
      if m and m.group(2) == spec[0]:
        members.add(m.group(1))
    return str(len(members))
  raise ValueError(f"answer_from_memory: unknown task kind {kind!r}")


class _Names:
  """Unique made-up two-part names (so no fact collides with world knowledge)."""

  def __init__(self, rng: random.Random):
    self.rng, self.used = rng, set()

  def _word(self) -> str:
    return "".join(self.rng.choice(_SYLLABLES) for _ in range(self.rng.randint(2, 3))).capitalize()

  def person(self) -> str:
    while True:
      name = f"{self._word()} {self._word()}"
      if name not in self.used:
        self.used.add(name)
        return name

  def city(self) -> str:
    while True:
      name = self._word() + self.rng.choice(("ton", "vale", "mouth", "burg", "ford"))
      if name not in self.used:
        self.used.add(name)
        return name


@dataclasses.dataclass
class _Event:
  sentence: str  # as it appears in the chunk
  kind: str  # "create" | "update" | "delete"
  text: str  # canonical memory text (create/update: new text; delete: text to delete)
  old: str = ""  # update: the stored text being replaced


def _chain_events(cfg: SyntheticConfig, rng: random.Random, names: _Names
                  ) -> tuple[list[_Event], str, str, tuple[str, ...], set[str]]:
  people = [names.person() for _ in range(cfg.hops)]
  rels = rng.sample(_RELATIONS, cfg.hops - 1) + [_ATTRIBUTE]
  city = names.city()
  nodes = people + [city]
  events = [_Event(fact(rels[i], nodes[i], nodes[i + 1]), "create",
                   fact(rels[i], nodes[i], nodes[i + 1])) for i in range(cfg.hops)]
  current = city
  for _ in range(cfg.corrections):
    new = names.city()
    old_text, new_text = fact(_ATTRIBUTE, people[-1], current), fact(_ATTRIBUTE, people[-1], new)
    events.append(_Event(f"Correction: the {_ATTRIBUTE} of {people[-1]} is now {new}, not "
                         f"{current}.", "update", new_text, old_text))
    current = new
  return (events, chain_question(people[0], rels), current, (people[0], *rels), set(people))


def _count_events(cfg: SyntheticConfig, rng: random.Random, names: _Names
                  ) -> tuple[list[_Event], str, str, tuple[str, ...], set[str]]:
  club = rng.choice(_CLUBS)
  people = [names.person() for _ in range(cfg.members)]
  events = [_Event(join(p, club), "create", join(p, club)) for p in people]
  for p in rng.sample(people, cfg.retractions):
    events.append(_Event(f"Retraction: {p} never joined the {club} club; the earlier report was "
                         "wrong.", "delete", join(p, club)))
  return events, count_question(club), str(cfg.members - cfg.retractions), (club,), set(people)


def _distractor(rng: random.Random, names: _Names, club: str | None) -> str:
  r = rng.random()
  if r < 0.5:
    rel = rng.choice(_RELATIONS)
    return fact(rel, names.person(), names.person())
  if r < 0.8:
    return fact(_ATTRIBUTE, names.person(), names.city())
  other = rng.choice([c for c in _CLUBS if c != club])
  return join(names.person(), other)


_NOTE_VERB = {"create": "Stored", "update": "Updated", "delete": "Deleted"}


def _note(event: _Event) -> str:
  """The oracle's scratchpad after handling `event`: what it just did, in words the section
  showed. Never a count of the task's key facts (an earlier "Progress: k of N" note leaked
  N, which a student cannot know; SFT students copied "of 3" into held-out tasks with more
  events and then looped on the section). Without the fact's closing period, so the note is
  never read back as a fact (`answer_from_memory` also reads scratchpad lines)."""
  return f"{_NOTE_VERB[event.kind]}: {event.text.rstrip('.')}"


def _draw_kind(rng: random.Random, count_share: float) -> str:
  if count_share == 0.5:  # the original draw: keeps the existing seeded streams identical
    return rng.choice(("chain", "count"))
  return "count" if rng.random() < count_share else "chain"


def generate(config: SyntheticConfig, seed: int, index: int = 0) -> SyntheticExample:
  """One example; a pure function of (config, seed, index)."""
  rng = random.Random(f"synthetic/{seed}/{index}")
  names = _Names(rng)
  kind = config.task if config.task != "mixed" else _draw_kind(rng, config.count_share)
  make = _chain_events if kind == "chain" else _count_events
  events, question, answer, spec, _ = make(config, rng, names)
  key_chunks = sorted(rng.sample(range(config.num_chunks), len(events)))
  event_at = dict(zip(key_chunks, events))
  club = spec[0] if kind == "count" else None

  chunks: list[str] = []
  for c in range(config.num_chunks):
    sentences = [_distractor(rng, names, club) for _ in range(config.distractors_per_chunk)]
    if c in event_at:
      sentences.insert(rng.randint(0, len(sentences)), event_at[c].sentence)
    chunks.append(" ".join(sentences))

  steps: list[OracleStep] = []
  r = protocol.render_response
  for c in range(config.num_chunks):
    ev = event_at.get(c)
    if ev is None:
      steps.append(OracleStep(c, NOTHING_RELEVANT))
      continue
    note = protocol.Op(protocol.SCRATCHPAD, _note(ev))
    if ev.kind == "create":
      steps.append(OracleStep(c, r([note, protocol.Op(protocol.CREATE, ev.text)])))
    elif ev.kind == "update":
      steps.append(OracleStep(c, r([protocol.Op(protocol.READ, ev.old)])))
      steps.append(OracleStep(c, r([note, protocol.Op(protocol.UPDATE, ev.text, id=1)])))
    else:
      steps.append(OracleStep(c, r([protocol.Op(protocol.READ, ev.text)])))
      steps.append(OracleStep(c, r([note, protocol.Op(protocol.DELETE, id=1)])))
      steps.append(OracleStep(c, DELETED_MOVE_ON))
  steps.append(OracleStep(-1, r([protocol.Op(protocol.READ, question)])))
  steps.append(OracleStep(-1, r(answer=answer)))
  uses = ["create", "read"] + [k for k in ("update", "delete") if any(e.kind == k for e in events)]
  return SyntheticExample(
      id=f"synthetic-{seed}-{index}", kind=kind, chunks=tuple(chunks), question=question,
      answer=answer, spec=spec, oracle=tuple(steps), key_chunks=tuple(key_chunks),
      events=tuple((c, e.kind, e.text) for c, e in zip(key_chunks, events)), uses=tuple(uses))


def varied_config(config: SyntheticConfig, seed: int, index: int) -> SyntheticConfig:
  """Task `index`'s own difficulty, drawn at or below `config`'s knobs (a pure function).

  A stream of one fixed difficulty (always 6 sections, one correction, one retraction)
  lets a student learn its counts instead of the rule: "one update, then answer". Drawing
  each task's hops, corrections, members, retractions and sections from [low, knob] keeps
  the training data below the knobs (so evaluation at more sections and events stays
  held out) while no count is a constant a student could memorise. Sections stay at least
  half of `config.num_chunks` (fewer would be trivial tasks).
  """
  rng = random.Random(f"synthetic-vary/{seed}/{index}")
  hops = rng.randint(1, config.hops)
  corrections = rng.randint(0, config.corrections)
  retractions = rng.randint(0, config.retractions)
  # At least one member stays (at least 2 where the knob allows); retractions <= members
  # holds since retractions <= config.retractions <= config.members.
  members = rng.randint(min(config.members, max(2, retractions + 1)), config.members)
  chain = hops + corrections if config.task != "count" else 0
  count = members + retractions if config.task != "chain" else 0
  num_chunks = rng.randint(max(chain, count, (config.num_chunks + 1) // 2), config.num_chunks)
  return dataclasses.replace(config, hops=hops, corrections=corrections, members=members,
                             retractions=retractions, num_chunks=num_chunks)


def generate_many(config: SyntheticConfig, seed: int, n: int, start: int = 0
                  ) -> Iterator[SyntheticExample]:
  for i in range(start, start + n):
    yield generate(config, seed, i)


def corpus(config: SyntheticConfig, seed: int, n: int, vary: bool = False) -> list[str]:
  """Text lines of tasks 0 .. n-1 of a seeded stream (question, sections, the oracle's
  responses): what a tokenizer for a policy of these tasks is trained on. Pass a training
  stream's seed, never a held-out one, so no evaluation name shapes the vocabulary."""
  lines: list[str] = []
  for i in range(n):
    ex = generate(varied_config(config, seed, i) if vary else config, seed, i)
    lines.append(ex.question)
    lines.extend(ex.chunks)
    lines.extend(s.response for s in ex.oracle)
  return lines
