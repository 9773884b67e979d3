"""The training math as small pure, jittable functions registered by name.

Configs pick an advantage estimator, a policy loss and a loss aggregation by string
(`get_advantage_estimator("grpo")`, `get_policy_loss("grpo")`, `get_aggregation("token-mean")`);
the learners only orchestrate. New variants register themselves with the decorators below.

Conventions (packed multi-turn rows, see `atommem_jax.training.packing`):
- `logprobs [B, T]`: log p(tokens[b, t] | earlier tokens of the same segment), 0 where undefined;
- `loss_mask [B, T]` float32: 1 on policy-written (response) tokens, 0 on prompt/environment
  tokens and padding; it is used as a per-token weight;
- `segment_ids [B, T]` int32: 1..S inside a row, 0 = padding. Padding never counts, whatever the
  mask says there. A "sequence" for aggregation is one segment (one prompt + response turn).

Under `jax.jit`, bind the configuration (aggregation name, max_segments, clip bounds, kl_coef)
with `functools.partial`: they are static; `denominator` may be traced. Segment ids outside
0..max_segments cannot raise inside `jit`, so the aggregations return NaN for them instead of
silently dropping tokens.
"""
from __future__ import annotations

import numbers
from typing import Any, Callable, TypeVar

import jax
import jax.numpy as jnp

F = TypeVar("F", bound=Callable[..., Any])

_ADVANTAGE_ESTIMATORS: dict[str, Callable[..., jax.Array]] = {}
_POLICY_LOSSES: dict[str, Callable[..., tuple[jax.Array, dict[str, jax.Array]]]] = {}
_AGGREGATIONS: dict[str, Callable[..., jax.Array]] = {}


def _register(registry: dict[str, Callable[..., Any]], kind: str, name: str) -> Callable[[F], F]:
  if not isinstance(name, str) or not name:
    raise ValueError(f"{kind} name must be a non-empty str, got {name!r}")

  def deco(fn: F) -> F:
    if name in registry and registry[name] is not fn:
      raise ValueError(f"{kind} {name!r} is already registered ({registry[name].__qualname__})")
    registry[name] = fn
    return fn

  return deco


def _lookup(registry: dict[str, Callable[..., Any]], kind: str, name: str) -> Callable[..., Any]:
  try:
    return registry[name]
  except (KeyError, TypeError):
    raise ValueError(f"unknown {kind} {name!r}; known: {sorted(registry)}") from None


def register_advantage_estimator(name: str) -> Callable[[F], F]:
  """Decorator: `fn(rewards [Q, G], **cfg) -> advantages [Q, G]` under `name`."""
  return _register(_ADVANTAGE_ESTIMATORS, "advantage estimator", name)


def register_policy_loss(name: str) -> Callable[[F], F]:
  """Decorator: `fn(logprobs, old_logprobs, advantages, loss_mask, segment_ids, **cfg)
  -> (loss, metrics)` under `name`."""
  return _register(_POLICY_LOSSES, "policy loss", name)


def register_aggregation(name: str) -> Callable[[F], F]:
  """Decorator: `fn(per_token, mask, segment_ids, *, max_segments, denominator) -> scalar`."""
  return _register(_AGGREGATIONS, "aggregation", name)


def get_advantage_estimator(name: str) -> Callable[..., jax.Array]:
  return _lookup(_ADVANTAGE_ESTIMATORS, "advantage estimator", name)


def get_policy_loss(name: str) -> Callable[..., tuple[jax.Array, dict[str, jax.Array]]]:
  return _lookup(_POLICY_LOSSES, "policy loss", name)


def get_aggregation(name: str) -> Callable[..., jax.Array]:
  return _lookup(_AGGREGATIONS, "aggregation", name)


def advantage_estimators() -> tuple[str, ...]:
  return tuple(sorted(_ADVANTAGE_ESTIMATORS))


def policy_losses() -> tuple[str, ...]:
  return tuple(sorted(_POLICY_LOSSES))


def aggregations() -> tuple[str, ...]:
  return tuple(sorted(_AGGREGATIONS))


# ---------------------------------------------------------------------------------------------
# Advantages


@register_advantage_estimator("grpo")
def grpo_advantages(rewards: jax.Array, *, normalize_std: bool = False,
                    eps: float = 1e-6) -> jax.Array:
  """Group-relative advantages: reward minus its group's mean, optionally / (group std + eps).

  rewards [Q, G]: Q questions (groups), G rollouts each. The std is the sample std (ddof=1, as
  DeepSeekMath/TRL/verl use). Std normalisation is off by default (the AtomMem paper). A group
  whose rewards are all equal carries no signal: its advantages are exactly 0 (with or without
  normalisation, and for G = 1).
  """
  rewards = jnp.asarray(rewards, jnp.float32)
  if rewards.ndim != 2:
    raise ValueError(f"grpo_advantages: rewards must be [Q, G], got shape {rewards.shape}")
  g = rewards.shape[1]
  adv = rewards - jnp.mean(rewards, axis=1, keepdims=True)  # [Q, G]
  flat = jnp.max(rewards, axis=1, keepdims=True) == jnp.min(rewards, axis=1, keepdims=True)
  if normalize_std and g > 1:
    std = jnp.std(rewards, axis=1, keepdims=True, ddof=1)  # [Q, 1]
    adv = adv / (jnp.where(flat, 1.0, std) + eps)
  return jnp.where(flat, 0.0, adv)


def broadcast_episode_advantages(episode_advantages: jax.Array, token_episode: jax.Array,
                                 loss_mask: jax.Array) -> jax.Array:
  """Per-token advantages [B, T]: every token of every turn of an episode gets its episode's.

  episode_advantages [E]; token_episode [B, T] int32 names each token's episode (-1 = none, e.g.
  padding); tokens outside the loss mask, or with no episode, get 0. An index >= E yields NaN on
  masked tokens (a caller bug made visible; it cannot raise under jit).
  """
  episode_advantages = jnp.asarray(episode_advantages, jnp.float32)
  if episode_advantages.ndim != 1:
    raise ValueError("broadcast_episode_advantages: episode_advantages must be [E], got shape "
                     f"{episode_advantages.shape}")
  if token_episode.shape != loss_mask.shape:
    raise ValueError(f"broadcast_episode_advantages: token_episode {token_episode.shape} and "
                     f"loss_mask {loss_mask.shape} differ in shape")
  idx = jnp.maximum(token_episode, 0)
  adv = episode_advantages.at[idx].get(mode="fill", fill_value=jnp.nan)  # [B, T]
  keep = (token_episode >= 0) & (loss_mask > 0)
  return jnp.where(keep, adv, 0.0)


# ---------------------------------------------------------------------------------------------
# KL


def kl_k3(logprobs: jax.Array, ref_logprobs: jax.Array) -> jax.Array:
  """k3 estimator of KL(pi || ref) per token: exp(ref - logp) - (ref - logp) - 1, always >= 0.

  Unbiased for samples from pi, lower variance than log(pi/ref) (Schulman, "Approximating KL").
  """
  d = ref_logprobs - logprobs
  return jnp.exp(d) - d - 1.0


# ---------------------------------------------------------------------------------------------
# Aggregations


def _effective_mask(loss_mask: jax.Array, segment_ids: jax.Array) -> jax.Array:
  """loss_mask as float weights, zero on padding (segment 0)."""
  return jnp.where(segment_ids > 0, loss_mask.astype(jnp.float32), 0.0)


def _invalid_segments(segment_ids: jax.Array, max_segments: int) -> jax.Array:
  """NaN if any segment id is outside 0..max_segments, else 0 (added to the loss)."""
  bad = jnp.any((segment_ids < 0) | (segment_ids > max_segments))
  return jnp.where(bad, jnp.nan, 0.0)


def _masked_values(per_token: jax.Array, mask: jax.Array) -> jax.Array:
  """per_token * mask with unmasked entries forced to 0 (so inf/NaN there never leak)."""
  return jnp.where(mask > 0, per_token, 0.0) * mask


def _segment_sums(values: jax.Array, segment_ids: jax.Array, max_segments: int) -> jax.Array:
  """[B, T] -> [B, max_segments + 1]: per-row sums by segment id (column 0 = padding)."""
  seg = jnp.clip(segment_ids, 0, max_segments)
  return jax.vmap(lambda v, s: jax.ops.segment_sum(v, s, num_segments=max_segments + 1))(
      values, seg)


def _safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
  """num / den, 0 where den == 0 (no NaN in values or gradients)."""
  den = jnp.asarray(den, jnp.float32)
  return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def _check_static(max_segments: int) -> None:
  if isinstance(max_segments, bool) or not isinstance(max_segments, numbers.Integral) \
      or max_segments < 1:
    raise ValueError(f"max_segments must be a static int >= 1, got {max_segments!r}")


@register_aggregation("token-mean")
def token_mean(per_token: jax.Array, loss_mask: jax.Array, segment_ids: jax.Array, *,
               max_segments: int, denominator: jax.Array | float | None = None) -> jax.Array:
  """Sum over all masked tokens / number (weight) of masked tokens: long responses weigh more."""
  _check_static(max_segments)
  mask = _effective_mask(loss_mask, segment_ids)  # [B, T]
  num = jnp.sum(_masked_values(per_token, mask))
  den = jnp.sum(mask) if denominator is None else denominator
  return _safe_div(num, den) + _invalid_segments(segment_ids, max_segments)


def _segment_terms(per_token: jax.Array, loss_mask: jax.Array, segment_ids: jax.Array,
                   max_segments: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-segment (sums, mask weights, has-a-masked-token), each [B, S]; padding dropped."""
  mask = _effective_mask(loss_mask, segment_ids)
  sums = _segment_sums(_masked_values(per_token, mask), segment_ids, max_segments)[:, 1:]
  counts = _segment_sums(mask, segment_ids, max_segments)[:, 1:]  # [B, S]
  return sums, counts, counts > 0


@register_aggregation("seq-mean-token-mean")
def seq_mean_token_mean(per_token: jax.Array, loss_mask: jax.Array, segment_ids: jax.Array, *,
                        max_segments: int,
                        denominator: jax.Array | float | None = None) -> jax.Array:
  """Mean over each segment's masked tokens, then mean over segments with any masked token:
  every turn weighs the same whatever its length."""
  _check_static(max_segments)
  sums, counts, has = _segment_terms(per_token, loss_mask, segment_ids, max_segments)
  seg_mean = _safe_div(sums, counts)  # [B, S]
  den = jnp.sum(has.astype(jnp.float32)) if denominator is None else denominator
  return _safe_div(jnp.sum(seg_mean), den) + _invalid_segments(segment_ids, max_segments)


@register_aggregation("seq-mean-token-sum")
def seq_mean_token_sum(per_token: jax.Array, loss_mask: jax.Array, segment_ids: jax.Array, *,
                       max_segments: int,
                       denominator: jax.Array | float | None = None) -> jax.Array:
  """Sum over each segment's masked tokens, then mean over segments with any masked token."""
  _check_static(max_segments)
  sums, _, has = _segment_terms(per_token, loss_mask, segment_ids, max_segments)
  den = jnp.sum(has.astype(jnp.float32)) if denominator is None else denominator
  return _safe_div(jnp.sum(sums), den) + _invalid_segments(segment_ids, max_segments)


def aggregate(per_token: jax.Array, loss_mask: jax.Array, segment_ids: jax.Array, mode: str, *,
              max_segments: int, denominator: jax.Array | float | None = None) -> jax.Array:
  """Reduce a per-token loss [B, T] to a scalar with the aggregation registered as `mode`.

  Micro-batches: pass `denominator = aggregation_denominator(...)` computed on the *whole* batch
  (or summed over its micro-batches: it is additive); then each micro-batch's loss is its share
  and the sum over micro-batches equals the whole-batch loss (and so do the gradients).
  """
  if per_token.shape != loss_mask.shape or per_token.shape != segment_ids.shape:
    raise ValueError(f"aggregate: per_token {per_token.shape}, loss_mask {loss_mask.shape} and "
                     f"segment_ids {segment_ids.shape} must have the same [B, T] shape")
  return get_aggregation(mode)(per_token, loss_mask, segment_ids, max_segments=max_segments,
                               denominator=denominator)


def aggregation_denominator(loss_mask: jax.Array, segment_ids: jax.Array, mode: str, *,
                            max_segments: int) -> jax.Array:
  """What `mode` divides by on this batch: masked-token weight ("token-mean") or the number of
  segments with any masked token (the seq-* modes). Additive over micro-batches."""
  get_aggregation(mode)  # unknown names fail here, naming the known ones
  _check_static(max_segments)
  if mode == "token-mean":
    return jnp.sum(_effective_mask(loss_mask, segment_ids))
  if mode in ("seq-mean-token-mean", "seq-mean-token-sum"):
    counts = _segment_sums(_effective_mask(loss_mask, segment_ids), segment_ids,
                           max_segments)[:, 1:]
    return jnp.sum((counts > 0).astype(jnp.float32))
  raise ValueError(f"aggregation_denominator: no denominator rule for aggregation {mode!r}")


# ---------------------------------------------------------------------------------------------
# Losses


def prompt_weighted_mask(loss_mask: jax.Array, prompt_weight: float) -> jax.Array:
  """`loss_mask` (1 on response tokens) with `prompt_weight` on every other token: SFT that
  also models the prompt. Padding and each segment's first token still need masking out
  (the caller's `scored_mask`)."""
  if not prompt_weight:
    return loss_mask
  return loss_mask + prompt_weight * (1.0 - loss_mask)


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of `x` weighted by `mask` (0 when the mask is empty)."""
  return _safe_div(jnp.sum(_masked_values(x, mask)), jnp.sum(mask))


@register_policy_loss("grpo")
def grpo_policy_loss(logprobs: jax.Array, old_logprobs: jax.Array, advantages: jax.Array,
                     loss_mask: jax.Array, segment_ids: jax.Array, *,
                     ref_logprobs: jax.Array | None = None, clip_low: float = 0.2,
                     clip_high: float = 0.28, kl_coef: float = 0.001,
                     aggregation: str = "token-mean", max_segments: int,
                     denominator: jax.Array | float | None = None
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """PPO clipped surrogate with asymmetric clipping (DAPO's clip-higher) + k3 KL to a reference.

  per token: max(-A * r, -A * clip(r, 1 - clip_low, 1 + clip_high)) + kl_coef * k3, with
  r = exp(logprobs - old_logprobs); then aggregated. old_logprobs, advantages and ref_logprobs are
  constants (stop_gradient). Where the clipped branch is active (A > 0 and r > 1 + clip_high, or
  A < 0 and r < 1 - clip_low) the surrogate's gradient is 0; tokens outside the mask (prompt /
  environment text, padding) never reach the loss or its gradient.

  Metrics are token means over this batch's masked tokens: clip_frac (= low + high),
  clip_frac_low, clip_frac_high, kl (k3; 0 without a reference), ratio_mean, advantage_mean, and
  pg_loss (the aggregated surrogate alone).
  """
  if not (0.0 <= clip_low < 1.0) or clip_high < 0.0:
    raise ValueError(f"grpo_policy_loss: need 0 <= clip_low < 1 and clip_high >= 0, got "
                     f"clip_low={clip_low}, clip_high={clip_high}")
  mask = _effective_mask(loss_mask, segment_ids)  # [B, T]
  on = mask > 0
  old_logprobs = jax.lax.stop_gradient(old_logprobs)
  advantages = jax.lax.stop_gradient(advantages)
  log_ratio = jnp.where(on, logprobs - old_logprobs, 0.0)  # [B, T]
  ratio = jnp.exp(log_ratio)
  unclipped = -advantages * ratio
  clipped = -advantages * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
  pg = jnp.maximum(unclipped, clipped)  # [B, T]
  agg = dict(max_segments=max_segments, denominator=denominator)
  pg_loss = aggregate(pg, mask, segment_ids, aggregation, **agg)
  if ref_logprobs is not None:
    ref_logprobs = jax.lax.stop_gradient(ref_logprobs)
    kl = kl_k3(jnp.where(on, logprobs, 0.0), jnp.where(on, ref_logprobs, 0.0))  # [B, T]
    loss = aggregate(pg + kl_coef * kl, mask, segment_ids, aggregation, **agg)
    kl_mean = masked_mean(kl, mask)
  else:
    loss = pg_loss
    kl_mean = jnp.zeros((), jnp.float32)
  low = on & (advantages < 0) & (ratio < 1.0 - clip_low)
  high = on & (advantages > 0) & (ratio > 1.0 + clip_high)
  frac_low = masked_mean(low.astype(jnp.float32), mask)
  frac_high = masked_mean(high.astype(jnp.float32), mask)
  metrics = {
      "pg_loss": pg_loss,
      "kl": kl_mean,
      "clip_frac": frac_low + frac_high,
      "clip_frac_low": frac_low,
      "clip_frac_high": frac_high,
      "ratio_mean": masked_mean(ratio, mask),
      "advantage_mean": masked_mean(advantages, mask),
  }
  return loss, jax.tree.map(jax.lax.stop_gradient, metrics)


def sft_loss(logprobs: jax.Array, loss_mask: jax.Array, segment_ids: jax.Array, *,
             aggregation: str = "token-mean", max_segments: int,
             denominator: jax.Array | float | None = None
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Aggregated negative log-likelihood of the policy-written (masked) tokens.

  Metrics: nll (token mean over this batch's masked tokens), tokens (their mask weight).
  """
  mask = _effective_mask(loss_mask, segment_ids)
  nll = -jnp.where(mask > 0, logprobs, 0.0)  # [B, T]
  loss = aggregate(nll, mask, segment_ids, aggregation, max_segments=max_segments,
                   denominator=denominator)
  metrics = {"nll": masked_mean(nll, mask), "tokens": jnp.sum(mask)}
  return loss, jax.tree.map(jax.lax.stop_gradient, metrics)
