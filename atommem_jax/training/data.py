"""Training data: teacher trajectories as SFT turns, packed batches by step, GRPO questions.

SFT sees exactly the tokens evaluation shows: a teacher's episodes run through the one
`RolloutEngine` with `policies.RenderedTeacher` (the teacher decides, the student policy
renders each prompt), so every turn carries the student's prompt ids and the teacher's
response ids. Logged trajectories (JSONL) are read the same way. `SFTBatches` packs all
turns once (first-fit, `training/packing.py`) and serves batch `step` as a pure function of
the step: a resumed run continues on exactly the batch it would have seen.
"""
from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Sequence

import ml_collections
import numpy as np

from atommem_jax.agent import oracle, policies
from atommem_jax.agent.environment import ANSWERING, READING, Episode
from atommem_jax.agent.trajectory import Trajectory, read_jsonl
from atommem_jax.training import packing

# The scripted teacher of each trained method on synthetic tasks (on real data the
# privileged teachers: agent/teacher.py for AtomMem, agent/memagent_teacher.py for MemAgent).
TEACHERS = {"atommem": "oracle", "memagent": "scratchpad_only"}
REAL_DATASETS = ("hotpotqa", "2wiki", "musique")


def synthetic_episodes(c: ml_collections.ConfigDict, n: int, start: int = 0) -> list[Episode]:
  """Tasks `start .. start + n - 1` of the config's seeded synthetic stream."""
  cfg = oracle.synthetic_config(c, c.data.synthetic_chunks)
  return oracle.episodes_of(cfg, c.data.seed, n, start=start,
                            vary=bool(c.data.get("synthetic_vary", False)))


def datasets(c: ml_collections.ConfigDict) -> list[str]:
  return [d.strip() for d in str(c.data.datasets).split(",") if d.strip()]


def data_dir(c: ml_collections.ConfigDict) -> pathlib.Path:
  root = pathlib.Path(__file__).resolve().parents[2]
  return pathlib.Path(c.data.data_dir) if c.data.data_dir else root.parent / "shared" / "data"


def real_train_episodes(c: ml_collections.ConfigDict) -> list[Episode]:
  """Every train-split episode of `data.datasets` (never a dev file), in a fixed order:
  `data.num_docs` MemAgent-style documents (0 = each question's own paragraphs)."""
  return list(_real_train_episodes(tuple(datasets(c)), str(data_dir(c)), c.data.num_docs,
                                   c.data.max_records, c.data.seed))


@functools.lru_cache(maxsize=4)
def _real_train_episodes(names: tuple[str, ...], root: str, num_docs: int, max_records: int,
                         seed: int) -> tuple[Episode, ...]:
  from atommem_jax.agent import episodes as episodes_lib

  out: list[Episode] = []
  for d in names:
    out += episodes_lib.train_episodes(d, root, num_docs, max_examples=max_records,
                                       seed=42 + seed)
  return tuple(out)


def training_episodes(c: ml_collections.ConfigDict, n: int, start: int = 0) -> list[Episode]:
  """Episodes `start .. start + n - 1` of the config's training stream: synthetic tasks, or
  the real train episodes cycled epoch by epoch in an order drawn from (data.seed, epoch)."""
  if c.data.source == "synthetic":
    return synthetic_episodes(c, n, start)
  pool = real_train_episodes(c)
  out = []
  for i in range(start, start + n):
    epoch, k = divmod(i, len(pool))
    order = np.random.default_rng([c.data.seed, epoch]).permutation(len(pool))
    out.append(pool[order[k]])
  return out


def make_teacher(method: str, source: str, max_memory_chars: int = 1000):
  """The scripted teacher of `method` for a data source (real data: the privileged teacher
  of AtomMem, or its MemAgent-style counterpart with a scratchpad of `max_memory_chars`)."""
  if source == "real":
    if method == "memagent":
      from atommem_jax.agent import memagent_teacher

      return memagent_teacher.make_memagent_teacher(max_chars=max_memory_chars)
    from atommem_jax.agent import teacher

    if method != "atommem":
      raise ValueError(f"no real-data teacher for method {method!r}")
    return teacher.make_teacher()
  return oracle.make_scripted_policy(TEACHERS[method])


def teacher_trajectories(engine, student, method: str, episodes: Sequence[Episode],
                         batch_size: int = 16, source: str = "synthetic",
                         max_memory_chars: int = 1000) -> list[Trajectory]:
  """The scripted teacher of `method` on `episodes`, rendered with `student`'s prompts."""
  teacher = policies.RenderedTeacher(make_teacher(method, source, max_memory_chars), student)
  out: list[Trajectory] = []
  for k in range(0, len(episodes), batch_size):
    out += engine.run(list(episodes[k:k + batch_size]), teacher).trajectories
  return out


@dataclasses.dataclass(frozen=True)
class TurnStats:
  episodes: int
  kept_episodes: int
  turns: int
  response_tokens: int
  prompt_tokens: int
  overlong_dropped: int = 0  # turns longer than their phase's sampling budget, left out
  copy_turns: int = 0  # auxiliary copy turns (data.copy_examples) among `turns`


def turns_of(trajectories: Sequence[Trajectory], vocab_size: int, min_score: float | None = None,
             score_key: str = "exact_match", answer_repeats: int = 1,
             budgets: dict[str, int] | None = None) -> tuple[list[packing.Turn], TurnStats]:
  """(prompt ids, response ids) of every model-facing step (steps scripted by a static
  workflow carry no ids and are skipped). min_score: keep only episodes scoring at least
  that (rejection sampling of logged rollouts). answer_repeats: each answering-phase turn
  appears that many times (answering turns are a few per episode against one or more per
  section; a policy trained on one copy learned to read before it learned to answer).
  budgets: {phase: max response tokens}; longer responses are left out (counted)."""
  if answer_repeats < 1:
    raise ValueError(f"answer_repeats must be >= 1, got {answer_repeats}")
  turns: list[packing.Turn] = []
  dropped = 0
  kept = scoring_at_least(trajectories, min_score, score_key)
  for t in kept:
    for s in t.steps:
      if not s.prompt_ids or not s.response_ids:
        continue
      hi = max(max(s.prompt_ids), max(s.response_ids))
      if hi >= vocab_size or min(min(s.prompt_ids), min(s.response_ids)) < 0:
        raise ValueError(f"trajectory {t.episode_id!r} step {s.index}: token id {hi} outside the "
                         f"policy's vocabulary [0, {vocab_size}) (another tokenizer's ids?)")
      if budgets is not None and len(s.response_ids) > budgets[s.phase]:
        dropped += 1
        continue
      copies = answer_repeats if s.phase == ANSWERING else 1
      turns.extend((list(s.prompt_ids), list(s.response_ids)) for _ in range(copies))
  stats = TurnStats(episodes=len(trajectories), kept_episodes=len(kept), turns=len(turns),
                    response_tokens=sum(len(r) for _, r in turns),
                    prompt_tokens=sum(len(p) for p, _ in turns), overlong_dropped=dropped)
  return turns, stats


COPY_INSTRUCTION = "Repeat this section word for word."


def copy_turns(tokenizer, sections: Sequence[str], max_prompt_tokens: int
               ) -> list[packing.Turn]:
  """Auxiliary SFT turns that teach copying from the context: the user shows a section and
  asks for it word for word; the response is the section. A pretrained LM arrives able to
  copy; a policy trained from scratch must learn it, and every memory operation it writes
  (a fact to store, a query, a correction) copies names from the section. Dense copy turns
  give it that skill in far fewer steps than the trajectories alone (`data.copy_examples`)."""
  enc = policies.ChatEncoder(tokenizer, max_prompt_tokens)
  out = []
  for section in sections:
    _, prompt = enc.encode([{"role": "user", "content": f"{COPY_INSTRUCTION}\n{section}"}])
    _, response = enc.response(section)
    out.append((prompt, response))
  return out


def copy_sections(c: ml_collections.ConfigDict, n: int) -> list[str]:
  """`n` sections of the training stream's tasks after the SFT episodes' (fresh names, the
  same stream: never a held-out seed)."""
  out: list[str] = []
  k = c.data.num_examples
  while len(out) < n:
    (ep,) = synthetic_episodes(c, 1, start=k)
    out += list(ep.sections)[: n - len(out)]
    k += 1
  return out


def scoring_at_least(trajectories: Sequence[Trajectory], min_score: float | None,
                     score_key: str = "exact_match") -> list[Trajectory]:
  """The episodes scoring at least `min_score` (all of them for None): rejection sampling."""
  return [t for t in trajectories
          if min_score is None or t.scores.get(score_key, 0.0) >= min_score]


# The sampling budget, by config key, of each phase's responses.
BUDGET_KEYS = {READING: "sampling.max_new_tokens", ANSWERING: "sampling.max_answer_tokens"}


def phase_budgets(sampling: ml_collections.ConfigDict) -> dict[str, int]:
  """{phase: max response tokens} of a config's `sampling`, as sampling applies them."""
  return {phase: policies.response_budget(sampling, phase) for phase in BUDGET_KEYS}


def response_overruns(trajectories: Sequence[Trajectory], budgets: dict[str, int]
                      ) -> dict[str, tuple[int, int, int]]:
  """Per phase ("reading", "answering") with any overrun: (turns whose response ids are longer
  than that phase's sampling budget, the phase's turns, the longest response). A policy
  trained on such a turn is cut at the budget whenever it writes it at evaluation or in
  GRPO's rollouts (an unclosed tag, a parse error), so SFT refuses the data. Response ids
  end with the end-of-turn token, which sampling counts too; an answering turn that ends in
  the `</final_answer>` stop string would stop one token earlier, so the check is one token
  strict there."""
  counts: dict[str, list[int]] = {}
  for t in trajectories:
    for st in t.steps:
      if not st.prompt_ids or not st.response_ids:
        continue
      c = counts.setdefault(st.phase, [0, 0, 0])
      c[0] += len(st.response_ids) > budgets[st.phase]
      c[1] += 1
      c[2] = max(c[2], len(st.response_ids))
  return {ph: (n, total, longest) for ph, (n, total, longest) in counts.items() if n}


def check_response_budgets(trajectories: Sequence[Trajectory], budgets: dict[str, int]) -> None:
  """Raises ValueError naming the sampling budget each phase's SFT responses overrun."""
  over = response_overruns(trajectories, budgets)
  if over:
    parts = [f"{n} of {total} {ph} turns exceed {BUDGET_KEYS[ph]}={budgets[ph]} "
             f"(longest {longest} tokens)"
             for ph, (n, total, longest) in sorted(over.items())]
    raise ValueError("SFT responses longer than the policy may write: " + "; ".join(parts)
                     + ". The trained policy would be cut there in evaluation and GRPO; raise "
                     "the budget (or shorten the teacher's responses)")


def read_trajectories(paths: Sequence[str | pathlib.Path]) -> list[Trajectory]:
  out: list[Trajectory] = []
  for p in paths:
    out += list(read_jsonl(p))
  return out


class SFTBatches:
  """Fixed-shape packed batches, `batch(step)` a pure function of the step.

  All turns are packed once (first-fit decreasing into `seq_len` rows); each epoch visits
  every row once in an order drawn from `seed + epoch`; the last batch of an epoch is
  filled with empty rows (no loss), so every batch has `rows` rows. On several processes
  `batch(step, part, parts)` builds only process `part`'s block of `rows // parts` rows of
  that same global batch: the data a step sees does not depend on the number of hosts, so
  a run resumes on a slice of another size exactly where it stopped.
  """

  def __init__(self, turns: Sequence[packing.Turn], *, rows: int, seq_len: int, seed: int,
               max_segments: int, truncate: str | None = "prompt_head", pad_id: int = 0):
    if not turns:
      raise ValueError("SFT data has no turns (no trajectory step with prompt and response ids)")
    self.rows, self.seq_len, self.seed = rows, seq_len, seed
    self.packed = packing.pack(turns, seq_len, pad_id=pad_id, max_segments=max_segments,
                               truncate=truncate or None)
    self.arrays = {k: v for k, v in self.packed.arrays().items()
                   if k in ("tokens", "positions", "segment_ids", "loss_mask")}
    self.num_rows = self.packed.rows_used
    self.batches_per_epoch = -(-self.num_rows // rows)
    self.truncated_prompt_tokens = int(self.packed.prompt_dropped.sum())
    self.pad_id = pad_id
    self.row_tokens = np.sum(self.arrays["segment_ids"] != 0, axis=1)  # [num_rows]

  def position(self, step: int) -> dict[str, int]:
    return {"epoch": step // self.batches_per_epoch, "batch": step % self.batches_per_epoch}

  def _rows(self, step: int) -> np.ndarray:
    """Indices of the packed rows of global batch `step` (fewer than `rows` at an epoch's
    end: the rest are empty rows)."""
    epoch, k = divmod(step, self.batches_per_epoch)
    order = np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)
    return order[k * self.rows:(k + 1) * self.rows]

  def tokens(self, step: int) -> int:
    """Non-padding tokens in the whole global batch `step` (every process's rows)."""
    return int(self.row_tokens[self._rows(step)].sum())

  def batch(self, step: int, part: int = 0, parts: int = 1) -> dict[str, np.ndarray]:
    """Rows `part * rows // parts` .. of global batch `step` (all of it by default)."""
    if parts <= 0 or self.rows % parts or not 0 <= part < parts:
      raise ValueError(f"part {part} of {parts}: batch.rows={self.rows} must split into "
                       f"{parts} equal parts")
    n = self.rows // parts
    idx = self._rows(step)[part * n:(part + 1) * n]
    out = {}
    for name, a in self.arrays.items():
      b = a[idx]
      if len(idx) < n:  # past the epoch's last rows: empty rows (segment 0, no loss)
        fill = self.pad_id if name == "tokens" else 0
        b = np.concatenate([b, np.full((n - len(idx),) + a.shape[1:], fill, a.dtype)])
      out[name] = b
    return out
