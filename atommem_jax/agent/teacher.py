"""A privileged scripted teacher for real multi-hop QA: the SFT data source for real data.

The official AtomMem SFT data are a stronger LLM's trajectories filtered by reward; offline
there is no such model, so this teacher plays the protocol on the real long document as a
good policy would, knowing only what the environment shows it plus each question's
supporting labels (`agent/episodes.py` puts them in the episode meta: supporting titles,
supporting sentences, MuSiQue hops) and the labelled answer (`golds[q][0]`). It never
reads the episode's document or sections: it finds a labelled sentence only in the section
the observation shows, and everything it writes into memory is text shown in a section.

How it plays (one rollout; `RolloutEngine` runs it like any policy):
  * reading, a section showing supporting sentences of a question whose first hop is not
    known yet: first `<update_query>` with the bridge (MuSiQue: the found hop's sub-answer;
    else the titles of the supporting paragraphs still missing), which re-presents the
    section; then, on the re-presented section, `<add_memory>Title: sentence</add_memory>`
    per supporting sentence shown (this advances the stream);
  * a sentence cut by the section's end (token windows): the part shown is written as an
    entry; on the next section, when the entry is displayed, `<modify_memory>` completes it
    (from the full sentence where the overlap shows it whole, else the entry plus the rest
    shown at the section's start); not displayed, the rest becomes an entry of its own;
  * a further supporting sentence of a paragraph whose entry is displayed extends that entry
    (`<modify_memory>`), since notes on one paragraph belong together;
  * before a question's first hop is found, up to `candidates` shown paragraphs whose title
    and first sentence share `lead_overlap` content words with the question are noted as
    leads (`Title: first sentence`); once a hop is found they are shown to be distractors
    (not supporting) and deleted when displayed (the query is set so that they are), as are
    cut-sentence entries that a whole entry superseded;
  * every response but the tagless ones carries a scratchpad (`<update_memory>`) tracking
    what each question still needs: "Found: A (bridge: B). Still need: B."; a section with
    nothing to write gets a tagless reply (the only way to advance without writing an entry;
    the scratchpad stays as it was);
  * answering: while the displayed entries lack the question's notes, query the question,
    then the bridge, then the titles of the notes not displayed (within `max_query_times`);
    then `<final_answer>\\boxed{answers[0]}`.
Only `Memory i` indices the current observation displays are ever written; every response
is `protocol.render`ed (so it parses cleanly). Its scores use labels: an upper bound.

State: per (episode, sample) the teacher remembers what it wrote (derived only from shown
text), reset when a rollout starts afresh (first section, empty scratchpad, no query).
`keep_successful` is the rejection-sampling filter over any policy's trajectories.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Sequence, TypeVar

from atommem_jax import protocol
from atommem_jax.agent import environment as env_lib
from atommem_jax.agent.episodes import labels_of
from atommem_jax.agent.rollout import Action, Observation
from atommem_jax.agent.trajectory import Trajectory

NAME = "teacher"
T = TypeVar("T")
# A paragraph as the document renders it: "Document i:\nTitle\ntext" (data/longctx.py).
_HEADER = re.compile(r"(?:^|\n)Document \d+:\n([^\n]+)\n([^\n]*)")
_FIRST_SENTENCE = re.compile(r"^.*?[.!?](?=\s|$)")
_WORD = re.compile(r"[A-Za-z0-9]+")
_STOP = frozenset(
    "what which when where whose who whom that this these those with from than then there "
    "their they them also have been were was are is the and for into over under about after "
    "before between both either more most same does did other many much film song album "
    "born year years name named".split())


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
  candidates: int = 1  # leads noted per question before its first hop (later deleted)
  lead_overlap: int = 2  # content words a lead's title + first sentence share with the question
  min_fragment_chars: int = 20  # shortest part of a cut sentence worth an entry
  merge_same_title: bool = True  # extend a displayed entry of the same paragraph (modify)
  nothing_text: str = "Nothing in this section helps with the question."

  def __post_init__(self):
    if self.candidates < 0:
      raise ValueError(f"TeacherConfig.candidates must be >= 0, got {self.candidates}")
    if self.min_fragment_chars < 1:
      raise ValueError(f"TeacherConfig.min_fragment_chars must be >= 1, got "
                       f"{self.min_fragment_chars}")
    if not self.nothing_text.strip() or protocol.parse(self.nothing_text).ops:
      raise ValueError("TeacherConfig.nothing_text must be non-blank text without protocol "
                       f"tags, got {self.nothing_text!r}")


@dataclasses.dataclass(frozen=True)
class Fact:
  """One supporting sentence of question `question` (its `index`-th)."""

  question: int
  index: int
  title: str
  text: str

  @property
  def key(self) -> tuple[int, int]:
    return self.question, self.index


@dataclasses.dataclass
class _Notes:
  """What the teacher wrote in one rollout (entry texts as stored in memory)."""

  full: dict[tuple[int, int], str] = dataclasses.field(default_factory=dict)  # fact -> entry
  partial: dict[tuple[int, int], tuple[str, str]] = dataclasses.field(
      default_factory=dict)  # fact -> (entry, the raw shown prefix)
  leads: dict[str, int] = dataclasses.field(default_factory=dict)  # lead entry -> question
  stale: set[str] = dataclasses.field(default_factory=set)  # superseded cut-sentence entries
  queried: dict[int, list[str]] = dataclasses.field(default_factory=dict)  # question -> bridges
  looked_up: set[str] = dataclasses.field(default_factory=set)  # titles queried to complete

  def found_titles(self, facts: Sequence[Fact]) -> set[str]:
    return {f.title for f in facts if f.key in self.full or f.key in self.partial}


# --- pure text helpers ----------------------------------------------------------------------

def entry(title: str, text: str) -> str:
  """An entry as the teacher writes it: "Title: text"."""
  return f"{title}: {text.strip()}"


def shown_prefix(section: str, sentence: str, min_chars: int) -> str | None:
  """The longest proper prefix (>= min_chars) of `sentence` that ends `section`, raw.

  A token window may end inside a multi-byte character, decoded as U+FFFD: ignored."""
  tail = section.rstrip("\ufffd")
  if len(sentence) <= min_chars:
    return None
  probe = sentence[:min_chars]
  pos = tail.find(probe, max(0, len(tail) - len(sentence) + 1))
  while pos != -1:
    if sentence.startswith(tail[pos:]):  # the earliest match is the longest prefix
      return tail[pos:]
    pos = tail.find(probe, pos + 1)
  return None


def shown_suffix(section: str, sentence: str, min_chars: int) -> str | None:
  """The longest proper suffix (>= min_chars) of `sentence` that starts `section`, raw."""
  head = section.lstrip("\ufffd")
  best = None
  for k in range(min_chars, min(len(sentence) - 1, len(head)) + 1):
    if sentence.endswith(head[:k]) and head[:k].strip():
      best = head[:k]
  return best


def shown_paragraphs(section: str) -> list[tuple[str, str]]:
  """(title, first sentence) of each paragraph whose header and first sentence are shown."""
  out = []
  for m in _HEADER.finditer(section):
    first = _FIRST_SENTENCE.match(m.group(2))
    if first and len(first.group(0).strip()) >= 20:
      out.append((m.group(1).strip(), first.group(0).strip()))
  return out


def _period(text: str) -> str:
  return text if text.endswith((".", "!", "?")) else text + "."


def _words(text: str) -> set[str]:
  return {w for w in (x.lower() for x in _WORD.findall(text)) if len(w) >= 4 and w not in _STOP}


def facts_of(episode: env_lib.Episode) -> list[list[Fact]]:
  """Per question, its supporting facts from the episode's teacher labels."""
  return [[Fact(q, j, str(t), str(s)) for j, (t, s) in enumerate(lab["facts"])]
          for q, lab in enumerate(labels_of(episode))]


# --- the teacher ----------------------------------------------------------------------------

@dataclasses.dataclass
class _Plan:
  """What the shown section offers, before the teacher decides how to write it."""

  full: list[Fact] = dataclasses.field(default_factory=list)
  rest: list[tuple[Fact, str]] = dataclasses.field(default_factory=list)  # suffix at the start
  cut: list[tuple[Fact, str]] = dataclasses.field(default_factory=list)  # prefix at the end

  def facts(self) -> list[Fact]:
    return self.full + [f for f, _ in self.rest] + [f for f, _ in self.cut]


def rollout_state(states: dict, o: Observation, new: Callable[[], T]) -> T:
  """A scripted teacher's state for `o`'s rollout (episode, sample) in `states`: a fresh
  `new()` when the rollout starts afresh (first section, empty scratchpad, no query) or
  was never seen, else the one it has been keeping."""
  key = (o.episode.episode_id, o.sample)
  fresh = (o.phase == env_lib.READING and o.chunk_index == 0 and not o.scratchpad
           and o.query is None)
  if fresh or key not in states:
    states[key] = new()
  return states[key]


def end_rollout(states: dict, o: Observation) -> None:
  """Forgets `o`'s rollout (its last question is answered)."""
  states.pop((o.episode.episode_id, o.sample), None)


class RealDataTeacher:
  """The privileged scripted teacher (see the module docstring); a `rollout.Policy`."""

  advance_rule = "atommem"

  def __init__(self, config: TeacherConfig = TeacherConfig(), name: str = NAME):
    self.config = config
    self.name = name
    self._notes: dict[tuple[str, int], _Notes] = {}

  def act(self, observations: Sequence[Observation], params=None) -> list[Action]:
    return [Action(text=self._act(o), scripted=True) for o in observations]

  # -- per observation ----------------------------------------------------------------------
  def _act(self, o: Observation) -> str:
    notes = rollout_state(self._notes, o, _Notes)
    facts = facts_of(o.episode)
    if o.phase == env_lib.READING:
      return self._read(o, facts, notes)
    text, answered = self._answer(o, facts, notes)
    if answered and o.question_index == len(o.episode.questions) - 1:
      end_rollout(self._notes, o)
    return text

  def _plan(self, section: str, facts: list[list[Fact]], notes: _Notes) -> _Plan:
    plan = _Plan()
    n = self.config.min_fragment_chars
    for f in (f for fs in facts for f in fs):
      if f.key in notes.full:
        continue
      if f.text in section:
        plan.full.append(f)
      elif f.key in notes.partial and (rest := shown_suffix(section, f.text, 1)) is not None \
          and len(notes.partial[f.key][1]) + len(rest) >= len(f.text):
        # The shown prefix and the rest shown now cover the sentence (with an overlap
        # shorter than the sentence they share its middle).
        plan.rest.append((f, rest))
      elif (pre := shown_prefix(section, f.text, n)) is not None:
        if f.key not in notes.partial or len(pre) > len(notes.partial[f.key][1]):
          plan.cut.append((f, pre))
      elif f.key not in notes.partial and (rest := shown_suffix(section, f.text, n)) is not None:
        plan.rest.append((f, rest))
    plan.full.sort(key=lambda f: section.find(f.text))
    return plan

  def _bridge(self, o: Observation, q: int, found: set[str]) -> str | None:
    """The query that leads to what question q still needs, given the titles found."""
    lab = labels_of(o.episode)[q]
    known = [str(a).strip() for t, a in lab["hops"][:-1] if t in found and str(a).strip()]
    if known:
      return known[-1]
    missing = [t for t in lab["titles"] if t not in found]
    return "; ".join(missing) if missing else None

  def _read(self, o: Observation, facts: list[list[Fact]], notes: _Notes) -> str:
    cfg = self.config
    plan = self._plan(o.chunk, facts, notes)
    new_by_q: dict[int, set[str]] = {}
    for f in plan.facts():
      new_by_q.setdefault(f.question, set()).add(f.title)
    # 1. A question's first hop (or a new MuSiQue hop) in view: query its bridge first.
    for q, titles in sorted(new_by_q.items()):
      found = notes.found_titles(facts[q]) | titles
      bridge = self._bridge(o, q, found)
      asked = notes.queried.setdefault(q, [])
      hop_bridge = any(t in found and str(a).strip() == bridge
                       for t, a in labels_of(o.episode)[q]["hops"][:-1])
      if bridge is None and not asked and any(v == q for v in notes.leads.values()):
        bridge = o.episode.questions[q]  # nothing missing: look up the leads to drop them
      if bridge is None or bridge in asked or (asked and not hop_bridge):
        continue
      asked.append(bridge)
      if o.query != bridge:
        pad = self._scratchpad(o, facts, notes, extra=new_by_q)
        return protocol.render([protocol.Op(protocol.SCRATCHPAD, pad),
                                protocol.Op(protocol.READ, bridge)])
    # A cut sentence's entry to complete but not displayed: look it up by its title first.
    for f in plan.full + [f for f, _ in plan.rest]:
      part = notes.partial.get(f.key)
      if part is not None and part[0] not in o.memories and f.title not in notes.looked_up:
        notes.looked_up.add(f.title)
        if o.query != f.title:
          pad = self._scratchpad(o, facts, notes, extra=new_by_q)
          return protocol.render([protocol.Op(protocol.SCRATCHPAD, pad),
                                  protocol.Op(protocol.READ, f.title)])
    # 2. Write: deletes, then modifies, then creates (indices are this prompt's).
    index = {}
    for i, m in enumerate(o.memories, start=1):
      index.setdefault(m, i)
    touched: set[int] = set()
    deletes, modifies, creates = [], [], []
    has_facts = {q for q in range(len(facts))
                 if notes.found_titles(facts[q]) or q in new_by_q}
    for text, q in list(notes.leads.items()):
      if q in has_facts and text in index and index[text] not in touched:
        touched.add(index[text])
        deletes.append(protocol.Op(protocol.DELETE, id=index[text]))
        del notes.leads[text]
    for text in list(notes.stale):
      if text in index and index[text] not in touched:
        touched.add(index[text])
        deletes.append(protocol.Op(protocol.DELETE, id=index[text]))
        notes.stale.discard(text)

    def rewrite(i: int, old: str, new: str) -> None:
      touched.add(i)
      modifies.append(protocol.Op(protocol.UPDATE, new, id=i))
      for k, v in list(notes.full.items()):
        if v == old:
          notes.full[k] = new
      index[new] = i

    def displayed_note_of(title: str, q: int) -> tuple[int, str] | None:
      for k, v in notes.full.items():
        if k[0] == q and facts[q][k[1]].title == title and v in index \
            and index[v] not in touched:
          return index[v], v
      return None

    for f in plan.full:
      full = entry(f.title, f.text)
      part = notes.partial.pop(f.key, None)
      if part is not None and part[0] in index and index[part[0]] not in touched:
        rewrite(index[part[0]], part[0], full)
        notes.full[f.key] = full
        continue
      if part is not None:
        notes.stale.add(part[0])
      same = displayed_note_of(f.title, f.question) if cfg.merge_same_title else None
      if same is not None:
        merged = f"{same[1]} {f.text.strip()}"
        rewrite(same[0], same[1], merged)
        notes.full[f.key] = merged
        continue
      creates.append(protocol.Op(protocol.CREATE, full))
      notes.full[f.key] = full
    for f, rest in plan.rest:
      part = notes.partial.pop(f.key, None)
      if part is not None and part[0] in index and index[part[0]] not in touched:
        # The shown prefix and the rest shown now: the whole sentence when they cover it.
        done = entry(f.title, f.text if len(part[1]) + len(rest) >= len(f.text)
                     else part[1] + rest)
        rewrite(index[part[0]], part[0], done)
        notes.full[f.key] = done
      else:
        made = entry(f.title, rest)
        creates.append(protocol.Op(protocol.CREATE, made))
        notes.full[f.key] = made
    for f, pre in plan.cut:
      old = notes.partial.get(f.key)
      made = entry(f.title, pre)
      if old is not None:
        notes.stale.add(old[0])
      creates.append(protocol.Op(protocol.CREATE, made))
      notes.partial[f.key] = (made, pre)
    # 3. Leads: before a question's first hop, a shown paragraph that echoes the question.
    supporting = {f.title for fs in facts for f in fs}
    written = set(notes.leads) | {op.text for op in creates}
    for q, question in enumerate(o.episode.questions):
      if q in has_facts or sum(1 for v in notes.leads.values() if v == q) >= cfg.candidates:
        continue
      for title, first in shown_paragraphs(o.chunk):
        lead = entry(title, first)
        if (title not in supporting and lead not in written
            and len(_words(lead) & _words(question)) >= cfg.lead_overlap):
          creates.append(protocol.Op(protocol.CREATE, lead))
          notes.leads[lead] = q
          written.add(lead)
          break
    if not (deletes or modifies or creates):
      return cfg.nothing_text
    pad = self._scratchpad(o, facts, notes)
    return protocol.render([protocol.Op(protocol.SCRATCHPAD, pad)] + deletes + modifies + creates)

  def _scratchpad(self, o: Observation, facts: list[list[Fact]], notes: _Notes,
                  extra: dict[int, set[str]] | None = None) -> str:
    """One line per question: found titles, the bridge, what is still needed."""
    lines = []
    for q, lab in enumerate(labels_of(o.episode)):
      found = notes.found_titles(facts[q]) | (extra or {}).get(q, set())
      have = [t for t in lab["titles"] if t in found]
      if not have:
        leads = [t.split(": ", 1)[0] for t, v in notes.leads.items() if v == q]
        line = "Nothing found yet." + (f" Possible lead: {_period('; '.join(leads))}"
                                       if leads else "")
      else:
        bridge = self._bridge(o, q, found)
        missing = [t for t in lab["titles"] if t not in found]
        line = f"Found: {'; '.join(have)}"
        line = f"{line} (bridge: {bridge})." if bridge and missing else _period(line)
        line += f" Still need: {_period('; '.join(missing))}" if missing else \
            " All needed facts found."
      lines.append(line if len(o.episode.questions) == 1 else f"Q{q + 1}: {line}")
    return "\n".join(lines)

  def _answer(self, o: Observation, facts: list[list[Fact]], notes: _Notes) -> tuple[str, bool]:
    q = o.question_index
    question = o.episode.questions[q]
    mine = [notes.full[f.key] for f in facts[q] if f.key in notes.full]
    mine += [notes.partial[f.key][0] for f in facts[q] if f.key in notes.partial]
    pad = protocol.Op(protocol.SCRATCHPAD, self._scratchpad(o, facts, notes))
    need = not mine or any(m not in o.memories for m in mine)
    options = [question]
    if mine:  # then the bridge, then the titles of the notes not displayed
      options.append(self._bridge(o, q, notes.found_titles(facts[q])))
      options.append("; ".join(dict.fromkeys(
          f.title for f in facts[q]
          if (f.key in notes.full and notes.full[f.key] not in o.memories)
          or (f.key in notes.partial and notes.partial[f.key][0] not in o.memories))))
    options = [x for x in dict.fromkeys(options) if x]
    nxt = next((c for c in options[o.query_times:] if c != o.query), None)
    if need and nxt is not None and o.query_times < o.max_query_times:
      return protocol.render([pad, protocol.Op(protocol.READ, nxt)]), False
    return protocol.render([pad], answer=o.episode.golds[q][0]), True


def make_teacher(config: TeacherConfig = TeacherConfig()) -> RealDataTeacher:
  return RealDataTeacher(config)


# --- trajectories ---------------------------------------------------------------------------

def keep_successful(trajectories: Sequence[Trajectory], metric: str = "exact_match",
                    threshold: float = 1.0, clean: bool = True) -> list[Trajectory]:
  """Rejection sampling: the rollouts scoring at least `threshold` on `metric` (and, with
  `clean`, without parse or memory-op errors), e.g. a policy's own successes as SFT data."""
  out = []
  for t in trajectories:
    if metric not in t.scores:
      raise ValueError(f"trajectory {t.episode_id!r} has no score {metric!r} "
                       f"(has {sorted(t.scores)})")
    errors = sum(len(s.parse_errors) + len(s.op_errors) for s in t.steps)
    if t.scores[metric] >= threshold and not (clean and errors):
      out.append(t)
  return out


def support_stats(trajectories: Sequence[Trajectory]) -> dict[str, float]:
  """How much of the labelled support a rollout's memory held: the fraction of supporting
  sentences held by the final entries, and of questions answered while the displayed
  entries held all of theirs. A sentence is held when every word of it appears in the
  entries of its title (a sentence cut by a section boundary may sit in two entries)."""
  held = total = supported = questions = 0

  def holds(entries: Sequence[str], title: str, sentence: str) -> bool:
    words = set(_WORD.findall(" ".join(e for e in entries if e.startswith(f"{title}: "))))
    return set(_WORD.findall(sentence)) <= words

  for t in trajectories:
    labels = t.meta.get("supporting")
    if not isinstance(labels, list):
      raise ValueError(f"trajectory {t.episode_id!r} has no 'supporting' labels in its meta")
    final = [e["text"] for e in t.final_memory.get("entries", [])]
    for q, lab in enumerate(labels):
      held += sum(holds(final, title, s) for title, s in lab["facts"])
      total += len(lab["facts"])
      questions += 1
      answer_steps = [s for s in t.steps if s.phase == env_lib.ANSWERING and s.question == q
                      and s.answer is not None]
      shown = answer_steps[-1].shown_memories if answer_steps else None
      if shown is not None and all(holds(shown, title, s) for title, s in lab["facts"]):
        supported += 1
  return {"facts_held": held / max(total, 1), "answered_with_support": supported /
          max(questions, 1), "facts": float(total), "questions": float(questions)}


def main(argv: Sequence[str]) -> None:
  """`python -m atommem_jax.agent.teacher TRAJECTORIES.jsonl`: support stats per cell."""
  from atommem_jax.agent.trajectory import read_jsonl

  if len(argv) != 2:
    raise SystemExit("usage: python -m atommem_jax.agent.teacher TRAJECTORIES.jsonl")
  cells: dict[tuple[str, str, str], list[Trajectory]] = {}
  for t in read_jsonl(argv[1]):  # episode ids end with the requested num_docs
    if isinstance(t.meta.get("supporting"), list):
      key = (t.method, t.meta["dataset"], t.episode_id.rsplit("-", 1)[-1])
      cells.setdefault(key, []).append(t)
  for (method, dataset, num_docs), trajs in sorted(cells.items()):
    st = support_stats(trajs)
    print(f"{method} {dataset} num_docs={num_docs}: {int(st['questions'])} questions, "
          f"{int(st['facts'])} supporting sentences, held {st['facts_held']:.3f}, answered "
          f"with all shown {st['answered_with_support']:.3f}")


if __name__ == "__main__":
  import sys

  main(sys.argv)
