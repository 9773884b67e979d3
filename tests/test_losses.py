"""GRPO / SFT math on hand-computed cases (the expected numbers are written out)."""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from atommem_jax.training import losses as L

F32 = np.float32


# --- registries -----------------------------------------------------------------------------


def test_registries_resolve_builtin_names():
  assert L.get_advantage_estimator("grpo") is L.grpo_advantages
  assert L.get_policy_loss("grpo") is L.grpo_policy_loss
  assert set(L.aggregations()) >= {"token-mean", "seq-mean-token-mean", "seq-mean-token-sum"}


@pytest.mark.parametrize("getter,kind", [(L.get_advantage_estimator, "advantage estimator"),
                                         (L.get_policy_loss, "policy loss"),
                                         (L.get_aggregation, "aggregation")])
def test_unknown_name_lists_known_ones(getter, kind):
  with pytest.raises(ValueError, match=rf"unknown {kind} 'nope'.*known: \["):
    getter("nope")


def test_duplicate_registration_refused():
  with pytest.raises(ValueError, match="'token-mean' is already registered"):
    L.register_aggregation("token-mean")(lambda *a, **k: 0.0)


# --- advantages -----------------------------------------------------------------------------

REWARDS = np.array([[1.0, 0.0, 0.0, 1.0],
                    [0.5, 0.5, 0.5, 0.5],
                    [1.0, 0.0, 0.0, 0.0]], F32)


def test_grpo_advantages_group_mean_baseline():
  adv = np.asarray(L.grpo_advantages(REWARDS, normalize_std=False))
  np.testing.assert_allclose(adv, [[0.5, -0.5, -0.5, 0.5],
                                   [0.0, 0.0, 0.0, 0.0],
                                   [0.75, -0.25, -0.25, -0.25]], atol=1e-7)


def test_grpo_advantages_std_normalised():
  # group 0: sample std = sqrt(4 * 0.25 / 3) = 0.57735 -> 0.5 / 0.57735 = 0.866025
  # group 2: sample std = sqrt((0.5625 + 3 * 0.0625) / 3) = 0.5 -> [1.5, -0.5, -0.5, -0.5]
  adv = np.asarray(L.grpo_advantages(REWARDS, normalize_std=True))
  np.testing.assert_allclose(adv, [[0.866025, -0.866025, -0.866025, 0.866025],
                                   [0.0, 0.0, 0.0, 0.0],
                                   [1.5, -0.5, -0.5, -0.5]], rtol=1e-5)


@pytest.mark.parametrize("normalize_std", [False, True])
def test_grpo_advantages_equal_rewards_are_exactly_zero(normalize_std):
  r = np.array([[0.1, 0.1, 0.1], [0.7, 0.7, 0.7]], F32)  # 0.1 * 3 / 3 != 0.1 in float32
  assert np.all(np.asarray(L.grpo_advantages(r, normalize_std=normalize_std)) == 0.0)
  one = np.array([[0.3], [1.0]], F32)  # G = 1: no baseline information
  assert np.all(np.asarray(L.grpo_advantages(one, normalize_std=normalize_std)) == 0.0)


def test_grpo_advantages_rejects_wrong_rank():
  with pytest.raises(ValueError, match=r"\[Q, G\], got shape \(4,\)"):
    L.grpo_advantages(np.zeros(4, F32))


def test_episode_advantage_shared_by_every_turn():
  episode_adv = np.array([0.5, -1.0], F32)
  # row 0: episode 0 (3 tokens), then episode 1 (2 tokens), padding; row 1: ep 1, ep 0, padding
  token_episode = np.array([[0, 0, 0, 1, 1, -1], [1, 1, 0, 0, -1, -1]], np.int32)
  loss_mask = np.array([[0, 1, 1, 0, 1, 0], [0, 1, 0, 1, 0, 0]], F32)
  adv = np.asarray(L.broadcast_episode_advantages(episode_adv, token_episode, loss_mask))
  np.testing.assert_array_equal(adv, [[0, 0.5, 0.5, 0, -1.0, 0], [0, -1.0, 0, 0.5, 0, 0]])


def test_episode_advantage_out_of_range_index_is_nan_on_masked_tokens():
  adv = L.broadcast_episode_advantages(np.array([1.0], F32), np.array([[0, 3, 3]], np.int32),
                                       np.array([[1, 1, 0]], F32))
  adv = np.asarray(adv)
  assert adv[0, 0] == 1.0 and math.isnan(adv[0, 1]) and adv[0, 2] == 0.0


# --- KL -------------------------------------------------------------------------------------


def test_kl_k3_values():
  logp = np.array([-1.0, -2.0, -0.5], F32)
  ref = np.array([-1.0, -1.0, -1.0], F32)
  # d = ref - logp = [0, 1, -0.5]: e^d - d - 1 = [0, e - 2, e^-0.5 - 0.5]
  np.testing.assert_allclose(np.asarray(L.kl_k3(logp, ref)),
                             [0.0, math.e - 2.0, math.exp(-0.5) - 0.5], rtol=1e-6, atol=1e-7)
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(2, 100)).astype(F32) * 3
  assert np.all(np.asarray(L.kl_k3(a, b)) >= 0.0)


# --- aggregations ---------------------------------------------------------------------------

PER_TOKEN = np.array([[1, 2, 3, 4, 5, 6], [10, 20, 30, 40, 50, 60]], F32)
SEGS = np.array([[1, 1, 1, 2, 2, 0], [1, 1, 2, 2, 2, 3]], np.int32)
# [0, 5] is masked but padding (segment 0): it never counts. Row 1 segment 3 has no masked token.
MASK = np.array([[0, 1, 1, 0, 1, 1], [1, 0, 0, 1, 1, 0]], F32)


@pytest.mark.parametrize("mode,expected", [
    ("token-mean", (2 + 3 + 5 + 10 + 40 + 50) / 6),  # 18.333
    ("seq-mean-token-mean", (2.5 + 5 + 10 + 45) / 4),  # segment means, 4 segments with tokens
    ("seq-mean-token-sum", (5 + 5 + 10 + 90) / 4),  # segment sums
])
def test_aggregation_modes_hand_computed(mode, expected):
  got = L.aggregate(jnp.asarray(PER_TOKEN), MASK, SEGS, mode, max_segments=3)
  np.testing.assert_allclose(float(got), expected, rtol=1e-6)
  den = {"token-mean": 6.0}.get(mode, 4.0)
  assert float(L.aggregation_denominator(MASK, SEGS, mode, max_segments=3)) == den


def test_aggregation_ignores_values_outside_mask_even_inf():
  x = PER_TOKEN.copy()
  x[0, 0] = np.inf  # unmasked prompt token
  x[0, 5] = np.nan  # padding
  for mode in L.aggregations():
    assert np.isfinite(float(L.aggregate(jnp.asarray(x), MASK, SEGS, mode, max_segments=3)))


def test_aggregation_empty_mask_is_zero():
  for mode in L.aggregations():
    got = L.aggregate(jnp.asarray(PER_TOKEN), np.zeros_like(MASK), SEGS, mode, max_segments=3)
    assert float(got) == 0.0


def test_aggregation_segment_id_over_max_is_nan():
  for mode in L.aggregations():
    assert math.isnan(float(L.aggregate(jnp.asarray(PER_TOKEN), MASK, SEGS, mode,
                                        max_segments=2)))


def test_aggregation_bad_args():
  with pytest.raises(ValueError, match="unknown aggregation 'mean'"):
    L.aggregate(jnp.asarray(PER_TOKEN), MASK, SEGS, "mean", max_segments=3)
  with pytest.raises(ValueError, match="max_segments must be a static int >= 1, got 0"):
    L.aggregate(jnp.asarray(PER_TOKEN), MASK, SEGS, "token-mean", max_segments=0)
  with pytest.raises(ValueError, match=r"same \[B, T\] shape"):
    L.aggregate(jnp.asarray(PER_TOKEN[:, :5]), MASK, SEGS, "token-mean", max_segments=3)


def _random_batch(seed: int, b: int = 4, t: int = 12, s: int = 3):
  rng = np.random.default_rng(seed)
  segs = np.sort(rng.integers(0, s + 1, size=(b, t)), axis=1)[:, ::-1].astype(np.int32)
  mask = (rng.random((b, t)) < 0.6).astype(F32)
  logp = -rng.random((b, t)).astype(F32) * 3
  old = logp + rng.normal(scale=0.3, size=(b, t)).astype(F32)
  ref = logp + rng.normal(scale=0.3, size=(b, t)).astype(F32)
  adv = rng.normal(size=(b, t)).astype(F32)
  return logp, old, ref, adv, mask, segs


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_micro_batches_with_global_denominator_sum_to_whole_batch(mode):
  logp, old, ref, adv, mask, segs = _random_batch(1)
  kw = dict(ref_logprobs=ref, aggregation=mode, max_segments=3)

  def loss(lp, sl, den=None):
    return L.grpo_policy_loss(lp, old[sl], adv[sl], mask[sl], segs[sl], **{
        **kw, "ref_logprobs": ref[sl]}, denominator=den)[0]

  whole, g_whole = jax.value_and_grad(lambda lp: loss(lp, slice(None)))(jnp.asarray(logp))
  den = L.aggregation_denominator(mask, segs, mode, max_segments=3)
  parts = [slice(0, 1), slice(1, 4)]
  dens = [L.aggregation_denominator(mask[p], segs[p], mode, max_segments=3) for p in parts]
  np.testing.assert_allclose(float(sum(dens)), float(den))  # additive over micro-batches
  total, grads = 0.0, []
  for p in parts:
    v, g = jax.value_and_grad(lambda lp, p=p: loss(lp, p, den))(jnp.asarray(logp[p]))
    total += float(v)
    grads.append(np.asarray(g))
  np.testing.assert_allclose(total, float(whole), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.concatenate(grads), np.asarray(g_whole), rtol=1e-5, atol=1e-7)
  # without the global denominator the parts are means of their own, which do not add up
  local = sum(float(loss(jnp.asarray(logp[p]), p)) for p in parts)
  assert abs(local - float(whole)) > 1e-3


# --- GRPO policy loss -----------------------------------------------------------------------

# old_logprobs = 0, so ratio = exp(logprobs). Advantages: +1, +1, -1, -1, +1, -1, (+1 on a prompt
# token). clip_low = 0.2, clip_high = 0.28: positive advantages clip at 1.28, negative at 0.8.
RATIOS = np.array([[1.5, 1.1, 0.5, 0.9, 0.5, 1.5, 3.0]], F32)
ADV = np.array([[1.0, 1.0, -1.0, -1.0, 1.0, -1.0, 1.0]], F32)
CLIP_MASK = np.array([[1, 1, 1, 1, 1, 1, 0]], F32)
CLIP_SEGS = np.ones((1, 7), np.int32)
# per token max(-A r, -A clip(r)):
#   t0 A>0 r=1.5 -> clipped at 1.28: -1.28 (gradient 0)     t1 A>0 r=1.1 -> -1.1 (active)
#   t2 A<0 r=0.5 -> clipped at 0.8:   0.8  (gradient 0)     t3 A<0 r=0.9 ->  0.9 (active)
#   t4 A>0 r=0.5 -> -0.5 (not clipped: pessimistic branch)  t5 A<0 r=1.5 ->  1.5 (not clipped)
#   t6 prompt token: excluded.   token-mean = (-1.28 - 1.1 + 0.8 + 0.9 - 0.5 + 1.5) / 6
EXPECTED_PG = 0.32 / 6
# d loss / d logprob = d(-A r)/d logp / 6 = -A r / 6 on active tokens, 0 where clipped or masked
EXPECTED_GRAD = np.array([[0.0, -1.1, 0.0, 0.9, -0.5, 1.5, 0.0]], F32) / 6


def _clip_case_loss(logp, **kw):
  return L.grpo_policy_loss(logp, jnp.zeros_like(logp), ADV, CLIP_MASK, CLIP_SEGS,
                            max_segments=1, **kw)


def test_grpo_asymmetric_clipping_values_and_metrics():
  logp = jnp.log(jnp.asarray(RATIOS))
  loss, m = _clip_case_loss(logp)
  np.testing.assert_allclose(float(loss), EXPECTED_PG, rtol=1e-5)
  np.testing.assert_allclose(float(m["pg_loss"]), EXPECTED_PG, rtol=1e-5)
  np.testing.assert_allclose(float(m["clip_frac_high"]), 1 / 6, rtol=1e-6)  # t0
  np.testing.assert_allclose(float(m["clip_frac_low"]), 1 / 6, rtol=1e-6)  # t2
  np.testing.assert_allclose(float(m["clip_frac"]), 2 / 6, rtol=1e-6)
  np.testing.assert_allclose(float(m["ratio_mean"]), 6.0 / 6, rtol=1e-6)  # t6's 3.0 excluded
  np.testing.assert_allclose(float(m["advantage_mean"]), 0.0, atol=1e-7)
  assert float(m["kl"]) == 0.0


def test_grpo_gradient_zero_where_clipped_and_on_prompt_tokens():
  logp = jnp.log(jnp.asarray(RATIOS))
  grad = jax.grad(lambda lp: _clip_case_loss(lp, ref_logprobs=lp - 0.5, kl_coef=0.0)[0])(logp)
  np.testing.assert_allclose(np.asarray(grad), EXPECTED_GRAD, rtol=1e-5, atol=1e-8)
  assert grad[0, 0] == 0.0 and grad[0, 2] == 0.0 and grad[0, 6] == 0.0  # exactly


def test_grpo_symmetric_clipping_changes_the_high_side_only():
  logp = jnp.log(jnp.asarray(RATIOS))
  # clip_high 0.2: t0 now clips at 1.2 -> -1.2 instead of -1.28; t1 (1.1) still active
  loss, m = _clip_case_loss(logp, clip_high=0.2)
  np.testing.assert_allclose(float(loss), (0.32 + 0.08) / 6, rtol=1e-5)
  np.testing.assert_allclose(float(m["clip_frac_high"]), 1 / 6, rtol=1e-6)


def test_grpo_kl_term_and_prompt_tokens_ignored():
  # ratio 1 everywhere; A = [+1, -1]; logp = [-1, -2], ref = [-1, -1] -> k3 = [0, e - 2]
  logp = jnp.array([[-1.0, -2.0, -9.0]])
  ref = jnp.array([[-1.0, -1.0, 0.0]])  # the third token is a prompt token: its KL never counts
  mask = np.array([[1, 1, 0]], F32)
  loss, m = L.grpo_policy_loss(logp, logp, jnp.array([[1.0, -1.0, 5.0]]), mask,
                               np.ones((1, 3), np.int32), ref_logprobs=ref, kl_coef=0.1,
                               max_segments=1)
  np.testing.assert_allclose(float(loss), (-1.0 + 1.0 + 0.1 * (math.e - 2)) / 2, rtol=1e-5)
  np.testing.assert_allclose(float(m["kl"]), (math.e - 2) / 2, rtol=1e-5)
  np.testing.assert_allclose(float(m["pg_loss"]), 0.0, atol=1e-7)
  grad = jax.grad(lambda lp: L.grpo_policy_loss(
      lp, logp, jnp.array([[1.0, -1.0, 5.0]]), mask, np.ones((1, 3), np.int32),
      ref_logprobs=ref, kl_coef=0.1, max_segments=1)[0])(logp)
  # d/dlogp: -A r / 2 + 0.1 * (1 - e^(ref - logp)) / 2 -> [-0.5, 0.5 + 0.05 (1 - e)], 0
  np.testing.assert_allclose(np.asarray(grad), [[-0.5, 0.5 + 0.05 * (1 - math.e), 0.0]],
                             rtol=1e-5)
  assert grad[0, 2] == 0.0


def test_grpo_rejects_bad_clip_range():
  with pytest.raises(ValueError, match="clip_low=1.0"):
    _clip_case_loss(jnp.zeros((1, 7)), clip_low=1.0)


# --- SFT ------------------------------------------------------------------------------------


def test_sft_loss_masked_nll():
  logp = jnp.array([[-1.0, -2.0, -3.0, -4.0], [-5.0, -6.0, -7.0, 0.0]])
  mask = np.array([[0, 1, 1, 0], [0, 0, 1, 1]], F32)
  segs = np.array([[1, 1, 1, 1], [1, 1, 2, 0]], np.int32)  # [1, 3] masked padding: ignored
  loss, m = L.sft_loss(logp, mask, segs, max_segments=2)
  np.testing.assert_allclose(float(loss), (2 + 3 + 7) / 3, rtol=1e-6)
  assert float(m["tokens"]) == 3.0
  np.testing.assert_allclose(float(m["nll"]), 4.0, rtol=1e-6)
  seq, _ = L.sft_loss(logp, mask, segs, aggregation="seq-mean-token-mean", max_segments=2)
  np.testing.assert_allclose(float(seq), (2.5 + 7) / 2, rtol=1e-6)
  grad = jax.grad(lambda lp: L.sft_loss(lp, mask, segs, max_segments=2)[0])(logp)
  np.testing.assert_allclose(np.asarray(grad), -np.array([[0, 1, 1, 0], [0, 0, 1, 0]]) / 3,
                             rtol=1e-6)


# --- jit ------------------------------------------------------------------------------------


def test_everything_runs_under_jit():
  logp, old, ref, adv, mask, segs = _random_batch(2)
  for mode in L.aggregations():
    fn = functools.partial(L.grpo_policy_loss, aggregation=mode, max_segments=3)
    eager = fn(logp, old, adv, mask, segs, ref_logprobs=ref)
    jitted = jax.jit(fn)(logp, old, adv, mask, segs, ref_logprobs=ref,
                         denominator=jnp.float32(7.0))
    assert all(np.isfinite(float(v)) for v in jax.tree.leaves(jitted))
    np.testing.assert_allclose(float(eager[1]["kl"]), float(jitted[1]["kl"]), rtol=1e-6)
    sft = jax.jit(functools.partial(L.sft_loss, aggregation=mode, max_segments=3))
    np.testing.assert_allclose(float(sft(logp, mask, segs)[0]),
                               float(L.sft_loss(logp, mask, segs, aggregation=mode,
                                                max_segments=3)[0]), rtol=1e-6)
    den = jax.jit(functools.partial(L.aggregation_denominator, mode=mode, max_segments=3))
    assert float(den(mask, segs)) > 0
  adv_fn = jax.jit(L.grpo_advantages, static_argnames=("normalize_std",))
  np.testing.assert_allclose(np.asarray(adv_fn(REWARDS, normalize_std=True)),
                             np.asarray(L.grpo_advantages(REWARDS, normalize_std=True)))
  token_episode = np.where(segs > 0, segs - 1, -1).astype(np.int32)
  b = jax.jit(L.broadcast_episode_advantages)(jnp.arange(3.0), token_episode, mask)
  np.testing.assert_array_equal(np.asarray(b), np.where((mask > 0) & (segs > 0), segs - 1, 0))
  np.testing.assert_allclose(np.asarray(jax.jit(L.kl_k3)(logp, ref)),
                             np.asarray(L.kl_k3(logp, ref)), rtol=1e-6)
