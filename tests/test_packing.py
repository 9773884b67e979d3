"""First-fit packing of turns: round trip, placement order, payload alignment, errors."""
from __future__ import annotations

import numpy as np
import pytest

from atommem_jax.training import packing as P


def _random_turns(seed: int, n: int = 20, max_prompt: int = 9, max_response: int = 6):
  rng = np.random.default_rng(seed)
  return [(rng.integers(1, 500, size=rng.integers(1, max_prompt + 1)).tolist(),
           rng.integers(1, 500, size=rng.integers(0, max_response + 1)).tolist())
          for _ in range(n)]


def test_round_trip_segments_positions_and_mask():
  turns = _random_turns(0)
  b = P.pack(turns, 16, pad_id=0)
  assert b.tokens.shape == (b.rows_used, 16) and b.tokens.dtype == np.int32
  assert P.unpack(b) == [(list(p), list(r)) for p, r in turns]
  seen = np.zeros(len(turns), int)
  for row in range(b.tokens.shape[0]):
    for seg in range(1, b.segment_ids[row].max() + 1):
      cols = np.flatnonzero(b.segment_ids[row] == seg)
      assert cols.size and np.all(np.diff(cols) == 1)  # one contiguous block
      turn = set(b.token_turn[row, cols].tolist())
      assert len(turn) == 1  # a segment is exactly one turn
      i = turn.pop()
      seen[i] += 1
      p, r = turns[i]
      np.testing.assert_array_equal(b.tokens[row, cols], p + r)
      np.testing.assert_array_equal(b.positions[row, cols], np.arange(len(p) + len(r)))
      np.testing.assert_array_equal(b.loss_mask[row, cols], [0] * len(p) + [1] * len(r))
    pad = b.segment_ids[row] == 0
    assert np.all(b.tokens[row, pad] == 0) and np.all(b.loss_mask[row, pad] == 0)
    assert np.all(b.token_turn[row, pad] == -1) and np.all(b.positions[row, pad] == 0)
  assert np.all(seen == 1)  # every turn exactly once
  assert b.loss_mask.sum() == sum(len(r) for _, r in turns)


def test_first_fit_decreasing_on_hand_made_case():
  # lengths 3, 7, 5, 5, 2, 4 into rows of 10, taken as 7(t1) 5(t2) 5(t3) 4(t5) 3(t0) 2(t4):
  #   t1 -> row 0 (3 left); t2 -> row 1 (5 left); t3 -> row 1 (full); t5 -> row 2 (6 left);
  #   t0 -> row 0 (full); t4 -> row 2 (4 left)
  turns = [([1] * 2, [2]), ([3] * 4, [4] * 3), ([5] * 4, [6]), ([7] * 3, [8] * 2), ([9], [10]),
           ([11] * 2, [12] * 2)]
  b = P.pack(turns, 10)
  assert b.rows_used == 3
  np.testing.assert_array_equal(b.turn_row, [0, 0, 1, 1, 2, 2])
  np.testing.assert_array_equal(b.turn_start, [7, 0, 0, 5, 4, 0])
  np.testing.assert_array_equal(b.turn_segment, [2, 1, 1, 2, 2, 1])
  np.testing.assert_array_equal(b.token_turn[2], [5, 5, 5, 5, 4, 4, -1, -1, -1, -1])
  assert P.num_rows(turns, 10) == 3
  # one segment per row: one row per turn; two per row: t1+t0, t2+t3, t5+t4
  assert P.num_rows(turns, 10, max_segments=1) == 6
  b2 = P.pack(turns, 10, max_segments=2)
  np.testing.assert_array_equal(b2.turn_row, [0, 0, 1, 1, 2, 2])
  assert b2.segment_ids.max() == 2


def test_deterministic_and_ties_broken_by_input_order():
  turns = _random_turns(3, n=30)
  a, b = P.pack(turns, 20), P.pack(list(turns), 20)
  for k, v in a.arrays().items():
    np.testing.assert_array_equal(v, b.arrays()[k])
  same = [([1], [2]), ([3], [4]), ([5], [6])]
  np.testing.assert_array_equal(P.pack(same, 4).turn_row, [0, 0, 1])
  np.testing.assert_array_equal(P.pack(same, 4).turn_start, [0, 2, 0])


def test_payloads_are_aligned_with_their_tokens():
  turns = _random_turns(5, n=12)
  episodes = [i // 3 for i in range(len(turns))]
  weights = [0.5 * i for i in range(len(turns))]
  logps = [[-(i + 1) - 0.01 * j for j in range(len(r))] for i, (_, r) in enumerate(turns)]
  b = P.pack(turns, 16, turn_values={"episode": episodes, "w": weights},
             response_values={"sampler_logprobs": logps})
  ep, w, lp = b.values["episode"], b.values["w"], b.values["sampler_logprobs"]
  assert ep.dtype == np.int32 and w.dtype == np.float32 and lp.dtype == np.float32
  on = b.token_turn >= 0
  np.testing.assert_array_equal(ep[on], np.asarray(episodes)[b.token_turn[on]])
  assert np.all(ep[~on] == -1) and np.all(w[~on] == 0.0)
  np.testing.assert_allclose(w[on], np.asarray(weights, np.float32)[b.token_turn[on]])
  assert np.all(lp[b.loss_mask == 0] == 0.0)
  got = P.gather_responses(b, lp)
  for g, want in zip(got, logps):
    np.testing.assert_allclose(g, np.asarray(want, np.float32))
  # gather of the trainer-side [R, T] array: each turn's response tokens come back
  for g, (_, r) in zip(P.gather_responses(b, b.tokens), turns):
    assert g.tolist() == list(r)
  assert set(b.arrays()) == {"tokens", "positions", "segment_ids", "loss_mask", "token_turn",
                             "episode", "w", "sampler_logprobs"}


def test_max_rows_pads_to_fixed_count_or_raises():
  turns = [([1, 2, 3], [4, 5])] * 3  # 5 tokens each: 2 rows of 10
  b = P.pack(turns, 10, max_rows=4, pad_id=7)
  assert b.tokens.shape == (4, 10) and b.rows_used == 2
  assert np.all(b.tokens[2:] == 7) and np.all(b.segment_ids[2:] == 0)
  assert np.all(b.token_turn[2:] == -1) and np.all(b.loss_mask[2:] == 0)
  with pytest.raises(ValueError, match=r"3 turns need 2 rows of 10 tokens .* max_rows=1"):
    P.pack(turns, 10, max_rows=1)
  with pytest.raises(ValueError, match=r"need 3 rows .*max_segments=1.*max_rows=2"):
    P.pack(turns, 20, max_rows=2, max_segments=1)
  empty = P.pack([], 8, max_rows=2)
  assert empty.tokens.shape == (2, 8) and empty.rows_used == 0 and P.unpack(empty) == []


def test_too_long_turn_is_named_unless_prompt_head_truncation():
  turns = [([1, 2], [3]), (list(range(10, 20)), [21, 22, 23])]
  with pytest.raises(ValueError, match=r"turn 1: prompt 10 \+ response 3 = 13 tokens > "
                                       r"seq_len 8"):
    P.pack(turns, 8)
  with pytest.raises(ValueError, match="turn 1"):
    P.num_rows(turns, 8)
  b = P.pack(turns, 8, truncate="prompt_head")
  # the prompt loses its first 5 tokens; the response is intact
  assert P.unpack(b)[1] == (list(range(15, 20)), [21, 22, 23])
  np.testing.assert_array_equal(b.prompt_dropped, [0, 5])
  with pytest.raises(ValueError, match=r"turn 0: response of 8 tokens .* never cut"):
    P.pack([([1], list(range(1, 9)))], 8, truncate="prompt_head")


def test_bad_inputs_are_named():
  with pytest.raises(ValueError, match="turn 1: empty prompt"):
    P.pack([([1], [2]), ([], [3])], 8)
  with pytest.raises(ValueError, match="turn 0 response_ids: token ids must be in"):
    P.pack([([1], [-2])], 8)
  with pytest.raises(ValueError, match="turn 0 prompt_ids: expected a flat sequence of int"):
    P.pack([([1.5], [2])], 8)
  with pytest.raises(ValueError, match="truncate must be None or 'prompt_head', got 'tail'"):
    P.pack([([1], [2])], 8, truncate="tail")
  with pytest.raises(ValueError, match=r"response_values\['lp'\] turn 0: shape \(1,\), "
                                       r"expected one value per response token \(2,\)"):
    P.pack([([1], [2, 3])], 8, response_values={"lp": [[0.0]]})
  with pytest.raises(ValueError, match=r"turn_values\['ep'\] must be 2 numbers"):
    P.pack([([1], [2]), ([1], [2])], 8, turn_values={"ep": [0]})
  with pytest.raises(ValueError, match=r"payload names \['tokens'\] clash"):
    P.pack([([1], [2])], 8, turn_values={"tokens": [0]})
  with pytest.raises(ValueError, match=r"gather_responses: array of shape \(1, 3\)"):
    P.gather_responses(P.pack([([1], [2])], 8), np.zeros((1, 3)))
  with pytest.raises(ValueError, match="max_segments must be >= 1"):
    P.pack([([1], [2])], 8, max_segments=0)
