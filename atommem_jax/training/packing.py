"""First-fit packing of (prompt, response) turns into fixed-length rows (host side, numpy).

A multi-turn episode is many short (prompt, response) turns; padding each to the longest would
waste most of a batch. Packing puts several turns in one row of `seq_len` tokens, each a
*segment* with its own ids (1..S, 0 = padding) and positions restarting at 0, so a forward with
segment-aware attention scores every turn exactly as if it were alone.

Order (deterministic): turns are taken by decreasing length (prompt + response), ties by
their index in the input, and each goes to the lowest-numbered row that still has room (and
fewer than `max_segments` segments); otherwise a new row opens ("first-fit decreasing"). Inside
a row, segments are laid out left to right in placement order, padding at the end.

Alignment: per-response-token payloads (e.g. the sampler's log-probs) land on the same columns as
the tokens they belong to, matching the trainer's `logprobs[b, t] = log p(tokens[b, t] | ...)`.
"""
from __future__ import annotations

import dataclasses
from typing import Literal, Mapping, Sequence

import numpy as np

Turn = tuple[Sequence[int], Sequence[int]]  # (prompt_ids, response_ids)
Truncate = Literal["prompt_head"] | None

_CORE_FIELDS = ("tokens", "positions", "segment_ids", "loss_mask", "token_turn")
_INT32_MAX = np.iinfo(np.int32).max


@dataclasses.dataclass(frozen=True)
class PackedBatch:
  """Packed rows plus where each turn went (so per-turn values can be read back)."""

  tokens: np.ndarray  # int32 [R, T]
  positions: np.ndarray  # int32 [R, T], 0.. inside each segment, 0 on padding
  segment_ids: np.ndarray  # int32 [R, T], 1..S inside a row, 0 = padding
  loss_mask: np.ndarray  # float32 [R, T], 1 exactly on response tokens
  token_turn: np.ndarray  # int32 [R, T], index of the input turn, -1 = padding
  values: dict[str, np.ndarray]  # payloads scattered to [R, T] (see `pack`)
  turn_row: np.ndarray  # int32 [N], row of each turn
  turn_start: np.ndarray  # int32 [N], column of each turn's first (kept) token
  turn_segment: np.ndarray  # int32 [N], segment id of each turn in its row
  prompt_lengths: np.ndarray  # int32 [N], prompt tokens kept
  response_lengths: np.ndarray  # int32 [N]
  prompt_dropped: np.ndarray  # int32 [N], prompt tokens cut from the head (truncate only)
  rows_used: int  # rows holding at least one turn (the rest, up to max_rows, are padding)

  @property
  def num_turns(self) -> int:
    return int(self.turn_row.shape[0])

  def arrays(self) -> dict[str, np.ndarray]:
    """The [R, T] arrays by name (core fields and payloads), e.g. to put on device."""
    out = {name: getattr(self, name) for name in _CORE_FIELDS}
    out.update(self.values)
    return out


def _as_ids(ids: Sequence[int], what: str) -> np.ndarray:
  arr = np.asarray(ids)
  if arr.size == 0:
    return np.zeros((0,), np.int32)
  if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(f"{what}: expected a flat sequence of int token ids, got dtype {arr.dtype} "
                     f"shape {arr.shape}")
  if arr.min() < 0 or arr.max() > _INT32_MAX:
    raise ValueError(f"{what}: token ids must be in [0, 2**31), got range "
                     f"[{arr.min()}, {arr.max()}]")
  return arr.astype(np.int32)


def _prepare(turns: Sequence[Turn], seq_len: int, truncate: Truncate
             ) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
  """Validated (prompts, responses, dropped-prompt-token counts), truncated if asked."""
  if not isinstance(seq_len, (int, np.integer)) or seq_len < 2:
    raise ValueError(f"seq_len must be an int >= 2, got {seq_len!r}")
  if truncate not in (None, "prompt_head"):
    raise ValueError(f"truncate must be None or 'prompt_head', got {truncate!r}")
  prompts, responses, dropped = [], [], []
  for i, turn in enumerate(turns):
    if len(turn) != 2:
      raise ValueError(f"turn {i}: expected (prompt_ids, response_ids), got {len(turn)} items")
    p = _as_ids(turn[0], f"turn {i} prompt_ids")
    r = _as_ids(turn[1], f"turn {i} response_ids")
    if p.size == 0:
      raise ValueError(f"turn {i}: empty prompt (the first response token needs a context)")
    cut = 0
    if p.size + r.size > seq_len:
      if truncate is None:
        raise ValueError(
            f"turn {i}: prompt {p.size} + response {r.size} = {p.size + r.size} tokens > "
            f"seq_len {seq_len} (truncate='prompt_head' drops tokens from the prompt's start)")
      if r.size + 1 > seq_len:
        raise ValueError(
            f"turn {i}: response of {r.size} tokens leaves no room for a prompt token in "
            f"seq_len {seq_len}; responses are never cut")
      cut = p.size + r.size - seq_len
      p = p[cut:]
    prompts.append(p)
    responses.append(r)
    dropped.append(cut)
  return prompts, responses, dropped


def assign_rows(lengths: Sequence[int], seq_len: int, *, max_segments: int | None = None
                ) -> list[tuple[int, int, int]]:
  """First-fit decreasing: (row, start column, segment id) per input length, deterministic."""
  if max_segments is not None and max_segments < 1:
    raise ValueError(f"max_segments must be >= 1 or None, got {max_segments!r}")
  for i, n in enumerate(lengths):
    if not 0 < n <= seq_len:
      raise ValueError(f"turn {i}: length {n} not in [1, seq_len={seq_len}]")
  order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
  used: list[int] = []  # tokens used per row
  segs: list[int] = []  # segments per row
  out: list[tuple[int, int, int]] = [(-1, -1, -1)] * len(lengths)
  for i in order:
    n = lengths[i]
    row = next((r for r in range(len(used)) if used[r] + n <= seq_len
                and (max_segments is None or segs[r] < max_segments)), len(used))
    if row == len(used):
      used.append(0)
      segs.append(0)
    out[i] = (row, used[row], segs[row] + 1)
    used[row] += n
    segs[row] += 1
  return out


def num_rows(turns: Sequence[Turn], seq_len: int, *, max_segments: int | None = None,
             truncate: Truncate = None) -> int:
  """Rows `pack` needs for these turns (e.g. to choose `max_rows` or split a batch)."""
  prompts, responses, _ = _prepare(turns, seq_len, truncate)
  placed = assign_rows([p.size + r.size for p, r in zip(prompts, responses)], seq_len,
                       max_segments=max_segments)
  return 1 + max((row for row, _, _ in placed), default=-1)


def pack(turns: Sequence[Turn], seq_len: int, *, pad_id: int = 0, max_rows: int | None = None,
         max_segments: int | None = None, truncate: Truncate = None,
         turn_values: Mapping[str, Sequence[int | float]] | None = None,
         response_values: Mapping[str, Sequence[Sequence[float]]] | None = None) -> PackedBatch:
  """Pack turns into `[R, seq_len]` rows, first-fit decreasing (see the module docstring).

  turns: (prompt_ids, response_ids) each; the loss mask is 1 exactly on response tokens.
  A turn longer than seq_len is a ValueError naming it, unless truncate="prompt_head": then its
  prompt loses tokens *from its start* (e.g. the system prompt) until it fits; a response is
  never cut (one that leaves no room for a prompt token is an error).
  max_rows: R is exactly max_rows (empty rows are padding) so jitted shapes stay fixed; more
  rows needed is a ValueError. max_segments: at most this many turns per row.
  turn_values: name -> one int or float per turn (e.g. the episode index), written over all the
  turn's tokens; padding gets -1 (int32 arrays) or 0.0 (float32 arrays).
  response_values: name -> per turn, one float per response token (e.g. sampler log-probs),
  written on the response tokens' columns, 0.0 elsewhere (float32).
  """
  prompts, responses, dropped = _prepare(turns, seq_len, truncate)
  n_turns = len(prompts)
  turn_values = dict(turn_values or {})
  response_values = dict(response_values or {})
  clash = (set(turn_values) & set(response_values)) | \
      ((set(turn_values) | set(response_values)) & set(_CORE_FIELDS))
  if clash:
    raise ValueError(f"pack: payload names {sorted(clash)} clash with each other or with "
                     f"{_CORE_FIELDS}")
  per_turn: dict[str, np.ndarray] = {}
  for name, vals in turn_values.items():
    arr = np.asarray(vals)
    if arr.shape != (n_turns,) or not (np.issubdtype(arr.dtype, np.integer)
                                        or np.issubdtype(arr.dtype, np.floating)):
      raise ValueError(f"pack: turn_values[{name!r}] must be {n_turns} numbers (one per turn), "
                       f"got dtype {arr.dtype} shape {arr.shape}")
    per_turn[name] = arr
  for name, vals in response_values.items():
    if len(vals) != n_turns:
      raise ValueError(f"pack: response_values[{name!r}] has {len(vals)} entries for "
                       f"{n_turns} turns")
    for i, (v, r) in enumerate(zip(vals, responses)):
      if np.shape(v) != (r.size,):
        raise ValueError(f"pack: response_values[{name!r}] turn {i}: shape {np.shape(v)}, "
                         f"expected one value per response token ({r.size},)")

  placed = assign_rows([p.size + r.size for p, r in zip(prompts, responses)], seq_len,
                       max_segments=max_segments)
  rows_used = 1 + max((row for row, _, _ in placed), default=-1)
  if max_rows is not None and rows_used > max_rows:
    raise ValueError(f"pack: {n_turns} turns need {rows_used} rows of {seq_len} tokens "
                     f"(max_segments={max_segments}), more than max_rows={max_rows}")
  n_rows = rows_used if max_rows is None else max_rows
  shape = (n_rows, seq_len)
  tokens = np.full(shape, pad_id, np.int32)
  positions = np.zeros(shape, np.int32)
  segment_ids = np.zeros(shape, np.int32)
  loss_mask = np.zeros(shape, np.float32)
  token_turn = np.full(shape, -1, np.int32)
  values: dict[str, np.ndarray] = {}
  for name, arr in per_turn.items():
    integer = np.issubdtype(arr.dtype, np.integer)
    values[name] = np.full(shape, -1 if integer else 0.0, np.int32 if integer else np.float32)
  for name in response_values:
    values[name] = np.zeros(shape, np.float32)

  for i, ((row, start, seg), p, r) in enumerate(zip(placed, prompts, responses)):
    n, mid = p.size + r.size, start + p.size
    end = start + n
    tokens[row, start:mid] = p
    tokens[row, mid:end] = r
    positions[row, start:end] = np.arange(n, dtype=np.int32)
    segment_ids[row, start:end] = seg
    loss_mask[row, mid:end] = 1.0
    token_turn[row, start:end] = i
    for name, arr in per_turn.items():
      values[name][row, start:end] = arr[i]
    for name, vals in response_values.items():
      values[name][row, mid:end] = np.asarray(vals[i], np.float32)

  def col(k: int) -> np.ndarray:
    return np.asarray([pl[k] for pl in placed], np.int32).reshape(n_turns)

  return PackedBatch(
      tokens=tokens, positions=positions, segment_ids=segment_ids, loss_mask=loss_mask,
      token_turn=token_turn, values=values, turn_row=col(0), turn_start=col(1),
      turn_segment=col(2), prompt_lengths=np.asarray([p.size for p in prompts], np.int32),
      response_lengths=np.asarray([r.size for r in responses], np.int32),
      prompt_dropped=np.asarray(dropped, np.int32), rows_used=rows_used)


def _check_rt(batch: PackedBatch, array: np.ndarray, what: str) -> np.ndarray:
  array = np.asarray(array)
  if array.shape[:2] != batch.tokens.shape:
    raise ValueError(f"{what}: array of shape {array.shape} does not match the packed rows "
                     f"{batch.tokens.shape}")
  return array


def gather_responses(batch: PackedBatch, array: np.ndarray) -> list[np.ndarray]:
  """Per turn (input order), the values of `array [R, T, ...]` on its response tokens.

  E.g. the trainer's per-token log-probs -> each turn's response log-probs (its length).
  """
  array = _check_rt(batch, array, "gather_responses")
  out = []
  for row, start, lp, lr in zip(batch.turn_row, batch.turn_start, batch.prompt_lengths,
                                batch.response_lengths):
    mid = start + lp
    out.append(array[row, mid:mid + lr])
  return out


def gather_turns(batch: PackedBatch, array: np.ndarray) -> list[np.ndarray]:
  """Per turn (input order), the values of `array [R, T, ...]` over all its (kept) tokens."""
  array = _check_rt(batch, array, "gather_turns")
  return [array[row, start:start + lp + lr] for row, start, lp, lr in
          zip(batch.turn_row, batch.turn_start, batch.prompt_lengths, batch.response_lengths)]


def unpack(batch: PackedBatch) -> list[tuple[list[int], list[int]]]:
  """The turns back, in input order: (kept prompt ids, response ids) read from `batch.tokens`."""
  out = []
  for toks, lp in zip(gather_turns(batch, batch.tokens), batch.prompt_lengths):
    out.append((toks[:lp].tolist(), toks[lp:].tolist()))
  return out
